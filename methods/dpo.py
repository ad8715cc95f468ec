"""DPO (Rafailov et al. 2023) and its conservative form, plus the masked reductions the
other method modules share.

Every reduction over response tokens goes through ``masked_sum`` / ``masked_mean``: they
select real tokens with ``torch.where`` rather than multiplying by the mask, so a padded
slot holding ``inf`` or ``nan`` (a log-prob of a pad token, say) can reach neither the
value nor the gradient.
"""
from __future__ import annotations

from typing import Annotated

from . import register
from ._torch import F, torch
from .base import LossOutput, PreferenceMethod, Range, TokenBatch


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padded slots set to 0. Apply it to every factor *before* multiplying two
    per-token tensors: ``where`` stops a padded value itself, but in ``w * r`` an ``inf`` in
    ``w`` would still turn r's zero gradient into ``0 * inf = nan``."""
    return torch.where(mask > 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t x[:, t]`` over positions where ``mask > 0``; [B, T] -> [B]."""
    return zero_padding(x, mask).sum(-1)


def token_count(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Number of real tokens per row, at least 1 (an empty response then averages to 0,
    as in TRL's ``clamp(min=1)``)."""
    return (mask > 0).sum(-1).clamp(min=1).to(dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of ``x`` over real tokens; [B, T] -> [B]."""
    return masked_sum(x, mask) / token_count(mask, x.dtype)


def summed_logratios(b: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_t r_t(y_w), sum_t r_t(y_l))`` with ``r_t = log pi_theta - log pi_ref``."""
    return (
        masked_sum(b.chosen_logps - b.ref_chosen_logps, b.chosen_mask),
        masked_sum(b.rejected_logps - b.ref_rejected_logps, b.rejected_mask),
    )


@register("dpo")
class DPO(PreferenceMethod):
    """Direct Preference Optimization (Rafailov et al. 2023), with optional cDPO label smoothing.

    Per pair, with ``m(y) = sum_t r_t(y)`` summed over the response tokens and
    ``h = m(y_w) - m(y_l)``::

        loss = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h)

    With ``eps = label_smoothing = 0`` this is DPO, Eq. 7 of the paper. ``eps > 0`` is
    conservative DPO (cDPO): the preference label is assumed flipped with probability eps.
    The formula is the one of the original DPO repository
    (eric-mitchell/direct-preference-optimization, ``trainers.py``, ``preference_loss``) and of
    TRL up to 0.28. TRL 1.16's ``loss_type="sigmoid"`` ignores ``label_smoothing`` (removed in
    TRL 0.29), so TRL is the parity oracle for ``eps = 0`` only.

    Implicit reward (logged): ``beta * m(y)``, detached, as in both codebases.

    Hyperparameters:
      beta: 0.1, the paper's and TRL's default (the KL strength; larger stays closer to the
        reference).
      label_smoothing: 0.0 (plain DPO); must lie in [0, 0.5), since eps >= 0.5 would prefer
        the rejected response.
    """

    needs = frozenset({"reference"})
    beta: Annotated[float, Range(gt=0)] = 0.1
    label_smoothing: Annotated[float, Range(ge=0, lt=0.5)] = 0.0

    def loss(self, b: TokenBatch) -> LossOutput:
        m_w, m_l = summed_logratios(b)
        logits = self.beta * (m_w - m_l)
        eps = self.label_smoothing
        losses = -F.logsigmoid(logits)
        if eps > 0:
            losses = (1 - eps) * losses - eps * F.logsigmoid(-logits)
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * m_w).detach(),
            rejected_rewards=(self.beta * m_l).detach(),
            metrics={
                "logits/mean": logits.detach().mean().item(),
                "logratio/chosen": m_w.detach().mean().item(),
                "logratio/rejected": m_l.detach().mean().item(),
            },
        )
