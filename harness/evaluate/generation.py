"""Batched generation from prompt token ids, returning response token ids.

:func:`generate` runs ``transformers``' ``generate`` (KV cache on) over left-padded batches
and returns the responses in the prompts' order. Greedy batches group prompts of similar
length (longest first, :func:`harness.core.batch.by_length`), which changes only how much
padding a batch carries: the answers equal each prompt's answer generated alone (tested).
Sampled batches keep the input order: grouping them would hand each row other random numbers
and so move the sampled metrics of every cell against earlier results.

:class:`HFGenerator` is evaluation's generation backend for an in-memory model; the optional
vLLM backend (:mod:`harness.evaluate.backends`) has the same two methods.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.batch import by_length, room_for
from ..results.progress import counted


def generate(model, prompts: list[list[int]], *, pad_id: int, eos_id: int, max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             num_return_sequences: int = 1, batch_size: int = 64, device=None) -> list[list[int]]:
    """Responses (cut after the first EOS, EOS kept) for each prompt x num_return_sequences,
    in order prompt-major. Greedy unless ``do_sample``; sampling uses torch's global RNG.
    Generation stops at the end of the model's position table (``room_for``): a response
    may then be shorter than ``max_new_tokens``, or empty when the prompt fills the table."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    k = num_return_sequences
    out: list[list[int]] = [[] for _ in range(len(prompts) * k)]
    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id, use_cache=True,
              num_return_sequences=k)
    if do_sample:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    # greedy: batches of similar lengths (same answers, less padding); sampling: input order,
    # so each row draws the random numbers it always drew (the sampled metrics do not move)
    order = list(range(len(prompts))) if do_sample else by_length([len(p) for p in prompts])
    try:
        with torch.no_grad():
            for s in counted(range(0, len(order), batch_size)):  # batches of the job's stage (progress.json)
                part = order[s: s + batch_size]
                rows = _generate_batch(model, [prompts[i] for i in part], pad_id, eos_id, device, kw)
                for j, i in enumerate(part):
                    out[i * k:(i + 1) * k] = rows[j * k:(j + 1) * k]
    finally:
        model.train(was_training)
    return out


def _generate_batch(model, chunk: list[list[int]], pad_id: int, eos_id: int, device, kw: dict) -> list[list[int]]:
    L = max(len(p) for p in chunk)
    room = room_for(model, L, kw["max_new_tokens"])
    if room == 0:
        return [[] for _ in range(len(chunk) * kw["num_return_sequences"])]
    ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(chunk), L), dtype=torch.long)
    for i, p in enumerate(chunk):
        ids[i, L - len(p):] = torch.tensor(p)
        att[i, L - len(p):] = 1
    gen = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), **{**kw, "max_new_tokens": room})
    return [cut_response(row, pad_id, eos_id) for row in gen[:, L:].tolist()]


def cut_response(row: list[int], pad_id: int, eos_id: int) -> list[int]:
    """A generated row up to and including its first EOS; trailing pads (after EOS, or at the
    length limit without one) dropped."""
    resp = []
    for t in row:
        resp.append(t)
        if t == eos_id:
            break
    while resp and resp[-1] == pad_id and pad_id != eos_id:
        resp.pop()
    return resp


@dataclass
class HFGenerator:
    """Generation through ``transformers`` on the model in memory (the default backend)."""

    pad_id: int
    eos_id: int
    max_new_tokens: int
    batch_size: int = 32
    name: str = "hf"

    def greedy(self, model, prompts: list[list[int]]) -> list[list[int]]:
        return generate(model, prompts, pad_id=self.pad_id, eos_id=self.eos_id, max_new_tokens=self.max_new_tokens,
                        batch_size=self.batch_size)

    def sample(self, model, prompts: list[list[int]], n: int, temperature: float, top_p: float) -> list[list[int]]:
        """``n`` samples per prompt, prompt-major, from torch's global RNG (seeded by the caller)."""
        return generate(model, prompts, pad_id=self.pad_id, eos_id=self.eos_id, max_new_tokens=self.max_new_tokens,
                        do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n,
                        batch_size=self.batch_size)

    def close(self) -> None:
        pass
