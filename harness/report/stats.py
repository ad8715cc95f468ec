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

Two forms of each statistic: :func:`summarize` / :func:`paired_test` take one sample and call
scipy once each (the readable reference), :func:`summarize_table` / :func:`paired_table` take a
table of samples (one per row, NaN where a seed is missing) and compute every row at once with
numpy, grouping rows by their count of values; the report uses the tables (a report over 1,000
cells makes about 2,400 comparisons, and scipy's per-call overhead made them a third of its time).
The two forms give the same numbers bit for bit (``tests/test_stats_table.py`` checks it on
random tables with missing seeds, ties, constant rows and n = 1, 2): the table form sums, in the
same order, the same sign-flipped values that ``scipy.stats.permutation_test`` sums, and uses
its tolerance for ties.
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

from .power import ALPHA, POWER, mde, t_power

__all__ = ["summarize", "t_interval", "paired_test", "signflip_test", "adjust", "holm", "mde",
           "aggregate", "t_power", "paired_p", "verdicts", "summarize_table", "paired_table",
           "paired_p_rows", "signflip_rows", "AGGREGATE_COLUMNS", "CONFIDENCE", "ALPHA", "POWER",
           "CORRECTIONS"]

CONFIDENCE = 0.95
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


# ----------------------------------------------------------------- tables of samples at once
_EPS_TIES = float(np.finfo(np.float64).eps) * 100  # permutation_test's tolerance for ties
_CHUNK = 1 << 22  # sign-flip sums held at once (32 MB of float64)


def _by_count(valid: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices of a [k, S] validity mask, grouped by their count of valid entries."""
    counts = valid.sum(axis=1)
    return {int(n): np.flatnonzero(counts == n) for n in np.unique(counts)}


def _compact(x: np.ndarray, valid: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """The valid entries of ``rows`` (each has ``n``), in column order: a [len(rows), n] array."""
    return np.ascontiguousarray(x[rows][valid[rows]].reshape(len(rows), n))


def _table(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise UserError(f"{name}: a table is 2-D (one sample per row), got shape {x.shape}")
    return x


def summarize_table(x, *, confidence_level: float = CONFIDENCE) -> dict[str, np.ndarray]:
    """:func:`summarize` of every row of ``x`` (shape [k, S]; NaN = no value), as arrays of
    length k under the same keys (``n`` int). Equal to :func:`summarize` row by row, bit for
    bit: the rows with the same count of values are summarized together."""
    x = _table(x, "summarize_table")
    k = x.shape[0]
    valid = ~np.isnan(x)
    out = {key: np.full(k, np.nan) for key in ("mean", "std", "se", "ci_low", "ci_high")}
    out["n"] = valid.sum(axis=1).astype(int)
    for n, rows in _by_count(valid).items():
        if n == 0:
            continue
        c = _compact(x, valid, rows, n)
        out["mean"][rows] = c.mean(axis=-1)
        if n == 1:
            continue
        sd = c.std(axis=-1, ddof=1)
        _, lo, hi = t_interval(c, confidence_level)
        out["std"][rows], out["se"][rows] = sd, sd / math.sqrt(n)
        out["ci_low"][rows], out["ci_high"][rows] = lo, hi
    return out


@functools.lru_cache(maxsize=_MAX_EXACT + 1)
def _sign_patterns(n: int) -> np.ndarray:
    """All 2^n sign patterns as a [2^n, n] array of +-1, in permutation_test's order."""
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n - 1, -1, -1)[None, :]) & 1
    return (1 - 2 * bits).astype(np.float64)


def signflip_rows(d) -> tuple[np.ndarray, np.ndarray]:
    """:func:`signflip_test` of every row of ``d`` (shape [k, n], n >= 2, no NaN): (p, smallest
    attainable p). The 2^n sign patterns of n <= 16 are enumerated once for all rows; each
    row's null distribution is the mean of its sign-flipped values summed left to right, as
    ``scipy.stats.permutation_test`` sums them, with its tolerance for ties (so the same p, bit
    for bit). Rows with n > 16 or a non-finite value go through :func:`signflip_test`."""
    d = _table(d, "signflip_rows")
    k, n = d.shape
    p = np.full(k, np.nan)
    p_min = np.full(k, min(1.0, 2.0 / 2 ** n) if n <= _MAX_EXACT else 2.0 / 10000)
    if n < 2:
        raise UserError(f"signflip_rows: rows of {n} value(s); a sign-flip test needs 2 or more")
    finite = np.isfinite(d).all(axis=1) if n <= _MAX_EXACT else np.zeros(k, dtype=bool)
    for i in np.flatnonzero(~finite):  # random patterns (n > 16) or inf: scipy, row by row
        p[i], p_min[i] = signflip_test(d[i])
    zero = finite & np.all(d == 0, axis=1)
    p[zero] = 1.0
    todo = np.flatnonzero(finite & ~zero)
    if not len(todo):
        return p, p_min
    signs = _sign_patterns(n)
    step = max(1, _CHUNK // 2 ** n)
    for start in range(0, len(todo), step):
        rows = todo[start:start + step]
        x = d[rows]
        observed = x.mean(axis=-1)[:, None]
        acc = x[:, :1] * signs[None, :, 0]
        for i in range(1, n):
            acc = acc + x[:, i:i + 1] * signs[None, :, i]
        null = acc / n
        gamma = np.abs(_EPS_TIES * observed)
        less = np.count_nonzero(null <= observed + gamma, axis=1) / 2 ** n
        greater = np.count_nonzero(null >= observed - gamma, axis=1) / 2 ** n
        p[rows] = np.clip(np.minimum(less, greater) * 2, 0.0, 1.0)
    return p, p_min


def paired_table(a, b, *, confidence_level: float = CONFIDENCE) -> dict[str, np.ndarray]:
    """:func:`paired_test` of every row of ``a`` against the same row of ``b`` (shapes [k, S],
    column j of both = seed j; a pair with NaN on either side is left out), as arrays of length
    k under the same keys (``n`` int, ``test`` str). Equal to :func:`paired_test` row by row,
    bit for bit; the rows with the same number of pairs are tested together."""
    a, b = _table(a, "paired_table"), _table(b, "paired_table")
    if a.shape != b.shape:
        raise UserError(f"paired_table: tables of shapes {a.shape} and {b.shape}; a paired "
                        "comparison needs one value per seed on both sides")
    k = a.shape[0]
    valid = ~(np.isnan(a) | np.isnan(b))
    d = a - b
    out = {key: np.full(k, np.nan) for key in ("diff", "sd", "ci_low", "ci_high", "p_value",
                                                "p_signflip", "p_signflip_min")}
    out["n"] = valid.sum(axis=1).astype(int)
    out["test"] = np.full(k, "", dtype=object)
    for n, rows in _by_count(valid).items():
        if n == 0:
            continue
        c = _compact(d, valid, rows, n)
        if n == 1:
            out["diff"][rows] = c.mean(axis=-1)
            continue
        s = summarize_table(c, confidence_level=confidence_level)
        out["diff"][rows], out["sd"][rows] = s["mean"], s["std"]
        out["ci_low"][rows], out["ci_high"][rows] = s["ci_low"], s["ci_high"]
        out["p_signflip"][rows], out["p_signflip_min"][rows] = signflip_rows(c)
        out["p_value"][rows] = paired_p(c)
        out["test"][rows] = np.where(s["std"] > 0, "paired t", "sign-flip")
    return out


def paired_p_rows(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """:func:`paired_p` of each of ``rows`` (1-D, no NaN, any lengths >= 2), computed together
    for the rows of one length."""
    out = np.full(len(rows), np.nan)
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    for n, idx in by_len.items():
        out[idx] = paired_p(np.array([rows[i] for i in idx], dtype=np.float64).reshape(len(idx), n))
    return out


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
    keys, n_m = list(groups), len(metric_cols)
    vals = {key: np.array([g[m].to_numpy(dtype=np.float64) for m in metric_cols],
                          dtype=np.float64).reshape(n_m, len(g)).T for key, g in groups.items()}
    # one table row per (group, metric), in that order: the group's values in its row order
    width = max((len(v) for v in vals.values()), default=0)
    own = np.full((len(keys) * n_m, width), np.nan)
    for gi, key in enumerate(keys):
        own[gi * n_m:(gi + 1) * n_m, :len(vals[key])] = vals[key].T
    summ = summarize_table(own, confidence_level=confidence_level)
    pairs = _baseline_pairs(groups, vals, group_cols, baseline, label_col, n_m)
    test = None
    if pairs:
        at = np.concatenate([np.arange(gi * n_m, (gi + 1) * n_m) for gi in pairs])
        width = max(len(ab[0]) for ab in pairs.values())
        a, b = np.full((len(at), width), np.nan), np.full((len(at), width), np.nan)
        for j, (x, y) in enumerate(pairs.values()):
            a[j * n_m:(j + 1) * n_m, :len(x)], b[j * n_m:(j + 1) * n_m, :len(y)] = x.T, y.T
        test = paired_table(a, b, confidence_level=confidence_level)
        where = {int(r): j for j, r in enumerate(at)}
    rows = []
    for gi, key in enumerate(keys):
        labels = dict(zip(group_cols, key))
        for mi, metric in enumerate(metric_cols):
            r = gi * n_m + mi
            row = {**labels, "metric": metric, **{c: summ[c][r].item() for c in _SUMMARY},
                   "baseline": baseline, "n_pairs": 0, "diff": math.nan, "diff_sd": math.nan,
                   "diff_ci_low": math.nan, "diff_ci_high": math.nan, "p_value": math.nan,
                   "test": "", "p_signflip": math.nan, "p_signflip_min": math.nan}
            j = where.get(r) if test is not None else None
            if j is not None and test["n"][j] > 0:  # seeds with a value on both sides
                row.update({out: test[c][j].item() if c != "test" else test[c][j]
                            for out, c in _PAIRED.items()})
            rows.append(row)
    out = pd.DataFrame(rows, columns=group_cols + AGGREGATE_COLUMNS)
    out["n"] = out["n"].astype(int)
    out["n_pairs"] = out["n_pairs"].astype(int)
    return out.reset_index(drop=True)


_SUMMARY = ("mean", "std", "se", "n", "ci_low", "ci_high")
_PAIRED = {"n_pairs": "n", "diff": "diff", "diff_sd": "sd", "diff_ci_low": "ci_low",
           "diff_ci_high": "ci_high", "p_value": "p_value", "test": "test",
           "p_signflip": "p_signflip", "p_signflip_min": "p_signflip_min"}


def _baseline_pairs(groups: dict, vals: dict, group_cols: list, baseline, label_col: str,
                    n_m: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Group position -> (its values, its baseline's) on the seeds both have, sorted by seed
    (arrays [seeds, metrics]), for every group that has a baseline group."""
    if baseline is None:
        return {}
    out = {}
    for gi, (key, g) in enumerate(groups.items()):
        labels = dict(zip(group_cols, key))
        if labels[label_col] == baseline:
            continue
        bkey = tuple(baseline if c == label_col else labels[c] for c in group_cols)
        if bkey not in groups:
            continue
        base = groups[bkey]
        seeds = g.index.intersection(base.index).sort_values()
        out[gi] = (vals[key][g.index.get_indexer(seeds)].reshape(len(seeds), n_m),
                   vals[bkey][base.index.get_indexer(seeds)].reshape(len(seeds), n_m))
    return out
