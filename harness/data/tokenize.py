"""Tokenize preference pairs once, exactly as TRL 1.16's ``DPOTrainer`` does, plus prompt truncation.

Per example (prompt P, responses R_1 = chosen, R_2 = rejected; one response for SFT data):

1. **Encode** P alone and P + R_i whole. With a chat template (the tokenizer has one and the
   model's ``chat_template`` is on): ``apply_chat_template(messages(P), add_generation_prompt=True)``
   and ``apply_chat_template(messages(P) + [assistant R_i])``, so every marker (generation prompt,
   end of turn, the newline after it) is where the template puts it. Without one: the plain
   text of :mod:`harness.data.render` through ``tok(text)`` (the tokenizer's own special tokens,
   e.g. BOS, included), the response text followed by the EOS token's text (unless it already
   ends with it), as TRL does for its standard (non-conversational) rows.
2. **Split** where the encodings diverge: the prompt is the common prefix of P's ids with every
   P + R_i (the shortest), and R_i's tokens are the rest of P + R_i. Usually the prefix is all of
   P; it is shorter when the last prompt token and the first response token merge (a generation
   prompt ending in ``"\\n"`` followed by a response starting with ``"\\n"``, plain text ending
   in a space) or when a template renders the prompt differently alone. TRL does the same
   (``common_prefix_length``); what this cuts off the prompt belongs to the response tokens.
3. **Truncate the prompt** on its own, after the split, so the response's tokens never depend on
   it: ``prompt_truncation="keep_end"`` (what suites use) keeps its last ``max_prompt_length``
   tokens (the end of a dialogue, with the template's generation prompt, is what the response
   answers; TRL's GRPO/RLOO trainers cut prompts the same way, ``ids[-max_prompt_length:]``);
   ``"keep_start"`` keeps its first ones (TRL < 1.0's DPO option; the generation prompt is then
   lost). It is an argument here, not a suite key: a new key would change every cell id.
4. **Cut the response** to fit ``max_length``: prompt + response keeps its first ``max_length``
   tokens, as TRL's ``DataCollatorForPreference`` (``truncation_mode="keep_start"``) does. A pair
   whose prompt alone fills ``max_length`` is dropped, as TRL drops it.

Counts of truncated prompts and responses and of dropped pairs are in ``TokenizedData.stats``.
Text is encoded before it is truncated, so transformers' "Token indices sequence length is
longer than the specified maximum sequence length" warning would be shown for every long row;
it does not apply (nothing longer than the limit reaches the model) and is silenced here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .pairs import PreferencePair
from .render import examples_of, messages, plain_prompt, plain_response

PROMPT_TRUNCATION = ("keep_end", "keep_start")
# Bump when the algorithm changes: old cache entries must not be reused.
_VERSION = "trl-1.16-split/2"
_LENGTH_WARNING = "sequence-length-is-longer-than-the-specified-maximum"


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


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


@contextlib.contextmanager
def no_length_warning(tok):
    """Silence transformers' too-long-sequence warning for encodings truncated afterwards."""
    flags = getattr(tok, "deprecation_warnings", None)
    if flags is None:
        yield
        return
    before = flags.get(_LENGTH_WARNING)
    flags[_LENGTH_WARNING] = True
    try:
        yield
    finally:
        if before is None:
            flags.pop(_LENGTH_WARNING, None)
        else:
            flags[_LENGTH_WARNING] = before


def _chat_ids(tok, msgs: list[dict], generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(msgs, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def _text_ids(tok, text: str) -> list[int]:
    return list(tok(text=text)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_example(tok, prompt, responses: list[str], framing: str | None = None,
                  use_chat_template: bool = True) -> tuple[list[int], list[list[int]], int]:
    """Steps 1-2 of the module docstring: ``(prompt_ids, [response_ids, ...], n_cut)``,
    untruncated; ``n_cut``: tokens of the prompt's own encoding left out of the split prompt."""
    if use_chat_template and has_chat_template(tok):
        msgs = messages(prompt)
        p = _chat_ids(tok, msgs, True)
        fulls = [_chat_ids(tok, msgs + [{"role": "assistant", "content": r}], False) for r in responses]
    else:
        text = plain_prompt(prompt, framing)
        eos = tok.eos_token or ""
        p = _text_ids(tok, text)
        fulls = []
        for r in responses:
            r = plain_response(r, prompt, framing)
            fulls.append(_text_ids(tok, text + (r if r.endswith(eos) else r + eos)))
    n = min(_common_prefix(p, f) for f in fulls)
    return p[:n], [f[n:] for f in fulls], len(p) - n


def truncate_prompt(ids: list[int], max_prompt_length: int, mode: str = "keep_end") -> list[int]:
    """Step 3: at most ``max_prompt_length`` tokens, from the end (``keep_end``) or the start."""
    if mode not in PROMPT_TRUNCATION:
        raise ValueError(f"prompt_truncation {mode!r} is not one of {', '.join(PROMPT_TRUNCATION)}")
    if len(ids) <= max_prompt_length:
        return list(ids)
    return list(ids[-max_prompt_length:] if mode == "keep_end" else ids[:max_prompt_length])


def _added_suffix(tok) -> list[int]:
    """Special tokens the tokenizer appends to every text (ByT5's ``</s>``), else []."""
    bare = list(tok("a", add_special_tokens=False)["input_ids"])
    full = list(tok("a")["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[start + len(bare):]
    return []


def encode_prompt(tok, example, use_chat_template: bool = True, max_prompt_length: int | None = None,
                  prompt_truncation: str = "keep_end") -> list[int]:
    """The prompt as a model sees it before it answers (for generation): the template with its
    generation prompt, or the plain text without any special token the tokenizer appends at
    the end (an EOS there would read as "the conversation ended"). ``example``: a
    :class:`PreferencePair` or a bare prompt (framing inferred). Truncated like step 3."""
    prompt, framing = (example.prompt, example.framing) if isinstance(example, PreferencePair) else (example, None)
    with no_length_warning(tok):
        if use_chat_template and has_chat_template(tok):
            ids = _chat_ids(tok, messages(prompt), True)
        else:
            ids = _text_ids(tok, plain_prompt(prompt, framing))
            suffix = _added_suffix(tok)
            if suffix and ids[-len(suffix):] == suffix:
                ids = ids[:-len(suffix)]
    return ids if max_prompt_length is None else truncate_prompt(ids, max_prompt_length, prompt_truncation)


def fingerprint(examples: list, tok, max_length: int, max_prompt_length: int, use_chat_template: bool,
                prompt_truncation: str = "keep_end") -> str:
    from ..models import tokenizer_fingerprint

    h = hashlib.sha256(_VERSION.encode())
    for prompt, responses, framing in examples_of(examples):
        h.update(json.dumps([prompt, responses, framing], ensure_ascii=False).encode())
        h.update(b"\x00")
    h.update(tokenizer_fingerprint(tok).encode())
    h.update(f"{max_length}/{max_prompt_length}/{use_chat_template}/{prompt_truncation}".encode())
    return h.hexdigest()[:16]


def tokenize(examples: list, tok, max_length: int, max_prompt_length: int, use_chat_template: bool = True,
             cache_dir: Path | None = None, prompt_truncation: str = "keep_end") -> TokenizedData:
    """``examples``: ``PreferencePair``s, or SFT examples (``SFTExample`` or ``(prompt,
    response)`` tuples). See the module docstring for what is done to each."""
    truncate_prompt([], 1, prompt_truncation)  # check the mode before any work
    fp = fingerprint(examples, tok, max_length, max_prompt_length, use_chat_template, prompt_truncation)
    if cache_dir is not None:
        cached = _load_cache(Path(cache_dir) / f"tok-{fp}.npz")
        if cached is not None:
            return cached
    prompts, chosen, rejected, index = [], [], [], []
    stats = {"input": len(examples), "prompt_truncated": 0, "response_truncated": 0, "dropped": 0,
             "prompt_prefix_shortened": 0, "prompt_truncation": prompt_truncation}
    with no_length_warning(tok):
        for i, (prompt, responses, framing) in enumerate(examples_of(examples)):
            p, rs, n_cut = split_example(tok, prompt, responses, framing, use_chat_template)
            stats["prompt_prefix_shortened"] += int(n_cut > 0)
            if len(p) > max_prompt_length:
                p = truncate_prompt(p, max_prompt_length, prompt_truncation)
                stats["prompt_truncated"] += 1
            room = max_length - len(p)
            if room <= 0:
                stats["dropped"] += 1
                continue
            cut = []
            for ids in rs:
                if len(ids) > room:
                    ids = ids[:room]
                    stats["response_truncated"] += 1
                cut.append(ids)
            if any(len(ids) == 0 for ids in cut):
                stats["dropped"] += 1
                continue
            prompts.append(p)
            chosen.append(cut[0])
            rejected.append(cut[1] if len(cut) > 1 else [])
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
