"""Read a suite's results folder into tables: one row per cell, long-form training curves,
failed cells, token-importance examples, the baseline and the paper's reported numbers.

Everything the report shows comes from here, and only from files in the results folder, read
in a fixed order (cells sorted by id, keys sorted), so the same folder always gives the same
report. Nothing depends on the clock: the lock's heartbeat is ignored, and a status's
``updated`` time is used only to choose between two finished cells with the same model, data
set, label and seed (left over from an edited suite): the later one is kept, the other gets
the state ``superseded`` and is listed in the status table.

Which cells: those of the suite's plan as last run into the folder (``plan.json``); other cell
folders (an earlier version of an edited suite) are named in a note and never aggregated. A
cell marked done whose metrics.json is missing or unreadable counts as ``unreadable``, not as
a seed.

How one cell's files are read: :mod:`harness.report.cells`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import paths
from harness.errors import UserError
from harness.results import CorruptFileError, list_cells, read_yaml
from harness.results.layout import has_cells, read_plan
from harness.schema import BASE_METHOD, SFT_METHOD

from .cells import TOKEN_IMPORTANCE_FILE, get_in, read_cells

__all__ = ["Collected", "collect", "find_suites", "resolve_baseline", "read_reported",
           "ID_COLUMNS", "TOKEN_IMPORTANCE_FILE", "REPORTED_FILE", "PROVENANCE_COLUMNS"]

ID_COLUMNS = ["cell_id", "state", "model", "dataset", "method", "label", "seed", "label_noise",
              "data_key"]
REPORTED_FILE = "reported.csv"
REPORTED_TEXT_COLUMNS = ("method", "model", "note", "source")  # every other column: numbers
AVERAGED_MODEL_NAMES = ("average", "avg", "mean", "all")     # = no model: averaged over models
PROVENANCE_COLUMNS = ["git_commit", "git_dirty", "git_dirty_files", "smoke", "sft_per_seed"]
# a tuned suite's cells (config.yaml ``tuning``): role "trial" (dev) / "final" / "cell", the
# method entry, and the searched values (JSON)
TUNING_COLUMNS = ["role", "entry", "point"]
CURVE_COLUMNS = ["cell_id", "model", "dataset", "method", "label", "seed", "label_noise",
                 "step", "metric", "value"]
STATE_ORDER = ["done", "failed", "running", "pending", "new", "unreadable", "superseded"]


@dataclass
class Collected:
    """What the report is built from.

    ``cells``: one row per cell: :data:`ID_COLUMNS`, ``hparams`` (JSON text), ``reason``,
    ``fault_step``, ``last_metrics`` (dict or None) and one float column per metric key
    (NaN where a cell lacks it; only ``done`` cells have metric values).
    ``data_key`` identifies the data set's config apart from name and label noise.
    ``curves``: long form ``cell_id, model, dataset, method, label, seed, label_noise, step,
    metric, value``. ``labels``: row order for tables (see :func:`_label_order`).
    ``trials``: a tuned suite's trials (scored on the dev split), with the same columns as
    ``cells`` (:data:`TUNING_COLUMNS` among them); ``cells`` then holds every other cell.
    ``token_importance``: cell id -> list of examples. ``notes``: things the reader should know
    (unreadable files, baseline fallbacks). ``cells`` also has the provenance columns
    :data:`PROVENANCE_COLUMNS`. ``smoke``: the results come from ``run --smoke`` (a cell's
    config says ``smoke: true``, or, for results written before that flag, the suite name in
    the cells' configs ends in ``-smoke`` as ``run --smoke`` names it; ``smoke_inferred``
    then)."""

    suite: str
    suite_dir: Path
    cells: pd.DataFrame
    curves: pd.DataFrame
    labels: list[str]
    metric_columns: list[str]
    baseline: str | None = None
    main_metrics: list[str] | None = None
    token_importance: dict[str, list[dict]] = field(default_factory=dict)
    reported: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    smoke: bool = False
    smoke_inferred: bool = False
    trials: pd.DataFrame | None = None
    eval_curves: pd.DataFrame | None = None  # eval_log.jsonl (train.eval_every), as ``curves``

    @property
    def done(self) -> pd.DataFrame:
        return self.cells[self.cells["state"] == "done"]


def find_suites(root: Path) -> list[Path]:
    """``root`` itself when it holds cells, else its subfolders that do (sorted by name)."""
    root = Path(root)
    if has_cells(root):
        return [root]
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir(), key=lambda p: p.name)
            if d.is_dir() and not d.name.startswith((".", "_")) and has_cells(d)]


def _read_suite_yaml(suite_dir: Path, notes: list[str]) -> dict:
    path = suite_dir / "suite.yaml"
    try:
        data = read_yaml(path, default=None)
    except (CorruptFileError, OSError) as e:
        notes.append(f"{path} could not be read ({e}); its report settings are ignored.")
        return {}
    return data if isinstance(data, dict) else {}


def _label_order(cells: pd.DataFrame, suite_yaml: dict) -> list[str]:
    """Rows in the order of the suite's ``methods`` list (entry matched by label, else by
    method name), the SFT checkpoint first (as in the paper's Table 1), ties by label."""
    entries = suite_yaml.get("methods") if isinstance(suite_yaml.get("methods"), list) else []
    pairs = cells[["label", "method"]].drop_duplicates()
    ranks = []
    for label, method in zip(pairs["label"], pairs["method"]):
        rank = len(entries)
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                continue
            elab = e.get("label")
            if isinstance(elab, str) and (label == elab or label.startswith(elab + " (")):
                rank = i
                break
            if elab is None and e.get("name") == method:
                rank = i
                break
        ranks.append(({BASE_METHOD: 0, SFT_METHOD: 1}.get(method, 2), rank, str(label)))
    return list(dict.fromkeys(r[2] for r in sorted(ranks)))


def resolve_baseline(requested: str | None, cells: pd.DataFrame, suite_yaml: dict,
                     notes: list[str]) -> str | None:
    """The label other rows are compared with.

    An explicit ``requested`` (``--baseline``) must name a label or a method name present in
    the results (UserError otherwise). Without one: ``report.baseline`` of the suite's
    ``suite.yaml`` if present, else ``dpo``; when that matches nothing, no comparison. A method
    name stands for its label (the first in row order when a grid gave it several)."""
    labels = list(dict.fromkeys(cells["label"]))
    explicit = requested is not None
    if not explicit:
        requested = get_in(suite_yaml, "report", "baseline")
        if not isinstance(requested, str):
            requested = "dpo"
    if requested in labels:
        return requested
    by_method = list(dict.fromkeys(cells.loc[cells["method"] == requested, "label"]))
    if by_method:
        if len(by_method) > 1:
            notes.append(f"baseline {requested!r} is a method with several labels "
                         f"({', '.join(by_method)}); comparing against {by_method[0]!r}.")
        return by_method[0]
    if explicit:
        from methods.settings import did_you_mean

        choices = sorted(set(labels) | set(cells["method"]))
        raise UserError(f"--baseline {requested!r}: no cell has that method label or name."
                        f"{did_you_mean(requested, choices)} Choose one of: {', '.join(choices)}")
    notes.append(f"baseline {requested!r} is not among the methods of this suite; "
                 "no comparison table.")
    return None


def read_reported(path: Path) -> pd.DataFrame:
    """The paper's numbers to put next to ours: a CSV with a ``method`` column, benchmark
    columns (MMLU, GSM8K, ...; numbers in percent), optionally ``Avg``, ``model``, ``note`` and
    ``source`` (text: where in the paper the row is from). A row averaged over models leaves
    ``model`` empty or says ``average`` / ``avg`` / ``mean`` / ``all``."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e}); write one row per method with "
                        "columns method, MMLU, GSM8K, ..., Avg[, model, note].") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "method" not in df.columns:
        raise UserError(f"{path}: no 'method' column (columns: {list(df.columns)}); the first "
                        "column must be 'method' (e.g. DPO, TI-DPO).")
    for c in REPORTED_TEXT_COLUMNS[1:]:
        if c not in df.columns:
            df[c] = ""
    out = df[list(REPORTED_TEXT_COLUMNS)].apply(lambda s: s.str.strip()).astype(object)
    out.loc[out["model"].str.lower().isin(AVERAGED_MODEL_NAMES), "model"] = ""
    for c in df.columns:
        if c in REPORTED_TEXT_COLUMNS:
            continue
        vals = df[c].str.strip()
        num = pd.to_numeric(vals.replace("", np.nan), errors="coerce")
        bad = num.isna() & (vals != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: column {c!r}, row {i + 2}: {vals.iloc[i]!r} is not a "
                            "number; write percentages as plain numbers (e.g. 65.3) or leave "
                            "the field empty.")
        out[c] = num.astype(float)
    return out


def collect(suite_dir: str | Path, baseline: str | None = None) -> Collected:
    """Read one suite's results folder (``results/<suite>``). Raises UserError when it holds
    no cell."""
    suite_dir = Path(suite_dir)
    notes: list[str] = []
    entries = _plan_members(suite_dir, list_cells(suite_dir), notes)
    if not entries:
        raise UserError(f"{suite_dir}: no cells found (no subfolder with a status, config.yaml "
                        "or metrics.json). Point `harness report` at results/<suite> as written "
                        "by `python -m harness run SUITE.yaml`.")
    suite_yaml = _read_suite_yaml(suite_dir, notes)
    rows, values, curves, evals, ti = read_cells(entries, notes)
    notes.extend(sorted({r["data_note"] for r in rows if r.get("data_note")}))
    metric_cols = sorted({k for v in values for k in v})
    cells = pd.DataFrame(rows, columns=ID_COLUMNS + ["hparams", "reason", "fault_step",
                                                     "last_metrics", "updated"]
                         + PROVENANCE_COLUMNS + TUNING_COLUMNS)
    mvals = pd.DataFrame([[v.get(k, math.nan) for k in metric_cols] for v in values],
                         columns=metric_cols, dtype=float)
    cells = pd.concat([cells, mvals], axis=1)
    # a tuned suite's trials are scored on dev: they go to the tuning tables, never the main ones
    is_trial = cells["role"] == "trial"
    trials = cells[is_trial].reset_index(drop=True)
    cells = cells[~is_trial].reset_index(drop=True)
    _supersede(cells)
    trial_ids = set(trials["cell_id"])
    curves_df = pd.DataFrame([c for c in curves if c["cell_id"] not in trial_ids], columns=CURVE_COLUMNS)
    evals_df = pd.DataFrame([c for c in evals if c["cell_id"] not in trial_ids], columns=CURVE_COLUMNS)
    name = _suite_name(suite_dir, suite_yaml, entries)
    main = get_in(suite_yaml, "report", "metrics")
    main = [m for m in main if isinstance(m, str)] if isinstance(main, list) and main else None
    reported = None
    if (suite_dir / REPORTED_FILE).is_file():
        reported = read_reported(suite_dir / REPORTED_FILE)
    baseline = resolve_baseline(baseline, cells, suite_yaml, notes)
    _relative_notes(notes, suite_dir)
    smoke = bool(cells["smoke"].any())
    cfg_suites = {str(get_in(e.get("config"), "suite")) for e in entries}
    inferred = not smoke and any(x.endswith("-smoke") for x in cfg_suites | {name})
    return Collected(
        suite=name, suite_dir=suite_dir, cells=cells, curves=curves_df, eval_curves=evals_df,
        labels=_label_order(cells, suite_yaml), metric_columns=metric_cols,
        baseline=baseline, main_metrics=main,
        token_importance=ti, reported=reported, notes=notes, smoke=smoke or inferred,
        smoke_inferred=inferred, trials=trials)


def _suite_name(suite_dir: Path, suite_yaml: dict, entries: list[dict]) -> str:
    """suite.yaml's name, else the one suite name all cells' configs give, else the folder's."""
    name = suite_yaml.get("name") if isinstance(suite_yaml.get("name"), str) else None
    if name is None:
        names = {str(get_in(e.get("config"), "suite")) for e in entries if get_in(e.get("config"), "suite")}
        name = sorted(names)[0] if len(names) == 1 else suite_dir.name
    return name


def _relative_notes(notes: list[str], suite_dir: Path) -> None:
    """Notes in place with paths relative to the results folder (the report must not change
    when the folder moves), one line each (YAML errors span several)."""
    prefixes = sorted({str(suite_dir) + "/", str(suite_dir.resolve()) + "/"}, key=len, reverse=True)
    for i, n in enumerate(notes):
        for pre in prefixes:
            n = n.replace(pre, "")
        notes[i] = " ".join(n.split())


def _plan_members(suite_dir: Path, entries: list[dict], notes: list[str]) -> list[dict]:
    """The cells of the suite's current plan (``plan.json``, written by ``harness run``): an
    edited suite run into the same folder leaves the old version's cells behind, and they are
    no part of this suite's results. They are named in a note, never aggregated. A folder
    without a plan (written by an older version) keeps every cell."""
    plan = read_plan(suite_dir)
    if plan is None:
        return entries
    members = set(plan["cells"])
    outside = [e for e in entries if e["cell_id"] not in members]
    if outside:
        listed = ", ".join(f"{e['cell_id']} ({e['state']})" for e in outside[:12])
        more = f" and {len(outside) - 12} more" if len(outside) > 12 else ""
        notes.append(f"{len(outside)} cell folder{'s' if len(outside) != 1 else ''} here "
                     f"{'are' if len(outside) != 1 else 'is'} not part of this suite as last run "
                     f"(plan.json; left by an earlier version of it) and not aggregated: {listed}{more}.")
    return [e for e in entries if e["cell_id"] in members]


def _supersede(cells: pd.DataFrame) -> None:
    """Keep one done cell per (model, dataset, label, seed): the latest ``updated`` (then the
    larger cell id); mark the others ``superseded`` in place."""
    done = cells[cells["state"] == "done"]
    key = ["model", "dataset", "label", "seed"]
    for _, g in done.groupby(key, sort=True):
        if len(g) < 2:
            continue
        order = g.sort_values(["updated", "cell_id"], kind="stable")
        keep = order.index[-1]
        for i in order.index[:-1]:
            cells.loc[i, "state"] = "superseded"
            cells.loc[i, "reason"] = (f"same model, data set, label and seed as "
                                      f"{cells.loc[keep, 'cell_id']}, which finished later")


def slug(text: str) -> str:
    """A label or group name as a report file name: ``harness.paths.slug``, keeping case."""
    return paths.slug(text, keep_case=True)
