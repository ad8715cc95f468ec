"""Rejection-sampling fine-tuning (RFT): SFT on the best of k samples of the policy itself."""
from __future__ import annotations

from . import register
from .sft_baseline import SFTContinued


@register("rft")
class RejectionSamplingFT(SFTContinued):
    """Rejection-sampling fine-tuning (baseline): NLL of each training prompt's best sample.

    The training core draws k responses per training prompt from the SFT checkpoint and scores
    them with the judge (``harness.data.onpolicy``; the same samples the on-policy preference
    pairs come from). For each prompt the highest-scoring sample is y_w (kept only when its
    score reaches ``onpolicy.rft_min_score``, e.g. 1.0 = correct under the oracle, as RFT keeps
    only correct reasoning paths: Yuan et al. 2023, "Scaling Relationship on Learning
    Mathematical Reasoning with Large Language Models"; expert iteration / ReST-style best-of-k
    filtering). Per pair::

        loss = -(1/|y_w|) sum_t log pi_theta(y_w,t | x, y_w,<t)

    the same loss as ``sft-continued``; only its training examples differ. y_l (the prompt's
    worst sample) is unused except in the logged rewards (mean token log-probs, as
    ``sft-continued`` logs them). Run from the SFT checkpoint with the preference methods' step
    budget, it is the row a preference method must beat to show that the pairs' *rejected*
    side taught it anything beyond filtering the policy's own samples.

    No hyperparameters; the sampling (k, temperature, judge) is the suite's ``onpolicy``
    section, the learning rate and schedule the training settings.
    """

    trains_on = "best_of_k"
