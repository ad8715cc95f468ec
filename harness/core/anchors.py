"""TI-DPO anchors: one response per prompt sampled from a model.

The triplet term of TI-DPO (paper Eq. 4 and 13) needs an anchor y sampled from the policy
being trained. The released code (gracefulning/TIDPO @ e04a0926, ``_generate_anchor_outputs``)
samples it from the same prompt under no_grad with top-k 50, top-p 0.95, temperature 0.8 and
up to 64 new tokens; that is what this module does (the paper instead starts the anchor's
context with y_w). Every setting comes from an ``AnchorSpec`` (``methods.feature_specs``). The
anchor's log-probs are not taken from generation: the core scores prompt + anchor in the same
policy forward as chosen and rejected (with gradient), and in a reference forward (or, for
``source="reference"``, once, when it caches the anchors: ``features.py``).

Sampling, both conventions:

* The prompts are left-padded into one batch with an attention mask (generation appends at
  the right, so every row's prompt must end at the same column); ``generate`` derives the
  position ids from the mask. Batched, with the KV cache (``use_cache=True``).
* Randomness comes from torch's global generator, which the training core reseeds every
  step, so a resumed run samples the same anchors.
* The sampling settings are passed as a fresh ``GenerationConfig`` that is installed as the
  model's ``generation_config`` only for the duration of the call: the model's own defaults
  (a checkpoint's ``max_length``, ``repetition_penalty``, ...) neither leak into the policy
  sample nor trigger transformers' conflicting-settings warnings, and the model's config is
  left as it was. Generation stops at the end of the model's position table.

``convention="paper"`` (the harness's reading of the paper):

* **eval-mode sampling**: the model runs in eval mode (no dropout) and every submodule's
  previous mode is restored afterwards;
* **all stop ids**: the tokenizer's EOS and the model's generation EOS ids (chat models stop
  on an end-of-turn token listed there);
* **stop token scored**: each sample is cut after its first stop token, which is kept,
  because a training response ends with EOS too (``harness.data.tokenize``); what
  ``generate`` writes after it is padding. A sample with no token at all becomes ``[eos]``,
  so every anchor has at least one scored token.

``convention="released"`` (the released code, each behaviour kept as it is):

* **train-mode sampling**: the model is left in its own mode. ``generate`` is called on the
  policy while it trains, so dropout is on where the model has dropout (and draws from the
  same generator);
* **tokenizer EOS only**: ``eos_token_id=tokenizer.eos_token_id``, as released (the model's
  other generation EOS ids do not stop it);
* **pad tokens unscored**: the released code scores the generated tokens with the mask
  ``token != pad_token_id`` and runs that forward with the same mask as attention mask. So
  with pad == eos (what a tokenizer without a pad token gets, in the released code and in
  the harness) the anchor's EOS is not scored, and an anchor whose first token is EOS has no
  scored token (its triplet term is then just the margin); with pad != eos the EOS is scored.
  Here: cut after the first stop token and drop trailing pad-id tokens; a pad-id token
  sampled *inside* an anchor stays as a hole (``holes``): it keeps its position slot but is
  neither attended to nor scored, and the scored tokens are packed to the front, as the
  released code packs them before the triplet distances.
"""
from __future__ import annotations

import contextlib

import torch

from methods.feature_specs import AnchorSpec

from .batch import room_for
from .importance import eval_mode, unwrap


def _ids(v) -> list[int]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v if x is not None]
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.flatten().tolist()]
    return [int(v)]


def stop_ids(tokenizer, model) -> list[int]:
    """EOS ids that end a sample: the tokenizer's EOS first, then the model's generation EOS ids."""
    out: list[int] = []
    gc = getattr(model, "generation_config", None)
    for v in (getattr(tokenizer, "eos_token_id", None), getattr(gc, "eos_token_id", None),
              getattr(getattr(model, "config", None), "eos_token_id", None)):
        for i in _ids(v):
            if i not in out:
                out.append(i)
    return out


def _owner(net):
    """The transformers model whose ``generation_config`` ``generate`` reads (under peft too)."""
    return net.get_base_model() if hasattr(net, "get_base_model") else net


@contextlib.contextmanager
def _generation_config(net, cfg):
    owner = _owner(net)
    saved = owner.generation_config
    owner.generation_config = cfg
    try:
        yield cfg
    finally:
        owner.generation_config = saved


def cut_at_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """Keep tokens up to and including the first stop token; never return an empty list."""
    stop = set(eos)
    for j, t in enumerate(tokens):
        if t in stop:
            return tokens[: j + 1]
    if tokens:
        return tokens
    if not eos:
        raise ValueError("an anchor sample is empty and neither the tokenizer nor the model defines an EOS token")
    return [eos[0]]


def anchor_stop_ids(tokenizer, model, spec: AnchorSpec) -> list[int]:
    """Stop ids of the sampling: every EOS id ("paper") or the tokenizer's EOS ("released";
    the model's EOS ids only when the tokenizer has none)."""
    ids = stop_ids(tokenizer, model)
    if spec.convention == "released":
        tok = _ids(getattr(tokenizer, "eos_token_id", None))
        return tok[:1] or ids[:1]
    return ids


def scored_anchor(tokens: list[int], eos: list[int], pad_id: int, spec: AnchorSpec) -> list[int]:
    """The anchor's tokens, cut after the first stop token. "released": trailing pad-id
    tokens are dropped too (so with pad == eos the EOS is; the anchor may be empty), and a
    pad-id token inside stays as a hole (``holes``)."""
    if spec.convention == "released":
        stop = set(eos)
        cut = next((j + 1 for j, t in enumerate(tokens) if t in stop), len(tokens))
        out = list(tokens[:cut])
        while out and out[-1] == pad_id:
            out.pop()
        return out
    return cut_at_eos(tokens, eos)


def holes(anchors: list[list[int]], pad_id: int, spec: AnchorSpec) -> list[list[bool]] | None:
    """Per anchor token, whether it is a hole ("released": a pad-id token, kept in its
    position slot but not attended to and not scored, as the released code masks its anchors
    with ``!= pad_token_id``); None when nothing is ("paper")."""
    if spec.convention != "released":
        return None
    return [[t == pad_id for t in a] for a in anchors]


def sample_anchors(model, prompts: list[list[int]], spec: AnchorSpec, *, tokenizer, pad_id: int,
                   device) -> list[list[int]]:
    """One sampled response per prompt (no grad), as token id lists (the tokens to score);
    see the module docstring. ``spec.top_k=0`` disables top-k filtering."""
    from transformers import GenerationConfig

    if not prompts:
        return []
    net = unwrap(model)
    eos = anchor_stop_ids(tokenizer, _owner(net), spec)
    n, Lp = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, Lp), pad_id, dtype=torch.long)
    att = torch.zeros((n, Lp), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, Lp - len(p):] = torch.tensor(p, dtype=torch.long)
            att[i, Lp - len(p):] = 1
    room = room_for(_owner(net), Lp, int(spec.max_new_tokens))
    if room == 0:  # the prompt fills the position table: nothing can be sampled
        return [scored_anchor([], eos, pad_id, spec) for _ in prompts]
    cfg = GenerationConfig(
        do_sample=True, max_new_tokens=room, temperature=float(spec.temperature), top_k=int(spec.top_k),
        top_p=float(spec.top_p), num_beams=1, num_return_sequences=1, use_cache=True, pad_token_id=int(pad_id),
        eos_token_id=eos or None, bos_token_id=getattr(_owner(net).generation_config, "bos_token_id", None),
    )
    mode = contextlib.nullcontext(net) if spec.convention == "released" else eval_mode(net)
    with mode, torch.no_grad(), _generation_config(net, cfg):
        out = net.generate(input_ids=ids.to(device), attention_mask=att.to(device), generation_config=cfg)
    new = out[:, Lp:].cpu().tolist()
    return [scored_anchor(row, eos, pad_id, spec) for row in new]
