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

Sources per cell (see :func:`harness.results.list_cells`):

* ``config.yaml``: identity (model, dataset, method, label, seed, hyperparameters) and
  ``dataset.label_noise``; preferred over ``metrics.json`` because every cell has it;
* ``status``: state; for failed cells ``reason``, ``step`` and ``last_metrics`` (a numerical
  fault records the step and the last finite training metrics);
* ``metrics.json``: numeric ``"<family>/<name>"`` values, read only for cells whose state is
  ``done`` (a failed or interrupted cell's partial file is not a result); ``null`` (how a
  non-finite value is stored) becomes NaN;
* ``train_log.jsonl``: numeric keys per step, as long-form curves (any state, so a diverging
  run's curve up to the fault is visible); ``eval_log.jsonl`` (``train.eval_every``) the same way;
* ``token_importance.json`` (TI-DPO cells): ``{"examples": [{"pair", "side", "tokens",
  "weights"}]}``;
* provenance: ``env.json``'s ``git_commit``, ``git_dirty`` and ``git_dirty_files`` (the code a
  cell ran), and ``config.yaml``'s ``smoke`` flag (``run --smoke``) and ``sft.per_seed``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import paths
from harness.errors import UserError
from harness.results import CorruptFileError, list_cells, read_json, read_jsonl, read_yaml
from harness.results.evaluated import read_evaluated
from harness.results.layout import has_cells, read_plan
from harness.schema import BASE_METHOD, SFT_METHOD

__all__ = ["Collected", "collect", "find_suites", "resolve_baseline", "read_reported",
           "ID_COLUMNS", "TOKEN_IMPORTANCE_FILE", "REPORTED_FILE", "PROVENANCE_COLUMNS"]

ID_COLUMNS = ["cell_id", "state", "model", "dataset", "method", "label", "seed", "label_noise",
              "data_key"]
TOKEN_IMPORTANCE_FILE = "token_importance.json"
EVAL_LOG = "eval_log.jsonl"
REPORTED_FILE = "reported.csv"
PROVENANCE_COLUMNS = ["git_commit", "git_dirty", "git_dirty_files", "smoke", "sft_per_seed"]
# a tuned suite's cells (config.yaml ``tuning``): role "trial" (dev) / "final" / "cell", the
# method entry, and the searched values (JSON)
TUNING_COLUMNS = ["role", "entry", "point"]
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


def _num(v: Any) -> float | None:
    """A metric value as float; None for non-numbers (strings, dicts, bools)."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


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
        requested = _get(suite_yaml, "report", "baseline")
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
    columns (MMLU, GSM8K, ...; numbers in percent), optionally ``Avg``, ``model`` and
    ``note``."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e}); write one row per method with "
                        "columns method, MMLU, GSM8K, ..., Avg[, model, note].") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "method" not in df.columns:
        raise UserError(f"{path}: no 'method' column (columns: {list(df.columns)}); the first "
                        "column must be 'method' (e.g. DPO, TI-DPO).")
    for c in ("model", "note"):
        if c not in df.columns:
            df[c] = ""
    out = df[["method", "model", "note"]].apply(lambda s: s.str.strip()).astype(object)
    for c in df.columns:
        if c in ("method", "model", "note"):
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


def _read_token_importance(path: Path, notes: list[str]) -> list[dict] | None:
    try:
        data = read_json(path)
    except (CorruptFileError, OSError) as e:
        notes.append(f"{path}: unreadable ({e}); no token-importance figure for it.")
        return None
    ex = data.get("examples") if isinstance(data, dict) else None
    good = []
    for e in ex if isinstance(ex, list) else []:
        if (isinstance(e, dict) and isinstance(e.get("tokens"), list)
                and isinstance(e.get("weights"), list) and len(e["tokens"]) == len(e["weights"])
                and e["tokens"]):
            good.append(e)
    if not good:
        notes.append(f"{path}: no usable example (each needs 'tokens' and 'weights' of the same "
                     "length); no token-importance figure for it.")
        return None
    return good


def _cell_row(entry: dict, notes: list[str]) -> tuple[dict, dict[str, float]]:
    cfg = entry.get("config") or {}
    status = entry.get("status") or {}
    d = Path(entry["dir"])
    metrics: dict[str, Any] = {}
    broken = None   # a done cell without a usable metrics.json is no result: not a seed
    if entry["state"] == "done" and entry["has_metrics"]:
        try:
            loaded = read_json(d / "metrics.json")
            metrics = loaded if isinstance(loaded, dict) else {}
            broken = None if isinstance(loaded, dict) else "metrics.json is not a JSON object"
            metrics.update(read_evaluated(d))  # `harness eval` after the run: eval/<task>.json
        except (CorruptFileError, OSError) as e:
            broken = "metrics.json is unreadable"
            notes.append(f"{d / 'metrics.json'}: unreadable ({e}); the cell is left out of the "
                         "tables. Rerun the suite to make it again.")
    elif entry["state"] == "done":
        broken = "metrics.json is missing"
        notes.append(f"{d}: state done but no metrics.json; the cell is left out of the tables. "
                     "Rerun the suite to make it again.")
    if broken:
        entry = {**entry, "state": "unreadable", "status": {**status, "reason": broken}}
        status = entry["status"]
    if entry.get("error"):
        notes.append(f"{d}: {entry['error']}")

    def ident(cfg_path: tuple[str, ...], key: str):
        v = _get(cfg, *cfg_path)
        return v if v is not None else metrics.get(key)

    noise = _get(cfg, "dataset", "label_noise")
    seed = ident(("seed",), "seed")
    hp = _get(cfg, "method", "hparams")
    if hp is None:
        hp = metrics.get("hparams") or {}
    row = {
        "cell_id": entry["cell_id"], "state": entry["state"],
        "model": str(ident(("model", "name"), "model") or "?"),
        "dataset": str(ident(("dataset", "name"), "dataset") or "?"),
        "method": str(ident(("method", "name"), "method") or "?"),
        "label": str(ident(("method", "label"), "label") or ident(("method", "name"), "method") or "?"),
        "seed": int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else -1,
        "label_noise": float(noise) if isinstance(noise, (int, float)) else 0.0,
        # the data set's config without its name and noise rate: data sets sharing it differ
        # only in label noise (the accuracy-vs-noise figure draws them as one line)
        "data_key": json.dumps({k: v for k, v in (_get(cfg, "dataset") or {}).items()
                                if k not in ("name", "label_noise")}, sort_keys=True, default=str),
        "hparams": json.dumps(hp, sort_keys=True, default=str),
        "reason": status.get("reason") if entry["state"] != "done" else None,
        "fault_step": status.get("step") if entry["state"] == "failed" else None,
        "last_metrics": status.get("last_metrics") if entry["state"] == "failed" else None,
        "updated": str(status.get("updated") or ""),
        "data_note": _data_drop_note(metrics),  # not a column: collected into the report's notes
    }
    row.update(_provenance(d, cfg))
    tuning = _get(cfg, "tuning") if isinstance(_get(cfg, "tuning"), dict) else {}
    row.update(role=str(tuning.get("role") or "cell"), entry=str(tuning.get("entry") or row["label"]),
               point=json.dumps(tuning.get("point") or {}, sort_keys=True, default=str))
    values = {}
    for k, v in metrics.items():
        if "/" not in k or k.startswith("_"):
            continue
        x = _num(v)
        if x is not None:
            values[k] = x
    return row, values


def _provenance(d: Path, cfg: dict) -> dict:
    """The code and kind of run behind a cell: env.json's git fields (None when absent or
    unreadable), the config's smoke flag and whether its SFT stage was trained per seed."""
    env: Any = None
    if (d / "env.json").is_file():
        try:
            env = read_json(d / "env.json")
        except (CorruptFileError, OSError):
            env = None
    env = env if isinstance(env, dict) else {}
    commit = env.get("git_commit")
    dirty = env.get("git_dirty")
    files = env.get("git_dirty_files")
    sft = _get(cfg, "sft")
    return {
        "git_commit": str(commit) if commit else None,
        "git_dirty": bool(dirty) if isinstance(dirty, bool) else None,
        "git_dirty_files": json.dumps(sorted(map(str, files))) if isinstance(files, list) else "[]",
        "smoke": cfg.get("smoke") is True,
        "sft_per_seed": bool(isinstance(sft, dict) and sft.get("enabled", True)
                             and sft.get("per_seed") is True),
    }


def _data_drop_note(metrics: dict) -> str | None:
    """A line for the report when the cell's data lost rows (bad rows dropped by
    ``on_bad_rows: drop``) or pairs (dropped by tokenization), else None."""
    ds, tk = metrics.get("data/stats"), metrics.get("data/tokenization")
    ds, tk = ds if isinstance(ds, dict) else {}, tk if isinstance(tk, dict) else {}
    bad, cut = ds.get("dropped_total") or 0, tk.get("dropped") or 0
    if not bad and not cut:
        return None
    why = ", ".join(f"{k} {v}" for k, v in sorted((ds.get("dropped") or {}).items()))
    return (f"data set {metrics.get('dataset')!r}: {bad} of {ds.get('rows_read', '?')} rows dropped as bad"
            f"{' (' + why + ')' if why else ''}; tokenization dropped {cut} of {tk.get('input', '?')} "
            f"training pairs (prompt filling max_length)")


def _curves(entry: dict, row: dict, notes: list[str], log: str = "train_log.jsonl") -> list[dict]:
    path = Path(entry["dir"]) / log
    if not path.is_file():
        return []
    try:
        recs = read_jsonl(path)
    except (CorruptFileError, OSError) as e:
        notes.append(f"{path}: unreadable ({e}); no {'training' if log.startswith('train') else 'held-out'} "
                     f"curve for this cell.")
        return []
    out = []
    keys = {k: row[k] for k in ("cell_id", "model", "dataset", "method", "label", "seed",
                                 "label_noise")}
    for r in recs:
        if not isinstance(r, dict) or not isinstance(r.get("step"), (int, float)):
            continue
        for k in sorted(r):
            if k == "step":
                continue
            x = _num(r[k])
            if x is not None:
                out.append({**keys, "step": int(r["step"]), "metric": k, "value": x})
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
    rows, values, curves, evals = [], [], [], []
    ti: dict[str, list[dict]] = {}
    for entry in entries:
        row, vals = _cell_row(entry, notes)
        rows.append(row)
        values.append(vals)
        curves.extend(_curves(entry, row, notes))
        evals.extend(_curves(entry, row, notes, EVAL_LOG))
        p = Path(entry["dir"]) / TOKEN_IMPORTANCE_FILE
        if p.is_file():
            ex = _read_token_importance(p, notes)
            if ex is not None:
                ti[row["cell_id"]] = ex
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
    curve_cols = ["cell_id", "model", "dataset", "method", "label", "seed", "label_noise",
                  "step", "metric", "value"]
    trial_ids = set(trials["cell_id"])  # a tuned suite's trials: in the tuning tables only
    curves_df = pd.DataFrame([c for c in curves if c["cell_id"] not in trial_ids], columns=curve_cols)
    evals_df = pd.DataFrame([c for c in evals if c["cell_id"] not in trial_ids], columns=curve_cols)
    name = suite_yaml.get("name") if isinstance(suite_yaml.get("name"), str) else None
    if name is None:
        names = {str(_get(e.get("config"), "suite")) for e in entries if _get(e.get("config"), "suite")}
        name = sorted(names)[0] if len(names) == 1 else suite_dir.name
    main = _get(suite_yaml, "report", "metrics")
    main = [m for m in main if isinstance(m, str)] if isinstance(main, list) and main else None
    reported = None
    if (suite_dir / REPORTED_FILE).is_file():
        reported = read_reported(suite_dir / REPORTED_FILE)
    baseline = resolve_baseline(baseline, cells, suite_yaml, notes)
    # paths relative to the results folder: the report must not change when the folder moves
    prefixes = sorted({str(suite_dir) + "/", str(suite_dir.resolve()) + "/"}, key=len,
                      reverse=True)
    for i, n in enumerate(notes):
        for pre in prefixes:
            n = n.replace(pre, "")
        notes[i] = " ".join(n.split())  # one line each (YAML errors span several)
    smoke = bool(cells["smoke"].any())
    cfg_suites = {str(_get(e.get("config"), "suite")) for e in entries}
    inferred = not smoke and any(x.endswith("-smoke") for x in cfg_suites | {name})
    return Collected(
        suite=name, suite_dir=suite_dir, cells=cells, curves=curves_df, eval_curves=evals_df,
        labels=_label_order(cells, suite_yaml), metric_columns=metric_cols,
        baseline=baseline, main_metrics=main,
        token_importance=ti, reported=reported, notes=notes, smoke=smoke or inferred,
        smoke_inferred=inferred, trials=trials)


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
