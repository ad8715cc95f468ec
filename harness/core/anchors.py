"""TI-DPO anchors: one response per prompt sampled from the current policy.

The triplet term of TI-DPO (paper Eq. 4 and 13) needs an anchor y sampled from the policy
being trained. The released code (gracefulning/TIDPO @ e04a0926) samples it from the same
prompt under no_grad with top-k 50, top-p 0.95, temperature 0.8 and up to 64 new tokens;
that is what this module does (the paper instead starts the anchor's context with y_w). The
anchor's log-probs are not taken from generation: the core scores prompt + anchor in the same
policy forward as chosen and rejected (with gradient), and in the reference forward.

Sampling details:

* The prompts are left-padded into one batch with an attention mask (generation appends at
  the right, so every row's prompt must end at the same column); ``generate`` derives the
  position ids from the mask.
* The model runs in eval mode (no dropout) and every submodule's previous mode is restored
  afterwards; ``use_cache=True``.
* Randomness comes from torch's global generator, which the training core reseeds every
  step, so a resumed run samples the same anchors.
* The sampling settings are passed as a fresh ``GenerationConfig`` that is installed as the
  model's ``generation_config`` only for the duration of the call: the model's own defaults
  (a checkpoint's ``max_length``, ``repetition_penalty``, ...) neither leak into the policy
  sample nor trigger transformers' conflicting-settings warnings, and the model's config is
  left as it was.
* Stop tokens: the tokenizer's EOS and the model's generation EOS ids (chat models stop on an
  end-of-turn token listed there). Each sample is cut after its first stop token, which is
  kept, because a training response ends with EOS too (``harness.data.tokenize``); what
  ``generate`` writes after it is padding. A sample with no token at all becomes ``[eos]``,
  so every anchor has at least one scored token.
"""
from __future__ import annotations

import contextlib

import torch

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


def sample_anchors(model, prompts: list[list[int]], *, tokenizer, pad_id: int, device, max_new_tokens: int,
                   temperature: float, top_k: int, top_p: float) -> list[list[int]]:
    """One sampled response per prompt from the current policy (no grad), as token id lists;
    see the module docstring. ``top_k=0`` disables top-k filtering."""
    from transformers import GenerationConfig

    if not prompts:
        return []
    net = unwrap(model)
    eos = stop_ids(tokenizer, _owner(net))
    n, Lp = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, Lp), pad_id, dtype=torch.long)
    att = torch.zeros((n, Lp), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, Lp - len(p):] = torch.tensor(p, dtype=torch.long)
            att[i, Lp - len(p):] = 1
    room = room_for(_owner(net), Lp, int(max_new_tokens))
    if room == 0:  # the prompt fills the position table: nothing can be sampled
        return [cut_at_eos([], eos) for _ in prompts]
    cfg = GenerationConfig(
        do_sample=True, max_new_tokens=room, temperature=float(temperature), top_k=int(top_k),
        top_p=float(top_p), num_beams=1, num_return_sequences=1, use_cache=True, pad_token_id=int(pad_id),
        eos_token_id=eos or None, bos_token_id=getattr(_owner(net).generation_config, "bos_token_id", None),
    )
    with eval_mode(net), torch.no_grad(), _generation_config(net, cfg):
        out = net.generate(input_ids=ids.to(device), attention_mask=att.to(device), generation_config=cfg)
    new = out[:, Lp:].cpu().tolist()
    return [cut_at_eos(row, eos) for row in new]
