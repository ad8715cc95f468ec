"""Continued SFT on the chosen responses: the "same step budget, no preference signal" baseline."""
from __future__ import annotations

from . import register
from .base import LossOutput, PreferenceMethod, TokenBatch
from .dpo import masked_mean


@register("sft-continued")
class SFTContinued(PreferenceMethod):
    """Continued SFT on the chosen responses (baseline): per-token NLL of y_w, y_l unused.

    Per pair::

        loss = -(1/|y_w|) sum_t log pi_theta(y_w,t | x, y_w,<t)

    the mean negative log-likelihood over the real tokens of the chosen response; the
    training loss is the mean of these per-pair means (each pair weighs the same, whatever
    its length). Running it from the SFT checkpoint with the same data and step budget as the
    preference methods gives the "SFT continued" row: how much of a method's gain is just
    more training on y_w. It needs no reference model and no other feature.

    Logged rewards: the mean token log-prob of y_w and of y_l under the policy, detached, so
    rewards/margins and rewards/accuracies show whether plain SFT separates the pairs.

    It trains on the data set's own pairs (``trains_on = "offline"``) even where the
    preference methods train on on-policy pairs: "more SFT on the data's answers" is the
    baseline; SFT on the policy's own best samples is ``rft``.

    No hyperparameters; the learning rate and schedule belong to the training settings.
    """

    needs = frozenset()
    trains_on = "offline"

    def loss(self, b: TokenBatch) -> LossOutput:
        a_w = masked_mean(b.chosen_logps, b.chosen_mask)
        a_l = masked_mean(b.rejected_logps, b.rejected_mask)
        return LossOutput(
            losses=-a_w,
            chosen_rewards=a_w.detach(),
            rejected_rewards=a_l.detach(),
            metrics={"loss/nll": (-a_w).detach().mean().item()},
        )
