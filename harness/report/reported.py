"""The paper's reported numbers (``reported.csv``) next to the reproduced ones."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from harness.metrics import BENCHMARK_COLUMNS

from .collect import Collected
from .format import Table, fmt_num, fmt_stat
from .stats import summarize
from .summary import Summary

__all__ = ["reported_table"]


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower())


def reported_table(col: Collected, summ: Summary) -> Table | None:
    """The paper's numbers (``reported.csv``) next to ours, benchmark by benchmark."""
    rep = col.reported
    if rep is None:
        return None
    bench_cols = [c for c in rep.columns if c not in ("method", "model", "note", "Avg")]
    has_avg = "Avg" in rep.columns
    # ours: per (label, seed) benchmark values (percent), for all groups or one model
    ours_keys: dict[str, str] = {}
    for task, key in summ.headlines.items():
        colname = BENCHMARK_COLUMNS.get(task)
        if colname in bench_cols and colname not in ours_keys:
            ours_keys[colname] = key
    show_model = bool((rep["model"] != "").any())
    vals = summ.values
    models = sorted(set(vals["model"])) if len(vals) else []
    columns = ["Method"] + (["Model"] if show_model else []) + ["Source"] + bench_cols + \
        (["Avg"] if has_avg else [])
    rows, records = [], []
    notes = []

    def ours_for(method: str, model: str) -> tuple[str | None, pd.DataFrame | None]:
        labels = [lab for lab in col.labels if _norm(lab) == _norm(method)]
        if not labels:
            meth = dict(zip(col.cells["label"], col.cells["method"]))
            labels = [lab for lab in col.labels if _norm(meth.get(lab, "")) == _norm(method)]
        if not labels or not len(vals):
            return None, None
        v = vals[vals["label"] == labels[0]]
        if model:
            mm = [m for m in models if _norm(m) == _norm(model)]
            if not mm:
                return labels[0], None
            v = v[v["model"] == mm[0]]
        if not len(v):
            return labels[0], None
        keys = list(ours_keys.values())
        per_seed = v.groupby("seed", sort=True)[keys].mean() if keys else None
        return labels[0], per_seed

    for _, r in rep.iterrows():
        label, per_seed = ours_for(r["method"], r["model"])
        paper = [r[c] for c in bench_cols] + ([r["Avg"]] if has_avg else [])
        ours_stats = []
        for c in bench_cols:
            if per_seed is not None and c in ours_keys:
                ours_stats.append(summarize(per_seed[ours_keys[c]].to_numpy(dtype=np.float64)))
            else:
                ours_stats.append({"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                                   "n": 0})
        if has_avg:
            present = [ours_keys[c] for c in bench_cols if c in ours_keys]
            if per_seed is not None and present:
                ours_stats.append(summarize(per_seed[present].mean(axis=1, skipna=False)
                                            .to_numpy(dtype=np.float64)))
            else:
                ours_stats.append({"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                                   "n": 0})
        lead = [r["method"]] + ([r["model"] or "(avg)"] if show_model else [])
        diffs = [(s["mean"] - p) if math.isfinite(s["mean"]) and math.isfinite(p) else math.nan
                 for s, p in zip(ours_stats, paper)]
        if has_avg and len(ours_keys) < len(bench_cols):
            diffs[-1] = math.nan  # our Avg covers fewer benchmarks: not comparable
        if per_seed is None:  # nothing of ours to set beside it: the paper's row alone
            rows.append(lead + ["paper (no matching run here)"] +
                        [fmt_num(x, ".1f") for x in paper])
        else:
            rows.append(lead + ["paper"] + [fmt_num(x, ".1f") for x in paper])
            rows.append(lead + [f"ours ({label})"] + [
                fmt_stat(s["mean"], s["ci_low"], s["ci_high"], int(s["n"]), ".1f")
                for s in ours_stats])
            rows.append(lead + ["ours − paper"] + [fmt_num(d, "+.1f") for d in diffs])
        for c, p, s, d in zip(bench_cols + (["Avg"] if has_avg else []), paper, ours_stats, diffs):
            records.append({"method": r["method"], "model": r["model"], "label": label,
                            "benchmark": c, "reported": p, "reproduced_mean": s["mean"],
                            "reproduced_ci_low": s["ci_low"], "reproduced_ci_high": s["ci_high"],
                            "reproduced_n": int(s["n"]), "diff": d})
        if r["note"]:
            notes.append(f"{r['method']}{' (' + r['model'] + ')' if r['model'] else ''}: {r['note']}")
    notes += _reported_consistency(rep, bench_cols, has_avg)
    mapped = ", ".join(f"{c} = `{k}`" for c, k in ours_keys.items()) or "none of our lm-eval tasks"
    notes.append(f"Ours: mean ± CI half-width over seeds, averaged over our models and data sets "
                 f"(or the named model); benchmark columns from {mapped}. Our Avg is over the "
                 f"benchmarks we ran; its difference is shown only when we ran them all. A paper "
                 f"row is matched to our runs by method (label or loss name, ignoring case and "
                 f"punctuation) and, when it names one, by model.")
    data = pd.DataFrame(records, columns=["method", "model", "label", "benchmark", "reported",
                                          "reproduced_mean", "reproduced_ci_low",
                                          "reproduced_ci_high", "reproduced_n", "diff"])
    return Table("reported_vs_reproduced", "Reported (paper) vs reproduced", columns, rows, data,
                 None, notes, n_label_cols=3 if show_model else 2)


def _reported_consistency(rep: pd.DataFrame, bench_cols: list[str], has_avg: bool) -> list[str]:
    """Check the paper's table against itself: each row's Avg against the mean of its columns,
    and an averaged row (no model) against the mean of the same method's per-model rows.
    Tolerance 0.051: the paper rounds to one decimal."""
    tol = 0.051
    notes = []
    for _, r in rep.iterrows():
        xs = [r[c] for c in bench_cols]
        if has_avg and all(math.isfinite(x) for x in xs) and math.isfinite(r["Avg"]) and xs:
            m = sum(xs) / len(xs)
            if abs(m - r["Avg"]) > tol:
                notes.append(f"check: {r['method']}{' (' + r['model'] + ')' if r['model'] else ''}"
                             f" Avg {r['Avg']:.1f} but its columns average {m:.2f}.")
    for method in dict.fromkeys(rep["method"]):
        rows = rep[rep["method"] == method]
        avg_rows = rows[rows["model"] == ""]
        per_model = rows[rows["model"] != ""]
        if len(avg_rows) != 1 or len(per_model) < 2:
            continue
        a = avg_rows.iloc[0]
        bad = []
        for c in bench_cols + (["Avg"] if has_avg else []):
            xs = per_model[c].to_numpy(dtype=np.float64)
            if np.isnan(xs).any() or not math.isfinite(a[c]):
                continue
            m = float(xs.mean())
            if abs(m - a[c]) > tol:
                bad.append(f"{c} {a[c]:.1f} vs {m:.2f}")
        if bad:
            notes.append(f"check: {method}'s averaged row differs from the mean of its "
                         f"{len(per_model)} per-model rows: {'; '.join(bad)}.")
    return notes
