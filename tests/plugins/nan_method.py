"""Test plugin: methods that diverge on purpose, so the numerical-fault path runs for real.

``nan-after-3`` is DPO for its first three loss calls; from the fourth call on every
per-pair loss is NaN. ``nan-grad-after-3`` keeps the loss finite but makes its gradient NaN
from the fourth call on. The core calls the loss once per optimizer step (batch_size pairs,
grad_accum 1), so training fails at step 4 with steps 1-3 logged as the last finite
metrics. The count is per instance: each cell builds its own method, so a cell's fault
never depends on what ran before it in the same process.
"""
from __future__ import annotations

import torch

import methods
from methods.dpo import DPO


@methods.register("nan-after-3")
class NanAfter3(DPO):
    """DPO whose loss turns NaN from its 4th call on (a deterministic divergence for tests)."""

    def loss(self, b):
        self._calls = getattr(self, "_calls", 0) + 1
        out = super().loss(b)
        if self._calls > 3:
            # still a function of the policy's log-probs, so backward() would run; the core
            # must stop on the non-finite value before it gets there
            out.losses = out.losses * float("nan")
        return out


class _NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@methods.register("nan-grad-after-3")
class NanGradAfter3(DPO):
    """DPO whose gradient turns NaN from its 4th loss call on, while the loss stays finite."""

    def loss(self, b):
        self._calls = getattr(self, "_calls", 0) + 1
        out = super().loss(b)
        if self._calls > 3:
            out.losses = _NaNGradient.apply(out.losses)
        return out
