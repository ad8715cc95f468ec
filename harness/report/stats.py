"""Statistics over seeds for the report: summaries with bootstrap CIs and paired comparisons.

Choices (docs/metrics.md explains them):

- Confidence intervals are 95% *percentile* bootstrap intervals from ``scipy.stats.bootstrap``
  (``method="percentile"``, 9999 resamples, a fixed seed so a report is reproducible). BCa is
  scipy's default but its jackknife acceleration is unstable, or undefined, with the 2-5 seeds a
  suite usually has. With so few seeds any bootstrap interval is narrower than it should be
  (the resampling distribution of n values is too tight by about sqrt((n-1)/n) and ignores the
  t-correction): read the intervals as a noise indication, not as exact coverage.
- Comparisons are paired by seed: method A with seed s and method B with seed s share the SFT
  checkpoint, data order and sampling seed, so the per-seed differences ``d_s = a_s - b_s``
  cancel the shared noise. We bootstrap the mean of ``d``.
- Two-sided p-value from the bootstrap distribution (percentile inversion):
  ``p = min(1, 2 * min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1)))`` over the ``B``
  resampled means ``d*``. It is the smallest two-sided level at which the percentile interval
  would exclude 0, so ``p < 0.05`` and "the 95% CI excludes 0" agree (up to the +1 terms).
- ``within_noise`` = the CI of the mean difference contains 0.

NaN values (a metric missing for a run) are dropped before any statistic; ``n`` counts what is
left.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from harness.errors import UserError

__all__ = ["summarize", "paired_bootstrap", "aggregate", "AGGREGATE_COLUMNS"]

N_RESAMPLES = 9999
CONFIDENCE = 0.95


def _finite_1d(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[~np.isnan(x)]


def _percentile_bootstrap(x: np.ndarray, confidence_level: float, n_resamples: int, seed: int):
    return stats.bootstrap((x,), np.mean, n_resamples=n_resamples, vectorized=True,
                           confidence_level=confidence_level, method="percentile",
                           rng=np.random.default_rng(seed))


def summarize(values: Sequence[float], *, confidence_level: float = CONFIDENCE,
              n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Mean, sample std (ddof=1), n and a percentile-bootstrap CI of the mean.

    ``n == 0``: all NaN. ``n == 1``: std and CI NaN (one seed says nothing about noise).
    All values equal: the CI is that value (the bootstrap distribution is a point)."""
    x = _finite_1d(values)
    n = len(x)
    out = {"mean": math.nan, "std": math.nan, "n": n, "ci_low": math.nan, "ci_high": math.nan}
    if n == 0:
        return out
    out["mean"] = float(np.mean(x))
    if n == 1:
        return out
    out["std"] = float(np.std(x, ddof=1))
    if np.all(x == x[0]):  # scipy warns on degenerate data; the answer is exact here
        out["ci_low"] = out["ci_high"] = float(x[0])
        return out
    ci = _percentile_bootstrap(x, confidence_level, n_resamples, seed).confidence_interval
    out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    return out


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *,
                     confidence_level: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                     seed: int = 0) -> dict[str, float | bool | int]:
    """Bootstrap of the mean paired difference ``mean(a - b)`` (``a[i]``, ``b[i]`` share a seed).

    Returns ``diff`` (mean of a - b), ``ci_low``/``ci_high`` (percentile CI), ``p_value``
    (two-sided, definition in the module docstring), ``within_noise`` (CI contains 0) and ``n``
    (pairs used: pairs with a NaN on either side are dropped). Deterministic given ``seed``.
    With one pair there is no noise estimate: CI and p are NaN and ``within_noise`` is True
    (no evidence of a difference)."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise UserError(f"paired_bootstrap: {len(x)} values against {len(y)}; a paired "
                        "comparison needs one value per seed on both sides")
    d = (x - y)[~(np.isnan(x) | np.isnan(y))]
    n = len(d)
    out = {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
           "within_noise": True, "n": n}
    if n == 0:
        return out
    out["diff"] = float(np.mean(d))
    if n == 1:
        return out
    if np.all(d == d[0]):
        # every resample has mean d[0]: the interval is a point, p follows the same formula
        boot = np.full(n_resamples, d[0])
        out["ci_low"] = out["ci_high"] = float(d[0])
    else:
        res = _percentile_bootstrap(d, confidence_level, n_resamples, seed)
        boot = np.asarray(res.bootstrap_distribution)
        out["ci_low"] = float(res.confidence_interval.low)
        out["ci_high"] = float(res.confidence_interval.high)
    B = len(boot)
    lower = (1 + np.count_nonzero(boot <= 0)) / (B + 1)
    upper = (1 + np.count_nonzero(boot >= 0)) / (B + 1)
    out["p_value"] = float(min(1.0, 2 * min(lower, upper)))
    out["within_noise"] = bool(out["ci_low"] <= 0 <= out["ci_high"])
    return out


AGGREGATE_COLUMNS = ["metric", "n", "mean", "std", "ci_low", "ci_high", "baseline", "n_pairs",
                     "diff", "diff_ci_low", "diff_ci_high", "p_value", "within_noise"]


def aggregate(df: pd.DataFrame, group_cols: Sequence[str], metric_cols: Sequence[str], *,
              baseline: str | None = None, label_col: str = "method", pair_col: str = "seed",
              confidence_level: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
              seed: int = 0) -> pd.DataFrame:
    """Long-form summary over seeds, with paired comparisons against a baseline.

    Input: one row per run (e.g. one cell of a suite), with the ``group_cols`` that identify a
    configuration (e.g. ``["model", "dataset", "method"]``), a ``pair_col`` (the seed) and the
    ``metric_cols``. ``label_col`` (one of ``group_cols``) names the compared thing; rows
    whose ``label_col`` equals ``baseline`` are the reference *within the same values of the other
    group columns* (the same model and dataset).

    Output: one row per (group, metric), columns ``group_cols`` then:

    - ``metric``: the metric column's name;
    - ``n``, ``mean``, ``std`` (ddof=1), ``ci_low``, ``ci_high``: :func:`summarize` over seeds
      (NaN values dropped);
    - ``baseline``: the baseline label this row was compared with (None without one);
    - ``n_pairs``: seeds present, non-NaN, in both this group and its baseline (0 when not
      compared);
    - ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``p_value``, ``within_noise``: the
      :func:`paired_bootstrap` of this group minus its baseline over those seeds. NaN / NA for the
      baseline's own rows, when no baseline is given, or when no seed pairs up
      (``within_noise`` is a nullable boolean column).

    Raises UserError for a missing column, or two rows with the same group and seed."""
    group_cols = list(group_cols)
    metric_cols = list(metric_cols)
    missing = [c for c in group_cols + metric_cols + [pair_col] if c not in df.columns]
    if missing:
        raise UserError(f"aggregate: columns {missing} not in the results table (columns: "
                        f"{list(df.columns)})")
    if baseline is not None and label_col not in group_cols:
        raise UserError(f"aggregate: label_col {label_col!r} must be one of group_cols "
                        f"{group_cols} to compare against baseline {baseline!r}")
    dup = df.duplicated(subset=group_cols + [pair_col], keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        key = {c: row[c] for c in group_cols + [pair_col]}
        raise UserError(f"aggregate: several rows for {key}; each group needs one row per "
                        f"{pair_col}")

    def _key(values) -> tuple:
        return values if isinstance(values, tuple) else (values,)

    groups = {_key(k): g.set_index(pair_col)
              for k, g in df.groupby(group_cols, sort=True, dropna=False)}
    rows = []
    for key, g in groups.items():
        labels = dict(zip(group_cols, key))
        base = None
        if baseline is not None and labels[label_col] != baseline:
            base_key = tuple(baseline if c == label_col else labels[c] for c in group_cols)
            base = groups.get(base_key)
        for metric in metric_cols:
            s = summarize(g[metric].to_numpy(dtype=np.float64), confidence_level=confidence_level,
                          n_resamples=n_resamples, seed=seed)
            row = {**labels, "metric": metric, **s, "baseline": baseline, "n_pairs": 0,
                   "diff": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan,
                   "p_value": math.nan, "within_noise": pd.NA}
            if base is not None:
                a = g[metric]
                b = base[metric]
                seeds = a.dropna().index.intersection(b.dropna().index)
                if len(seeds):
                    seeds = seeds.sort_values()
                    pb = paired_bootstrap(a.loc[seeds].to_numpy(dtype=np.float64),
                                          b.loc[seeds].to_numpy(dtype=np.float64),
                                          confidence_level=confidence_level,
                                          n_resamples=n_resamples, seed=seed)
                    row.update(n_pairs=pb["n"], diff=pb["diff"], diff_ci_low=pb["ci_low"],
                               diff_ci_high=pb["ci_high"], p_value=pb["p_value"],
                               within_noise=pb["within_noise"])
            rows.append(row)
    out = pd.DataFrame(rows, columns=group_cols + AGGREGATE_COLUMNS)
    out["within_noise"] = out["within_noise"].astype("boolean")
    out["n"] = out["n"].astype(int)
    out["n_pairs"] = out["n_pairs"].astype(int)
    return out.reset_index(drop=True)
