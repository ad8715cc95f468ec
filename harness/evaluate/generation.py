"""Batched generation from prompt token ids (left padding), returning response token ids."""
from __future__ import annotations

import torch

from ..core.batch import room_for


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
    out: list[list[int]] = []
    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id, use_cache=True,
              num_return_sequences=num_return_sequences)
    if do_sample:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    try:
        with torch.no_grad():
            for s in range(0, len(prompts), batch_size):
                chunk = prompts[s: s + batch_size]
                L = max(len(p) for p in chunk)
                room = room_for(model, L, max_new_tokens)
                if room == 0:
                    out.extend([] for _ in range(len(chunk) * num_return_sequences))
                    continue
                ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
                att = torch.zeros((len(chunk), L), dtype=torch.long)
                for i, p in enumerate(chunk):
                    ids[i, L - len(p):] = torch.tensor(p)
                    att[i, L - len(p):] = 1
                gen = model.generate(input_ids=ids.to(device), attention_mask=att.to(device),
                                     **{**kw, "max_new_tokens": room})
                for row in gen[:, L:].tolist():
                    resp = []
                    for t in row:
                        resp.append(t)
                        if t == eos_id:
                            break
                    # trailing pads after EOS were cut; pads without EOS (max length) dropped
                    while resp and resp[-1] == pad_id and pad_id != eos_id:
                        resp.pop()
                    out.append(resp)
    finally:
        model.train(was_training)
    return out
