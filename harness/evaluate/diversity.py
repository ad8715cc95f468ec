"""Lexical diversity of sampled responses: Distinct-n, Self-BLEU and token entropy.

All metrics take samples *grouped per prompt*: ``samples_per_prompt[p][s]`` is the ``s``-th
sampled response to prompt ``p``. A response is either a sequence of tokens (ints, strings, any
hashable; tensors and arrays are converted with ``.tolist()``) or a string, which is tokenized by
``tokenizer`` ("whitespace" = ``str.split()``, or any callable ``str -> sequence``, e.g. a HF
tokenizer's ``encode``). Diversity is measured *within* a prompt (how different are the answers a
policy gives to the same question) and then averaged over prompts, so a policy cannot look
diverse just because the prompts differ.

Definitions (docs/metrics.md has the same text and the choices made where papers differ):

- Distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): ``|set of n-grams| / number of n-grams``, n-grams taken inside each sample (never
  across two samples), pooled over the samples of one prompt; the mean over prompts. Prompts whose
  samples hold no n-gram (all shorter than n) are left out. Li et al. divide by the number of
  generated *tokens*; dividing by the number of n-grams (the common implementation) keeps the
  value in [0, 1] for every n. ``level="corpus"`` pools all prompts instead.
- Self-BLEU (Zhu et al. 2018, "Texygen"): each sample is the hypothesis and the *other* samples of
  the same prompt are its references; sentence-level BLEU-4 (NLTK ``sentence_bleu``: uniform
  weights 1/4, clipped n-gram precisions against the union of references, brevity penalty with the
  closest reference length, smoothing method1 = 0.1 added to the numerator of a zero precision,
  exactly Texygen's setting). A hypothesis sharing no unigram with its references scores 0.
  **Effective order**: a hypothesis of L < 4 tokens has no 4-gram, and BLEU-4 would cap it at
  0.1^((4-L)/4) even against an identical reference (31.6% for L = 2, 56.2% for L = 3), so it is
  scored with BLEU-L (uniform weights 1/L): identical samples give 100 at every length. The
  share of hypotheses scored so is written as ``diversity/self_bleu_reduced_order``.
  Averaged over the samples of a prompt, then over prompts (prompts with < 2 samples are left
  out), reported in percent as in the TI-DPO paper's Table B9. Lower = more diverse.
- Token entropy: Shannon entropy in nats of the unigram distribution of the tokens of one
  prompt's samples pooled, ``-sum_w p(w) log p(w)``, averaged over prompts. This is the report's
  "diversity/entropy". The model's own per-step predictive entropy is a different quantity, see
  :func:`predictive_entropy`.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal

import numpy as np
from scipy.stats import entropy as _scipy_entropy

from harness.errors import UserError

Tokenizer = Literal["whitespace"] | Callable[[str], Sequence[Hashable]]

__all__ = [
    "tokenize_samples",
    "distinct_n",
    "bleu",
    "self_bleu",
    "token_entropy",
    "predictive_entropy",
    "diversity_metrics",
    "effective_order",
]


def _tokenize_one(sample: Any, tokenizer: Tokenizer, where: str) -> tuple:
    if isinstance(sample, str):
        if tokenizer == "whitespace":
            return tuple(sample.split())
        if callable(tokenizer):
            return tuple(_hashable(t) for t in _as_list(tokenizer(sample)))
        raise UserError(f"tokenizer={tokenizer!r}: use 'whitespace' or a callable str -> tokens")
    if hasattr(sample, "tolist"):  # torch tensors / numpy arrays: compare values, not objects
        sample = sample.tolist()
    if not isinstance(sample, Sequence):
        raise UserError(
            f"{where}: a sample must be a string or a sequence of tokens, got "
            f"{type(sample).__name__}"
        )
    return tuple(_hashable(t) for t in sample)


def _as_list(tokens: Any) -> list:
    if hasattr(tokens, "tolist"):
        return tokens.tolist()
    if isinstance(tokens, dict) and "input_ids" in tokens:  # a HF tokenizer called directly
        return list(tokens["input_ids"])
    return list(tokens)


def _hashable(token: Any) -> Hashable:
    return tuple(token) if isinstance(token, list) else token


def tokenize_samples(samples_per_prompt: Sequence[Sequence[Any]],
                     tokenizer: Tokenizer = "whitespace") -> list[list[tuple]]:
    """Normalize ``samples_per_prompt`` to ``prompts -> samples -> tuple of tokens``.

    Raises UserError when the input is not grouped per prompt (a flat list of strings is the
    common mistake: wrap it as ``[samples]`` for a single prompt)."""
    if isinstance(samples_per_prompt, str) or not isinstance(samples_per_prompt, Sequence):
        raise UserError(
            "samples_per_prompt: expected a list with one list of samples per prompt, got "
            f"{type(samples_per_prompt).__name__}"
        )
    out = []
    for p, samples in enumerate(samples_per_prompt):
        if isinstance(samples, str) or not isinstance(samples, Sequence):
            raise UserError(
                f"samples_per_prompt[{p}]: expected the list of samples of one prompt, got "
                f"{type(samples).__name__}; group samples per prompt, e.g. [[s1, s2, ...], ...]"
            )
        out.append([_tokenize_one(s, tokenizer, f"samples_per_prompt[{p}][{i}]")
                    for i, s in enumerate(samples)])
    return out


def _ngrams(tokens: tuple, n: int) -> list[tuple]:
    return [tokens[i:i + n] for i in range(len(tokens) - n + 1)]


def _mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def distinct_n(samples_per_prompt: Sequence[Sequence[Any]], n: int, *,
               level: Literal["prompt", "corpus"] = "prompt",
               tokenizer: Tokenizer = "whitespace") -> float:
    """Distinct-n: distinct n-grams / all n-grams of a prompt's samples, mean over prompts.

    ``level="corpus"`` pools the n-grams of all prompts into one ratio instead. NaN when no
    sample has n tokens."""
    if n < 1:
        raise UserError(f"distinct_n: n must be >= 1, got {n}")
    if level not in ("prompt", "corpus"):
        raise UserError(f"distinct_n: level must be 'prompt' or 'corpus', got {level!r}")
    groups = tokenize_samples(samples_per_prompt, tokenizer)
    if level == "corpus":
        groups = [[s for samples in groups for s in samples]]
    return _mean_or_nan(_distinct_prompts(groups, n))


def _distinct_prompts(groups: list[list[tuple]], n: int) -> list[float]:
    ratios = []
    for samples in groups:
        grams = [g for s in samples for g in _ngrams(s, n)]
        if grams:  # a prompt with no n-gram says nothing about diversity
            ratios.append(len(set(grams)) / len(grams))
    return ratios


def bleu(hypothesis: Sequence[Hashable], references: Sequence[Sequence[Hashable]], *,
         max_n: int = 4) -> float:
    """Sentence-level BLEU-``max_n`` in [0, 1] of one token sequence against references.

    ``BP * exp(sum_n log(p_n) / max_n)`` with ``p_n`` = clipped n-gram precision (each hypothesis
    n-gram counted at most as often as it occurs in the reference where it occurs most),
    ``p_n = 0.1 / #hypothesis n-grams`` when no n-gram matches (NLTK smoothing method1; the
    count is taken as 1 when the hypothesis is shorter than n), 0 when no unigram matches,
    ``BP = exp(1 - r / c)`` for a hypothesis of length ``c`` no longer than the closest reference
    length ``r`` (ties to the shorter reference), else 1. NLTK's ``sentence_bleu`` computes it."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return float(sentence_bleu([list(r) for r in references], list(hypothesis),
                               weights=(1.0 / max_n,) * max_n,
                               smoothing_function=SmoothingFunction().method1))


def effective_order(hypothesis: Sequence[Hashable], max_n: int = 4) -> int:
    """The BLEU order used for a hypothesis: ``max_n``, or its length when shorter (at least 1)."""
    return max(1, min(max_n, len(hypothesis)))


def _self_bleu_prompts(groups: list[list[tuple]], max_n: int) -> tuple[list[float], int, int]:
    """(Self-BLEU per prompt in percent, hypotheses scored at a reduced order, hypotheses)."""
    per_prompt, reduced, total = [], 0, 0
    for samples in groups:
        if len(samples) < 2:
            continue  # no references to compare with
        scores = []
        for i, hyp in enumerate(samples):
            order = effective_order(hyp, max_n)
            reduced += order < max_n
            total += 1
            scores.append(bleu(hyp, [r for j, r in enumerate(samples) if j != i], max_n=order))
        per_prompt.append(100.0 * float(np.mean(scores)))
    return per_prompt, reduced, total


def self_bleu(samples_per_prompt: Sequence[Sequence[Any]], *, max_n: int = 4,
              tokenizer: Tokenizer = "whitespace") -> float:
    """Self-BLEU in percent (0-100): :func:`bleu` of each sample against the other samples of
    its prompt at the sample's :func:`effective_order`, mean over samples, then over prompts.
    NaN when no prompt has 2 samples."""
    per_prompt, _, _ = _self_bleu_prompts(tokenize_samples(samples_per_prompt, tokenizer), max_n)
    return _mean_or_nan(per_prompt)


def token_entropy(samples_per_prompt: Sequence[Sequence[Any]], *,
                  tokenizer: Tokenizer = "whitespace") -> float:
    """Unigram entropy (nats) of each prompt's pooled sample tokens, mean over prompts.

    Prompts without any token are left out; NaN when none has a token."""
    return _mean_or_nan(_entropy_prompts(tokenize_samples(samples_per_prompt, tokenizer)))


def _entropy_prompts(groups: list[list[tuple]]) -> list[float]:
    values = []
    for samples in groups:
        counts = Counter(t for s in samples for t in s)
        if counts:
            values.append(float(_scipy_entropy(np.fromiter(counts.values(), dtype=np.float64))))
    return values


def predictive_entropy(logits: Any, mask: Any = None) -> float:
    """Mean per-token entropy (nats) of the model's next-token distributions.

    ``logits``: ``[..., V]`` logits or log-probabilities (the same result: entropy is taken of
    ``softmax(logits)``). ``mask``: optional ``[...]`` bool/0-1, True at positions to count
    (generated tokens, not padding). Returns ``mean_t H(softmax(logits_t))`` with
    ``H(p) = -sum_v p_v log p_v``. Computed in at least float32 so bf16 logits do not lose the
    small-probability tail."""
    import torch

    x = torch.as_tensor(logits)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise UserError(f"predictive_entropy: logits need a vocabulary axis, got shape "
                        f"{tuple(x.shape)}")
    if not torch.is_floating_point(x) or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    logp = torch.log_softmax(x, dim=-1)
    # p * log p with p == 0 is 0 by convention; where() avoids 0 * -inf = nan
    plogp = torch.where(logp.isneginf(), torch.zeros_like(logp), logp.exp() * logp)
    ent = -plogp.sum(dim=-1)
    if mask is not None:
        m = torch.as_tensor(mask, device=ent.device).bool()
        if m.shape != ent.shape:
            raise UserError(f"predictive_entropy: mask shape {tuple(m.shape)} does not match "
                            f"logits shape without the vocabulary axis {tuple(ent.shape)}")
        ent = ent[m]
    if ent.numel() == 0:
        return math.nan
    return float(ent.double().mean())


def diversity_metrics(samples_per_prompt: Sequence[Sequence[Any]], *,
                      tokenizer: Tokenizer = "whitespace") -> dict[str, float]:
    """All lexical diversity metrics of one policy's samples, keyed as in ``metrics.json``:

    ``diversity/self_bleu`` (percent, lower = more diverse), ``diversity/distinct_2``,
    ``diversity/distinct_4`` (per-prompt ratios in [0, 1]), ``diversity/entropy`` (unigram
    token entropy in nats), each with its standard error over prompts (``<key>_stderr``, keys
    from :mod:`harness.metrics`); ``diversity/prompts`` (prompts given),
    ``diversity/distinct_4_prompts`` (prompts with at least one 4-gram, the items Distinct-4
    averages) and ``diversity/self_bleu_reduced_order`` (share of hypotheses shorter than 4
    tokens, scored at their :func:`effective_order`). Semantic diversity lives in
    :mod:`harness.evaluate.semantic` because it needs an embedding model."""
    from harness.metrics import record_item_mean

    groups = tokenize_samples(samples_per_prompt, tokenizer)  # tokenize once, reuse below
    out: dict[str, float] = {}
    bleu_pp, reduced, total = _self_bleu_prompts(groups, 4)
    record_item_mean(out, "diversity/self_bleu", bleu_pp)
    record_item_mean(out, "diversity/distinct_2", _distinct_prompts(groups, 2))
    d4 = _distinct_prompts(groups, 4)
    record_item_mean(out, "diversity/distinct_4", d4)
    record_item_mean(out, "diversity/entropy", _entropy_prompts(groups))
    out["diversity/prompts"] = len(groups)
    out["diversity/distinct_4_prompts"] = len(d4)
    out["diversity/self_bleu_reduced_order"] = reduced / total if total else math.nan
    return out
