"""The report's statistics proven by simulation, at the seed counts suites use (n = 2, 3, 5, 10).

* Null data (every method drawn from one distribution, with a seed effect shared by the
  methods of a seed, as a shared SFT checkpoint gives): the Student-t interval covers the true
  mean 93-97% of the time (and within Monte-Carlo error of 95%), the uncorrected paired t-test
  rejects at its nominal 5%, and after the Holm correction over a table of comparisons at most
  5% of comparisons (and of tables) get a better/worse verdict.
* Shifted data: the paired t-test's rejection rate matches the power computed independently
  from the noncentral t distribution (scipy.stats.nct), and a shift equal to the reported
  minimum detectable effect is found 80% of the time, also inside a Holm-corrected table.

Monte-Carlo error: with R replications a rate r has standard error sqrt(r (1 - r) / R); every
bound below allows 4 of them (a false failure about once in 30,000 runs). Everything is drawn
with fixed seeds, vectorized over replications (a few seconds in all).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.report.stats import holm, mde, paired_p, summarize, t_interval, verdicts

NS = [2, 3, 5, 10]
R = 20_000


def _mc(rate: float, reps: int) -> float:
    return 4 * math.sqrt(rate * (1 - rate) / reps)


def _null_runs(rng, reps: int, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(method values, baseline values), shape [reps, m, n]: seed effect u_s shared by every
    method of seed s (sd 3), run noise sd 1, all methods with the same mean 60."""
    u = rng.normal(0, 3, size=(reps, 1, n))
    a = 60 + u + rng.normal(0, 1, size=(reps, m, n))
    b = 60 + u + rng.normal(0, 1, size=(reps, 1, n))
    return a, np.broadcast_to(b, a.shape)


@pytest.mark.parametrize("n", NS)
def test_t_interval_covers_95_percent(n):
    rng = np.random.default_rng(100 + n)
    x = rng.normal(60, 3, size=(R, n))
    mean, lo, hi = t_interval(x)
    cover = float(np.mean((lo <= 60) & (60 <= hi)))
    assert 0.93 <= cover <= 0.97
    assert abs(cover - 0.95) <= _mc(0.95, R)
    # summarize (what the report calls per cell) gives the same interval
    for row in x[:50]:
        s = summarize(row)
        m, lo1, hi1 = t_interval(row[None])
        assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo1[0], hi1[0]))


@pytest.mark.parametrize("n", NS)
def test_t_interval_covers_accuracies_on_a_finite_item_set(n):
    # a realistic cell value: accuracy (percent) on 200 items with a per-seed true rate
    # around 60% (sd 2 points): binomial, discrete, not normal
    rng = np.random.default_rng(200 + n)
    p = np.clip(rng.normal(0.6, 0.02, size=(R, n)), 0, 1)
    x = 100 * rng.binomial(200, p) / 200
    _, lo, hi = t_interval(x)
    cover = float(np.mean((lo <= 60) & (60 <= hi)))
    assert 0.93 <= cover <= 0.97


@pytest.mark.parametrize("n", NS)
def test_null_tables_give_at_most_5_percent_verdicts(n):
    rng = np.random.default_rng(300 + n)
    reps, m = 2000, 20  # 2000 tables of 20 comparisons (5 methods x 4 metrics)
    a, b = _null_runs(rng, reps, m, n)
    d = a - b
    p = paired_p(d)
    # the uncorrected test has its nominal size
    raw = float(np.mean(p < 0.05))
    assert abs(raw - 0.05) <= _mc(0.05, reps * m)
    padj, diff = holm(p), d.mean(-1)  # Holm within each table (the last axis)
    called = np.array([[x in ("better", "worse") for x in verdicts(padj[i], diff[i], [n] * m)]
                       for i in range(reps)])
    share = float(called.mean())
    assert share <= 0.05 + _mc(0.05, reps * m)
    fwer = float(called.any(axis=1).mean())
    assert fwer <= 0.05 + _mc(0.05, reps)


@pytest.mark.parametrize("n", NS)
def test_power_at_a_known_shift_matches_the_noncentral_t(n):
    rng = np.random.default_rng(400 + n)
    dz = 2.5 if n == 2 else 1.5  # a shift of 1.5 (2.5) standard deviations of d
    d = rng.normal(dz, 1.0, size=(R, n))
    found = float(np.mean(paired_p(d) < 0.05))
    df, nc = n - 1, dz * math.sqrt(n)
    c = stats.t.isf(0.025, df)
    expected = stats.nct.sf(c, df, nc) + stats.nct.cdf(-c, df, nc)
    assert abs(found - expected) <= _mc(expected, R)


@pytest.mark.parametrize("n", NS)
def test_shift_of_one_mde_is_found_80_percent_of_the_time(n):
    rng = np.random.default_rng(500 + n)
    sd = 2.0
    shift = mde(sd, n, alpha=0.05)
    d = rng.normal(shift, sd, size=(R, n))
    found = float(np.mean(paired_p(d) < 0.05))
    assert abs(found - 0.8) <= _mc(0.8, R)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_mde_at_the_holm_level_holds_inside_a_corrected_table(n):
    # one real shift among m comparisons: Holm finds it at least as often as Bonferroni at
    # 0.05 / m, whose 80%-power shift is the reported MDE
    rng = np.random.default_rng(600 + n)
    reps, m, sd = 3000, 10, 1.0
    shift = mde(sd, n, alpha=0.05 / m)
    d = rng.normal(0, sd, size=(reps, m, n))
    d[:, 0, :] += shift
    padj, diff = holm(paired_p(d)), d.mean(-1)
    hit = np.array([verdicts(padj[i], diff[i], [n] * m)[0] == "better" for i in range(reps)])
    assert float(hit.mean()) >= 0.8 - _mc(0.8, reps)
