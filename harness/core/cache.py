"""On-disk caches of per-example tensors (reference log-probs, weights, anchors): plain ``.npz``
files (no pickle), written atomically, each holding the JSON ``meta`` it was made for. An entry
whose meta differs from the one asked for (a key collision, or a stale format) is never used.

``ragged_*``: one list of 1-D tensors per name, for the whole data set. ``indexed_*``: the same
for some examples only, with their indices (``idx``), so a run computes what its steps use and
the next run adds what it needs on top (:class:`harness.core.features.Features`).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _flat(lst: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and concatenation; floats stored as float32, integers as int64."""
    ints = bool(lst) and not torch.is_floating_point(lst[0])
    dtype = np.int64 if ints else np.float32
    lens = np.array([len(s) for s in lst], dtype=np.int64)
    return lens, (torch.cat(lst).numpy().astype(dtype) if lst else np.zeros(0, dtype))


def _write(path: Path, arrays: dict, meta: dict) -> None:
    from ..results import atomic_write_bytes

    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _npz_bytes(arrays))


def _open(path: Path | None, meta: dict):
    """The npz at ``path`` when it exists and was made for ``meta``, else None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        if json.loads(bytes(z["meta"]).decode()) != json.loads(json.dumps(meta, sort_keys=True)):
            return None  # key collision or stale entry: never reuse
        return z
    except Exception:
        return None


def _split(z, name: str) -> list[torch.Tensor]:
    lens, flat = z[f"{name}_lens"], torch.from_numpy(z[f"{name}_flat"].copy())
    return list(torch.split(flat, lens.tolist()))


def ragged_save(path: Path, seqs: dict[str, list[torch.Tensor]], meta: dict) -> None:
    """Ragged lists of 1-D tensors, one per name."""
    arrays = {}
    for name, lst in seqs.items():
        arrays[f"{name}_lens"], arrays[f"{name}_flat"] = _flat(lst)
    _write(Path(path), arrays, meta)


def ragged_load(path: Path | None, names: tuple[str, ...], meta: dict) -> dict[str, list[torch.Tensor]] | None:
    z = _open(path, meta)
    if z is None:
        return None
    try:
        return {name: _split(z, name) for name in names}
    except Exception:
        return None


def indexed_save(path: Path, entries: dict[str, dict[int, torch.Tensor]], meta: dict) -> None:
    """For each name, ``{example index: 1-D tensor}``; every name must hold the same indices."""
    names = list(entries)
    idx = sorted(entries[names[0]]) if names else []
    arrays = {"idx": np.array(idx, dtype=np.int64)}
    for name in names:
        arrays[f"{name}_lens"], arrays[f"{name}_flat"] = _flat([entries[name][i] for i in idx])
    _write(Path(path), arrays, meta)


def indexed_load(path: Path | None, names: tuple[str, ...], meta: dict) -> dict[str, dict[int, torch.Tensor]]:
    """What the cache holds for ``names`` (empty dicts when there is no usable entry)."""
    empty = {name: {} for name in names}
    z = _open(path, meta)
    if z is None:
        return empty
    try:
        idx = z["idx"].tolist()
        out = {name: dict(zip(idx, _split(z, name))) for name in names}
    except Exception:
        return empty
    return out if all(len(v) == len(idx) for v in out.values()) else empty
