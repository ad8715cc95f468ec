"""Evaluation during training (``train.eval_every``): the score-vs-step curves.

Every ``eval_every`` optimizer steps, before the first one and after the last, the policy is
scored on the held-out pairs with the final evaluation's own definitions
(:func:`harness.evaluate.policy.preference_items`): preference accuracy from the summed and
from the per-token averaged log-ratio, and the summed log-ratio margin (DPO's implicit reward
margin at beta = 1, one definition for every method, so that methods share an axis), each with
its standard error over held-out pairs. The training loop writes one record per evaluation to
the cell's ``eval_log.jsonl``; the report draws them against the step.

Cost: one no-grad policy forward over the held-out chosen and rejected responses per
evaluation. The reference's log-probs are computed once (the reference does not change) and
the reference model is released at once. The policy is put back in training mode; the random
state does not matter, since the loop reseeds every step from (seed, step).
"""
from __future__ import annotations

from typing import Callable

from ..core.batch import sequence_logps
from ..data.tokenize import tokenize
from ..metrics import item_mean, get as metric
from .policy import preference_items


class HeldoutCurve:
    """``curve(model, step) -> {metric: value}`` for the training loop's ``evaluator``."""

    def __init__(self, ref_loader: Callable, tok, data, espec, tspec, chat_template: bool = True):
        held = data.heldout[: espec.heldout_pairs] if espec.heldout_pairs else data.heldout
        self.td = tokenize(held, tok, tspec.max_length, tspec.max_prompt_length, chat_template)
        self.pad, self.bs = tok.pad_token_id, espec.batch_size
        self._ref_loader = ref_loader
        self._ref: tuple | None = None

    def _reference(self, device) -> tuple:
        if self._ref is None:
            ref = self._ref_loader()
            home = next(ref.parameters()).device  # a shared reference goes back where it was
            ref = ref.to(device).eval()
            td = self.td
            self._ref = (sequence_logps(ref, td.prompts, td.chosen, self.pad, self.bs, device),
                         sequence_logps(ref, td.prompts, td.rejected, self.pad, self.bs, device))
            ref.to(home)
            del ref
        return self._ref

    def __call__(self, model, step: int) -> dict:
        if not len(self.td):
            return {}
        device = next(model.parameters()).device
        rc, rr = self._reference(device)
        was_training = model.training
        model.eval()
        try:
            pc = sequence_logps(model, self.td.prompts, self.td.chosen, self.pad, self.bs, device)
            pr = sequence_logps(model, self.td.prompts, self.td.rejected, self.pad, self.bs, device)
        finally:
            model.train(was_training)
        out: dict = {"pref/n": len(self.td)}
        for key, items in preference_items(pc, pr, rc, rr).items():
            mean, se, _ = item_mean(items)
            out[key] = round(mean, 8)
            out[metric(key).stderr_key] = round(se, 8)
        return out


def heldout_curve(ref_loader, tok, data, espec, tspec, chat_template: bool = True) -> HeldoutCurve | None:
    """The evaluator of a cell that asks for one (``train.eval_every`` > 0, evaluation on)."""
    if not tspec.eval_every or not espec.enabled or not data.heldout:
        return None
    return HeldoutCurve(ref_loader, tok, data, espec, tspec, chat_template)


__all__ = ["HeldoutCurve", "heldout_curve"]
