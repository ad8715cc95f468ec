"""Test plugin (issue 16): a method whose loss reads a feature it does not declare.

``weighted-dpo`` weights DPO's log-ratios by the token weights (``chosen_weights``) but
declares only ``reference``: the training core never computes the weights, so every cell
would fail with a TypeError on a None tensor. ``validate`` must say so, naming the feature
and the ``needs`` to write. ``tidy-dpo`` reads every field of the batch in a generic loop
and uses none of the undeclared ones: it keeps to the contract.
"""
from __future__ import annotations

import dataclasses

import torch

import methods
from methods import LossOutput, PreferenceMethod, TokenBatch


def _summed(x, mask):
    return torch.where(mask > 0, x, torch.zeros((), dtype=x.dtype)).sum(-1)


@methods.register("weighted-dpo")
class WeightedDPO(PreferenceMethod):
    """DPO on token-weighted log-ratios, with token_weights missing from its needs."""

    needs = frozenset({"reference"})
    beta: float = 0.1

    def loss(self, b: TokenBatch) -> LossOutput:
        w = _summed((b.chosen_logps - b.ref_chosen_logps) * b.chosen_weights, b.chosen_mask)
        lo = _summed((b.rejected_logps - b.ref_rejected_logps) * b.rejected_weights, b.rejected_mask)
        return LossOutput(losses=-torch.nn.functional.logsigmoid(self.beta * (w - lo)),
                          chosen_rewards=(self.beta * w).detach(), rejected_rewards=(self.beta * lo).detach())


@methods.register("tidy-dpo")
class TidyDPO(PreferenceMethod):
    """DPO that looks at every field of its batch (a generic loop) but uses only what it declares."""

    needs = frozenset({"reference"})
    beta: float = 0.1

    def loss(self, b: TokenBatch) -> LossOutput:
        present = {f.name for f in dataclasses.fields(b) if getattr(b, f.name) is not None}
        assert {"chosen_logps", "ref_chosen_logps"} <= present
        w = _summed(b.chosen_logps - b.ref_chosen_logps, b.chosen_mask)
        lo = _summed(b.rejected_logps - b.ref_rejected_logps, b.rejected_mask)
        return LossOutput(losses=-torch.nn.functional.logsigmoid(self.beta * (w - lo)),
                          chosen_rewards=(self.beta * w).detach(), rejected_rewards=(self.beta * lo).detach())
