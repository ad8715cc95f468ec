"""The table forms of the statistics (summarize_table, paired_table, signflip_rows,
paired_p_rows, and aggregate built on them) give the same numbers, bit for bit, as the one-sample
reference functions (summarize, paired_test, signflip_test: scipy called once per sample), on
random tables with missing seeds, ties, constant rows, n = 0, 1, 2 and more than 16 seeds."""
import math

import numpy as np
import pandas as pd
import pytest

from harness.errors import UserError
from harness.report import stats as S


def _same(x, y) -> bool:
    """Equal as floats, NaN equal to NaN (bit-for-bit for finite values)."""
    if isinstance(x, str) or isinstance(y, str):
        return x == y
    x, y = float(x), float(y)
    return (math.isnan(x) and math.isnan(y)) or x == y


def _random_table(rng, k: int, s: int, *, grid: bool) -> np.ndarray:
    """Rows of every kind: normal noise at several scales, values on a grid of 1/50 (accuracies
    over 50 items: many ties among the sign-flip sums), constant rows, NaN holes."""
    x = rng.normal(size=(k, s)) * rng.choice([1e-3, 1.0, 50.0], size=(k, 1))
    if grid:
        x = np.round(x * 50) / 50
    x[rng.random(k) < 0.15] = 0.4  # constant rows
    x[rng.random((k, s)) < 0.2] = np.nan  # missing seeds
    x[rng.random(k) < 0.05] = np.nan  # no value at all
    return x


@pytest.mark.parametrize("s", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("grid", [False, True])
def test_summarize_table_equals_summarize(s, grid):
    rng = np.random.default_rng(s + 100 * grid)
    x = _random_table(rng, 300, s, grid=grid)
    t = S.summarize_table(x)
    for i in range(len(x)):
        ref = S.summarize(x[i])
        for key, v in ref.items():
            assert _same(t[key][i], v), (i, key, x[i], t[key][i], v)


@pytest.mark.parametrize("s", [1, 2, 3, 4, 6, 10])
@pytest.mark.parametrize("grid", [False, True])
def test_paired_table_equals_paired_test(s, grid):
    rng = np.random.default_rng(7 * s + grid)
    a = _random_table(rng, 250, s, grid=grid)
    b = _random_table(rng, 250, s, grid=grid)
    b[:25] = a[:25] - 0.02  # every seed moved by the same amount: sd 0, the sign-flip decides
    b[25:40] = a[25:40]  # no difference at all: p = 1
    a[40, 1:], a[40, 0], b[40, 0] = np.nan, 1.0, 0.5  # one seed: no test
    t = S.paired_table(a, b)
    kinds = set()
    for i in range(len(a)):
        ref = S.paired_test(a[i], b[i])
        kinds.add((ref["n"], ref["test"]))
        for key, v in ref.items():
            assert _same(t[key][i], v), (i, key, a[i], b[i], t[key][i], v)
    if s >= 2:  # the table had every kind of row
        assert {"paired t", "sign-flip", ""} <= {k[1] for k in kinds}
        assert {0, 1} <= {k[0] for k in kinds}


def test_signflip_rows_on_near_ties_and_long_rows():
    # differences that cancel to ~1e-17 (0.1 + 0.2 - 0.3), exact ties of sums on a grid, and
    # 17-20 seeds (random patterns: scipy row by row)
    rows = [[0.1, 0.2, -0.3], [0.02, 0.04, 0.02], [0.3, -0.1, -0.2], [1.0, 1.0, -1.0]]
    d = np.array(rows)
    p, p_min = S.signflip_rows(d)
    for i, r in enumerate(rows):
        assert (p[i], p_min[i]) == S.signflip_test(r)
    rng = np.random.default_rng(3)
    for n in (16, 17):
        d = np.round(rng.normal(size=(4, n)) * 50) / 50
        p, p_min = S.signflip_rows(d)
        for i in range(4):
            assert (p[i], p_min[i]) == S.signflip_test(d[i])
    with pytest.raises(UserError, match="2 or more"):
        S.signflip_rows(np.ones((3, 1)))


def test_hand_values_of_the_table_form():
    # d = (1, -2, 3): |signed sum| >= 2 in 6 of the 8 patterns -> p = 0.75 (tests/test_stats.py);
    # (1, 1, 1): only the two uniform patterns -> 2/8
    t = S.paired_table([[1.0, -2.0, 3.0], [2.0, 2.0, 2.0], [1.0, np.nan, 2.0]],
                       [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 5.0, np.nan]])
    assert list(t["n"]) == [3, 3, 1]
    assert t["p_signflip"][0] == pytest.approx(0.75) and t["p_signflip"][1] == 0.25
    assert list(t["test"]) == ["paired t", "sign-flip", ""]
    assert t["p_value"][1] == 0.25 and t["diff"][2] == 1.0 and math.isnan(t["p_value"][2])
    with pytest.raises(UserError, match="shapes"):
        S.paired_table(np.ones((2, 3)), np.ones((2, 2)))


def test_paired_p_rows_equals_paired_p():
    rng = np.random.default_rng(5)
    rows = [rng.normal(size=n) for n in (2, 3, 3, 5, 2, 8)] + [np.full(4, 0.5), np.zeros(3)]
    p = S.paired_p_rows(rows)
    for i, r in enumerate(rows):
        assert p[i] == S.paired_p(np.asarray(r)[None, :])[0]


def _aggregate_by_calls(df, group_cols, metric_cols, baseline):
    """aggregate as it was written before the table form: summarize and paired_test per
    (group, metric), scipy once per call."""
    groups = {k: g.set_index("seed") for k, g in df.groupby(group_cols, sort=True, dropna=False)}
    rows = []
    for key, g in groups.items():
        labels = dict(zip(group_cols, key))
        base = None
        if labels["method"] != baseline:
            base = groups.get(tuple(baseline if c == "method" else labels[c] for c in group_cols))
        for m in metric_cols:
            row = {**labels, "metric": m, **S.summarize(g[m].to_numpy(float)), "n_pairs": 0}
            if base is not None:
                a, b = g[m], base[m]
                seeds = a.dropna().index.intersection(b.dropna().index).sort_values()
                if len(seeds):
                    t = S.paired_test(a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float))
                    row.update(n_pairs=t["n"], diff=t["diff"], diff_sd=t["sd"],
                               diff_ci_low=t["ci_low"], diff_ci_high=t["ci_high"],
                               p_value=t["p_value"], test=t["test"], p_signflip=t["p_signflip"],
                               p_signflip_min=t["p_signflip_min"])
            rows.append(row)
    return rows


def test_aggregate_equals_the_per_call_computation():
    rng = np.random.default_rng(11)
    recs = []
    for ds in ("d1", "d2", "nobase"):
        for meth in ("dpo", "ipo", "simpo", "x") if ds != "nobase" else ("ipo", "x"):
            k = 5 if meth == "dpo" else rng.integers(1, 7)
            for seed in rng.permutation(6)[:k]:  # unsorted, missing seeds
                recs.append({"dataset": ds, "method": meth, "seed": int(seed),
                             "acc": float(rng.integers(0, 50)) / 50,
                             "loss": rng.normal() if rng.random() > 0.3 else np.nan,
                             "flat": 1.0})
    df = pd.DataFrame(recs)
    out = S.aggregate(df, ["dataset", "method"], ["acc", "loss", "flat"], baseline="dpo")
    ref = _aggregate_by_calls(df, ["dataset", "method"], ["acc", "loss", "flat"], "dpo")
    assert len(out) == len(ref)
    for got, want in zip(out.to_dict("records"), ref):
        for key, v in want.items():
            assert _same(got[key], v), (key, got, want)
        if want["n_pairs"] == 0:
            assert got["test"] == "" and math.isnan(got["p_value"])
    assert (out["test"] == "sign-flip").any() and (out["test"] == "paired t").any()
