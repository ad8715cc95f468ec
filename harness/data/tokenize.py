"""Tokenize preference pairs once: prompt + chosen and prompt + rejected.

The boundary between prompt and response is exact: with a chat template, the prompt is the
template applied to the prompt messages with the generation prompt added, and the response
is whatever the template adds after it for the assistant turn (end-of-turn tokens
included); without one, the prompt is the plain text (with the tokenizer's usual special
tokens, e.g. BOS) and the response is the response text followed by EOS. Only response
tokens are scored.

Truncation: a prompt longer than ``max_prompt_length`` keeps its *last* tokens (the end of a
dialogue is what the response answers); then a response that would overflow ``max_length``
keeps its *first* tokens. A pair left with an empty response side is dropped. All three are
counted in ``TokenizedData.stats``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .pairs import PreferencePair


@dataclass
class TokenizedData:
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]  # empty lists for SFT data (no rejected side)
    index: list[int]  # position of each kept example in the input list
    stats: dict = field(default_factory=dict)
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.prompts)


def _messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def encode_prompt(tok, prompt, use_chat_template: bool = True) -> list[int]:
    if use_chat_template and has_chat_template(tok):
        out = tok.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    if not isinstance(prompt, str):
        # A message list without a chat template: join the turns as plain text.
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: "
    return list(tok(prompt, add_special_tokens=True)["input_ids"])


def encode_response(tok, prompt, prompt_ids: list[int], response: str, use_chat_template: bool = True) -> list[int]:
    if use_chat_template and has_chat_template(tok):
        msgs = _messages(prompt) + [{"role": "assistant", "content": response}]
        out = tok.apply_chat_template(msgs, tokenize=True)
        full = list(out["input_ids"] if hasattr(out, "keys") else out)
        if full[: len(prompt_ids)] == prompt_ids:
            return full[len(prompt_ids):]
        # Templates that rewrite earlier turns (rare) fall back to the plain encoding.
    ids = list(tok(response, add_special_tokens=False)["input_ids"])
    return ids + [tok.eos_token_id]


def fingerprint(examples: list, tok, max_length: int, max_prompt_length: int, use_chat_template: bool) -> str:
    from ..models import tokenizer_fingerprint

    h = hashlib.sha256()
    for ex in examples:
        if isinstance(ex, PreferencePair):
            h.update(json.dumps([ex.prompt, ex.chosen, ex.rejected], ensure_ascii=False).encode())
        else:
            h.update(json.dumps(list(ex), ensure_ascii=False).encode())
        h.update(b"\x00")
    h.update(tokenizer_fingerprint(tok).encode())
    h.update(f"{max_length}/{max_prompt_length}/{use_chat_template}".encode())
    return h.hexdigest()[:16]


def tokenize(examples: list, tok, max_length: int, max_prompt_length: int,
             use_chat_template: bool = True, cache_dir: Path | None = None) -> TokenizedData:
    """``examples``: ``PreferencePair``s, or (prompt, response) tuples for SFT data."""
    fp = fingerprint(examples, tok, max_length, max_prompt_length, use_chat_template)
    if cache_dir is not None:
        cached = _load_cache(Path(cache_dir) / f"tok-{fp}.npz")
        if cached is not None:
            return cached
    prompts, chosen, rejected, index = [], [], [], []
    stats = {"input": len(examples), "prompt_truncated": 0, "response_truncated": 0, "dropped": 0}
    for i, ex in enumerate(examples):
        if isinstance(ex, PreferencePair):
            prompt, responses = ex.prompt, [ex.chosen, ex.rejected]
        else:
            prompt, responses = ex[0], [ex[1]]
        p = encode_prompt(tok, prompt, use_chat_template)
        if len(p) > max_prompt_length:
            p = p[-max_prompt_length:]
            stats["prompt_truncated"] += 1
        rs = []
        for r in responses:
            ids = encode_response(tok, prompt, p, r, use_chat_template)
            room = max_length - len(p)
            if len(ids) > room:
                ids = ids[: max(room, 0)]
                stats["response_truncated"] += 1
            rs.append(ids)
        if any(len(r) == 0 for r in rs):
            stats["dropped"] += 1
            continue
        prompts.append(p)
        chosen.append(rs[0])
        rejected.append(rs[1] if len(rs) > 1 else [])
        index.append(i)
    stats["kept"] = len(prompts)
    data = TokenizedData(prompts, chosen, rejected, index, stats, fp)
    if cache_dir is not None:
        _save_cache(Path(cache_dir) / f"tok-{fp}.npz", data)
    return data


def _flat(seqs: list[list[int]]):
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.array([t for s in seqs for t in s], dtype=np.int64)
    return flat, lens


def _save_cache(path: Path, d: TokenizedData) -> None:
    from ..results import atomic_write_bytes
    import io

    arrays = {}
    for name in ("prompts", "chosen", "rejected"):
        arrays[f"{name}_flat"], arrays[f"{name}_lens"] = _flat(getattr(d, name))
    arrays["index"] = np.array(d.index, dtype=np.int64)
    arrays["stats"] = np.frombuffer(json.dumps(d.stats).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def _load_cache(path: Path) -> TokenizedData | None:
    if not path.exists():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        out = {}
        for name in ("prompts", "chosen", "rejected"):
            flat, lens = z[f"{name}_flat"], z[f"{name}_lens"]
            ends = np.cumsum(lens)
            out[name] = [flat[e - n: e].tolist() for e, n in zip(ends, lens)]
        stats = json.loads(bytes(z["stats"]).decode())
        return TokenizedData(out["prompts"], out["chosen"], out["rejected"], z["index"].tolist(), stats,
                             path.stem[4:])
    except Exception:  # a damaged cache entry is recomputed, never trusted
        return None
