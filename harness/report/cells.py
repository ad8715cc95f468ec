"""One cell's files as the report reads them: its row (identity, state, provenance, tuning
role), its metric values, its curves and its token-importance examples
(:func:`harness.report.collect.collect` assembles the suite from these).

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
from pathlib import Path
from typing import Any

from harness.results import CorruptFileError, read_json, read_jsonl
from harness.results.evaluated import read_evaluated

TOKEN_IMPORTANCE_FILE = "token_importance.json"
EVAL_LOG = "eval_log.jsonl"


def read_cells(entries: list[dict], notes: list[str]):
    """Every cell's row and metric values, its training and held-out curves (long form), and
    the token-importance examples of the cells that wrote them (cell id -> examples)."""
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
    return rows, values, curves, evals, ti


def _num(v: Any) -> float | None:
    """A metric value as float; None for non-numbers (strings, dicts, bools)."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def get_in(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not a mapping."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


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
    """One cell's row of ``Collected.cells`` (identity, state, provenance, tuning role) and its
    numeric ``"<family>/<name>"`` metric values."""
    metrics, entry = _read_metrics(entry, notes)
    cfg = entry.get("config") or {}
    status = entry.get("status") or {}
    d = Path(entry["dir"])
    if entry.get("error"):
        notes.append(f"{d}: {entry['error']}")

    def ident(cfg_path: tuple[str, ...], key: str):
        v = get_in(cfg, *cfg_path)
        return v if v is not None else metrics.get(key)

    noise = get_in(cfg, "dataset", "label_noise")
    seed = ident(("seed",), "seed")
    hp = get_in(cfg, "method", "hparams")
    if hp is None:
        hp = metrics.get("hparams") or {}
    failed = entry["state"] == "failed"
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
        "data_key": json.dumps({k: v for k, v in (get_in(cfg, "dataset") or {}).items()
                                if k not in ("name", "label_noise")}, sort_keys=True, default=str),
        "hparams": json.dumps(hp, sort_keys=True, default=str),
        "reason": status.get("reason") if entry["state"] != "done" else None,
        "fault_step": status.get("step") if failed else None,
        "last_metrics": status.get("last_metrics") if failed else None,
        "updated": str(status.get("updated") or ""),
        "data_note": _data_drop_note(metrics),  # not a column: collected into the report's notes
    }
    row.update(_provenance(d, cfg))
    tuning = get_in(cfg, "tuning") if isinstance(get_in(cfg, "tuning"), dict) else {}
    row.update(role=str(tuning.get("role") or "cell"), entry=str(tuning.get("entry") or row["label"]),
               point=json.dumps(tuning.get("point") or {}, sort_keys=True, default=str))
    values = {k: x for k, x in ((k, _num(v)) for k, v in metrics.items() if "/" in k and not k.startswith("_"))
              if x is not None}
    return row, values


def _read_metrics(entry: dict, notes: list[str]) -> tuple[dict, dict]:
    """A done cell's metrics.json, and the entry: a done cell without a usable metrics.json is
    no result (not a seed), so its state becomes ``unreadable`` with the reason, and a note
    says so. Other states' files are not read (a partial file is no result)."""
    d = Path(entry["dir"])
    metrics: dict[str, Any] = {}
    broken = None
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
        entry = {**entry, "state": "unreadable", "status": {**(entry.get("status") or {}), "reason": broken}}
    return metrics, entry


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
    sft = get_in(cfg, "sft")
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


