"""Aggregates across tasks and models, after Agarwal et al. 2021 ("Deep Reinforcement Learning
at the Edge of the Statistical Precipice", the rliable recommendations).

A *run* is one (model, data set, seed) value of a method; the (model, data set) groups are the
*tasks*. Per method and main metric:

* **IQM**: the interquartile mean of all its runs pooled over tasks (``scipy.stats.trim_mean``
  with 25% cut at each end), robust to a task or run far off, and the **mean** of the runs;
* **P(A > baseline)**: the probability of improvement, the average over tasks of
  ``P(X_A > X_B)`` for a random run of A and one of the baseline on that task (ties count
  half: the Mann-Whitney U statistic over ``n_A · n_B``; lower-is-better metrics negated);
* **intervals**: 95% *stratified* percentile bootstrap (Agarwal et al.): runs are resampled
  with replacement within each task, independently (``scipy.stats.bootstrap`` with one sample
  per task, 2000 resamples, fixed seed).
* **performance profile**: the share of runs scoring above each threshold tau, with the same
  stratified bootstrap band at each tau (Agarwal et al.'s Figure 5).

Computed only with at least two tasks: with one task the stratified bootstrap is a percentile
bootstrap over a handful of seeds, whose coverage is far below 95% (see
:mod:`harness.report.stats`). With few seeds per task the bootstrap intervals remain
approximate; Agarwal et al. recommend them for many tasks x few runs. rliable itself is not
used: it needs ``arch<8``, whose releases do not import with pandas 3.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .collect import Collected
from .format import MISSING, Table, fmt_num
from .summary import Summary, direction, display_name, spec

__all__ = ["aggregate_table", "iqm", "probability_of_improvement", "stratified_ci",
           "performance_profile", "N_BOOT"]

N_BOOT = 2000
CONFIDENCE = 0.95


def iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean of the runs of all samples (tasks) pooled."""
    return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def _mean(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.concatenate(samples, axis=axis).mean(axis=axis)


def probability_of_improvement(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) averaged over tasks; ``samples`` = the tasks' X runs, then their Y runs."""
    k = len(samples) // 2
    per_task = []
    for x, y in zip(samples[:k], samples[k:]):
        x = np.moveaxis(np.asarray(x), axis, -1)[..., :, None]
        y = np.moveaxis(np.asarray(y), axis, -1)[..., None, :]
        per_task.append(((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1)))
    return np.mean(per_task, axis=0)


def stratified_ci(strata: list[np.ndarray], statistic) -> tuple[float, float, float]:
    """(point estimate, low, high): the statistic on the data and its 95% stratified
    percentile-bootstrap interval (one resampled sample per stratum). No interval when a
    stratum has fewer than 2 runs."""
    point = float(statistic(*strata))
    if any(len(s) < 2 for s in strata):
        return point, math.nan, math.nan
    res = stats.bootstrap(tuple(strata), statistic, vectorized=True, paired=False,
                          method="percentile", n_resamples=N_BOOT, confidence_level=CONFIDENCE,
                          rng=np.random.default_rng(0))
    ci = res.confidence_interval
    return point, float(ci.low), float(ci.high)


def _task_rows(summ: Summary) -> dict[tuple, np.ndarray]:
    """(model, dataset, label) -> positions of its runs in ``summ.values``, in row order."""
    v = summ.values
    return {k: np.asarray(rows) for k, rows in
            v.groupby(["model", "dataset", "label"], sort=False).indices.items()}


def _strata(summ: Summary, label: str, metric: str,
            rows: dict[tuple, np.ndarray] | None = None) -> dict[tuple, np.ndarray]:
    """Per task (model, dataset) the values of ``label``'s runs (NaN left out). ``rows``:
    :func:`_task_rows` of ``summ``, made once by callers that ask many times."""
    rows = _task_rows(summ) if rows is None else rows
    values = summ.values[metric].to_numpy(dtype=np.float64)
    out = {}
    for g in summ.groups:
        at = rows.get((g[0], g[1], label))
        x = values[at] if at is not None else values[:0]
        x = x[~np.isnan(x)]
        if len(x):
            out[g] = x
    return out


def performance_profile(strata: list[np.ndarray], taus: np.ndarray):
    """(share of runs > tau, low, high) per tau, pooled over strata, with stratified bands
    (one bootstrap for all taus: the statistic returns one value per tau)."""
    taus = np.asarray(taus, dtype=np.float64)

    def share(*s, axis=-1):
        x = np.moveaxis(np.concatenate(s, axis=axis), axis, -1)
        return np.moveaxis((x[..., None, :] > taus[:, None]).mean(axis=-1), -1, 0)

    point = (np.concatenate(strata)[None, :] > taus[:, None]).mean(axis=-1)
    if any(len(x) < 2 for x in strata):
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    res = stats.bootstrap(tuple(strata), share, vectorized=True, paired=False,
                          method="percentile", n_resamples=N_BOOT, confidence_level=CONFIDENCE,
                          rng=np.random.default_rng(0))
    return point, np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def _ci_text(p: float, lo: float, hi: float, sp: str) -> str:
    if not math.isfinite(p):
        return MISSING
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt_num(p, sp)
    return f"{fmt_num(p, sp)} [{fmt_num(lo, sp)}, {fmt_num(hi, sp)}]"


COLUMNS = ["label", "metric", "runs", "tasks", "iqm", "iqm_low", "iqm_high", "mean", "mean_low",
           "mean_high", "baseline", "p_improve", "p_improve_low", "p_improve_high"]


def aggregate_table(col: Collected, summ: Summary) -> Table | None:
    """IQM, mean and P(> baseline) per method and main metric, over every task and seed."""
    if len(summ.groups) < 2 or not summ.main or not len(summ.values):
        return None
    labels = [lab for lab in col.labels if lab in set(summ.values["label"])]
    rows, records = [], []
    at = _task_rows(summ)
    for lab in labels:
        for m in summ.main:
            st = _strata(summ, lab, m, at)
            if len(st) < 2:
                continue
            sp = spec(m)
            iq = stratified_ci(list(st.values()), iqm)
            mn = stratified_ci(list(st.values()), _mean)
            poi = (math.nan, math.nan, math.nan)
            if col.baseline is not None and lab != col.baseline:
                base = _strata(summ, col.baseline, m, at)
                common = [g for g in st if g in base]
                if common:
                    sgn = -1.0 if direction(m) < 0 else 1.0
                    poi = stratified_ci([sgn * st[g] for g in common] +
                                        [sgn * base[g] for g in common],
                                        probability_of_improvement)
            runs = sum(len(x) for x in st.values())
            rows.append([lab, display_name(m), str(runs), str(len(st)), _ci_text(*iq, sp),
                         _ci_text(*mn, sp), _ci_text(*poi, ".2f")])
            records.append(dict(zip(COLUMNS, [lab, m, runs, len(st), *iq, *mn, col.baseline,
                                              *poi])))
    if not rows:
        return None
    notes = [f"Over all {len(summ.groups)} model/data-set groups (tasks) and seeds (runs), after "
             "Agarwal et al. 2021: IQM = interquartile mean of the pooled runs (25% trimmed at "
             "each end); P(> baseline) = probability that a run of the method beats a run of "
             f"{col.baseline!r} on the same task, averaged over tasks (ties count half).",
             "Brackets: 95% stratified percentile bootstrap (runs resampled within each task, "
             f"{N_BOOT} resamples, fixed seed); approximate with few seeds per task, and absent "
             "where a task has a single run. Runs of different tasks are pooled as they are "
             "(not normalized), so tasks on different scales weigh differently."]
    return Table("aggregate", f"Aggregate over tasks: IQM and probability of improvement over "
                 f"{col.baseline}", ["Method", "Metric", "Runs", "Tasks", "IQM [95% CI]",
                                     "Mean [95% CI]", f"P(> {col.baseline}) [95% CI]"],
                 rows, pd.DataFrame(records, columns=COLUMNS), None, notes, n_label_cols=2)


def profile_figure(col: Collected, summ: Summary, colors: dict):
    """Performance profiles (share of runs above tau) per main metric, one line per method,
    with stratified-bootstrap bands."""
    from .plots import FigureResult, _grid, _panels, render_png

    name, title = "performance_profiles", "Performance profiles"
    caption = ("Share of runs (model x data set x seed) scoring above each threshold, per "
               "method; bands: 95% stratified bootstrap over runs within each task "
               "(Agarwal et al. 2021). A curve above another everywhere dominates it.")
    metrics = [m for m in summ.main if direction(m) != 0]
    if len(summ.groups) < 2 or not metrics:
        return FigureResult(name, title, caption, skipped="needs two or more model/data-set "
                            "groups (tasks) with a main metric")
    labels = [lab for lab in col.labels if lab in set(summ.values["label"])]
    rows, ncols = _grid(len(metrics), 3)
    fig, axes = _panels(rows, ncols, 3.2, 2.4)
    at = _task_rows(summ)
    for i, m in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        allv = summ.values[m].dropna().to_numpy(dtype=np.float64)
        if not len(allv):
            ax.set_visible(False)
            continue
        lo_t, hi_t = float(allv.min()), float(allv.max())
        pad = 0.02 * (hi_t - lo_t) if hi_t > lo_t else 1.0
        taus = np.linspace(lo_t - pad, hi_t + pad, 41)
        for lab in labels:
            st = list(_strata(summ, lab, m, at).values())
            if len(st) < 2:
                continue
            y, a, b = performance_profile(st, taus)
            ax.plot(taus, y, color=colors[lab], label=lab, linewidth=1.1)
            if np.isfinite(a).all():
                ax.fill_between(taus, a, b, color=colors[lab], alpha=0.15, linewidth=0)
        ax.set_xlabel(f"{display_name(m)} threshold τ")
        ax.set_ylabel("share of runs > τ")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{display_name(m)} ({m})")
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(metrics), rows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    return FigureResult(name, title, caption, png=render_png(fig))
