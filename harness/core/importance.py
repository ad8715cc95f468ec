"""TI-DPO token-importance weights: gradient attribution mixed with a Gaussian position prior.

Sources: Yang et al., "Token-Importance Guided Direct Preference Optimization" (arXiv
2505.19653 v3, Sec. 4.2, Eqs. 5-8) and the authors' released code (gracefulning/TIDPO @
e04a0926); see /work/shared/REFERENCE.md, "TI-DPO". The two differ in how the pieces are
normalized, so both are offered (``weight_normalization``).

For one example (prompt x, response y of T tokens, response positions t = 0..T-1):

1. Attribution (``weight_scheme="importance"``). One forward pass over x + y with the input
   embeddings ``e_i`` as leaf tensors (looked up, then detached); target ``L = max_v
   logits[last position, v]``, the last position being the last token of y; raw importance
   ``I_i = || dL / d e_i ||_1`` (L1 norm over the embedding dimension). The model runs in eval
   mode (no dropout), and only ``dL/de`` is computed (``torch.autograd.grad`` with respect to
   the embeddings), so the weights are constants with no path to the parameters and no
   ``.grad`` is left on any parameter — as in the released code. A batch of examples is one
   forward and one backward: the target is ``sum_n L_n`` and each ``L_n`` depends only on row
   n (a causal LM mixes nothing across rows, and right padding sits after the last real
   token, so it cannot reach ``L_n``), hence ``dL/de`` of row n is row n's own gradient.

2. Normalization and prior, ``weight_normalization="paper"`` (Eqs. 6-8):
   ``I_norm_t = I_t / sum_s I_s`` with s over the *response* tokens (the paper computes the
   weights of y_w and of y_l separately, for the tokens of that response);
   ``P(t) = exp(-0.5 ((t - mu) / sigma)^2)``, ``mu = (T - 1) / 2``,
   ``sigma = T / prior_sigma_div`` (the paper: T/4), left unnormalized as in the paper;
   ``w_t = lambda I_norm_t + (1 - lambda) P(t)``.

3. ``weight_normalization="mean1"`` (the released code): the normalization span is the whole
   prompt + response, S = |x| + T tokens: ``I`` is normalized by its sum over all S tokens;
   the prior is taken over that same span (positions 0..S-1, ``mu = (S - 1) / 2``,
   ``sigma = S / prior_sigma_div``: REFERENCE.md gives one span for the importance and the
   prior, and a prior over a different span than the importance it is mixed with would
   weigh unlike positions) and normalized to sum 1; the mixture
   ``lambda I_norm + (1 - lambda) P_norm`` is then restricted to the response tokens,
   renormalized to sum 1 there and multiplied by T, so the response weights have mean 1
   (the loss only reads response tokens, so the mean is taken where it is used).

Table 2 ablations:

* ``weight_scheme="uniform"``: ``w_t = 1`` for every response token (no model pass); the
  weighted DPO term then equals plain DPO.
* ``weight_scheme="random"``: the raw importance is replaced by i.i.d. Uniform[0, 1) draws
  from ``torch.rand`` (torch's global CPU generator, which the training core reseeds every
  step, so runs are reproducible), one ``torch.rand(span)`` per example in input order, where
  span is T ("paper") or S ("mean1"); then the same normalization, prior and mixing as the
  gradient importance. No model pass.
* ``prior="none"``: no prior and no mixing: ``w_t = I_norm_t`` ("paper"; identical to
  ``importance_lambda = 1``, whatever lambda is set to), or ``I_norm`` restricted to the
  response, renormalized and times T ("mean1"; again the same as lambda = 1).
* ``prior="softmax"``: the paper names this ablation ("softmax prior") without defining it.
  Here the importance is normalized with a softmax instead of a sum, ``I_norm = exp(I_t) /
  sum_s exp(I_s)`` over the same tokens the sum would run over (the response for "paper",
  the whole span for "mean1"), and then mixed with the Gaussian prior exactly as above. Note
  that a softmax of raw gradient norms depends on their scale (large norms make it nearly
  one-hot, tiny ones nearly uniform), which a sum does not.

Failure fallback: if the weights of an example are not all finite (NaN or inf gradients, or
an importance sum of 0), that example gets all-ones weights. The released code does this for
NaN; the paper is silent, and the harness applies the same rule to both variants so a
degenerate attribution does not stop a run.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

_SCHEMES = ("importance", "uniform", "random")
_NORMS = ("paper", "mean1")
_PRIORS = ("gaussian", "none", "softmax")

DEFAULTS = {
    "importance_lambda": 0.7,
    "prior_sigma_div": 4.0,
    "weight_normalization": "paper",
    "weight_scheme": "importance",
    "prior": "gaussian",
}


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
    t = 0..T-1, unnormalized (float64)."""
    t = torch.arange(T, dtype=torch.float64)
    mu = (T - 1) / 2.0
    sigma = T / float(sigma_div)
    return torch.exp(-0.5 * ((t - mu) / sigma) ** 2)


def _options(hp: dict) -> dict[str, Any]:
    o = {k: hp.get(k, v) for k, v in DEFAULTS.items()}
    for key, choices in (("weight_scheme", _SCHEMES), ("weight_normalization", _NORMS), ("prior", _PRIORS)):
        if o[key] not in choices:
            raise ValueError(f"token weights: {key}={o[key]!r} is not one of {', '.join(choices)}")
    lam = float(o["importance_lambda"])
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"token weights: importance_lambda={lam} must be in [0, 1]")
    if not float(o["prior_sigma_div"]) > 0:
        raise ValueError(f"token weights: prior_sigma_div={o['prior_sigma_div']} must be > 0")
    o["importance_lambda"] = lam
    o["prior_sigma_div"] = float(o["prior_sigma_div"])
    return o


def combine(raw: torch.Tensor, T: int, o: dict) -> torch.Tensor:
    """Raw importance over the normalization span -> the T response weights (float32).

    ``raw`` covers the response only ("paper") or prompt + response with the response last
    ("mean1"); ``o`` holds the options (see the module docstring)."""
    if T == 0:
        return torch.zeros(0, dtype=torch.float32)
    raw = raw.to(torch.float64)
    lam, mean1 = o["importance_lambda"], o["weight_normalization"] == "mean1"
    if o["prior"] == "softmax":
        imp = torch.softmax(raw, dim=0)
    else:
        imp = raw / raw.sum()
    if o["prior"] == "none":
        mix = imp
    else:
        P = gaussian_prior(raw.numel(), o["prior_sigma_div"])
        if mean1:
            P = P / P.sum()
        mix = lam * imp + (1.0 - lam) * P
    w = mix[-T:]
    if mean1:
        w = w / w.sum() * T
    if not bool(torch.isfinite(w).all()):
        return torch.ones(T, dtype=torch.float32)
    return w.to(torch.float32)


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
    from .batch import _supports_keep

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


def token_weights(model, prompts: list[list[int]], responses: list[list[int]], hp: dict, pad_id: int,
                  device) -> list[torch.Tensor]:
    """TI-DPO weights of every response token: one float32 CPU tensor of ``len(responses[i])``
    per example, constants (no autograd history). ``hp`` holds the method's hyperparameters
    (``importance_lambda``, ``prior_sigma_div``, ``weight_normalization``, ``weight_scheme``,
    ``prior``; missing keys take the paper's values). See the module docstring."""
    o = _options(hp)
    Ts = [len(r) for r in responses]
    if o["weight_scheme"] == "uniform":
        return [torch.ones(T, dtype=torch.float32) for T in Ts]
    mean1 = o["weight_normalization"] == "mean1"
    spans = [len(p) + len(r) if mean1 else len(r) for p, r in zip(prompts, responses)]
    if o["weight_scheme"] == "random":
        raw = [torch.rand(s) for s in spans]
    else:
        full = gradient_importance(model, prompts, responses, pad_id, device)
        raw = [f[len(f) - s:] for f, s in zip(full, spans)]
    return [combine(r, T, o) for r, T in zip(raw, Ts)]
