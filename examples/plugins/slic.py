"""A method in one file: SLiC-HF's hinge loss, registered as ``slic``.

Load it with ``--plugin examples/plugins/slic.py`` on the command line, ``plugins:`` in a
suite, or ``methods.load_plugin("examples/plugins/slic.py")``; then ``method: slic`` works
like any built-in method.
"""
from typing import Annotated

import torch

import methods
from methods import LossOutput, PreferenceMethod, Range, TokenBatch


def _summed(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * mask: padded slots may hold inf/nan and must not leak.
    return torch.where(mask > 0, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)


@methods.register("slic")
class SLiCHinge(PreferenceMethod):
    """SLiC-HF hinge loss (Zhao et al. 2023) on reference log-ratios, as TRL's loss_type="hinge".

    Per pair, with ``m(y) = sum_t (log pi_theta(y_t|...) - log pi_ref(y_t|...))``::

        loss = max(0, 1 - beta * (m(y_w) - m(y_l)))

    Source: Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback"
    (2023), rank-calibration loss ``max(0, delta - log P(y_w|x) + log P(y_l|x))``. This is the
    reference-relative, normalized form used by TRL (``DPOTrainer(loss_type="hinge")``, from
    Liu et al. 2023, RSO): the log-probs become log-ratios to the reference and
    ``beta = 1/delta``. The paper's additional regularization term (cross-entropy on a
    reference target) is not included.

    Implicit reward (logged): ``beta * m(y)``, detached. Default beta 0.1 (TRL's default).
    """

    needs = frozenset({"reference"})
    beta: Annotated[float, Range(gt=0)] = 0.1

    def loss(self, b: TokenBatch) -> LossOutput:
        m_w = _summed(b.chosen_logps - b.ref_chosen_logps, b.chosen_mask)
        m_l = _summed(b.rejected_logps - b.ref_rejected_logps, b.rejected_mask)
        return LossOutput(
            losses=torch.relu(1 - self.beta * (m_w - m_l)),
            chosen_rewards=(self.beta * m_w).detach(),
            rejected_rewards=(self.beta * m_l).detach(),
        )
