"""Statistics over seeds, against values worked out by hand (t quantiles from tables)."""
import math

import numpy as np
import pandas as pd
import pytest

from harness.errors import UserError
from harness.report.stats import (AGGREGATE_COLUMNS, adjust, aggregate, holm, mde, paired_test,
                                  signflip_test, summarize, t_power, verdicts)


# ----------------------------------------------------------------------------- summarize
def test_summarize_t_interval_by_hand():
    x = [2, 4, 4, 4, 5, 5, 7, 9]
    s = summarize(x)
    # mean 40/8 = 5; squared deviations 9+1+1+1+0+0+4+16 = 32; sd = sqrt(32/7) = 2.13809
    # se = 2.13809 / sqrt(8) = 0.75593; t_{7, 0.975} = 2.36462 (t table) -> half 1.78749
    assert s["mean"] == 5.0 and s["n"] == 8
    assert s["std"] == pytest.approx(math.sqrt(32 / 7))
    assert s["se"] == pytest.approx(0.755929, abs=1e-6)
    assert s["ci_low"] == pytest.approx(5 - 1.78749, abs=1e-4)
    assert s["ci_high"] == pytest.approx(5 + 1.78749, abs=1e-4)


def test_summarize_two_seeds_is_wide_not_min_max():
    # (1, 3): sd sqrt(2), se 1, t_{1, 0.975} = 12.7062 -> 2 -/+ 12.7062; a percentile bootstrap
    # would say [1, 3]
    s = summarize([1.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(math.sqrt(2))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((2 - 12.7062, 2 + 12.7062), abs=1e-4)


def test_summarize_constant_one_value_and_nan():
    s = summarize([3.0, 3.0, 3.0])
    assert (s["mean"], s["std"], s["ci_low"], s["ci_high"]) == (3.0, 0.0, 3.0, 3.0)
    s = summarize([5.0])
    assert s["mean"] == 5.0 and s["n"] == 1
    assert math.isnan(s["std"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])
    s = summarize([1.0, math.nan, 3.0])  # NaN (a missing run) dropped
    assert s["n"] == 2 and s["mean"] == 2.0
    s = summarize([math.nan])
    assert s["n"] == 0 and math.isnan(s["mean"])


# ------------------------------------------------------------------------------ paired tests
def test_paired_t_by_hand():
    # d = (1, 2, 3.5) - 0: mean 13/6 = 2.16667, sd 1.25831, se 0.72648, t = 2.98240, df 2
    r = paired_test([1.0, 2.0, 3.5], [0.0, 0.0, 0.0])
    t = (13 / 6) / (np.std([1, 2, 3.5], ddof=1) / math.sqrt(3))
    # df = 2: the t distribution's two-sided tail has the closed form 1 - t / sqrt(2 + t^2)
    assert r["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert r["test"] == "paired t" and r["n"] == 3
    assert r["diff"] == pytest.approx(13 / 6)
    # t_{2, 0.975} = 4.30265 -> 2.16667 -/+ 4.30265 * 0.72648
    assert r["ci_low"] == pytest.approx(13 / 6 - 4.30265 * 0.726483, abs=1e-4)
    # all three differences positive: the exact sign-flip p is 2 / 2^3
    assert (r["p_signflip"], r["p_signflip_min"]) == (0.25, 0.25)


def test_equal_differences_fall_back_to_the_exact_sign_flip_test():
    # every seed moved by exactly 1: t is undefined (sd 0); only the two uniform sign patterns
    # of 8 reach |mean| = 1 -> p = 2/8; a bootstrap would say p = 0.0002
    r = paired_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert r["test"] == "sign-flip" and r["p_value"] == 0.25 and r["sd"] == 0.0
    r = paired_test([0.5, 0.6], [0.5, 0.6])
    assert r["p_value"] == 1.0 and r["diff"] == 0.0


def test_signflip_by_enumeration():
    # d = (1, -2, 3): signed sums over the 8 patterns: 6, 0, 2, -4, 4, -2, 0, -6; the observed
    # sum is 2; |sum| >= 2 in 6 of 8 -> p = 0.75
    assert signflip_test([1.0, -2.0, 3.0]) == (pytest.approx(0.75), 0.25)
    assert signflip_test([1.0, 2.0])[1] == 0.5
    assert signflip_test([1.0] * 5) == (pytest.approx(2 / 32), 2 / 32)


def test_paired_small_and_bad_inputs():
    r = paired_test([0.5], [0.4])
    assert r["n"] == 1 and r["diff"] == pytest.approx(0.1) and math.isnan(r["p_value"])
    r = paired_test([0.5, math.nan, 0.7], [0.4, 0.5, math.nan])  # only pair 0 is complete
    assert r["n"] == 1
    with pytest.raises(UserError, match="one value per seed"):
        paired_test([1.0, 2.0], [1.0])


def test_holm_and_bh_by_hand():
    # Holm: sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    got = adjust([0.01, math.nan, 0.04, 0.03], "holm")
    assert got[0] == pytest.approx(0.03) and math.isnan(got[1])
    assert got[2] == pytest.approx(0.06) and got[3] == pytest.approx(0.06)
    # BH: p_(i) * m / i = 0.03, 0.045, 0.04 -> from the top: 0.04, 0.04, 0.03
    got = adjust([0.01, 0.04, 0.03], "fdr_bh")
    assert got.tolist() == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(UserError, match="holm"):
        adjust([0.1], "bonferonni")
    # and against statsmodels on random families, row by row and vectorized
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, size=(5, 12))
    for row, vec in zip(p, holm(p)):
        assert multipletests(row, method="holm")[1] == pytest.approx(vec)
        assert multipletests(row, method="fdr_bh")[1] == pytest.approx(adjust(row, "fdr_bh"))


def test_mde_against_the_normal_approximation_and_its_own_power():
    # large n: d_z = (z_{0.975} + z_{0.8}) / sqrt(n) = (1.95996 + 0.84162) / 10 = 0.28016
    assert mde(1.0, 100) == pytest.approx(0.28016, rel=0.01)  # t vs z: within 1%
    for n in (2, 3, 5, 10):
        d = mde(2.0, n, alpha=0.01)
        assert t_power(d / 2.0, n, 0.01) == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(mde(0.0, 3)) and math.isnan(mde(1.0, 1))


def test_t_power_where_scipy_nct_fails():
    # d_z = 64 at n = 2, alpha 0.05/30: scipy's noncentral t gives NaN; the integral does not.
    # Checked against 400k simulated t statistics (fixed seed): 0.187 +- 0.001
    rng = np.random.default_rng(0)
    x = rng.normal(64.0, 1.0, size=(400_000, 2))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(2))
    from scipy import stats
    crit = stats.t.isf(0.05 / 60, 1)
    assert t_power(64.0, 2, 0.05 / 30) == pytest.approx(np.mean(np.abs(t) > crit), abs=0.003)


def test_verdicts_need_the_corrected_p():
    v = verdicts([0.01, 0.2, 0.01, math.nan, 0.01], [1.0, 5.0, -1.0, 0.0, 2.0], [3, 3, 3, 1, 3],
                 [1, 1, 1, 1, -1])
    assert v == ["better", "not distinguishable at n = 3", "worse", "one seed: no test", "worse"]
    assert verdicts([0.01], [1.0], [0]) == ["no paired seeds"]


# ----------------------------------------------------------------------------- aggregate
def test_aggregate_columns_rows_and_hand_values():
    df = pd.DataFrame({
        "dataset": ["a"] * 6,
        "method": ["dpo"] * 3 + ["ipo"] * 3,
        "seed": [0, 1, 2] * 2,
        "acc": [0.60, 0.64, 0.62, 0.70, 0.66, 0.71],
    })
    out = aggregate(df, ["dataset", "method"], ["acc"], baseline="dpo")
    assert list(out.columns) == ["dataset", "method"] + AGGREGATE_COLUMNS
    base = out[out.method == "dpo"].iloc[0]
    assert base["n"] == 3 and base["mean"] == pytest.approx(0.62) and base["n_pairs"] == 0
    assert math.isnan(base["p_value"])
    r = out[out.method == "ipo"].iloc[0]
    # differences 0.10, 0.02, 0.09: mean 0.07, sd 0.04359
    assert r["diff"] == pytest.approx(0.07) and r["n_pairs"] == 3
    assert r["diff_sd"] == pytest.approx(np.std([0.10, 0.02, 0.09], ddof=1))
    t = 0.07 / (r["diff_sd"] / math.sqrt(3))
    assert r["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert r["test"] == "paired t"


def test_aggregate_errors():
    df = pd.DataFrame({"method": ["a", "a"], "seed": [0, 0], "x": [1.0, 2.0]})
    with pytest.raises(UserError, match="several rows"):
        aggregate(df, ["method"], ["x"])
    with pytest.raises(UserError, match="not in the results table"):
        aggregate(df, ["method"], ["y"])
    out = aggregate(df.iloc[:1], ["method"], ["x"])
    assert out["baseline"].isna().all() and out["n_pairs"].tolist() == [0]
