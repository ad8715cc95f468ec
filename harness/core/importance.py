"""TI-DPO token-importance weights: gradient attribution mixed with a Gaussian position prior.

Sources: Yang et al., "Token-Importance Guided Direct Preference Optimization" (arXiv
2505.19653 v3, Sec. 4.2, Eqs. 5-8) and the authors' released code (gracefulning/TIDPO @
e04a0926, ``trainers.py`` ``_compute_token_importance_weights``, ``gradient_attribution.py``);
see REFERENCE.md, "TI-DPO". The two differ in how the pieces are normalized, so both are
offered, as ``TokenWeightSpec.convention`` (``methods.feature_specs``). Every setting comes from
that spec: this module names no method hyperparameter.

For one example (prompt x, response y of T tokens, response positions t = 0..T-1):

1. Attribution (``scheme="importance"``). One forward pass over x + y with the input
   embeddings ``e_i`` as leaf tensors (looked up, then detached); target ``L = max_v
   logits[last position, v]``, the last position being the last token of y; raw importance
   ``I_i = || dL / d e_i ||_1`` (L1 norm over the embedding dimension). The model runs in eval
   mode (no dropout), and only ``dL/de`` is computed (``torch.autograd.grad`` with respect to
   the embeddings), so the weights are constants with no path to the parameters and no
   ``.grad`` is left on any parameter — as in the released code. A batch of examples is one
   forward and one backward: the target is ``sum_n L_n`` and each ``L_n`` depends only on row
   n (a causal LM mixes nothing across rows, and right padding sits after the last real
   token, so it cannot reach ``L_n``), hence ``dL/de`` of row n is row n's own gradient. The
   training core can take the same gradient from the training forward instead
   (``raw_from_forward``; see ``harness/core/features.py``).

2. ``convention="paper"`` (Eqs. 6-8), named behaviour **response span**:
   ``I_norm_t = I_t / sum_s I_s`` with s over the *response* tokens (the paper computes the
   weights of y_w and of y_l separately, for the tokens of that response);
   ``P(t) = exp(-0.5 ((t - mu) / sigma)^2)``, ``mu = (T - 1) / 2``,
   ``sigma = T / prior_sigma_div`` (the paper: T/4), left unnormalized as in the paper;
   ``w_t = lambda I_norm_t + (1 - lambda) P(t)``. **Row fallback**: a response whose weights
   are not all finite (NaN or inf gradients, or an importance sum of 0) gets all ones (the
   paper is silent; this keeps a degenerate attribution from stopping a run).

3. ``convention="released"`` (the released code, called without labels in its live path):
   * **whole-span rescale**: the span is the whole prompt + response, S = |x| + T tokens
     (all attended tokens of the row). I is normalized by its sum over the S tokens; the
     prior runs over the same positions 0..S-1 (``mu = (S - 1) / 2``) and is normalized to
     sum 1; the mixture ``lambda I_norm + (1 - lambda) P_norm`` is renormalized to sum 1 and
     multiplied by S, so the weights average 1 over the span. The response tokens keep their
     slice (the last T): their mean is *not* 1 (0.26-3.3 at realistic lengths, different for
     chosen and rejected). Arguably a bug (the code's own comment says it wants mean 1 for
     the margin's scale), kept because this convention is the released code.
   * **sigma clamps**: ``sigma = max(1, S / div)`` with ``div = max(1, prior_sigma_div)``.
   * **prior-only fallback**: when the importance sum over the span is not > 0 (all zero,
     or NaN anywhere: ``NaN > 0`` is false), the importance term is dropped and the prior
     alone is rescaled as above (with ``prior="none"`` nothing is left, so the row is
     uniform: all ones).
   * **batch fallback**: an infinite importance makes ``inf / inf`` = NaN, so its row is all
     NaN; then the weighted log-prob code sets the weights of the *whole* batch (chosen and
     rejected rows together) to 1 (``apply_fallback``). Arguably a bug (one bad row changes
     the others), kept.
   The released code computes in float32, this module in float64 (differences ~1e-7).

Table 2 ablations (either convention):

* ``scheme="uniform"``: ``w_t = 1`` for every response token (no model pass); the weighted
  DPO term then equals plain DPO.
* ``scheme="random"``: the raw importance is replaced by i.i.d. Uniform[0, 1) draws from
  ``torch.rand`` (torch's global CPU generator, which the training core reseeds every step,
  so runs are reproducible), one ``torch.rand(span)`` per example in input order, where span
  is T ("paper") or S ("released"); then the same normalization, prior and mixing.
* ``prior="none"``: no prior and no mixing: ``w_t = I_norm_t`` (the same as ``mix = 1``).
* ``prior="softmax"``: the paper names this ablation ("softmax prior") without defining it.
  Here the importance is normalized with a softmax instead of a sum, ``I_norm = exp(I_t) /
  sum_s exp(I_s)`` over the same tokens the sum would run over, and then mixed with the
  Gaussian prior exactly as above. A softmax of raw gradient norms depends on their scale
  (large norms make it nearly one-hot, tiny ones nearly uniform), which a sum does not.
"""
from __future__ import annotations

import contextlib

import torch

from methods.feature_specs import TokenWeightSpec

from .batch import _supports_keep


def unwrap(model):
    """The module that owns the Hugging Face methods: DDP-style wrappers (``.module``) are
    peeled off; a peft model is kept (it forwards ``get_input_embeddings``/``generate``)."""
    while not hasattr(model, "get_input_embeddings") and hasattr(model, "module"):
        model = model.module
    return model


@contextlib.contextmanager
def eval_mode(model):
    """Put every submodule in eval mode, then restore each one's own previous mode (not just
    the root's: a frozen submodule may deliberately be in eval while the root trains)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def gaussian_prior(T: int, sigma_div: float) -> torch.Tensor:
    """``P(t) = exp(-0.5 ((t - mu) / sigma)^2)``, ``mu = (T-1)/2``, ``sigma = T / sigma_div``,
    t = 0..T-1, unnormalized (float64): the paper's prior."""
    t = torch.arange(T, dtype=torch.float64)
    mu = (T - 1) / 2.0
    sigma = T / float(sigma_div)
    return torch.exp(-0.5 * ((t - mu) / sigma) ** 2)


def released_prior(S: int, sigma_div: float) -> torch.Tensor:
    """The released code's prior over a span of S tokens: ``sigma = max(1, S / div)``,
    ``div = max(1, sigma_div)``, normalized to sum 1 (float64)."""
    t = torch.arange(S, dtype=torch.float64)
    sigma = max(1.0, S / max(1.0, float(sigma_div)))
    p = torch.exp(-0.5 * ((t - (S - 1) / 2.0) / sigma) ** 2)
    return p / p.sum()


def _normalized(raw: torch.Tensor, spec: TokenWeightSpec) -> torch.Tensor:
    return torch.softmax(raw, dim=0) if spec.prior == "softmax" else raw / raw.sum()


def paper_weights(raw: torch.Tensor, spec: TokenWeightSpec) -> torch.Tensor:
    """Eqs. 6-8 on the raw importance of the T response tokens (may be non-finite)."""
    imp = _normalized(raw, spec)
    if spec.prior == "none":
        return imp
    return spec.mix * imp + (1.0 - spec.mix) * gaussian_prior(raw.numel(), spec.prior_sigma_div)


def released_weights(raw: torch.Tensor, T: int, spec: TokenWeightSpec) -> torch.Tensor:
    """The released pipeline on the raw importance of the S = |x| + T span tokens; returns
    the last T (the response's slice). NaN when an importance is infinite."""
    S = raw.numel()
    usable = bool(raw.clamp_min(0).sum() > 0)  # NaN > 0 is False: prior-only fallback
    prior = released_prior(S, spec.prior_sigma_div) if spec.prior != "none" else None
    if not usable:
        mix = prior if prior is not None else torch.full((S,), 1.0 / S, dtype=torch.float64)
    elif prior is None:
        mix = _normalized(raw.clamp_min(0), spec)
    else:
        mix = spec.mix * _normalized(raw.clamp_min(0), spec) + (1.0 - spec.mix) * prior
    return (mix / mix.sum() * S)[S - T:]


def combine(raw: torch.Tensor, T: int, spec: TokenWeightSpec) -> torch.Tensor:
    """Raw importance over the normalization span -> the T response weights (float32),
    before the fallbacks (``apply_fallback``). ``raw`` covers the response only ("paper")
    or prompt + response with the response last ("released")."""
    if T == 0:
        return torch.zeros(0, dtype=torch.float32)
    raw = raw.to(torch.float64)
    w = released_weights(raw, T, spec) if spec.convention == "released" else paper_weights(raw, spec)
    return w.to(torch.float32)


def apply_fallback(ws: list[torch.Tensor], spec: TokenWeightSpec) -> list[torch.Tensor]:
    """Non-finite weights -> ones: per response ("paper"), or for every response of the
    batch when any one is non-finite ("released", the batch fallback)."""
    bad = [not bool(torch.isfinite(w).all()) for w in ws]
    if spec.convention == "released" and any(bad):
        return [torch.ones_like(w) for w in ws]
    return [torch.ones_like(w) if b else w for w, b in zip(ws, bad)]


def span(prompt: list[int], response: list[int], spec: TokenWeightSpec) -> int:
    """Tokens the importance is normalized over: T ("paper") or S = |x| + T ("released")."""
    return len(prompt) + len(response) if spec.convention == "released" else len(response)


def gradient_importance(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                        device) -> list[torch.Tensor]:
    """Raw attribution ``I_i = ||dL/de_i||_1`` for every token of each prompt + response
    (float32, CPU), one forward and one backward for the whole batch; see step 1 above."""
    net = unwrap(model)
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    if not seqs:
        return []
    n, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    att = torch.zeros((n, L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
    ids, att = ids.to(device), att.to(device)
    last = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)

    with eval_mode(net), torch.enable_grad():
        emb = net.get_input_embeddings()(ids).detach().requires_grad_(True)
        kw = {"logits_to_keep": last.unsqueeze(1)} if _supports_keep(net) else {}
        logits = net(inputs_embeds=emb, attention_mask=att, use_cache=False, **kw).logits
        if kw and tuple(logits.shape[:2]) == (n, 1):
            at_last = logits[:, 0]
        elif logits.shape[1] == L:
            at_last = logits[rows, last]
        else:  # a model that reads per-row positions differently: plain full forward
            logits = net(inputs_embeds=emb, attention_mask=att, use_cache=False).logits
            at_last = logits[rows, last]
        target = at_last.float().max(dim=-1).values.sum()
        (grad,) = torch.autograd.grad(target, emb)
    imp = (grad.detach().float().abs().sum(-1) * att).cpu()
    return [imp[i, : len(s)].clone() for i, s in enumerate(seqs)]


def raw_from_forward(emb: torch.Tensor, logits: torch.Tensor, rows, n: int) -> list[torch.Tensor]:
    """The raw attribution ``I_i = ||dL/de_i||_1`` of rows ``0..n-1`` of a training forward:
    ``emb`` is that forward's input-embedding output (captured), ``logits`` its kept window
    [N, rows.keep, V]. The target is the max logit at each row's last real position (inside
    the window: response tokens end each row), differentiated with respect to ``emb`` only,
    keeping the graph for the loss's backward. Same values as ``gradient_importance`` on the
    same parameters when the forward draws no dropout (tests/test_attribution_reuse.py)."""
    L = rows.input_ids.shape[1]
    lengths = rows.attention_mask[:n].sum(-1)
    at_last = logits[torch.arange(n, device=logits.device), lengths - 1 - (L - rows.keep)]
    target = at_last.float().max(dim=-1).values.sum()
    (grad,) = torch.autograd.grad(target, emb, retain_graph=True)
    imp = (grad[:n].detach().float().abs().sum(-1) * rows.attention_mask[:n]).cpu()
    return [imp[i, : int(lengths[i])].clone() for i in range(n)]


def token_weights(model, prompts: list[list[int]], responses: list[list[int]], spec: TokenWeightSpec,
                  pad_id: int, device, *, fallback: bool = True) -> list[torch.Tensor]:
    """TI-DPO weights of every response token: one float32 CPU tensor of ``len(responses[i])``
    per example, constants (no autograd history), the inputs being one batch (the released
    batch fallback applies across it). ``fallback=False`` leaves non-finite rows as they are
    (a cache of rows whose batches are formed later). See the module docstring."""
    Ts = [len(r) for r in responses]
    if spec.scheme == "uniform":
        return [torch.ones(T, dtype=torch.float32) for T in Ts]
    spans = [span(p, r, spec) for p, r in zip(prompts, responses)]
    if spec.scheme == "random":
        raw = [torch.rand(s) for s in spans]
    else:
        full = gradient_importance(model, prompts, responses, pad_id, device)
        raw = [f[len(f) - s:] for f, s in zip(full, spans)]
    ws = [combine(r, T, spec) for r, T in zip(raw, Ts)]
    return apply_fallback(ws, spec) if fallback else ws
