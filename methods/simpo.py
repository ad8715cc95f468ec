"""SimPO, Simple Preference Optimization (Meng, Xia, Chen 2024)."""
from __future__ import annotations

from typing import Annotated, Optional

from . import register
from ._torch import F
from .base import LossOutput, MethodConfigError, PreferenceMethod, Range, TokenBatch
from .dpo import masked_mean


@register("simpo")
class SimPO(PreferenceMethod):
    """Simple Preference Optimization (Meng et al. 2024): reference-free, length-normalized, with a target margin.

    Per pair, with ``a(y) = (1/|y|) sum_t log pi_theta(y_t | x, y_<t)`` (the mean token
    log-prob of the policy; no reference model)::

        loss = -log sigma(beta * (a(y_w) - a(y_l)) - gamma)  +  sft_weight * (-a(y_w))

    The margin is given either relative to beta or absolutely, never both:

    * ``gamma_beta_ratio`` (default 0.25): gamma = beta * gamma_beta_ratio. This is the
      official code's parameter (princeton-nlp/SimPO, ``scripts/simpo_trainer.py``:
      ``logits = pi_logratios - gamma_beta_ratio``, loss ``-logsigmoid(beta * logits)``), i.e.
      the paper's gamma expressed as gamma / beta.
    * ``gamma``: the absolute margin, as in the paper's objective and TRL's
      ``CPOTrainer(loss_type="simpo", simpo_gamma=g, cpo_alpha=0.0)``. TRL computes
      ``logits = (a_w - a_l) - simpo_gamma / beta`` and ``-logsigmoid(beta * logits)`` =
      ``-logsigmoid(beta * (a_w - a_l) - simpo_gamma)``, so TRL's simpo_gamma is this gamma
      (and TRL's simpo_gamma = g equals gamma_beta_ratio = g / beta here).

    Passing both explicitly is an error. Passing ``gamma`` clears ``gamma_beta_ratio`` (set to
    None) so the resolved hyperparameters name the margin once.

    ``sft_weight`` adds the negative log-likelihood of y_w (official option ``sft_weight``).
    Here it is each pair's per-token mean NLL, ``-a(y_w)``, so the training loss averages the
    per-pair means. The official code instead applies ``nn.CrossEntropyLoss`` to all chosen
    tokens of the batch at once (a token-weighted mean over the batch); the two agree when the
    chosen responses of a batch have equal lengths. TRL's ``cpo_alpha`` is the same
    batch-token mean; the parity test therefore pins ``cpo_alpha = 0``.

    Implicit reward (logged): ``beta * a(y)``, detached (official code and TRL CPO).

    Hyperparameters (official defaults, ``scripts/simpo_config.py``):
      beta: 2.0. Released configs use 2.0-10.
      gamma_beta_ratio: 0.25. The README suggests starting at 0.5; released configs use 0.1-0.8.
      gamma: None (use gamma_beta_ratio).
      sft_weight: 0.0.
    No reference model: ``needs`` is empty, so the training core neither loads nor runs one.
    """

    needs = frozenset()
    beta: Annotated[float, Range(gt=0)] = 2.0
    gamma_beta_ratio: Optional[Annotated[float, Range(ge=0)]] = 0.25
    gamma: Optional[Annotated[float, Range(ge=0)]] = None
    sft_weight: Annotated[float, Range(ge=0)] = 0.0

    def validate(self) -> None:
        if self.gamma is not None and self.gamma_beta_ratio is not None and {"gamma", "gamma_beta_ratio"} <= self._explicit:
            raise MethodConfigError(
                f"give either 'gamma' (absolute margin, TRL's simpo_gamma) or "
                f"'gamma_beta_ratio' (gamma / beta, the official SimPO code's parameter), not both; "
                f"got gamma={self.gamma!r}, gamma_beta_ratio={self.gamma_beta_ratio!r}. "
                f"gamma = g is the same as gamma_beta_ratio = g / beta.",
                keys=("gamma", "gamma_beta_ratio"),
            )
        if self.gamma is not None:
            self.gamma_beta_ratio = None
        elif self.gamma_beta_ratio is None:
            raise MethodConfigError(
                "one of 'gamma' or 'gamma_beta_ratio' must be set (use gamma_beta_ratio: 0 "
                "for no margin).",
                keys=("gamma_beta_ratio", "gamma"),
            )

    @property
    def margin(self) -> float:
        """The absolute margin gamma actually used."""
        return self.gamma if self.gamma is not None else self.beta * self.gamma_beta_ratio

    def loss(self, b: TokenBatch) -> LossOutput:
        a_w = masked_mean(b.chosen_logps, b.chosen_mask)
        a_l = masked_mean(b.rejected_logps, b.rejected_mask)
        pref = -F.logsigmoid(self.beta * (a_w - a_l) - self.margin)
        nll = -a_w
        losses = pref + self.sft_weight * nll if self.sft_weight > 0 else pref
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * a_w).detach(),
            rejected_rewards=(self.beta * a_l).detach(),
            metrics={
                "loss/preference": pref.detach().mean().item(),
                "loss/sft": nll.detach().mean().item(),
                "logps/chosen_mean": a_w.detach().mean().item(),
                "logps/rejected_mean": a_l.detach().mean().item(),
            },
        )
