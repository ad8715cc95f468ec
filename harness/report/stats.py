"""Statistics over seeds for the report: intervals that hold at 2-10 seeds, paired tests,
multiple-comparison correction and the smallest detectable difference.

Choices (docs/metrics.md explains them; ``tests/test_stats_simulation.py`` checks them by
simulation at n = 2, 3, 5 and 10):

- **Interval of a mean over seeds**: Student-t, ``mean ± t_{n-1, 0.975} · sd / sqrt(n)``
  (``scipy.stats.t``). It has its nominal 95% coverage at every n >= 2 for normal data; a
  percentile bootstrap over n seeds does not (with 2 seeds it is [min, max], 51% coverage).
- **Comparison with the baseline**: paired by seed (method A and the baseline with seed s share
  the SFT checkpoint, data order and sampling seed), on the per-seed differences
  ``d_s = a_s - b_s``: a two-sided **paired t-test** (``scipy.stats.ttest_1samp`` on d) and the
  t-interval of ``mean(d)``. When the differences do not vary (sd 0: t undefined), the exact
  **sign-flip test** (``scipy.stats.permutation_test``, all 2^n sign patterns) decides instead;
  its smallest attainable p is ``2 / 2^n`` (0.5 at n = 2, 0.25 at n = 3), reported beside it.
  Every comparison also carries the sign-flip p and its minimum, as a check that needs no
  normality.
- **Multiple comparisons**: the p-values of one table are corrected together, Holm by default
  (step-down, checked against ``statsmodels.stats.multitest.multipletests``; Benjamini-Hochberg
  with ``fdr_bh`` from ``scipy.stats.false_discovery_control``). A verdict
  (better / worse) needs a corrected p below 0.05; otherwise the comparison is "not
  distinguishable at n = k".
- **Minimum detectable effect** (MDE): the smallest true mean difference the paired t-test finds
  with 80% power at the strictest level the correction can ask of one comparison (Holm's
  first step = Bonferroni, ``0.05 / m`` for m comparisons), given the observed sd of the
  differences: ``MDE = d_z · sd(d)`` where ``d_z`` solves the noncentral-t power equation
  (``statsmodels.stats.power.TTestPower``). Holm's later steps are less strict, so the MDE is
  an upper bound for all but the first comparison.

NaN values (a metric missing for a run) are dropped before any statistic; ``n`` counts what is
left.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from harness.errors import UserError

__all__ = ["summarize", "t_interval", "paired_test", "signflip_test", "adjust", "holm", "mde",
           "aggregate", "t_power", "paired_p", "verdicts", "AGGREGATE_COLUMNS", "CONFIDENCE",
           "ALPHA", "POWER", "CORRECTIONS"]

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
CORRECTIONS = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg"}
_MAX_EXACT = 16  # up to 2^16 sign patterns enumerated exactly


def _finite_1d(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[~np.isnan(x)]


def summarize(values: Sequence[float], *, confidence_level: float = CONFIDENCE) -> dict:
    """Mean, sample std (ddof=1), standard error, n and the Student-t interval of the mean.

    ``n == 0``: all NaN. ``n == 1``: std, se and CI NaN (one seed says nothing about noise).
    All values equal: sd 0 and the interval is that value."""
    x = _finite_1d(values)
    n = len(x)
    out = {"mean": math.nan, "std": math.nan, "se": math.nan, "n": n, "ci_low": math.nan,
           "ci_high": math.nan}
    if n == 0:
        return out
    out["mean"] = float(np.mean(x))
    if n == 1:
        return out
    sd = float(np.std(x, ddof=1))
    _, lo, hi = t_interval(x, confidence_level)
    out.update(std=sd, se=sd / math.sqrt(n), ci_low=float(lo), ci_high=float(hi))
    return out


def t_interval(x: np.ndarray, confidence_level: float = CONFIDENCE):
    """(mean, low, high) of the Student-t interval of the mean of each row of ``x`` (shape
    [..., n], n >= 2, no NaN): ``mean ± t_{n-1, (1+c)/2} · sd(ddof=1) / sqrt(n)``. Vectorized:
    the simulation tests call it on thousands of rows at once."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    mean = x.mean(axis=-1)
    half = stats.t.ppf(0.5 + confidence_level / 2, n - 1) * x.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def signflip_test(d: Sequence[float]) -> tuple[float, float]:
    """Two-sided sign-flip (paired permutation) test of mean(d) = 0: (p, smallest attainable p).

    Exact over all 2^n sign patterns for n <= 16 (``scipy.stats.permutation_test``), else
    9999 random patterns with a fixed seed. NaN for n < 1."""
    x = _finite_1d(d)
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    p_min = min(1.0, 2.0 / 2 ** n) if n <= _MAX_EXACT else 2.0 / 10000
    if np.all(x == 0):
        return 1.0, p_min
    res = stats.permutation_test((x,), np.mean, permutation_type="samples", vectorized=True,
                                 n_resamples=2 ** n if n <= _MAX_EXACT else 9999,
                                 alternative="two-sided", rng=np.random.default_rng(0))
    return float(min(1.0, res.pvalue)), p_min


def paired_test(a: Sequence[float], b: Sequence[float], *,
                confidence_level: float = CONFIDENCE) -> dict:
    """Paired comparison of ``a`` with ``b`` (``a[i]``, ``b[i]`` share a seed).

    Returns ``n`` (pairs without NaN), ``diff`` (mean of a - b), ``sd`` (of the differences),
    ``ci_low``/``ci_high`` (t-interval of the mean difference), ``p_value`` (two-sided paired
    t-test; the sign-flip p when sd is 0), ``test`` (``"paired t"`` or ``"sign-flip"``),
    ``p_signflip`` and ``p_signflip_min``. With fewer than 2 pairs there is no test: NaN."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise UserError(f"paired_test: {len(x)} values against {len(y)}; a paired comparison "
                        "needs one value per seed on both sides")
    d = (x - y)[~(np.isnan(x) | np.isnan(y))]
    n = len(d)
    out = {"n": n, "diff": math.nan, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "p_value": math.nan, "test": "", "p_signflip": math.nan, "p_signflip_min": math.nan}
    if n == 0:
        return out
    out["diff"] = float(np.mean(d))
    if n == 1:
        return out
    s = summarize(d, confidence_level=confidence_level)
    out.update(sd=s["std"], ci_low=s["ci_low"], ci_high=s["ci_high"])
    out["p_signflip"], out["p_signflip_min"] = signflip_test(d)
    out["p_value"] = float(paired_p(d[None, :])[0])
    out["test"] = "paired t" if s["std"] > 0 else "sign-flip"
    return out


def paired_p(d: np.ndarray) -> np.ndarray:
    """Two-sided p-values of mean = 0 for each row of ``d`` (shape [..., n], no NaN, n >= 2):
    the paired t-test where the row varies, else the exact sign-flip p, which for n equal
    values c is ``2 / 2^n`` (only the two uniform sign patterns reach |c|) and 1 for c = 0.
    Vectorized: the simulation tests call it on thousands of rows at once."""
    d = np.asarray(d, dtype=np.float64)
    n = d.shape[-1]
    sd = d.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's note on near-constant rows
        p = stats.ttest_1samp(d, 0.0, axis=-1).pvalue
    flat = ~(sd > 0)
    p = np.where(flat, np.where(d[..., 0] == 0, 1.0, min(1.0, 2.0 / 2 ** n)), p)
    return np.asarray(p, dtype=np.float64)


def verdicts(p_adjusted: Sequence[float], diff: Sequence[float], n_pairs: Sequence[int],
             direction: Sequence[int] | int = 1, *, alpha: float = ALPHA) -> list[str]:
    """The verdict of each comparison: "better" / "worse" (or "higher" / "lower" for a
    metric without a direction) only when its *corrected* p is below ``alpha``; else "not
    distinguishable at n = k"; "no paired seeds" / "one seed: no test" without a test."""
    k = len(p_adjusted)
    dirs = [direction] * k if isinstance(direction, int) else list(direction)
    out = []
    for p, d, n, sgn in zip(p_adjusted, diff, n_pairs, dirs):
        n = int(n)
        if n == 0:
            out.append("no paired seeds")
        elif n == 1:
            out.append("one seed: no test")
        elif not math.isfinite(p) or p >= alpha or not math.isfinite(d) or d == 0:
            out.append(f"not distinguishable at n = {n}")
        elif sgn == 0:
            out.append("higher" if d > 0 else "lower")
        else:
            out.append("better" if d * sgn > 0 else "worse")
    return out


def adjust(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiple-comparison corrected p-values of one family (NaN entries stay NaN and do not
    count). ``holm``: Holm's step-down, ``p_(i) · (m - i + 1)`` made monotone (the test suite
    checks it against ``statsmodels.stats.multitest.multipletests``, which is not called here
    because it runs a full garbage collection on every call, 0.2 s); ``fdr_bh``:
    Benjamini-Hochberg (``scipy.stats.false_discovery_control``)."""
    if method not in CORRECTIONS:
        raise UserError(f"correction {method!r}: choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = holm(p[ok]) if method == "holm" else stats.false_discovery_control(p[ok])
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values along the last axis (no NaN): sorted ascending, the i-th
    (0-based) of m is multiplied by m - i, a running maximum keeps them in order, capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ps = np.take_along_axis(p, order, axis=-1)
    adj = np.minimum(1.0, np.maximum.accumulate(ps * (m - np.arange(m)), axis=-1))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out


def mde(sd: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test on ``n`` pairs with difference
    sd ``sd`` detects with probability ``power`` at level ``alpha``. NaN when n < 2 or sd is
    not positive."""
    if n < 2 or not (isinstance(sd, (int, float)) and math.isfinite(sd) and sd > 0):
        return math.nan
    dz = _detectable_dz(int(n), float(alpha), float(power))
    return dz * float(sd) if math.isfinite(dz) else math.nan


@functools.lru_cache(maxsize=256)
def _detectable_dz(n: int, alpha: float, power: float) -> float:
    """The standardized effect d_z with ``t_power(d_z, n, alpha) == power`` (root of a
    monotone function, bracketed by doubling)."""
    from scipy.optimize import brentq

    def gap(dz: float) -> float:
        return t_power(dz, n, alpha) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 4
        if hi > 1e9:
            return math.nan
    return float(brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-10))


def t_power(dz: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t-test on ``n`` values at level ``alpha``
    when the true mean is ``dz`` standard deviations from 0 (``statsmodels``' noncentral-t
    power). Where scipy's noncentral t returns NaN (large noncentrality at 1-2 degrees of
    freedom) the same probability is integrated over the chi-square law of the sample
    variance: ``E_V[Φ(δ - c·sqrt(V/df)) + Φ(-δ - c·sqrt(V/df))]``, ``δ = dz·sqrt(n)``."""
    from statsmodels.stats.power import TTestPower

    p = float(TTestPower().power(effect_size=dz, nobs=n, alpha=alpha, alternative="two-sided"))
    if math.isfinite(p):
        return p
    from scipy.integrate import quad

    df, delta = n - 1, dz * math.sqrt(n)
    c = float(stats.t.isf(alpha / 2, df))

    def integrand(v: float) -> float:
        s = c * math.sqrt(v / df)
        return (stats.norm.cdf(delta - s) + stats.norm.cdf(-delta - s)) * stats.chi2.pdf(v, df)

    return float(quad(integrand, 0, np.inf, limit=200)[0])


AGGREGATE_COLUMNS = ["metric", "n", "mean", "std", "se", "ci_low", "ci_high", "baseline",
                     "n_pairs", "diff", "diff_sd", "diff_ci_low", "diff_ci_high", "p_value",
                     "test", "p_signflip", "p_signflip_min"]


def _check_frame(df, group_cols, metric_cols, pair_col, baseline, label_col) -> None:
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


def aggregate(df: pd.DataFrame, group_cols: Sequence[str], metric_cols: Sequence[str], *,
              baseline: str | None = None, label_col: str = "method", pair_col: str = "seed",
              confidence_level: float = CONFIDENCE) -> pd.DataFrame:
    """Long-form summary over seeds, with paired tests against a baseline.

    Input: one row per run, with the ``group_cols`` that identify a configuration (e.g.
    ``["model", "dataset", "method"]``), a ``pair_col`` (the seed) and the ``metric_cols``.
    Rows whose ``label_col`` equals ``baseline`` are the reference *within the same values of
    the other group columns* (the same model and dataset).

    Output: one row per (group, metric): ``group_cols``, ``metric``, the :func:`summarize`
    columns (``n, mean, std, se, ci_low, ci_high``), ``baseline``, ``n_pairs`` (seeds with a
    value on both sides; 0 when not compared) and the :func:`paired_test` of this group minus
    its baseline (``diff, diff_sd, diff_ci_low, diff_ci_high, p_value, test, p_signflip,
    p_signflip_min``; NaN / "" for the baseline's rows and uncompared ones). Uncorrected: the
    caller corrects the p-values of a table together (:func:`adjust`).

    Raises UserError for a missing column, or two rows with the same group and seed."""
    group_cols, metric_cols = list(group_cols), list(metric_cols)
    _check_frame(df, group_cols, metric_cols, pair_col, baseline, label_col)
    groups = {(k if isinstance(k, tuple) else (k,)): g.set_index(pair_col)
              for k, g in df.groupby(group_cols, sort=True, dropna=False)}
    rows = []
    for key, g in groups.items():
        labels = dict(zip(group_cols, key))
        base = None
        if baseline is not None and labels[label_col] != baseline:
            base = groups.get(tuple(baseline if c == label_col else labels[c] for c in group_cols))
        for metric in metric_cols:
            s = summarize(g[metric].to_numpy(dtype=np.float64), confidence_level=confidence_level)
            row = {**labels, "metric": metric, **s, "baseline": baseline, "n_pairs": 0,
                   "diff": math.nan, "diff_sd": math.nan, "diff_ci_low": math.nan,
                   "diff_ci_high": math.nan, "p_value": math.nan, "test": "",
                   "p_signflip": math.nan, "p_signflip_min": math.nan}
            if base is not None:
                a, b = g[metric], base[metric]
                seeds = a.dropna().index.intersection(b.dropna().index).sort_values()
                if len(seeds):
                    t = paired_test(a.loc[seeds].to_numpy(dtype=np.float64),
                                    b.loc[seeds].to_numpy(dtype=np.float64),
                                    confidence_level=confidence_level)
                    row.update(n_pairs=t["n"], diff=t["diff"], diff_sd=t["sd"],
                               diff_ci_low=t["ci_low"], diff_ci_high=t["ci_high"],
                               p_value=t["p_value"], test=t["test"],
                               p_signflip=t["p_signflip"], p_signflip_min=t["p_signflip_min"])
            rows.append(row)
    out = pd.DataFrame(rows, columns=group_cols + AGGREGATE_COLUMNS)
    out["n"] = out["n"].astype(int)
    out["n_pairs"] = out["n_pairs"].astype(int)
    return out.reset_index(drop=True)
