"""What one micro-batch contributes to a step: the loss to backpropagate, the metrics to log
and the tokens processed. Two objectives share the loop (``harness.core.train``):

* :class:`SFTObjective`: the negative log-likelihood of the chosen responses;
* :class:`PreferenceObjective`: one policy forward over ``[chosen; rejected (; anchors)]``, the
  features the method needs (reference log-probs, token KL, weights, anchors), then
  ``method(TokenBatch) -> LossOutput``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.tokenize import TokenizedData
from .batch import collate, compact, gather_logps, response_logits


@dataclass
class StepContext:
    """One optimizer step's settings; ``counters`` collects what the step's features did
    (reference forwards, attribution passes, sampled anchor tokens), logged as ``count/*``."""

    seed: int
    step: int
    pad_id: int
    device: torch.device
    tokenizer: Any = None
    counters: dict = field(default_factory=dict)


class SFTObjective:
    """Negative log-likelihood of the response tokens, averaged over all tokens of the batch."""

    kind = "sft"

    def step(self, model, data: TokenizedData, idx: list[int], ctx: "StepContext") -> tuple[torch.Tensor, dict, int]:
        rows = collate([data.prompts[i] for i in idx], [data.chosen[i] for i in idx], ctx.pad_id).to(ctx.device)
        logps = gather_logps(response_logits(model, rows), rows)
        loss = -logps.sum() / rows.resp_mask.sum()
        return loss, {"loss": loss.item()}, rows.n_tokens


class PreferenceObjective:
    """Builds a ``methods.TokenBatch`` from one policy forward plus the features ``method.needs``."""

    kind = "preference"

    def __init__(self, method, features):
        self.method, self.features = method, features

    def forward(self, model, data: TokenizedData, idx: list[int], ctx: "StepContext"):
        """The method's output on pairs ``idx``: (TokenBatch, LossOutput, tokens processed)."""
        from methods import TokenBatch

        f = self.features
        prompts = f.prompts_of([data.prompts[i] for i in idx])
        chosen = [data.chosen[i] for i in idx]
        rejected = [data.rejected[i] for i in idx]
        anchors = f.anchors(model, prompts, idx) if "anchor" in self.method.needs else None
        in_forward = f.attribution_in_forward(model)
        weights = None if in_forward else f.weights(model, idx, prompts, chosen, rejected)
        B = len(idx)
        all_prompts = prompts + prompts + (prompts if anchors is not None else [])
        all_resp = chosen + rejected + (anchors or [])
        holes = f.anchor_holes(anchors) if anchors is not None else None
        rows = collate(all_prompts, all_resp, ctx.pad_id, None if holes is None else [[]] * (2 * B) + holes)
        rows = rows.to(ctx.device)
        with f.capture_embeddings(model, in_forward) as cap:
            logits = response_logits(model, rows)
        if in_forward:
            weights = f.weights_from_forward(cap, logits, rows, prompts, chosen, rejected)
        logps = gather_logps(logits, rows)
        Tc, Tr = max(map(len, chosen)), max(map(len, rejected))
        kw: dict[str, Any] = dict(
            chosen_logps=logps[:B, :Tc], rejected_logps=logps[B:2 * B, :Tr],
            chosen_mask=rows.resp_mask[:B, :Tc], rejected_mask=rows.resp_mask[B:2 * B, :Tr],
        )
        if anchors is not None:  # scored anchor tokens to the front (holes: see anchors.py)
            kw["anchor_logps"], kw["anchor_mask"] = compact(logps[2 * B:], rows.resp_mask[2 * B:])
        f.fill(kw, logits, rows, idx, prompts, anchors, weights)
        batch = TokenBatch(**kw)
        return batch, self.method(batch), rows.n_tokens

    def step(self, model, data: TokenizedData, idx: list[int], ctx: "StepContext"):
        from methods.dpo import masked_sum

        before = dict(self.features.counters)
        batch, out, n_tokens = self.forward(model, data, idx, ctx)
        for k, v in self.features.counters.items():  # what this micro-batch's features did
            if isinstance(v, int) and v != before.get(k, 0):
                ctx.counters[k] = ctx.counters.get(k, 0) + v - before.get(k, 0)
        loss = out.losses.mean()
        m = {
            "loss": loss.item(),
            "rewards/chosen": out.chosen_rewards.mean().item(),
            "rewards/rejected": out.rejected_rewards.mean().item(),
            "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean().item(),
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean().item(),
            # where, not a product with the mask: a non-finite padded slot cannot leak (dpo.py)
            "logps/chosen": masked_sum(batch.chosen_logps.detach(), batch.chosen_mask).mean().item(),
            "logps/rejected": masked_sum(batch.rejected_logps.detach(), batch.rejected_mask).mean().item(),
        }
        m.update({k: float(v) for k, v in out.metrics.items()})
        return loss, m, n_tokens
