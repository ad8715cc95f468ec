"""Tuning as part of the protocol: each method's setting chosen on dev, finals scored on test.

A tuned suite (``tuning.enabled``; docs/protocol.md) runs in two phases:

1. **Trials** (``harness.config.expand``): every point of each method entry's search space
   (``harness.config.space``: the entry's ``grid`` x ``tuning.grid``, cut to ``tuning.budget``),
   for each model, data set and ``tuning.seeds``, trained as a final would be and scored on the
   data set's **dev** split. Rows that need no tuning (the ``sft`` checkpoint, an entry with
   nothing to search) run their final seeds in this phase.
2. **Selection, then finals** (``select``, ``finals_plan``): per (model, data set, entry), once
   every trial has ended, the point with the best mean of ``tuning.metric`` over its trial
   seeds (the registry's direction says whether higher is better; a tie goes to the earlier
   point in space order; failed trials and missing values are left out); then the suite's seeds
   at that point, under the entry's label, scored on the **test** split.

The choice is a pure function of the trials' ``metrics.json``: a rerun recomputes it and gets the
same finals (their ids hash the resolved config with the chosen values), so done trials and
finals are skipped. ``_tuning/selection.json`` records every trial's dev score and each choice
(written atomically on every run; the report reads the cells, not this file). The same driver
runs under every launcher: on SLURM ``harness run`` submits the trials, waits for them, selects,
and submits the finals. Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from . import metrics as M
from .config.plan import Cell, Plan, final_cells
from .config.space import Point, SearchSpace

SELECTION_FILE = Path("_tuning") / "selection.json"
ENDED = ("done", "failed")


@dataclass
class Selection:
    """The outcome of selection: ``chosen`` (model, data set, entry index) -> point, one
    record per group (``groups``), and the groups still waiting for trials."""

    metric: str
    direction: int
    chosen: dict = field(default_factory=dict)
    groups: list[dict] = field(default_factory=list)
    waiting: list[tuple] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"metric": self.metric, "direction": "higher is better" if self.direction > 0 else "lower is better",
                "groups": self.groups}

    def summary(self) -> list[str]:
        out = []
        for g in self.groups:
            head = f"  {g['model']} / {g['dataset']} / {g['entry']}: "
            if g["status"] == "chosen":
                vals = ", ".join(f"{k}={v}" for k, v in g["chosen"].items())
                out.append(head + f"{vals} (dev {self.metric} {g['chosen_dev']:.4g}, "
                                  f"{g['trials_done']} of {len(g['trials'])} trials done)")
            else:
                out.append(head + g["status"])
        return out


def _value(folder: Path, metric: str) -> float:
    from .results import CorruptFileError, read_json

    try:
        v = read_json(folder / "metrics.json").get(metric)
    except (CorruptFileError, OSError, AttributeError):
        return math.nan
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _state(folder: Path) -> str:
    from .results import CorruptFileError, read_status

    try:
        return str(read_status(folder)["state"])
    except (CorruptFileError, OSError):
        return "unreadable"


def _trials(plan: Plan) -> dict[tuple, list[Cell]]:
    out: dict[tuple, list[Cell]] = {}
    index = {sp.entry_label: sp.method_index for sp in plan.spaces}
    for c in plan.cells:
        if c.role == "trial":
            out.setdefault((c.model, c.dataset, index[c.config["tuning"]["entry"]]), []).append(c)
    return out


def best_point(scores: list[tuple[Point, float]], direction: int) -> Point | None:
    """The point with the best finite score (``direction`` +1: highest), the earliest on a tie."""
    best, best_v = None, math.nan
    for point, v in scores:
        if math.isfinite(v) and (best is None or v * direction > best_v * direction):
            best, best_v = point, v
    return best


def _group(sp: SearchSpace, cells: list[Cell], suite_dir: Path, metric: str, direction: int) -> tuple[dict, Point | None]:
    by_point: dict[str, list[Cell]] = {}
    for c in cells:
        by_point.setdefault(repr(sorted(c.config["tuning"]["point"].items())), []).append(c)
    trials, scores, ended = [], [], True
    for point in sp.points:
        mine = by_point.get(repr(sorted(point.values.items())), [])
        states = [_state(suite_dir / c.cell_id) for c in mine]
        ended &= all(s in ENDED for s in states)
        vals = [_value(suite_dir / c.cell_id, metric) for c, s in zip(mine, states) if s == "done"]
        vals = [v for v in vals if math.isfinite(v)]
        mean = sum(vals) / len(vals) if vals else math.nan
        scores.append((point, mean))
        trials.append({"point": point.values, "cells": [c.cell_id for c in mine], "states": states,
                       "dev_mean": mean if vals else None, "n": len(vals)})
    rec = {"trials": trials, "space_size": sp.size, "trials_done": sum(t["n"] > 0 for t in trials)}
    if not ended:
        rec["status"] = "waiting for trials"
        return rec, None
    point = best_point(scores, direction)
    if point is None:
        rec["status"] = f"no trial has a value of {metric}: no final"
        return rec, None
    rec.update(status="chosen", chosen=point.values, chosen_dev=next(v for p, v in scores if p == point))
    return rec, point


def select(plan: Plan, suite_dir: Path) -> Selection:
    """Choose each (model, data set, tuned entry)'s point from its trials' dev results."""
    metric = plan.suite.tuning.metric
    sel = Selection(metric, M.get(metric).direction)
    spaces = {sp.method_index: sp for sp in plan.spaces}
    for (model, dataset, idx), cells in _trials(plan).items():
        sp = spaces[idx]
        rec, point = _group(sp, cells, Path(suite_dir), metric, sel.direction)
        sel.groups.append({"model": model, "dataset": dataset, "entry": sp.entry_label, "method": sp.name, **rec})
        if point is not None:
            sel.chosen[(model, dataset, idx)] = point
        elif rec["status"].startswith("waiting"):
            sel.waiting.append((model, dataset, sp.entry_label))
    return sel


def finals_plan(plan: Plan, suite_dir: Path, write: bool = True) -> tuple[Plan, Selection]:
    """The second phase: (the finals of every group whose trials have ended, the selection).
    ``write``: record the selection in ``_tuning/selection.json``."""
    sel = select(plan, suite_dir)
    if write:
        from .results import atomic_write_json

        atomic_write_json(Path(suite_dir) / SELECTION_FILE, sel.to_json())
    return final_cells(plan, sel.chosen), sel


def describe_finals(plan: Plan, results_dir: Path) -> list[str]:
    """The second phase in words (``validate``, ``run --dry-run``): the finals known from the
    trials done so far, with their status, and the groups still waiting for trials."""
    suite_dir = Path(results_dir) / plan.suite.name
    finals, sel = finals_plan(plan, suite_dir, write=False)
    n_tuned = sum(sp.tuned for sp in plan.spaces)
    groups = len(plan.suite.models) * len(plan.suite.datasets) * n_tuned
    seeds = len(plan.suite.seeds)
    out = ["", f"Phase 2 (finals on the test split): {groups * seeds} cells = {groups} tuned (model, data set, "
               f"method) x {seeds} seeds, each at the setting its trials score best on dev "
               f"({plan.suite.tuning.metric}, {'higher' if sel.direction > 0 else 'lower'} is better)"]
    if finals.cells:
        out.append("  known now (their trials have ended):")
        for c in finals.cells:
            pt = ", ".join(f"{k}={v}" for k, v in c.config["tuning"]["point"].items())
            out.append(f"    {c.label} ({pt})  {c.model}  {c.dataset}  s{c.seed}  {_state(suite_dir / c.cell_id)}  "
                       f"{c.cell_id}")
    pending = [g for g in sel.groups if g["status"] != "chosen"]
    if pending:
        out.append(f"  not known yet ({len(pending)} groups): " +
                   "; ".join(f"{g['model']}/{g['dataset']}/{g['entry']}: {g['status']}" for g in pending))
    return out
