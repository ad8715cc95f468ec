"""Win rate and length-controlled win rate of a policy against the SFT policy.

Preferences follow alpaca-eval's convention (one value per prompt): ``1`` = the baseline (SFT)
output wins, ``2`` = the model's output wins, ``1.5`` = draw (``0`` is also read as a draw, values
in between are soft preferences, NaN = not judged and dropped).

- ``winrate/vs_sft``: ``alpaca_eval.metrics.get_winrate``, i.e. ``100 * mean(preference - 1)``
  (a draw counts half).
- ``winrate/lc_vs_sft``: the length-controlled win rate of Dubois et al. 2024 ("Length-Controlled
  AlpacaEval"), computed offline. alpaca-eval's ``get_length_controlled_winrate`` downloads
  ``df_gamed.csv`` from the hub (instruction difficulties and "gamed" baselines used as a
  regularizer), so we compose its pieces with the GLM it calls ``length_controlled_minimal``:

      P(model wins on i) = sigmoid( w_len * tanh(d_i / sd(d)) + w_0 ),
      d_i = len(baseline_i) - len(model_i)        (alpaca-eval: len(output_1) - len(output_2))

  fitted by ``fit_LogisticRegressionCV`` (soft labels ``preference - 1``; L1 penalty, no separate
  intercept (``w_0`` is the constant "baseline" column), C chosen by 5-fold grouped CV, as in
  alpaca-eval), and the LC win rate is the prediction at zero length difference averaged over
  prompts: ``100 * sigmoid(w_0)``. Lengths may be in characters (alpaca-eval) or tokens: ``d`` is
  standardized, so the unit cancels. When all length differences are equal the length feature is
  constant 0 (alpaca-eval would divide by zero), the fit has only ``w_0``, and the LC win rate
  equals the plain one up to the L1 shrinkage: ``sigmoid(w_0) = mean(preference - 1) - 1/(C n)``
  (for a model winning more than half; the subgradient condition of ``|w_0| + C * sum_i
  logloss_i``).
- ``judge_by_oracle``: a local judge from per-sample scores (an oracle or reward model): higher
  score wins.

Degenerate inputs never raise: fewer than ``min_lc_samples`` judged pairs, or a preference that
never varies (all ties, all wins, all losses: a logistic fit of a constant outcome has no finite
optimum), give ``winrate/lc_vs_sft = NaN`` and a reason in ``winrate/lc_note``. A fit that does
not converge (length separates wins from losses) keeps its value and says so in the note.

A **collapsed** fit: cross-validation picked an L1 penalty strong enough to set the length
coefficient ``w_len`` to exactly 0 (often the strongest of the grid, which zeroes ``w_0`` too and
gives exactly 50.0). Its value is then not a length-controlled estimate but the plain win rate
shrunk towards 50 by the penalty. It is kept in ``winrate/lc_vs_sft`` (with
``winrate/lc_length_coef = 0``) but flagged: ``winrate/lc_collapsed = 1`` and a note; the report
leaves such values out of its statistics and marks them (``harness.report.summary``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.errors import UserError

__all__ = ["LCFit", "judge_by_oracle", "length_controlled_winrate", "winrate",
           "LC_FORMULA", "MIN_LC_SAMPLES"]

# alpaca-eval's GLM_INFO["length_controlled_minimal"]["formula"] (patsy): the hub-free variant
LC_FORMULA = "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1"
# with 5-fold CV, fewer than 2 pairs per fold makes the choice of C meaningless
MIN_LC_SAMPLES = 10


@dataclass(frozen=True)
class LCFit:
    """Result of the length-controlled GLM. ``winrate`` in percent (NaN with ``note`` when not
    fitted); ``length_coef`` = w_len (negative: the judge favours the longer output, since
    d = len(baseline) - len(model)); ``baseline_coef`` = w_0; ``C`` = inverse L1 strength picked
    by cross-validation; ``n`` = judged pairs used."""

    winrate: float
    length_coef: float = math.nan
    baseline_coef: float = math.nan
    C: float = math.nan
    n: int = 0
    note: str = ""

    length_varies: bool = True

    @property
    def collapsed(self) -> bool:
        """The L1 penalty removed a length term that had something to fit (``w_len == 0``
        although the lengths differ): not a length-controlled estimate. With equal lengths
        ``w_len`` is 0 by construction and the value is the plain win rate up to shrinkage."""
        return self.length_coef == 0.0 and self.length_varies


def _import_alpaca_metrics():
    """alpaca_eval.metrics, imported lazily (the package pulls in ~3 s of imports) and without
    its pkg_resources deprecation notice, which is alpaca-eval's to fix, not the user's."""
    import importlib.util
    import sys
    import types

    if "alpaca_eval" not in sys.modules:
        # alpaca_eval/__init__.py imports its whole CLI (evaluators, datasets, openai clients:
        # seconds per worker process); the metric modules need none of it. Register the
        # package without running its __init__ so only the metric submodules load.
        spec = importlib.util.find_spec("alpaca_eval")
        if spec is not None and spec.submodule_search_locations:
            pkg = types.ModuleType("alpaca_eval")
            pkg.__path__ = list(spec.submodule_search_locations)
            pkg.__spec__ = spec
            pkg.__file__ = spec.origin
            sys.modules["alpaca_eval"] = pkg
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import alpaca_eval.metrics
        import alpaca_eval.metrics.glm_winrate
    return alpaca_eval.metrics


def judge_by_oracle(scores_model: Sequence[float], scores_baseline: Sequence[float], *,
                    tie_tol: float = 0.0) -> list[float]:
    """Preferences from per-prompt scores: 2 when the model's score is higher by more than
    ``tie_tol``, 1 when lower by more than ``tie_tol``, 1.5 otherwise; NaN when either score is
    NaN (that prompt is then left out of the win rate)."""
    a = np.asarray(scores_model, dtype=np.float64)
    b = np.asarray(scores_baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise UserError(f"judge_by_oracle: need two 1-D score lists of the same length, got "
                        f"shapes {a.shape} and {b.shape}")
    diff = a - b
    pref = np.where(diff > tie_tol, 2.0, np.where(diff < -tie_tol, 1.0, 1.5))
    pref[np.isnan(diff)] = np.nan
    return pref.tolist()


def _clean_preferences(preferences: Sequence[float]) -> np.ndarray:
    p = np.asarray(preferences, dtype=np.float64).reshape(-1)
    p = np.where(p == 0, 1.5, p)  # alpaca-eval's old encoding of a draw
    bad = ~np.isnan(p) & ((p < 1) | (p > 2))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"preferences[{i}] = {p[i]}: preferences must lie in [1, 2] "
                        "(1 baseline wins, 2 model wins, 1.5 draw) or be NaN")
    return p


def length_controlled_winrate(preferences: Sequence[float], lengths_model: Sequence[float],
                              lengths_baseline: Sequence[float], *, n_splits: int = 5,
                              min_lc_samples: int = MIN_LC_SAMPLES) -> LCFit:
    """Fit the length-controlled GLM (see the module docstring) and return an :class:`LCFit`.

    Offline: uses only ``make_dmatrix_for_model`` and ``fit_LogisticRegressionCV`` of alpaca-eval,
    writes no weights file and keeps sklearn's global config unchanged."""
    p, lm, lb = _judged(preferences, lengths_model, lengths_baseline)
    n = int(len(p))
    if n < max(min_lc_samples, n_splits):
        return LCFit(math.nan, n=n, note=f"only {n} judged pairs; the length-controlled fit "
                                          f"needs at least {max(min_lc_samples, n_splits)}")
    if np.all(p == p[0]):
        return LCFit(math.nan, n=n, note=f"every preference is {p[0]:g}: the outcome does not "
                                          "vary, so no length effect can be fitted")
    delta = lb - lm  # alpaca-eval: len(output_1 = baseline) - len(output_2 = model)
    sd = float(np.std(delta, ddof=1))  # pandas' Series.std, as alpaca-eval uses
    glm = _import_alpaca_metrics().glm_winrate
    try:
        pred, coefs, C, caught = _fit_glm(glm, p - 1.0, delta / sd if sd > 0 else np.zeros(n), n_splits)
    except ValueError as e:  # e.g. a CV fold sklearn cannot fit; report, never crash
        return LCFit(math.nan, n=n, note=f"length-controlled fit failed: {e}")
    note = _convergence_note(caught)
    w_len = float(coefs["np.tanh(std_delta_len)"])
    if w_len == 0.0 and sd > 0:
        note = "; ".join(x for x in (
            f"collapsed: cross-validation chose C = {C:.3g}, an L1 penalty that sets the "
            "length coefficient to 0; the value is the plain win rate shrunk towards 50, "
            "not a length-controlled estimate", note) if x)
    return LCFit(
        winrate=float(np.mean(pred) * 100.0),
        length_coef=w_len,
        baseline_coef=float(coefs["not_gamed_baseline.astype(float)"]),
        C=C,
        n=n,
        note=note,
        length_varies=bool(sd > 0),
    )


def _judged(preferences, lengths_model, lengths_baseline) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preferences and both lengths as float arrays, checked to be equally long, without the
    pairs where any of the three is NaN (not judged)."""
    p = _clean_preferences(preferences)
    lm = np.asarray(lengths_model, dtype=np.float64).reshape(-1)
    lb = np.asarray(lengths_baseline, dtype=np.float64).reshape(-1)
    if not (len(p) == len(lm) == len(lb)):
        raise UserError(f"length-controlled win rate: {len(p)} preferences but "
                        f"{len(lm)} model lengths and {len(lb)} baseline lengths")
    keep = ~(np.isnan(p) | np.isnan(lm) | np.isnan(lb))
    return p[keep], lm[keep], lb[keep]


def _fit_glm(glm, soft_labels: np.ndarray, std_delta_len: np.ndarray, n_splits: int):
    """alpaca-eval's GLM (``glm``: its ``glm_winrate`` module) fitted on soft labels in [0, 1]
    and standardized length differences: (the predicted win probability at zero length
    difference, per prompt; the coefficients by column; the chosen C; the warnings caught). Raises ValueError when sklearn cannot fit."""
    import pandas as pd
    import sklearn

    n = len(soft_labels)
    df = pd.DataFrame({
        "preference": soft_labels,
        "std_delta_len": std_delta_len,
        "not_gamed_baseline": np.ones(n, dtype=bool),
    })
    df_test = pd.DataFrame({"std_delta_len": np.zeros(n), "not_gamed_baseline": np.ones(n, bool)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # fit_LogisticRegressionCV flips sklearn's global metadata routing on; contain it
        with sklearn.config_context():
            train, test = glm.make_dmatrix_for_model(df, df_test, formula=LC_FORMULA)
            model = glm.fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True,
                                                 n_splits=n_splits)
            pred = model.predict_proba(test)[:, 1]
    return pred, dict(zip(test.columns, model.coef_[0])), float(np.ravel(model.C_)[0]), caught


def _convergence_note(caught) -> str:
    """The note for a fit whose warnings include liblinear's ConvergenceWarning; other warnings
    are re-raised, except sklearn 1.8+'s FutureWarnings about alpaca-eval's own arguments."""
    from sklearn.exceptions import ConvergenceWarning

    note = ""
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            # near-constant outcomes or length separating wins from losses send some fit of
            # the C grid towards infinite coefficients; keep the value but say so
            note = ("liblinear did not converge in the cross-validated length-controlled fit "
                    "(almost all pairs share one outcome, or length separates wins from "
                    "losses); read the LC win rate with care")
        elif not issubclass(w.category, FutureWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return note


def winrate(preferences: Sequence[float], lengths_model: Sequence[float] | None = None,
            lengths_baseline: Sequence[float] | None = None, *, n_splits: int = 5,
            min_lc_samples: int = MIN_LC_SAMPLES) -> dict[str, float | str]:
    """Win rate metrics versus the SFT policy, keyed as in ``metrics.json``.

    Returns ``winrate/vs_sft`` (percent), ``winrate/standard_error`` (percent, alpaca-eval's SEM),
    ``winrate/n`` (judged pairs), ``winrate/n_draws``, ``winrate/lc_vs_sft`` (percent or NaN),
    ``winrate/lc_length_coef`` (w_len), ``winrate/lc_collapsed`` (1.0 when the fit collapsed,
    0.0 when it did not, NaN without a fit) and, only when there is something to say,
    ``winrate/lc_note``: why the LC win rate is NaN, that its fit collapsed, or that it did not
    converge. Without lengths the LC entries are NaN with a note."""
    p = _clean_preferences(preferences)
    judged = p[~np.isnan(p)]
    out: dict[str, float | str] = {}
    if len(judged) == 0:
        out.update({"winrate/vs_sft": math.nan, "winrate/standard_error": math.nan,
                    "winrate/n": 0, "winrate/n_draws": 0})
    else:
        head = _import_alpaca_metrics().pairwise_to_winrate(judged.tolist())
        out.update({
            "winrate/vs_sft": float(head["win_rate"]),
            "winrate/standard_error": float(head["standard_error"]),
            "winrate/n": int(head["n_total"]),
            "winrate/n_draws": int(head["n_draws"]),
        })
    if lengths_model is None or lengths_baseline is None:
        lc = LCFit(math.nan, n=len(judged), note="no output lengths given")
    else:
        lc = length_controlled_winrate(p, lengths_model, lengths_baseline, n_splits=n_splits,
                                       min_lc_samples=min_lc_samples)
    out["winrate/lc_vs_sft"] = lc.winrate
    out["winrate/lc_length_coef"] = lc.length_coef
    out["winrate/lc_collapsed"] = (float(lc.collapsed) if math.isfinite(lc.length_coef)
                                   else math.nan)
    if lc.note:
        out["winrate/lc_note"] = lc.note
    return out
