"""Win rate and the offline length-controlled win rate.

Expected win rates are counted by hand; the LC claims are derived in the comments from the GLM's
optimality condition, not taken from the code under test."""
import math
import os

import numpy as np
import pytest
import sklearn

from harness.errors import UserError
from harness.evaluate.winrate import judge_by_oracle, length_controlled_winrate, winrate


def test_judge_by_oracle():
    prefs = judge_by_oracle([0.9, 0.2, 0.5, math.nan], [0.1, 0.3, 0.5, 0.4])
    assert prefs[:3] == [2.0, 1.0, 1.5]
    assert math.isnan(prefs[3])
    # within the tolerance counts as a tie
    assert judge_by_oracle([1.0, 1.2], [1.05, 1.0], tie_tol=0.1) == [1.5, 2.0]
    with pytest.raises(UserError, match="same length"):
        judge_by_oracle([1, 2], [1])


def test_plain_winrate_by_hand():
    # wins 2,2,2 -> 1 each, loss 1 -> 0, draw 1.5 -> 0.5: (3 + 0.5) / 5 = 70 %
    out = winrate([2, 2, 2, 1, 1.5])
    assert out["winrate/vs_sft"] == pytest.approx(70.0)
    assert out["winrate/n"] == 5 and out["winrate/n_draws"] == 1
    # standard error: (1,1,1,0,.5) has mean .7, squared deviations .09*3 + .49 + .04 = .8,
    # sd (ddof=1) sqrt(.8/4) = sqrt(.2); SEM sqrt(.2)/sqrt(5) = sqrt(.04) = .2 -> 20 %
    assert out["winrate/standard_error"] == pytest.approx(20.0)
    # no lengths -> no LC, with the reason
    assert math.isnan(out["winrate/lc_vs_sft"]) and "lengths" in out["winrate/lc_note"]


def test_unjudged_pairs_are_dropped_and_zero_is_a_draw():
    out = winrate([2, math.nan, 1, 0])  # 0 is alpaca-eval's old draw: (1 + 0 + 0.5) / 3
    assert out["winrate/vs_sft"] == pytest.approx(50.0)
    assert out["winrate/n"] == 3


def test_invalid_preference_is_a_user_error():
    with pytest.raises(UserError, match=r"preferences\[1\] = 3"):
        winrate([2, 3, 1])


def test_lc_equals_plain_up_to_l1_shrinkage_when_lengths_are_equal():
    prefs = [2] * 12 + [1] * 8  # plain win rate 60 %
    equal = [100] * 20
    fit = length_controlled_winrate(prefs, equal, equal)
    # Equal lengths: the length feature tanh(0) is 0, so only w_0 is fitted. liblinear
    # minimizes |w_0| + C * sum_i [p_i log(1 + e^-w_0) + (1 - p_i) log(1 + e^w_0)], whose
    # derivative for w_0 > 0 is 1 + C * n * (sigmoid(w_0) - mean(p)) = 0, hence
    # sigmoid(w_0) = mean(p) - 1 / (C n): the plain rate minus the L1 shrinkage.
    assert fit.length_coef == 0.0
    assert fit.n == 20
    assert fit.winrate == pytest.approx(60.0 - 100.0 / (fit.C * 20), abs=0.01)
    assert abs(fit.winrate - 60.0) < 1.0
    out = winrate(prefs, equal, equal)
    assert out["winrate/vs_sft"] == pytest.approx(60.0)
    assert out["winrate/lc_vs_sft"] == pytest.approx(fit.winrate)
    assert "winrate/lc_note" not in out


def test_lc_moves_against_the_length_that_wins():
    rng = np.random.default_rng(0)
    prefs = [2] * 12 + [1] * 8  # plain 60 %
    baseline = np.full(20, 100)
    # the model wins exactly where it answers much longer; where lengths match, it loses.
    # At equal length the model would lose, so the LC rate falls well below 60, and the length
    # coefficient on tanh((len_base - len_model)/sd) is negative (longer model -> more wins).
    long_wins = np.r_[rng.integers(150, 300, 12), rng.integers(95, 106, 8)]
    out = winrate(prefs, long_wins, baseline)
    assert out["winrate/vs_sft"] == pytest.approx(60.0)
    assert out["winrate/lc_vs_sft"] < 50.0
    assert out["winrate/lc_length_coef"] < 0
    # mirror image: the model wins wherever lengths match and loses only where its answer is
    # much shorter (a judge favouring length). At equal length it wins -> LC above the plain 60 %,
    # with the same sign of the length coefficient (the judge still prefers the longer output).
    short_losses = np.r_[rng.integers(95, 106, 12), rng.integers(20, 60, 8)]
    out = winrate(prefs, short_losses, baseline)
    assert out["winrate/vs_sft"] == pytest.approx(60.0)
    assert out["winrate/lc_vs_sft"] > 70.0
    assert out["winrate/lc_length_coef"] < 0
    # lengths in tokens or characters: the difference is standardized, the unit cancels
    assert winrate(prefs, short_losses * 4, baseline * 4)["winrate/lc_vs_sft"] == pytest.approx(
        out["winrate/lc_vs_sft"], abs=1e-6)


@pytest.mark.parametrize("prefs,reason", [
    ([1.5] * 20, "every preference is 1.5"),
    ([2] * 20, "every preference is 2"),
    ([1] * 20, "every preference is 1"),
    ([2, 1] * 3, "only 6 judged pairs"),
])
def test_degenerate_inputs_give_nan_with_a_reason(prefs, reason):
    n = len(prefs)
    out = winrate(prefs, list(range(10, 10 + n)), [50] * n)
    assert math.isnan(out["winrate/lc_vs_sft"])
    assert reason in out["winrate/lc_note"]
    assert not math.isnan(out["winrate/vs_sft"])


def test_collapsed_fit_is_flagged_not_passed_off_as_a_measurement():
    # mostly draws and lengths unrelated to the outcome: the CV picks the strongest L1 penalty
    # of its grid (C = 1e-4), which zeroes both coefficients: LC = 100 * sigmoid(0) = 50.0
    rng = np.random.default_rng(1)
    prefs = rng.choice([1, 1.5, 2], size=60, p=[0.2, 0.6, 0.2]).tolist()
    out = winrate(prefs, rng.integers(3, 8, 60).tolist(), rng.integers(3, 8, 60).tolist())
    assert out["winrate/lc_length_coef"] == 0.0 and out["winrate/lc_collapsed"] == 1.0
    assert out["winrate/lc_vs_sft"] == 50.0 and out["winrate/vs_sft"] != 50.0
    assert out["winrate/lc_note"].startswith("collapsed: cross-validation chose C = 0.0001")
    # equal lengths give w_len = 0 by construction: not a collapse (see the test above)
    equal = [100] * 20
    assert winrate([2] * 12 + [1] * 8, equal, equal)["winrate/lc_collapsed"] == 0.0


def test_non_converged_fit_keeps_its_value_and_says_so():
    # 24 wins and 1 loss: some folds of the CV grid have only wins, and liblinear reports
    # non-convergence there. The value is still a probability, the note tells the reader.
    prefs = [2] * 21 + [1] + [2] * 3
    lengths_base = [3, 2, 3, 3, 4, 4, 1, 3, 1, 4, 4, 4, 2, 3, 3, 1, 3, 3, 3, 2, 1, 1, 4, 3, 1]
    out = winrate(prefs, [3] * 25, lengths_base)
    assert out["winrate/vs_sft"] == pytest.approx(96.0)  # 24 / 25
    assert 0.0 <= out["winrate/lc_vs_sft"] <= 100.0
    assert "did not converge" in out["winrate/lc_note"]


def test_all_unjudged_and_mismatched_lengths():
    out = winrate([math.nan] * 3, [1, 2, 3], [1, 2, 3])
    assert math.isnan(out["winrate/vs_sft"]) and out["winrate/n"] == 0
    assert "only 0 judged pairs" in out["winrate/lc_note"]
    with pytest.raises(UserError, match="3 preferences but 2 model lengths"):
        winrate([2, 1, 2], [1, 2], [1, 2, 3])


def test_lc_is_offline_and_writes_nothing_into_site_packages(monkeypatch):
    import alpaca_eval
    import alpaca_eval.metrics.glm_winrate as glm
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError(f"hub download attempted: {args} {kwargs}")

    monkeypatch.setattr(glm, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    pkg_dir = os.path.dirname(alpaca_eval.__file__)

    def snapshot():
        return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                for d, _, files in os.walk(pkg_dir) for f in files if not f.endswith(".pyc")}

    before = snapshot()
    routing_before = sklearn.get_config()["enable_metadata_routing"]
    rng = np.random.default_rng(1)
    out = winrate(rng.choice([1.0, 1.5, 2.0], 40), rng.integers(50, 400, 40),
                  rng.integers(50, 400, 40))
    assert 0.0 <= out["winrate/lc_vs_sft"] <= 100.0
    assert snapshot() == before  # no weights csv written next to alpaca-eval
    assert not os.path.exists(os.path.join(pkg_dir, "metrics", "weights"))
    # alpaca-eval's fit flips sklearn's global metadata routing; it must be restored
    assert sklearn.get_config()["enable_metadata_routing"] == routing_before
