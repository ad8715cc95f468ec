"""Tables about the run rather than its results: cells by state, failed cells, methods and
hyperparameters, and the provenance of the cells (commits, uncommitted changes, smoke runs)."""
from __future__ import annotations

import json
import math

import pandas as pd

from .collect import STATE_ORDER, Collected
from .format import MISSING, Table, fmt_num

__all__ = ["status_tables", "hparams_table", "provenance_table", "provenance_lines"]


def status_tables(col: Collected) -> list[Table]:
    cells = col.cells
    states = [s for s in STATE_ORDER if s in set(cells["state"])] + \
        sorted(set(cells["state"]) - set(STATE_ORDER))
    rows, records = [], []
    for lab in col.labels:
        c = cells[cells["label"] == lab]
        counts = [int((c["state"] == s).sum()) for s in states]
        rows.append([lab] + [str(x) for x in counts] + [str(len(c))])
        records.append({"label": lab, **dict(zip(states, counts)), "total": len(c)})
    counts = [int((cells["state"] == s).sum()) for s in states]
    rows.append(["all"] + [str(x) for x in counts] + [str(len(cells))])
    records.append({"label": "(all)", **dict(zip(states, counts)), "total": len(cells)})
    status = Table("status", "Cells by state", ["Method"] + states + ["total"], rows,
                   pd.DataFrame(records, columns=["label"] + states + ["total"]), None,
                   ["Only 'done' cells enter the result tables and figures."])
    out = [status]
    bad = cells[cells["state"].isin(["failed", "unreadable", "superseded"])]
    rows, records = [], []
    for _, r in bad.iterrows():
        last = r["last_metrics"] if isinstance(r["last_metrics"], dict) else {}
        last_txt = ", ".join(
            f"{k}={fmt_num(v, '.4g') if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
            for k, v in sorted(last.items())[:12])
        reason = " ".join(str(r["reason"] or "").split())
        step = r["fault_step"]
        step_txt = str(int(step)) if isinstance(step, (int, float)) and not isinstance(step, bool) \
            and math.isfinite(step) else MISSING
        rows.append([r["cell_id"], r["state"], r["label"], r["model"], r["dataset"],
                     str(r["seed"]), step_txt, reason[:300] or MISSING, last_txt or MISSING])
        records.append({"cell_id": r["cell_id"], "state": r["state"], "label": r["label"],
                        "model": r["model"], "dataset": r["dataset"], "seed": int(r["seed"]),
                        "step": int(step) if step_txt != MISSING else None, "reason": reason,
                        "last_metrics": json.dumps(last, sort_keys=True)})
    if not len(bad):
        return out
    out.append(Table("failed", "Failed / diverged cells",
                     ["Cell", "State", "Method", "Model", "Dataset", "Seed", "Step", "Reason",
                      "Last finite metrics"], rows,
                     pd.DataFrame(records, columns=["cell_id", "state", "label", "model",
                                                    "dataset", "seed", "step", "reason",
                                                    "last_metrics"]),
                     None, ["A numerical fault (non-finite loss or gradient) records the step "
                            "and the last finite training metrics; see the cell's error.txt. "
                            "'superseded': a finished duplicate (same model, data set, label and "
                            "seed) that a later run replaced."], n_label_cols=9))
    return out


def hparams_table(col: Collected) -> Table:
    rows, records = [], []
    for lab in col.labels:
        c = col.cells[col.cells["label"] == lab]
        methods = sorted(set(c["method"]))
        hps = sorted(set(c["hparams"]))
        rows.append([lab, ", ".join(methods), " / ".join(hps)])
        records.append({"label": lab, "method": ", ".join(methods), "hparams": " / ".join(hps)})
    return Table("hparams", "Methods and hyperparameters", ["Method", "Loss", "Hyperparameters"],
                 rows, pd.DataFrame(records, columns=["label", "method", "hparams"]), None,
                 ["Hyperparameters as resolved in each cell's config.yaml (method defaults "
                  "included)."], n_label_cols=3)


def _commits(col: Collected) -> pd.DataFrame:
    """One row per (commit, dirty, dirty files) among the cells that have run (any state but
    pending/new), with the number of cells."""
    c = col.cells[~col.cells["state"].isin(["pending", "new"])]
    rows = []
    keys = ["git_commit", "git_dirty", "git_dirty_files"]
    c = c.assign(**{k: c[k].astype(object).where(c[k].notna(), None) for k in keys})
    for (commit, dirty, files), g in c.groupby(keys, sort=True, dropna=False):
        rows.append({"commit": commit, "dirty": dirty, "dirty_files": files, "cells": len(g),
                     "done": int((g["state"] == "done").sum())})
    return pd.DataFrame(rows, columns=["commit", "dirty", "dirty_files", "cells", "done"])


def provenance_lines(col: Collected) -> list[str]:
    """Header lines: the commit(s) the cells ran, and a warning when they are mixed, dirty or
    unknown."""
    df = _commits(col)
    if not len(df):
        return []
    known = df[df["commit"].notna()]
    commits = sorted(set(known["commit"]))
    dirty = int(df.loc[df["dirty"].eq(True), "cells"].sum())
    unknown = int(df.loc[df["commit"].isna(), "cells"].sum())
    short = ", ".join(str(c)[:10] for c in commits) or "unknown"
    lines = [f"Code: {len(commits)} commit(s) ({short}); {dirty} cell(s) ran with uncommitted "
             f"changes; {unknown} without a recorded commit (see 'Provenance')."]
    if len(commits) > 1 or dirty or unknown:
        why = []
        if len(commits) > 1:
            why.append(f"cells come from {len(commits)} different commits")
        if dirty:
            why.append(f"{dirty} ran with uncommitted changes")
        if unknown:
            why.append(f"{unknown} have no recorded commit")
        lines.append("WARNING: mixed or unreproducible code: " + "; ".join(why) + ". Rerun the "
                     "suite from one clean commit before citing these numbers.")
    return lines


def provenance_table(col: Collected) -> Table | None:
    df = _commits(col)
    if not len(df):
        return None
    rows = []
    for r in df.to_dict("records"):
        files = json.loads(r["dirty_files"]) if isinstance(r["dirty_files"], str) else []
        dirty = {True: "yes", False: "no"}.get(r["dirty"], MISSING)
        rows.append([str(r["commit"])[:12] if r["commit"] else "unknown", dirty,
                     str(r["cells"]), str(r["done"]), ", ".join(files)[:300] or MISSING])
    notes = ["From each cell's env.json (git commit and dirty flag at the start of the cell); "
             "pending cells are not counted. One suite's numbers are comparable only when they "
             "come from one commit without uncommitted changes."]
    return Table("provenance", "Provenance: code the cells ran",
                 ["Commit", "Uncommitted changes", "Cells", "Done", "Changed files"], rows,
                 df, None, notes, n_label_cols=2)
