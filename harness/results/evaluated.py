"""Evaluations made after a cell finished (``python -m harness eval``): one file per lm-eval
task, ``<cell>/eval/<task>.json``, written atomically::

    {"task": "hellaswag", "metrics": {"lm_eval/hellaswag/acc": 0.31, ...},
     "limit": null, "lm_eval_version": "0.4.13", "weights": "model/ (full)", "evaluated": "<ISO time>"}

``metrics`` uses the keys a run's own lm-eval evaluation writes into ``metrics.json``
(``lm_eval/<task>/<metric>``, :mod:`harness.evaluate.lmeval`), so the report shows them as the
same columns; a later evaluation of a task the run evaluated too (``eval --force``) takes the
place of the run's values. ``metrics.json`` itself is never rewritten: it stays what the run
measured.

The project's own evaluation metrics, made again later (``harness eval --metrics``), go one file
per metric family (:mod:`harness.evaluate.families`) to ``<cell>/eval/metrics/<family>.json``::

    {"family": "kl", "metrics": {"kl/policy_ref": 0.21, "kl/policy_ref_stderr": 0.03},
     "weights": "model/ (full)", "seed": 0, "evaluated": "<ISO time>"}

with the keys ``metrics.json`` has for them, so they too take the place of the run's values in
the report. Torch-free (the report reads these files).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from harness.results.atomic import CorruptFileError, atomic_write_json, now_iso, read_json

EVAL_DIR = "eval"
FAMILY_DIR = "metrics"   # under EVAL_DIR
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def evaluated_path(cell_dir: str | os.PathLike, task: str) -> Path:
    """Where the later evaluation of ``task`` is kept (a name with odd characters is escaped)."""
    return Path(cell_dir) / EVAL_DIR / f"{_UNSAFE.sub('_', task)}.json"


def write_evaluated(cell_dir: str | os.PathLike, task: str, metrics: dict[str, float], **info: Any) -> Path:
    return atomic_write_json(evaluated_path(cell_dir, task),
                             {"task": task, "metrics": metrics, **info, "evaluated": now_iso()})


def family_path(cell_dir: str | os.PathLike, family: str) -> Path:
    """Where the later evaluation of metric family ``family`` is kept."""
    return Path(cell_dir) / EVAL_DIR / FAMILY_DIR / f"{_UNSAFE.sub('_', family)}.json"


def write_family(cell_dir: str | os.PathLike, family: str, metrics: dict[str, Any], **info: Any) -> Path:
    return atomic_write_json(family_path(cell_dir, family),
                             {"family": family, "metrics": metrics, **info, "evaluated": now_iso()})


def evaluated_tasks(cell_dir: str | os.PathLike) -> set[str]:
    """The tasks with a readable later evaluation in ``cell_dir``."""
    return {r["task"] for r in _records(cell_dir)}


def evaluated_families(cell_dir: str | os.PathLike) -> set[str]:
    """The metric families with a readable later evaluation in ``cell_dir``."""
    return {r["family"] for r in _records(cell_dir, "family")}


def read_evaluated(cell_dir: str | os.PathLike) -> dict[str, float]:
    """Every later evaluation's metrics of ``cell_dir``, merged (none: ``{}``). A file that
    cannot be read counts as not evaluated (``harness eval`` makes it again)."""
    out: dict[str, float] = {}
    for r in _records(cell_dir, "family") + _records(cell_dir):
        out.update({k: v for k, v in r["metrics"].items() if isinstance(v, (int, float))})
    return out


def _records(cell_dir: str | os.PathLike, kind: str = "task") -> list[dict]:
    d = Path(cell_dir) / EVAL_DIR / (FAMILY_DIR if kind == "family" else "")
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            r = read_json(p)
        except (CorruptFileError, OSError):
            continue
        if isinstance(r, dict) and isinstance(r.get(kind), str) and isinstance(r.get("metrics"), dict):
            out.append(r)
    return out
