"""What each optimizer step does, as a pure function of the run's settings, seed and step: the
run's length and warmup in steps, the learning rate, the examples the step reads, and the
seeding of torch before it; plus the optimizer they drive.

Because all of these depend on (settings, seed, step) alone, there is no scheduler or sampler
state to save: a run resumed from the checkpoint of step k replays steps k+1.. exactly as an
uninterrupted run does (``harness.core.train``).
"""
from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import torch

from ..schema import TrainSpec


def resolve_schedule(cfg: TrainSpec, n_examples: int) -> TrainSpec:
    """``cfg`` with its length in steps and its warmup in steps, as the loop runs them:
    ``epochs`` -> ``steps = ceil(epochs x n_examples / (batch_size x grad_accum))``, and
    ``warmup_ratio`` -> ``warmup_steps = ceil(warmup_ratio x steps)`` (transformers'
    ``TrainingArguments.get_warmup_steps``). A copy; ``cfg`` is left as written."""
    steps = cfg.steps
    if cfg.epochs is not None:
        steps = max(1, math.ceil(round(cfg.epochs * n_examples / (cfg.batch_size * cfg.grad_accum), 9)))
    if steps is None:
        raise ValueError("train settings give neither steps nor epochs")
    warm = math.ceil(round(cfg.warmup_ratio * steps, 9)) if cfg.warmup_ratio is not None else cfg.warmup_steps
    return replace(cfg, steps=steps, epochs=None, warmup_steps=warm, warmup_ratio=None)


def lr_at(step: int, cfg: TrainSpec) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.schedule == "linear":
        return cfg.lr * (1.0 - frac)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def step_indices(n: int, step: int, eff_batch: int, seed: int) -> list[int]:
    """The examples of optimizer step ``step``: consecutive slices of seeded per-epoch
    permutations (an epoch boundary may fall inside a step)."""
    out: list[int] = []
    pos = step * eff_batch
    while len(out) < eff_batch:
        epoch, off = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(eff_batch - len(out), n - off)
        out.extend(int(i) for i in perm[off: off + take])
        pos += take
    return out


def used_indices(n: int, steps: int, eff_batch: int, seed: int) -> list[int]:
    """Every example ``steps`` optimizer steps of ``step_indices`` read, sorted: the first
    ``steps * eff_batch`` of epoch 0's permutation, or all ``n`` once a run reaches epoch 1."""
    total = steps * eff_batch
    if total >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng([seed, 0]).permutation(n)[:total])


def reseed(seed: int, step: int) -> None:
    """Seed torch and Python's ``random`` for step ``step``, before any of its sampling."""
    s = (seed * 1_000_003 + step) % (2**63)
    torch.manual_seed(s)
    random.seed(s)


def make_optimizer(model, cfg: TrainSpec):
    """AdamW (or RMSprop) over the trainable parameters; the loop sets the learning rate of
    every step (:func:`lr_at`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
