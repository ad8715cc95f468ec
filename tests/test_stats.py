"""Statistics over seeds, against values worked out by hand or by an independent bootstrap."""
import math

import numpy as np
import pandas as pd
import pytest

from harness.errors import UserError
from harness.report.stats import AGGREGATE_COLUMNS, aggregate, paired_bootstrap, summarize

B = 9999  # the default number of resamples


# ----------------------------------------------------------------------------- summarize
def test_summarize_mean_std_by_hand_and_ci_against_an_independent_bootstrap():
    x = [2, 4, 4, 4, 5, 5, 7, 9]
    s = summarize(x)
    # mean 40/8 = 5; squared deviations 9+1+1+1+0+0+4+16 = 32; ddof=1 -> sqrt(32/7)
    assert s["mean"] == 5.0 and s["n"] == 8
    assert s["std"] == pytest.approx(math.sqrt(32 / 7))
    # an independent percentile bootstrap with numpy (different random stream): resampled means
    # of 8 integers lie on a 1/8 lattice, so the ends agree to one lattice step (0.125) plus
    # Monte-Carlo error
    rng = np.random.default_rng(12345)
    means = np.asarray(x, float)[rng.integers(0, 8, size=(200_000, 8))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert s["ci_low"] == pytest.approx(lo, abs=0.15)
    assert s["ci_high"] == pytest.approx(hi, abs=0.15)
    # and both sit near the normal approximation 5 -/+ 1.96 * sqrt(var_pop / n) = 5 -/+ 1.386
    assert lo == pytest.approx(5 - 1.386, abs=0.15) and hi == pytest.approx(5 + 1.386, abs=0.15)


def test_summarize_constant_sample_ci_is_the_constant():
    s = summarize([3.0, 3.0, 3.0])
    assert (s["mean"], s["std"], s["ci_low"], s["ci_high"]) == (3.0, 0.0, 3.0, 3.0)


def test_summarize_two_values_exact_percentile_interval():
    # resampled means of (1, 3): 1 w.p. 1/4, 2 w.p. 1/2, 3 w.p. 1/4 -> 2.5% / 97.5% points 1, 3
    s = summarize([1.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(math.sqrt(2))
    assert (s["ci_low"], s["ci_high"]) == (1.0, 3.0)


def test_summarize_one_value_and_nan_handling():
    s = summarize([5.0])
    assert s["mean"] == 5.0 and s["n"] == 1
    assert math.isnan(s["std"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])
    s = summarize([1.0, math.nan, 3.0])  # NaN (a missing run) dropped
    assert s["n"] == 2 and s["mean"] == 2.0
    s = summarize([math.nan])
    assert s["n"] == 0 and math.isnan(s["mean"])


def test_summarize_is_deterministic_given_seed():
    x = [0.61, 0.64, 0.58, 0.66, 0.6]
    assert summarize(x) == summarize(x)
    assert summarize(x, seed=3) == summarize(x, seed=3)


# ----------------------------------------------------------------------------- paired bootstrap
def test_paired_identical_arrays():
    r = paired_bootstrap([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    # every d* = 0: #{d* <= 0} = #{d* >= 0} = B -> p = min(1, 2 * (1 + B)/(B + 1)) = 1
    assert r["diff"] == 0.0 and r["p_value"] == 1.0
    assert r["within_noise"] is True
    assert (r["ci_low"], r["ci_high"]) == (0.0, 0.0)


def test_paired_clearly_shifted_even_when_seeds_vary_a_lot():
    b = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # seeds differ by far more than the effect
    a = b + np.array([0.1, 0.12, 0.09, 0.11, 0.1])
    r = paired_bootstrap(a, b)
    # every difference is positive, so every resampled mean is: #{d* <= 0} = 0 and
    # p = 2 * (1 + 0) / (B + 1) = 2 / 10000
    assert r["diff"] == pytest.approx(0.104)
    assert r["p_value"] == pytest.approx(2 / (B + 1))
    assert r["within_noise"] is False
    assert 0.09 <= r["ci_low"] < r["diff"] < r["ci_high"] <= 0.12


def test_paired_p_value_matches_the_exact_bootstrap_distribution():
    d = [-1.0, 1.0, 2.0]
    # exact bootstrap law of the resampled sum: (k_-1, k_1, k_2) counts with multinomial weights
    # over 27 ordered draws. sum <= 0: (3,0,0) -> -3 [1 way], (2,1,0) -> -1 [3], (2,0,1) -> 0 [3]
    # = 7/27; sum >= 0 = 1 - P(sum < 0) = 1 - 4/27 = 23/27. p = 2 * min = 14/27 = 0.5185
    r = paired_bootstrap(d, [0.0, 0.0, 0.0])
    assert r["diff"] == pytest.approx(2 / 3)
    assert r["p_value"] == pytest.approx(14 / 27, abs=0.03)  # Monte-Carlo sd ~0.009
    assert r["within_noise"] is True


def test_paired_deterministic_and_seed_dependent():
    a = [0.61, 0.64, 0.58, 0.66, 0.6]
    b = [0.6, 0.6, 0.6, 0.61, 0.59]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7) != paired_bootstrap(a, b, seed=8)


def test_paired_small_and_bad_inputs():
    r = paired_bootstrap([1.0], [0.0])
    assert r["diff"] == 1.0 and math.isnan(r["p_value"]) and r["within_noise"] is True
    r = paired_bootstrap([1.0, math.nan, 3.0], [0.0, 1.0, 1.0])  # the NaN pair is dropped
    assert r["n"] == 2 and r["diff"] == pytest.approx(1.5)
    with pytest.raises(UserError, match="one value per seed"):
        paired_bootstrap([1, 2, 3], [1, 2])


# ----------------------------------------------------------------------------- aggregate
def _runs():
    rows = []
    # model A: dpo 0.60/0.62/0.64, tidpo +0.1 on each seed, simpo missing seed 2
    for seed, dpo in zip([0, 1, 2], [0.60, 0.62, 0.64]):
        rows.append(dict(model="A", dataset="hh", method="dpo", seed=seed, acc=dpo, kl=1.0))
        rows.append(dict(model="A", dataset="hh", method="tidpo", seed=seed, acc=dpo + 0.1,
                         kl=math.nan if seed == 1 else 2.0))
    rows.append(dict(model="A", dataset="hh", method="simpo", seed=0, acc=0.70, kl=1.5))
    rows.append(dict(model="A", dataset="hh", method="simpo", seed=1, acc=0.50, kl=1.5))
    # model B: a much weaker dpo; B's tidpo must be compared with B's dpo, not A's
    for seed in [0, 1, 2]:
        rows.append(dict(model="B", dataset="hh", method="dpo", seed=seed, acc=0.30, kl=1.0))
        rows.append(dict(model="B", dataset="hh", method="tidpo", seed=seed, acc=0.35, kl=1.0))
    return pd.DataFrame(rows)


def test_aggregate_columns_rows_and_hand_values():
    out = aggregate(_runs(), ["model", "dataset", "method"], ["acc", "kl"], baseline="dpo")
    assert list(out.columns) == ["model", "dataset", "method"] + AGGREGATE_COLUMNS
    assert len(out) == 5 * 2  # groups A/dpo, A/tidpo, A/simpo, B/dpo, B/tidpo x 2 metrics

    def row(model, method, metric):
        r = out[(out.model == model) & (out.method == method) & (out.metric == metric)]
        assert len(r) == 1
        return r.iloc[0]

    base = row("A", "dpo", "acc")
    # 0.60, 0.62, 0.64: mean 0.62, squared deviations 0.0004 + 0 + 0.0004 over 2 -> std 0.02
    assert base["mean"] == pytest.approx(0.62) and base["std"] == pytest.approx(0.02)
    assert math.isnan(base["diff"]) and pd.isna(base["within_noise"]) and base["n_pairs"] == 0

    ti = row("A", "tidpo", "acc")  # +0.1 on every seed
    assert ti["diff"] == pytest.approx(0.1) and ti["n_pairs"] == 3
    assert ti["within_noise"] == False  # noqa: E712  (nullable boolean)
    assert ti["baseline"] == "dpo"

    # simpo has seeds 0, 1 only: paired diffs 0.70-0.60 = 0.10 and 0.50-0.62 = -0.12 ->
    # mean -0.01 (unpaired, mean(simpo) - mean(dpo over 3 seeds) would be 0.60 - 0.62 = -0.02).
    # Resampled means of the 2 diffs: 0.10 (1/4), -0.01 (1/2), -0.12 (1/4) -> CI [-0.12, 0.10]
    si = row("A", "simpo", "acc")
    assert si["n_pairs"] == 2 and si["diff"] == pytest.approx(-0.01)
    assert si["diff_ci_low"] == pytest.approx(-0.12) and si["diff_ci_high"] == pytest.approx(0.10)
    assert si["within_noise"] == True  # noqa: E712

    # tidpo kl has a NaN at seed 1: n = 2 and the pair at seed 1 is dropped (2.0 - 1.0 twice)
    kl = row("A", "tidpo", "kl")
    assert kl["n"] == 2 and kl["n_pairs"] == 2 and kl["diff"] == pytest.approx(1.0)

    # model B is compared within model B: 0.35 - 0.30
    assert row("B", "tidpo", "acc")["diff"] == pytest.approx(0.05)


def test_aggregate_without_baseline_and_errors():
    out = aggregate(_runs(), ["model", "method"], ["acc"])
    assert out["diff"].isna().all() and out["within_noise"].isna().all()
    assert out["baseline"].isna().all()
    df = _runs()
    with pytest.raises(UserError, match="several rows"):
        aggregate(df, ["dataset", "method"], ["acc"])  # models A and B collide per seed
    with pytest.raises(UserError, match=r"\['f1'\]"):
        aggregate(df, ["model", "method"], ["f1"])
    with pytest.raises(UserError, match="label_col"):
        aggregate(df, ["model", "dataset"], ["acc"], baseline="dpo")
