"""Load a real preference data set (a local file or a hub split): every row checked, bad rows
reported or dropped and counted, the held-out split, ``train_size`` and label noise.

Held-out split. With ``heldout_split`` (hub data sets) the held-out pairs come from that
split. Otherwise they are a deterministic slice of the usable rows: rows are grouped by
prompt (so no prompt is in both train and held-out: several pairs per prompt are common in
UltraFeedback-style data), the groups are shuffled with a seed derived from the source name
(``split_seed``: SHA-256 of ``"prefopt-split:" + file name`` without ``.gz``, or of the hub
id and split),
and whole groups are taken from the end of that order into held-out while they fit in
``heldout_size``. With one pair per prompt this is exactly "the last ``heldout_size`` rows
after a seeded shuffle". The seed does not depend on the suite's ``seeds`` on purpose: every
training seed sees the same split, so seeds measure training variance only. It does depend on
the set of usable rows (dropping rows changes the shuffle). ``train_size`` then keeps the
first pairs of the shuffled train order.

Label noise. ``label_noise`` swaps chosen and rejected in ``round(label_noise * len(train))``
train pairs chosen with a second derived seed (``meta["flipped"] = True``); held-out pairs are
never flipped. It flips preference labels only: the SFT stage of a noisy data set trains on
the same examples as the clean one's (each pair's original chosen response), so the reference
model is the same at every noise level and a label-noise study measures one thing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.errors import DataError, UserError

from .files import read_rows, resolve_path
from .formats import FORMATS, MAX_REPORTED, BadRow, Record, detect_format, parse_row
from .hub import load_hub_split
from .pairs import PreferencePair


@dataclass
class LoadedData:
    """What :func:`load_pairs` returns. ``stats`` keys: ``source``, ``file_format``,
    ``format``, ``format_detected``, ``rows_read``, ``rows_valid``, ``dropped`` (reason ->
    count), ``dropped_total``, ``train``, ``heldout``, ``train_before_cap``,
    ``heldout_from`` (``"slice"`` or ``"split:<name>"``), ``split_seed``,
    ``prompts_with_several_pairs``, ``heldout_prompts_in_train`` (hub splits only),
    ``label_flipped``."""

    train: list[PreferencePair]
    heldout: list[PreferencePair]
    stats: dict = field(default_factory=dict)


def split_seed(key: str) -> int:
    """A 64-bit seed from a name (stable across runs and machines, unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(("prefopt-split:" + key).encode("utf-8")).digest()[:8], "big")


def _validate(records: list[Record], fmt: str, source: str, extra_meta: dict):
    pairs, bad = [], []
    for rec in records:
        try:
            row = parse_row(rec.row, fmt)
        except BadRow as e:
            bad.append((rec, e))
            continue
        pairs.append(PreferencePair(row.prompt, row.chosen, row.rejected,
                                    {"source": source, "row": rec.index, **rec.extra_meta, **extra_meta, **row.meta},
                                    framing=row.framing))
    return pairs, bad


def prompt_key(prompt) -> str:
    """A prompt (text or message list) as a comparable key: prompts group by it."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _heldout_slice(pairs: list[PreferencePair], size: int, seed: int):
    """(train, heldout, prompts with several pairs): whole prompt groups, shuffled, filled
    from the end into held-out while they fit in ``size``."""
    groups: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        groups.setdefault(prompt_key(p.prompt), []).append(p)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    heldout_groups, train_groups, n_held = [], [], 0
    for g in reversed(order):
        if n_held + len(g) <= size:
            heldout_groups.append(g)
            n_held += len(g)
        else:
            train_groups.append(g)
    heldout_groups.reverse()
    train_groups.reverse()
    flat = lambda gs: [p for g in gs for p in g]  # noqa: E731
    return flat(train_groups), flat(heldout_groups), sum(1 for g in order if len(g) > 1)


def _bad_rows_error(bad: list, source: str, fmt: str, name: str) -> DataError:
    counts: dict[str, int] = {}
    for _, e in bad:
        counts[e.reason] = counts.get(e.reason, 0) + 1
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.items())
    problems = [f"{source}: {len(bad)} bad row(s) in data set '{name}' (format {fmt}): {summary}"]
    for rec, e in bad[:MAX_REPORTED]:
        problems.append(f"{source}: {rec.where}: field '{e.field}': {e.detail} [{e.reason}]")
    if len(bad) > MAX_REPORTED:
        problems.append(f"... and {len(bad) - MAX_REPORTED} more bad rows")
    problems.append("fix: correct these rows, or set `on_bad_rows: drop` in the data set entry to skip such rows "
                    "(they are counted in the run's data stats)")
    return DataError(problems=problems)


def _read_source(spec, base_dir: Optional[Path], name: str):
    """``(records, heldout_records or None, source, file_format, seed_key, split_meta)``."""
    if spec.path:
        if spec.heldout_split:
            raise UserError(f"data set '{name}': `heldout_split` applies to hub data sets only; a local file's "
                            f"held-out pairs are a slice of its rows (set `heldout_size`), so remove heldout_split")
        path = resolve_path(spec.path, base_dir)
        records, file_format = read_rows(path)
        # the split seed comes from the file's name; a gzipped copy splits like the plain file
        seed_key = Path(spec.path).name.removesuffix(".gz")
        return records, None, str(path), file_format, seed_key, {}
    if not spec.hub:
        raise UserError(f"data set '{name}': no `path:` or `hub:` to load (embedded `task:` data sets are "
                        f"generated by harness.data.tasks)")

    def split_records(split: str) -> list[Record]:
        rows = load_hub_split(spec.hub, split, name)
        return [Record(f"split '{split}' row {i}", i, r) for i, r in enumerate(rows, start=1)]

    records = split_records(spec.split)
    if not records:
        raise DataError(f"{spec.hub}: split '{spec.split}' has no rows")
    heldout_records = split_records(spec.heldout_split) if spec.heldout_split else None
    return records, heldout_records, spec.hub, "hub", f"{spec.hub}:{spec.split}", {"split": spec.split}


def _heldout_from_split(pairs, held_pairs, spec, seed: int, stats: dict):
    """(train, heldout) when the held-out pairs come from their own hub split."""
    train = list(pairs)
    random.Random(seed).shuffle(train)
    heldout = list(held_pairs)
    random.Random(split_seed(f"{spec.hub}:{spec.heldout_split}")).shuffle(heldout)
    heldout = heldout[:spec.heldout_size]
    per_prompt: dict[str, int] = {}
    for p in train:
        per_prompt[prompt_key(p.prompt)] = per_prompt.get(prompt_key(p.prompt), 0) + 1
    stats["heldout_from"] = f"split:{spec.heldout_split}"
    # official splits are used as published; the overlap is reported, not removed
    stats["heldout_prompts_in_train"] = sum(prompt_key(p.prompt) in per_prompt for p in heldout)
    stats["prompts_with_several_pairs"] = sum(1 for n in per_prompt.values() if n > 1)
    return train, heldout


def flip_labels(train: list[PreferencePair], label_noise: float, seed_key: str) -> tuple[list[PreferencePair], int]:
    """Swap chosen and rejected in ``round(label_noise * len(train))`` pairs picked with a seed
    derived from ``seed_key``; every pair gets ``meta["flipped"]``. Only the preference labels
    change: prompts, responses and framing stay, so the SFT data (built from each pair's
    original chosen response, :func:`harness.data.loading.load_dataset`) are the clean set's."""
    n_flip = math.floor(label_noise * len(train) + 0.5)  # round half up
    flip = set(random.Random(split_seed("label-noise:" + seed_key)).sample(range(len(train)), n_flip))
    out = [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen, meta={**p.meta, "flipped": True})
           if i in flip else dataclasses.replace(p, meta={**p.meta, "flipped": False})
           for i, p in enumerate(train)]
    return out, n_flip


def load_pairs(spec, base_dir: Optional[Path] = None) -> LoadedData:
    """Load, validate and split the preference pairs of a ``harness.schema.DatasetSpec``
    whose source is ``path`` (resolved against ``base_dir``, the suite file's folder, then the
    working directory) or ``hub``. See the module docstring for validation and the split.
    Raises ``DataError`` (bad file, bad rows, nothing left) or ``UserError`` (hub
    unreachable, inconsistent spec)."""
    name = spec.name or spec.path or spec.hub or "?"
    if spec.path and spec.hub:
        raise UserError(f"data set '{name}': set either `path:` or `hub:`, not both")
    if spec.format != "auto" and spec.format not in FORMATS:
        raise UserError(f"data set '{name}': unknown format '{spec.format}'; accepted: auto, " + ", ".join(FORMATS))
    records, heldout_records, source, file_format, seed_key, split_meta = _read_source(spec, base_dir, name)

    detected = spec.format == "auto"
    fmt = detect_format(records, source) if detected else spec.format
    pairs, bad = _validate(records, fmt, source, split_meta)
    held_pairs, held_bad = [], []
    if heldout_records is not None:
        held_pairs, held_bad = _validate(heldout_records, fmt, source, {"split": spec.heldout_split})
    all_bad = bad + held_bad
    if all_bad and spec.on_bad_rows == "error":
        raise _bad_rows_error(all_bad, source, fmt, name)

    dropped: dict[str, int] = {}
    for _, e in all_bad:
        dropped[e.reason] = dropped.get(e.reason, 0) + 1
    rows_read = len(records) + len(heldout_records or [])
    counts = f"read {rows_read} rows, dropped {len(all_bad)} ({', '.join(f'{k}: {v}' for k, v in dropped.items()) or 'none'})"
    if not pairs:
        raise DataError(f"{source}: no usable pairs left in data set '{name}' (format {fmt}): {counts}")

    seed = split_seed(seed_key)
    stats: dict[str, Any] = {"source": source, "file_format": file_format, "format": fmt,
                             "format_detected": detected, "rows_read": rows_read,
                             "rows_valid": len(pairs) + len(held_pairs), "dropped": dropped,
                             "dropped_total": len(all_bad), "split_seed": seed}
    if heldout_records is not None:
        if not held_pairs:
            raise DataError(f"{source}: no usable pairs in held-out split '{spec.heldout_split}': {counts}")
        train, heldout = _heldout_from_split(pairs, held_pairs, spec, seed, stats)
    else:
        train, heldout, shared = _heldout_slice(pairs, spec.heldout_size, seed)
        stats["heldout_from"] = "slice"
        stats["prompts_with_several_pairs"] = shared
        if not heldout:
            raise DataError(f"{source}: cannot hold out pairs: every prompt has more than heldout_size="
                            f"{spec.heldout_size} pairs; raise heldout_size")
        if not train:
            raise DataError(f"{source}: data set '{name}' has {len(pairs)} usable pairs and heldout_size="
                            f"{spec.heldout_size} takes them all ({counts}); set heldout_size below {len(pairs)}")

    stats["train_before_cap"] = len(train)
    if spec.train_size is not None:
        train = train[:spec.train_size]
    train, n_flip = flip_labels(train, spec.label_noise, seed_key)
    stats.update(train=len(train), heldout=len(heldout), label_flipped=n_flip)
    return LoadedData(train=train, heldout=heldout, stats=stats)


def describe_counts(name: str, stats: dict, on_bad_rows: str = "error") -> str:
    """One line on what loading a data set read and dropped (``validate`` and ``run`` print it)."""
    dropped = stats.get("dropped") or {}
    why = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))
    drops = (f"{stats.get('dropped_total', 0)} bad rows dropped (on_bad_rows: {on_bad_rows}: {why})"
             if stats.get("dropped_total") else "no bad rows")
    fmt = f"{stats.get('format')}{', detected' if stats.get('format_detected') else ''}"
    flipped = f", {stats['label_flipped']} labels flipped" if stats.get("label_flipped") else ""
    return (f"data set {name!r}: {stats.get('rows_read', 0)} rows read ({fmt}), {drops}; "
            f"{stats.get('train', 0)} train / {stats.get('heldout', 0)} held-out pairs{flipped}")


__all__ = ["LoadedData", "describe_counts", "flip_labels", "load_pairs", "split_seed"]