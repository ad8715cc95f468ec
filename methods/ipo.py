"""IPO, Identity Preference Optimization (Azar et al. 2023)."""
from __future__ import annotations

from typing import Annotated

from . import register
from .base import LossOutput, PreferenceMethod, Range, TokenBatch
from .dpo import summed_logratios, token_count


@register("ipo")
class IPO(PreferenceMethod):
    """Identity Preference Optimization (Azar et al. 2023): squared loss toward a 1/(2 beta) margin.

    Per pair, with ``m(y) = sum_t r_t(y)`` (``r_t = log pi_theta - log pi_ref``)::

        length_normalize=True  (default):  h = m(y_w) / |y_w| - m(y_l) / |y_l|
        length_normalize=False:            h = m(y_w) - m(y_l)
        loss = (h - 1 / (2 * beta))^2

    This is Eq. 17 of the paper with tau = beta. The two conventions differ in practice:

    * averaged (default): TRL ``DPOTrainer(loss_type="ipo")`` (and LLaMA-Factory) divide each
      summed log-ratio by its response length; TRL's code says the IPO authors confirmed this
      form and that the paper's results use it. TRL 1.16 is the parity oracle.
    * summed: the original DPO repository (eric-mitchell/direct-preference-optimization,
      ``trainers.py``, ``ipo=True``) and OpenRLHF square the unnormalized difference.

    The same beta means very different regularization in the two forms (the summed h grows
    with the response length), so a beta tuned for one is not transferable to the other.

    Implicit reward (logged): ``beta * m(y)`` with the *summed* log-ratio in both forms,
    detached. This is what TRL 1.16 logs for every loss type (``chosen_rewards =
    beta * chosen_logratios``, summed) and what the DPO repository logs for ``ipo=True``, so
    rewards/* curves stay comparable with DPO and with both oracles.

    Hyperparameters:
      beta: 0.1 (TRL's default; the paper's tau). Must be > 0.
      length_normalize: True (TRL's form); False gives the DPO-repository/OpenRLHF form.
    """

    needs = frozenset({"reference"})
    beta: Annotated[float, Range(gt=0)] = 0.1
    length_normalize: bool = True

    def loss(self, b: TokenBatch) -> LossOutput:
        m_w, m_l = summed_logratios(b)
        if self.length_normalize:
            h = m_w / token_count(b.chosen_mask, m_w.dtype) - m_l / token_count(b.rejected_mask, m_l.dtype)
        else:
            h = m_w - m_l
        losses = (h - 1.0 / (2.0 * self.beta)) ** 2
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * m_w).detach(),
            rejected_rewards=(self.beta * m_l).detach(),
            metrics={
                "logits/mean": h.detach().mean().item(),
                "logratio/chosen": m_w.detach().mean().item(),
                "logratio/rejected": m_l.detach().mean().item(),
            },
        )
