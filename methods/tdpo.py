"""TDPO, Token-level Direct Preference Optimization (Zeng et al., ICML 2024).

Two registered variants, ``tdpo1`` and ``tdpo2``, share one implementation; the harness never
relies on an implicit default between them (the official README calls TDPO2 the default, but
the shipped ``config/loss/tdpo.yaml`` was switched to TDPO1 in July 2024).
"""
from __future__ import annotations

from typing import Annotated, ClassVar

from . import register
from ._torch import F
from .base import LossOutput, PreferenceMethod, Range, TokenBatch
from .dpo import masked_sum, summed_logratios


class _TDPO(PreferenceMethod):
    """Shared TDPO computation; the subclasses pick the variant."""

    needs = frozenset({"reference", "token_kl"})
    beta: Annotated[float, Range(gt=0)] = 0.1
    alpha: Annotated[float, Range(ge=0)] = 0.5
    _variant: ClassVar[int] = 0

    def loss(self, b: TokenBatch) -> LossOutput:
        m_w, m_l = summed_logratios(b)
        k_w = masked_sum(b.chosen_kl, b.chosen_mask)
        k_l = masked_sum(b.rejected_kl, b.rejected_mask)
        if self._variant == 1:
            h = (m_w - m_l) - (k_l - k_w)
        else:
            h = (m_w - m_l) - self.alpha * (k_l - k_w.detach())
        losses = -F.logsigmoid(self.beta * h)
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * (m_w + k_w)).detach(),
            rejected_rewards=(self.beta * (m_l + k_l)).detach(),
            metrics={
                "logits/mean": (self.beta * h).detach().mean().item(),
                "kl/chosen": k_w.detach().mean().item(),
                "kl/rejected": k_l.detach().mean().item(),
                "logratio/chosen": m_w.detach().mean().item(),
                "logratio/rejected": m_l.detach().mean().item(),
            },
        )


_COMMON_DOC = """
    Notation, per pair: ``r_t = log pi_theta(y_t|x,y_<t) - log pi_ref(y_t|x,y_<t)``,
    ``m(y) = sum_t r_t`` and the sequential KL
    ``K(y) = sum_t KL(pi_ref(.|x,y_<t) || pi_theta(.|x,y_<t))``, the per-position KL over the
    whole vocabulary (``TokenBatch.chosen_kl`` / ``rejected_kl``), summed over response tokens.

    Source: Zeng et al., "Token-level Direct Preference Optimization", ICML 2024, the TDPO1
    and TDPO2 objectives (Sec. 4); official code
    Vance0124/Token-level-Direct-Preference-Optimization, ``trainers.py``, ``tdpo_loss`` with
    ``if_tdpo2`` False / True (same formulas; that code computes K in float32 from full
    logits, as the training core must for ``token_kl``).

    Implicit reward (logged, as in the official code): ``beta * (m(y) + K(y))``, detached.

    Hyperparameters (official defaults, ``config/loss/tdpo.yaml``):
      beta: 0.1. Must be > 0.
      alpha: 0.5, the weight of the KL term in TDPO2."""


@register("tdpo1")
class TDPO1(_TDPO):
    __doc__ = """Token-level DPO, variant 1 (Zeng et al. 2024): DPO margin corrected by the sequential-KL difference.

        loss = -log sigma(beta * ((m(y_w) - m(y_l)) - (K(y_l) - K(y_w))))

    Gradient flows through both KL terms. ``alpha`` is accepted so that tdpo1 and tdpo2
    configurations are interchangeable, and is ignored: TDPO1 has no KL weight.
""" + _COMMON_DOC
    _variant = 1


@register("tdpo2")
class TDPO2(_TDPO):
    __doc__ = """Token-level DPO, variant 2 (Zeng et al. 2024): weighted KL difference, stop-gradient on the chosen KL.

        loss = -log sigma(beta * ((m(y_w) - m(y_l)) - alpha * (K(y_l) - sg(K(y_w)))))

    ``sg`` is stop-gradient: the chosen response's sequential KL enters as a constant, so
    the KL term sends gradient only through K(y_l).
""" + _COMMON_DOC
    _variant = 2
