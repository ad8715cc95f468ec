"""The paper's reported numbers (``reported.csv``) next to the reproduced ones."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from harness.metrics import BENCHMARK_COLUMNS

from .collect import REPORTED_TEXT_COLUMNS, Collected
from .format import Table, fmt_num, fmt_stat
from .stats import summarize
from .summary import Summary

__all__ = ["reported_table"]


_NO_STAT = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower())


def reported_table(col: Collected, summ: Summary) -> Table | None:
    """The paper's numbers (``reported.csv``) next to ours, benchmark by benchmark: per paper
    row, the paper's line, ours (mean and CI over seeds) and the difference."""
    rep = col.reported
    if rep is None:
        return None
    bench_cols = [c for c in rep.columns if c not in (*REPORTED_TEXT_COLUMNS, "Avg")]
    has_avg = "Avg" in rep.columns
    shown = bench_cols + (["Avg"] if has_avg else [])
    ours_keys = _ours_keys(summ, bench_cols)
    show_model = bool((rep["model"] != "").any())
    vals = summ.values
    models = sorted(set(vals["model"])) if len(vals) else []
    columns = ["Method"] + (["Model"] if show_model else []) + ["Source"] + shown
    rows, records, notes = [], [], []
    for _, r in rep.iterrows():
        label, per_seed = _ours_for(col, vals, models, list(ours_keys.values()), r["method"], r["model"])
        paper = [r[c] for c in shown]
        ours = _ours_stats(per_seed, ours_keys, bench_cols, has_avg)
        diffs = [(s["mean"] - p) if math.isfinite(s["mean"]) and math.isfinite(p) else math.nan
                 for s, p in zip(ours, paper)]
        if has_avg and len(ours_keys) < len(bench_cols):
            diffs[-1] = math.nan  # our Avg covers fewer benchmarks: not comparable
        lead = [r["method"]] + ([r["model"] or "(avg)"] if show_model else [])
        rows += _display_rows(lead, label if per_seed is not None else None, paper, ours, diffs)
        records += [{"method": r["method"], "model": r["model"], "label": label, "benchmark": c, "reported": p,
                     "reproduced_mean": s["mean"], "reproduced_ci_low": s["ci_low"],
                     "reproduced_ci_high": s["ci_high"], "reproduced_n": int(s["n"]), "diff": d}
                    for c, p, s, d in zip(shown, paper, ours, diffs)]
        if r["note"]:
            notes.append(f"{r['method']}{' (' + r['model'] + ')' if r['model'] else ''}: {r['note']}")
    sources = [x for x in dict.fromkeys(rep["source"]) if x]
    if sources:
        notes.append(f"Paper rows from: {'; '.join(sources)}.")
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


def _ours_keys(summ: Summary, bench_cols: list[str]) -> dict[str, str]:
    """Benchmark column of the paper's table -> our metric key (the headline of the lm-eval
    task that column stands for; the first task mapped to a column wins)."""
    ours_keys: dict[str, str] = {}
    for task, key in summ.headlines.items():
        colname = BENCHMARK_COLUMNS.get(task)
        if colname in bench_cols and colname not in ours_keys:
            ours_keys[colname] = key
    return ours_keys


def _ours_for(col: Collected, vals: pd.DataFrame, models: list[str], keys: list[str], method: str,
              model: str) -> tuple[str | None, pd.DataFrame | None]:
    """Our label matching a paper row (by label, else by loss name, ignoring case and
    punctuation) and its per-seed benchmark values (for the row's model, when it names one;
    averaged over models and data sets otherwise); None where nothing of ours matches."""
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
    per_seed = v.groupby("seed", sort=True)[keys].mean() if keys else None
    return labels[0], per_seed


def _ours_stats(per_seed: pd.DataFrame | None, ours_keys: dict[str, str], bench_cols: list[str],
                has_avg: bool) -> list[dict]:
    """Mean and CI over seeds for each benchmark column (and Avg: over the benchmarks we ran,
    seed by seed); no value (NaN, n 0) where we have none."""
    out = []
    for c in bench_cols:
        if per_seed is not None and c in ours_keys:
            out.append(summarize(per_seed[ours_keys[c]].to_numpy(dtype=np.float64)))
        else:
            out.append(dict(_NO_STAT))
    if has_avg:
        present = [ours_keys[c] for c in bench_cols if c in ours_keys]
        if per_seed is not None and present:
            out.append(summarize(per_seed[present].mean(axis=1, skipna=False).to_numpy(dtype=np.float64)))
        else:
            out.append(dict(_NO_STAT))
    return out


def _display_rows(lead: list[str], label: str | None, paper: list[float], ours: list[dict],
                  diffs: list[float]) -> list[list[str]]:
    """A paper row's lines in the table: the paper's numbers, ours and ours − paper; the
    paper's alone when nothing of ours matches it (``label`` None)."""
    if label is None:
        return [lead + ["paper (no matching run here)"] + [fmt_num(x, ".1f") for x in paper]]
    return [lead + ["paper"] + [fmt_num(x, ".1f") for x in paper],
            lead + [f"ours ({label})"] + [fmt_stat(s["mean"], s["ci_low"], s["ci_high"], int(s["n"]), ".1f")
                                          for s in ours],
            lead + ["ours − paper"] + [fmt_num(d, "+.1f") for d in diffs]]


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
