"""TI-DPO, Token-Importance Guided DPO (Yang, Lin, Liu, Tian, Liu, Zhang; arXiv 2505.19653, ICLR 2026).

The paper (v3) and the authors' released code (gracefulning/TIDPO at commit e04a0926)
optimize different objectives, so there are two registered methods:

* ``tidpo``: the paper's objective, weighted DPO + gamma * triplet;
* ``tidpo-official``: the released code's objective, weighted TDPO2 + gamma * triplet.

Both take the token weights from ``TokenBatch.chosen_weights`` / ``rejected_weights``; the
training core computes them from the settings described in ``_WEIGHTS_DOC`` (appended to
both class docstrings), which the losses themselves do not read. The loss treats the weights
as constants (detached): neither the paper nor the released code differentiates through the
attribution.

Triplet term, shared (paper Eq. 4 and 13; released code): with the per-token log-ratio
vectors ``d`` (anchor, a policy sample), ``b`` (y_w) and ``c`` (y_l), unweighted,

    L_triplet = max(0, sum_t (d_t - b_t)^2 - sum_t (c_t - d_t)^2 + triplet_margin)

where each sum runs over the positions both of its sequences have: the first over
``t < min(|anchor|, |y_w|)``, the second over ``t < min(|y_l|, |anchor|)``. The released code
sums this way; the paper's sums run to each sequence's own length, which is undefined where
the anchor is shorter, so the harness uses the overlap for both variants. Gradient flows
through d, b and c (the anchor is sampled under no_grad, but its log-probs are a policy
forward like any other).
"""
from __future__ import annotations

from typing import Annotated, Literal

from . import register
from ._torch import F, torch
from .base import LossOutput, PreferenceMethod, Range, TokenBatch
from .dpo import masked_mean, masked_sum, summed_logratios, zero_padding
from .feature_specs import AnchorSpec, PromptSpec, TokenWeightSpec


def _overlap_sq_dist(x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """``sum_t (x_t - y_t)^2`` over the positions real in both rows; [B, Tx], [B, Ty] -> [B].
    ``x`` and ``y`` must already be zero at their own padded slots."""
    T = min(x.shape[1], y.shape[1])
    both = (x_mask[:, :T] > 0) & (y_mask[:, :T] > 0)
    return masked_sum((x[:, :T] - y[:, :T]) ** 2, both)


def _logratio(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``r_t``, zero at padded slots (so products and squares stay finite there)."""
    return zero_padding(logps - ref_logps, mask)


def triplet_terms(b: TokenBatch, margin: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_triplet, positive distance, negative distance)``, each [B]; see the module docstring."""
    d = _logratio(b.anchor_logps, b.ref_anchor_logps, b.anchor_mask)
    r_w = _logratio(b.chosen_logps, b.ref_chosen_logps, b.chosen_mask)
    r_l = _logratio(b.rejected_logps, b.ref_rejected_logps, b.rejected_mask)
    pos = _overlap_sq_dist(d, b.anchor_mask, r_w, b.chosen_mask)
    neg = _overlap_sq_dist(r_l, b.rejected_mask, d, b.anchor_mask)
    return F.relu(pos - neg + margin), pos, neg


def weighted_logratios(b: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_t w_t r_t(y_w), sum_t w_t r_t(y_l))`` with the weights held constant."""
    w_w = zero_padding(b.chosen_weights.detach(), b.chosen_mask)
    w_l = zero_padding(b.rejected_weights.detach(), b.rejected_mask)
    return (
        (w_w * _logratio(b.chosen_logps, b.ref_chosen_logps, b.chosen_mask)).sum(-1),
        (w_l * _logratio(b.rejected_logps, b.ref_rejected_logps, b.rejected_mask)).sum(-1),
    )


_WEIGHTS_DOC = """
    Token-weight, anchor and prompt settings. The loss only reads the resulting
    ``chosen_weights`` / ``rejected_weights`` and anchor tensors; these hyperparameters are
    handed to the training core as typed specs (``feature_settings()``, ``methods.feature_specs``),
    which compute them (``harness/core/importance.py``, ``anchors.py``, ``features.py``).

    Token importance (paper Sec. 4.2, Eqs. 5-8), per response y of T tokens:

    1. ``weight_scheme="importance"``: one forward pass of the ``importance_source`` model
       ("policy" or "reference"; the paper does not say which, the released code uses the
       policy) on prompt + y; target ``L = max over the vocabulary of the logits at the last
       position``; raw importance ``I_i = || dL / d e_i ||_1`` (L1 norm over the embedding
       dimension of the gradient with respect to token i's input embedding).
       ``"random"`` (Table 2) replaces I by i.i.d. Uniform[0, 1) draws and keeps steps 2-3;
       ``"uniform"`` (Table 2) sets ``w_t = 1`` on every response token and skips steps 2-3
       (the weighted term then equals its unweighted form: DPO, or TDPO2 for tidpo-official).
    2. ``weight_normalization="paper"`` (Eqs. 6-8): ``I_norm_t = I_t / sum_s I_s`` over the
       response tokens; Gaussian prior ``P(t) = exp(-0.5 ((t - mu) / sigma)^2)``,
       ``mu = (T - 1) / 2``, ``sigma = T / prior_sigma_div``, left unnormalized;
       ``w_t = importance_lambda * I_norm_t + (1 - importance_lambda) * P(t)``; a response
       whose weights are not all finite gets all ones.
       ``weight_normalization="released"`` (the released code): over the whole prompt +
       response span of S tokens, I normalized to sum 1, the prior (``mu = (S - 1) / 2``,
       ``sigma = max(1, S / max(1, prior_sigma_div))``) normalized to sum 1, the mixture
       renormalized to sum 1 and multiplied by S; the response tokens keep their slice, so
       their mean weight is not 1. An importance sum that is not > 0 (all zero, NaN) leaves
       the prior alone; an infinite importance sets every weight of the batch to 1.
    3. ``prior``: ``"gaussian"``, the method, as above. ``"none"`` (Table 2, no Gaussian
       prior): no prior and no mixing, ``w_t = I_norm_t`` (what importance_lambda = 1 gives).
       ``"softmax"`` (Table 2, "softmax prior"; the paper does not define it): the importance
       is normalized with a softmax instead of a sum, then mixed with the Gaussian prior.

    Anchor (triplet): ``anchor_source="policy"`` samples one response per prompt from the
    current policy every step, under no_grad, at most ``anchor_max_new_tokens`` new tokens,
    temperature ``anchor_temperature``, ``anchor_top_k`` (0 disables it), ``anchor_top_p``
    (defaults: the released code's 64, 0.8, 50, 0.95; both sample from the same prompt, the
    paper instead starts the anchor's context with y_w). ``anchor_source="reference"`` (not in
    the paper or the code; cheaper) samples it once per training example from the frozen
    reference and caches it with its reference log-probs. ``anchor_sampling="paper"``: the
    model in eval mode, stop at every EOS id, the stop token scored; ``"released"``: the
    model's own mode (dropout on while training), stop at the tokenizer's EOS only, every
    generated pad-id token unscored (with pad == eos the anchor's EOS is not scored).

    ``prompt_special_tokens``: ``"keep"`` feeds each prompt as the data tokenization made
    it; ``"drop"`` removes the special tokens the tokenizer adds to a bare text (BOS) from
    every prompt, as the released pipeline tokenizes prompts without special tokens.
"""


class _TIDPOBase(PreferenceMethod):
    """Hyperparameters shared by both TI-DPO objectives (defaults: the paper's)."""

    beta: Annotated[float, Range(gt=0)] = 0.1
    gamma: Annotated[float, Range(ge=0)] = 0.1
    triplet_margin: Annotated[float, Range(ge=0)] = 0.001
    importance_lambda: Annotated[float, Range(ge=0, le=1)] = 0.7
    prior_sigma_div: Annotated[float, Range(gt=0)] = 4.0
    weight_normalization: Literal["paper", "released"] = "paper"
    importance_source: Literal["policy", "reference"] = "policy"
    weight_scheme: Literal["importance", "uniform", "random"] = "importance"
    prior: Literal["gaussian", "none", "softmax"] = "gaussian"
    anchor_source: Literal["policy", "reference"] = "policy"
    anchor_sampling: Literal["paper", "released"] = "paper"
    anchor_max_new_tokens: Annotated[int, Range(ge=1)] = 64
    anchor_temperature: Annotated[float, Range(gt=0)] = 0.8
    anchor_top_k: Annotated[int, Range(ge=0)] = 50
    anchor_top_p: Annotated[float, Range(gt=0, le=1)] = 0.95
    prompt_special_tokens: Literal["keep", "drop"] = "keep"

    def feature_settings(self) -> dict:
        return {
            "token_weights": TokenWeightSpec(
                scheme=self.weight_scheme, source=self.importance_source, convention=self.weight_normalization,
                mix=self.importance_lambda, prior=self.prior, prior_sigma_div=self.prior_sigma_div),
            "anchor": AnchorSpec(
                source=self.anchor_source, convention=self.anchor_sampling, max_new_tokens=self.anchor_max_new_tokens,
                temperature=self.anchor_temperature, top_k=self.anchor_top_k, top_p=self.anchor_top_p),
            "prompt": PromptSpec(special_tokens=self.prompt_special_tokens),
        }


def weight_metrics(b: TokenBatch, s_w: torch.Tensor, s_l: torch.Tensor) -> dict[str, float]:
    """What the token weights do to the margin, logged every step (detached):

    * ``weights/chosen_mean``, ``weights/rejected_mean``: the mean weight of a response's
      tokens, averaged over the batch (1 for uniform weights; about 0.2 with the paper's
      unnormalized prior on long responses);
    * ``margin/weighted`` = mean of ``Delta_w = sum w r(y_w) - sum w r(y_l)``,
      ``margin/unweighted`` = mean of DPO's ``Delta = sum r(y_w) - sum r(y_l)`` on the same
      log-probs;
    * ``margin/scale`` = ``sum_i |Delta_w,i| / sum_i |Delta_i|``: how much of DPO's margin the
      weighted margin carries, so ``beta * margin/scale`` is the DPO beta with about the same
      pull. Left out when every ``Delta_i`` is 0 (the first step, policy = reference).
    """
    w_c = masked_mean(b.chosen_weights.detach(), b.chosen_mask)
    w_r = masked_mean(b.rejected_weights.detach(), b.rejected_mask)
    m_w, m_l = (x.detach() for x in summed_logratios(b))
    d_w, d = (s_w - s_l).detach(), m_w - m_l
    out = {"weights/chosen_mean": w_c.mean().item(), "weights/rejected_mean": w_r.mean().item(),
           "margin/weighted": d_w.mean().item(), "margin/unweighted": d.mean().item()}
    den = d.abs().sum()
    if den > 0:
        out["margin/scale"] = (d_w.abs().sum() / den).item()
    return out


def _triplet_metrics(trip: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
    return {
        "loss/triplet": trip.detach().mean().item(),
        "triplet/pos_dist": pos.detach().mean().item(),
        "triplet/neg_dist": neg.detach().mean().item(),
        "triplet/active": (trip.detach() > 0).float().mean().item(),
    }


@register("tidpo")
class TIDPO(_TIDPOBase):
    """TI-DPO as in the paper (arXiv 2505.19653 v3): importance-weighted DPO plus a triplet loss on an anchor sample.

    Per pair, with ``r_t = log pi_theta - log pi_ref`` and token weights ``w_t``::

        Delta  = sum_t w_t(y_w) r_t(y_w) - sum_t w_t(y_l) r_t(y_l)
        loss   = -log sigma(beta * Delta) + gamma * L_triplet

    (Eq. 11-13 and Algorithm 1; Eq. 12 as printed omits beta, Algorithm 1 and Appendix A.4
    include it.) ``L_triplet``: see the module docstring. Implicit reward (logged):
    ``beta * sum_t w_t r_t(y)``, detached.

    Defaults (the paper's, Table B13, unless noted):
      beta: 0.1. gamma: 0.1 (triplet weight). importance_lambda: 0.7 (Table B13; Table B11
      finds 0.3-0.7 stable). prior_sigma_div: 4.0 (sigma = T/4). weight_normalization:
      "paper". triplet_margin: 0.001: the paper gives no number; this is the released
      code's value. importance_source: "policy": the paper is silent; the released code uses
      the policy. anchor_source "policy" (a policy sample every step, as the paper defines
      it); anchor_sampling "paper"; the sampling settings are the released code's (the paper
      gives none). prompt_special_tokens "keep".

    Why this variant moves less than DPO at the same beta: with the paper's unnormalized
    prior, a long response's mean weight is about 0.2, so the weighted margin is about a
    fifth of DPO's (logged as ``margin/scale``; see ``weight_metrics``).
    """

    __doc__ += _WEIGHTS_DOC
    needs = frozenset({"reference", "token_weights", "anchor"})

    def loss(self, b: TokenBatch) -> LossOutput:
        s_w, s_l = weighted_logratios(b)
        dpo_w = -F.logsigmoid(self.beta * (s_w - s_l))
        trip, pos, neg = triplet_terms(b, self.triplet_margin)
        return LossOutput(
            losses=dpo_w + self.gamma * trip,
            chosen_rewards=(self.beta * s_w).detach(),
            rejected_rewards=(self.beta * s_l).detach(),
            metrics={"loss/dpo_w": dpo_w.detach().mean().item(), **_triplet_metrics(trip, pos, neg),
                     **weight_metrics(b, s_w, s_l)},
        )


@register("tidpo-official")
class TIDPOOfficial(_TIDPOBase):
    """TI-DPO as in the released code (gracefulning/TIDPO @ e04a0926): importance-weighted TDPO2 plus a triplet loss.

    Per pair, with ``r_t = log pi_theta - log pi_ref``, token weights ``w_t`` and the
    unweighted sequential KL ``K(y) = sum_t KL(pi_ref || pi_theta)`` (as in TDPO)::

        Delta  = sum_t w_t(y_w) r_t(y_w) - sum_t w_t(y_l) r_t(y_l)
        loss   = -log sigma(beta * (Delta - alpha * (K(y_l) - sg(K(y_w))))) + gamma * L_triplet

    The weights multiply the per-token log-ratio r_t (not the policy log-probs alone) and K
    is not weighted. The released code averages the triplet term over the batch and adds
    that mean to every example; the mean over the batch of that objective equals the mean
    of adding each example's own triplet, which is what is done here (identical loss and
    gradients; only the per-pair ``losses`` differ). ``L_triplet``: see the module
    docstring. Implicit reward (logged; the harness's choice, mirroring TDPO):
    ``beta * (sum_t w_t r_t(y) + K(y))``, detached.

    Defaults are the released config's and code's: beta 0.2, gamma 0.001, triplet_margin
    0.001, alpha 0.5, importance_lambda 0.2, prior_sigma_div 8.0 (sigma = S/8; the code falls
    back to S/4 without a config), weight_normalization "released", importance_source
    "policy", anchor_sampling "released" with its sampling settings, prompt_special_tokens
    "drop". With these, the loss equals the released code's on the same model, data and seed
    (tests/test_tidpo_released.py; differences that remain: the released code scores a
    left-padded anchor at shifted position ids, which RoPE models do not see, and keeps a
    position slot for a pad-id token sampled inside an anchor). The paper's Table B13 values
    (beta 0.1, gamma 0.1, lambda 0.7, sigma T/4, alpha 0.5; its "TDPO KL weight" row belongs
    to this objective) are reachable as overrides.

    Released-code behaviours kept although they are arguably bugs (this variant's purpose is
    to be the released code): the weights of a response average 1 only over prompt +
    response, not over the response the loss reads (per-row factors of 0.3-3.3 at realistic
    lengths, different for chosen and rejected); one infinite attribution sets the whole
    batch's weights to 1; the anchor's EOS is not scored when pad == eos; prompts are fed
    without the BOS a model such as Llama was trained with; anchors are sampled with dropout on.
    """

    __doc__ += _WEIGHTS_DOC
    needs = frozenset({"reference", "token_kl", "token_weights", "anchor"})
    beta: Annotated[float, Range(gt=0)] = 0.2
    gamma: Annotated[float, Range(ge=0)] = 0.001
    alpha: Annotated[float, Range(ge=0)] = 0.5
    importance_lambda: Annotated[float, Range(ge=0, le=1)] = 0.2
    prior_sigma_div: Annotated[float, Range(gt=0)] = 8.0
    weight_normalization: Literal["paper", "released"] = "released"
    anchor_sampling: Literal["paper", "released"] = "released"
    prompt_special_tokens: Literal["keep", "drop"] = "drop"

    def loss(self, b: TokenBatch) -> LossOutput:
        s_w, s_l = weighted_logratios(b)
        k_w = masked_sum(b.chosen_kl, b.chosen_mask)
        k_l = masked_sum(b.rejected_kl, b.rejected_mask)
        tdpo_w = -F.logsigmoid(self.beta * ((s_w - s_l) - self.alpha * (k_l - k_w.detach())))
        trip, pos, neg = triplet_terms(b, self.triplet_margin)
        return LossOutput(
            losses=tdpo_w + self.gamma * trip,
            chosen_rewards=(self.beta * (s_w + k_w)).detach(),
            rejected_rewards=(self.beta * (s_l + k_l)).detach(),
            metrics={
                "loss/tdpo_w": tdpo_w.detach().mean().item(),
                **_triplet_metrics(trip, pos, neg),
                "kl/chosen": k_w.detach().mean().item(),
                "kl/rejected": k_l.detach().mean().item(),
                **weight_metrics(b, s_w, s_l),
            },
        )
