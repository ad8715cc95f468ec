"""The report's result tables, each written as Markdown, LaTeX (booktabs) and CSV.

Rules (also printed under each table):

* **Cells.** ``mean ± h`` over seeds, ``h`` the half-width of the 95% Student-t interval
  (:func:`harness.report.stats.summarize`); `` (n=k)`` when a cell has fewer values than its
  row has seeds; the mean alone for one seed; ``–`` no value; ``collapsed`` for a
  length-controlled win rate whose every fit collapsed (:mod:`harness.report.summary`).
* **Variance sources.** Each table says which sources its intervals include: the training
  seed always, the SFT seed when the suite trains one SFT checkpoint per seed. Evaluation items
  are the same for every seed, so their sampling is not in the interval; their standard error
  (mean over seeds) is in the CSV (``item_se``) and in the ``uncertainty`` table.
* **Best.** Bold only where a paired t-test separates the best mean of a column from every
  other row, Holm-corrected over all such tests of the table; ``best = True`` in the CSV.
* **Comparison** with the baseline: paired by seed, paired t-test per metric, Holm over every
  comparison of the table, a verdict only when the corrected p is below 0.05, else "not
  distinguishable at n = k" with the minimum detectable effect (:mod:`harness.report.stats`).
* **Reward accuracy** (each method's own implicit reward) has its own table, grouped by reward
  family; it is compared with the baseline only inside one family.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness import metrics as M

from .collect import Collected, slug
from .format import MISSING, Table, fmt_num, fmt_stat
from .meta_tables import hparams_table, provenance_table, status_tables
from .reported import reported_table
from .stats import ALPHA, CORRECTIONS, adjust, mde, paired_p_rows, verdicts
from .summary import GROUP, LC_KEY, Summary, direction, display_name, scale_of, spec

__all__ = ["build_tables", "main_tables", "comparison_tables", "sources_note"]

CORRECTION = "holm"
COLLAPSED = "collapsed"


def _labels_in(col: Collected, df: pd.DataFrame) -> list[str]:
    present = set(df["label"])
    return [lab for lab in col.labels if lab in present]


def sources_note(summ: Summary, metrics: list[str]) -> str:
    """Which variance sources the intervals of a table include, and the item-level SE."""
    src = [M.SOURCE_TRAINING_SEED] + ([M.SOURCE_SFT_SEED] if summ.per_seed_sft else [])
    out = (f"Interval: 95% Student-t over seeds; includes the variance of: {', '.join(src)}.")
    if not summ.per_seed_sft:
        out += (" Not the SFT seed: every seed of a model and data set starts from one shared SFT "
                "checkpoint (`sft.per_seed: false`), so rerunning SFT could move every row.")
    with_items = [m for m in metrics if M.known(m) and M.get(m).items]
    if with_items:
        typical = []
        for m in with_items:
            se = summ.by_group.loc[summ.by_group["metric"] == m, "item_se"] \
                if "item_se" in summ.by_group else pd.Series(dtype=float)
            se = se.dropna()
            typical.append(f"{display_name(m)} {fmt_num(float(se.median()), spec(m))}"
                           if len(se) else f"{display_name(m)} {MISSING}")
        out += (" Evaluation items (the same held-out items for every seed) are not in the "
                "interval; their standard error, median over rows: " + "; ".join(typical) +
                " (per cell: CSV column item_se).")
    return out


# ----------------------------------------------------------------------------- best flags
def _separated_best(summ: Summary, group, labels: list[str], metrics: list[str]):
    """Per metric the row of the best mean and the paired p-values of best vs every other row;
    then Holm over all of them. Returns (bold flags per metric, number of tests)."""
    runs = summ.runs(group)
    by_label = {lab: g.set_index("seed") for lab, g in runs.groupby("label", sort=False)}
    diffs, owners = [], []
    best_of: dict[str, int | None] = {}
    for m in metrics:
        sgn = direction(m)
        means = [summ.stat(m, lab, group).get("mean", math.nan) for lab in labels]
        finite = [i for i, x in enumerate(means) if math.isfinite(x)]
        best_of[m] = None
        if sgn == 0 or len(finite) < 2:
            continue
        top = max(finite, key=lambda i: sgn * means[i])
        if sum(1 for i in finite if means[i] == means[top]) > 1:
            continue  # a tie has no best
        best_of[m] = top
        a = by_label[labels[top]][m].dropna()
        for i in finite:
            if i == top:
                continue
            b = by_label[labels[i]][m].dropna()
            seeds = a.index.intersection(b.index).sort_values()
            diffs.append(a.loc[seeds].to_numpy(float) - b.loc[seeds].to_numpy(float))
            owners.append(m)
    # fewer than 2 paired seeds: untestable, so not separated (p = 1)
    testable = [i for i, d in enumerate(diffs) if len(d) >= 2]
    tests = np.ones(len(diffs))
    tests[testable] = paired_p_rows([diffs[i] for i in testable])
    padj = adjust(tests, CORRECTION) if len(tests) else np.array([])
    flags = {m: [False] * len(labels) for m in metrics}
    for m in metrics:
        mine = [p for p, o in zip(padj, owners) if o == m]
        if best_of[m] is not None and mine and all(p < ALPHA for p in mine):
            flags[m][best_of[m]] = True
    return flags, len(tests)


def _best_note(n_tests: int, n_bold: int) -> str:
    return (f"Bold: a column's best mean, only where a paired t-test separates it from every other "
            f"row ({CORRECTIONS[CORRECTION]}-corrected over the {n_tests} best-vs-other tests of "
            f"this table, p < {ALPHA}); {n_bold} column(s) qualify.")


def _cell_text(s: dict, m: str, seeds: int) -> str:
    n = int(s.get("n", 0) or 0)
    if m == LC_KEY and n == 0 and int(s.get("collapsed", 0) or 0) > 0:
        return COLLAPSED
    if m == KL_KEY:
        return kl_text(s, seeds)
    return fmt_stat(s.get("mean", math.nan), s.get("ci_low", math.nan),
                    s.get("ci_high", math.nan), n, spec(m), seeds)


KL_KEY = "kl/policy_ref"
KL_NOTE = ("KL(policy || ref): mean with its 95% interval in brackets, cut at 0 (a KL is never negative): "
           "over seeds, or with one seed over the sampled responses (item-level SE); a mean below 0 (the "
           "plain Monte-Carlo estimate of results written before 2026-12, from few samples) shows as ≈0 "
           "with the estimate beside it.")


def kl_text(s: dict, seeds: int) -> str:
    """A KL cell: never a bare number below 0, always with its interval when there is one."""
    n, mean = int(s.get("n", 0) or 0), s.get("mean", math.nan)
    if n == 0 or not math.isfinite(mean):
        return MISSING
    lo, hi, se = s.get("ci_low", math.nan), s.get("ci_high", math.nan), s.get("item_se", math.nan)
    if not (n >= 2 and math.isfinite(lo) and math.isfinite(hi)) and math.isfinite(se):
        lo, hi = mean - 1.96 * se, mean + 1.96 * se  # one seed: over the sampled responses
    f = spec(KL_KEY)
    if mean < 0 and float(fmt_num(-mean, f).replace(",", "")) == 0:
        mean = 0.0  # below 0 only beyond the shown digits
    text = fmt_num(mean, f) if mean >= 0 else "≈0"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{fmt_num(max(lo, 0.0), f)}, {fmt_num(max(hi, 0.0), f)}]"
    if mean < 0:
        text += f" (estimate {fmt_num(mean, f)})"
    return text + (f" (n={n})" if n < seeds else "")


STAT_COLUMNS = ["model", "dataset", "label", "metric", "column", "scale", "mean", "std", "ci_low",
                "ci_high", "n", "seeds", "item_se", "collapsed", "best"]


def _stat_table(name: str, title: str, col: Collected, summ: Summary, metrics: list[str],
                blocks: list, notes: list[str], mark_best: bool = True) -> Table:
    """Rows: (group columns when several blocks,) method label, seeds; one column per metric.
    ``blocks``: (group or None for the averaged table, the runs of that block)."""
    show_group = len(blocks) > 1
    columns = (["Model", "Dataset"] if show_group else []) + ["Method", "Seeds"] + \
        [display_name(m) for m in metrics]
    nlab = len(columns) - len(metrics)
    rows, bold, records = [], [], []
    n_tests = n_bold = 0
    for group, cells in blocks:
        labels = _labels_in(col, cells)
        if mark_best:
            flags, k = _separated_best(summ, group, labels, metrics)
            n_tests += k
        else:
            flags = {m: [False] * len(labels) for m in metrics}
        n_bold += sum(any(f) for f in flags.values())
        n_runs = cells["label"].value_counts()
        for i, lab in enumerate(labels):
            seeds = int(n_runs.get(lab, 0))
            r = ([group[0], group[1]] if show_group else []) + [lab, str(seeds)]
            b = [False] * nlab
            for m in metrics:
                s = summ.stat(m, lab, group)
                r.append(_cell_text(s, m, seeds))
                b.append(flags[m][i])
                records.append({
                    "model": group[0] if group else "(all)",
                    "dataset": group[1] if group else "(all)",
                    "label": lab, "metric": m, "column": display_name(m),
                    "scale": scale_of(m) if m != M.AVG_KEY else 100.0,
                    **{k: s.get(k, math.nan) for k in ("mean", "std", "ci_low", "ci_high",
                                                       "item_se")},
                    "n": int(s.get("n", 0) or 0), "seeds": seeds,
                    "collapsed": int(s.get("collapsed", 0) or 0), "best": bool(flags[m][i])})
            rows.append(r)
            bold.append(b)
    if mark_best:
        notes = notes + [_best_note(n_tests, n_bold)]
    data = pd.DataFrame(records, columns=STAT_COLUMNS)
    return Table(name, title, columns, rows, data, bold, notes, n_label_cols=nlab)


def _column_notes(metrics: list[str]) -> str:
    parts = [f"{display_name(m)} = `{m}`" for m in metrics if m != M.AVG_KEY]
    return "Columns: " + "; ".join(parts) + "."


def _lc_note(summ: Summary, metrics: list[str]) -> list[str]:
    if LC_KEY not in metrics:
        return []
    n = int(summ.by_group["collapsed"].sum()) if "collapsed" in summ.by_group else 0
    return [f"LC win rate: {n} fit(s) collapsed (length coefficient exactly 0: the "
            "cross-validated L1 penalty removed the length term, leaving the plain win rate "
            "shrunk towards 50). They are not length-controlled estimates and are left out; "
            f"'{COLLAPSED}' marks a cell where every seed's fit collapsed."] if n else []


def _group_cells(summ: Summary, group: tuple[str, str]) -> pd.DataFrame:
    v = summ.values
    return v[(v["model"] == group[0]) & (v["dataset"] == group[1])]


def main_tables(col: Collected, summ: Summary) -> list[Table]:
    if not summ.main or not len(summ.values):
        return []
    notes = [sources_note(summ, summ.main), "Accuracies and win rates in percent.",
             _column_notes(summ.main)] + _lc_note(summ, summ.main)
    if M.AVG_KEY in summ.main:
        notes.append("Avg = mean of the lm-eval benchmark columns per run, then over seeds "
                     "(runs missing a benchmark have none).")
    out = []
    for g in summ.groups:
        noise = sorted(set(_group_cells(summ, g)["label_noise"]))
        title = f"Main results: {g[0]} on {g[1]}"
        if noise and any(x > 0 for x in noise):
            title += f" (label noise {', '.join(f'{x:g}' for x in noise)})"
        out.append(_stat_table(f"main_{slug(g[0])}_{slug(g[1])}", title, col, summ, summ.main,
                               [(g, _group_cells(summ, g))], notes))
    if summ.overall is not None:
        n_m = len({g[0] for g in summ.groups})
        n_d = len({g[1] for g in summ.groups})
        out.append(_stat_table(
            "main_all", f"Main results averaged over {n_m} model(s) and {n_d} data set(s)", col,
            summ, summ.main, [(None, summ.averaged)],
            notes + ["Per (method, seed), the mean over the model/data-set groups that have the "
                     "value, then summarized over seeds."]))
    return out


# ----------------------------------------------------------------------------- comparisons
def _comparable(col: Collected, metric: str, label: str) -> bool:
    """Reward accuracy compares like with like only: same reward family as the baseline."""
    if not M.known(metric) or M.get(metric).comparable != "reward_family":
        return True
    meth = dict(zip(col.cells["label"], col.cells["method"]))
    return M.reward_family(meth.get(label, label)) == M.reward_family(meth.get(col.baseline, ""))


COMPARISON_COLUMNS = ["model", "dataset", "label", "metric", "baseline", "mean", "n", "n_pairs",
                      "diff", "diff_sd", "diff_ci_low", "diff_ci_high", "test", "p_value",
                      "p_adjusted", "correction", "p_signflip", "p_signflip_min", "mde",
                      "verdict"]


def _comparison(name, title, col, summ, df, group_cols) -> Table | None:
    df = df[df["metric"].isin(summ.main) & (df["label"] != col.baseline)]
    df = df[[_comparable(col, m, lab) for m, lab in zip(df["metric"], df["label"])]]
    if not len(df):
        return None
    order = {lab: i for i, lab in enumerate(col.labels)}
    morder = {m: i for i, m in enumerate(summ.main)}
    df = df.assign(_l=df["label"].map(order), _m=df["metric"].map(morder))
    df = df.sort_values(group_cols + ["_l", "_m"], kind="stable").reset_index(drop=True)
    p = df["p_value"].to_numpy(dtype=float)
    padj = adjust(p, CORRECTION)
    m = int(np.isfinite(p).sum())
    alpha1 = ALPHA / max(m, 1)
    mdes = [mde(sd, int(n), alpha=alpha1) for sd, n in zip(df["diff_sd"], df["n_pairs"])]
    verdict = verdicts(padj, df["diff"].tolist(), df["n_pairs"].tolist(),
                       [direction(x) for x in df["metric"]])
    show_group = bool(group_cols) and len(summ.groups) > 1
    columns = (["Model", "Dataset"] if show_group else []) + \
        ["Method", "Metric", "Mean", f"Δ vs {col.baseline}", "95% CI", "p", "p (Holm)",
         "MDE", "Pairs", "Verdict"]
    rows, records = [], []
    for i, r in enumerate(df.to_dict("records")):
        sp, n_pairs, diff = spec(r["metric"]), int(r["n_pairs"]), float(r["diff"])
        ci = (f"[{fmt_num(r['diff_ci_low'], sp)}, {fmt_num(r['diff_ci_high'], sp)}]"
              if n_pairs >= 2 else MISSING)
        shown = fmt_num(diff, sp)
        sign = "+" if math.isfinite(diff) and diff > 0 and shown != fmt_num(0.0, sp) else ""
        rows.append(([r["model"], r["dataset"]] if show_group else []) +
                    [r["label"], display_name(r["metric"]),
                     fmt_stat(r["mean"], r["ci_low"], r["ci_high"], int(r["n"]), sp),
                     sign + shown, ci, fmt_num(r["p_value"], ".4f"), fmt_num(padj[i], ".4f"),
                     fmt_num(mdes[i], sp), str(n_pairs), verdict[i]])
        records.append({"model": r["model"] if group_cols else "(all)",
                        "dataset": r["dataset"] if group_cols else "(all)",
                        **{k: r[k] for k in ("label", "metric", "mean", "diff", "diff_sd",
                                             "diff_ci_low", "diff_ci_high", "test", "p_value",
                                             "p_signflip", "p_signflip_min")},
                        "baseline": col.baseline, "n": int(r["n"]), "n_pairs": n_pairs,
                        "p_adjusted": padj[i], "correction": CORRECTIONS[CORRECTION],
                        "mde": mdes[i], "verdict": verdict[i]})
    ns = sorted({int(x) for x in df["n_pairs"] if x >= 2})
    pmin = ", ".join(f"{2 / 2 ** n:.3g} at n = {n}" for n in ns) or MISSING
    notes = [
        f"Paired by seed against {col.baseline!r} (same model and data set): Δ = mean of the "
        "per-seed differences with its 95% t-interval; p = two-sided paired t-test (the exact "
        "sign-flip test where every seed's difference is the same).",
        *(_testing_notes(m, alpha1) if m else [
            "No comparison has 2 or more paired seeds: none is tested, corrected or given an "
            "MDE, and no row can be called better or worse."]),
        f"The sign-flip test needs no normality but cannot go below p = 2/2^n ({pmin}); its p "
        "is in the CSV (p_signflip, p_signflip_min).",
        sources_note(summ, summ.main)]
    nlab = 4 if show_group else 2
    return Table(name, title, columns, rows, pd.DataFrame(records, columns=COMPARISON_COLUMNS),
                 None, notes, n_label_cols=nlab)


def comparison_tables(col: Collected, summ: Summary) -> list[Table]:
    if col.baseline is None or not summ.main or not len(summ.values):
        return []
    out = [_comparison("comparison", f"Comparison with {col.baseline} (paired by seed)", col,
                       summ, summ.by_group, GROUP)]
    if summ.overall is not None:
        out.append(_comparison("comparison_all", f"Comparison with {col.baseline}, averaged "
                               "over models and data sets", col, summ, summ.overall, []))
    return [t for t in out if t is not None]


# ------------------------------------------------------------------------- other tables
def _family_table(name, title, col, summ, metrics, notes, mark_best=True) -> Table | None:
    metrics = [m for m in metrics if m in summ.metrics and summ.values[m].notna().any()]
    if not metrics:
        return None
    blocks = [(g, _group_cells(summ, g)) for g in summ.groups]
    return _stat_table(name, title, col, summ, metrics, blocks,
                       notes + [sources_note(summ, metrics), _column_notes(metrics)], mark_best)


def reward_table(col: Collected, summ: Summary) -> Table | None:
    key = "pref/reward_accuracy"
    if key not in summ.metrics or key in summ.main or not summ.values[key].notna().any():
        return None
    t = _family_table("reward_accuracy", "Implicit-reward accuracy (each method's own reward)",
                      col, summ, [key], [], mark_best=False)
    if t is None:
        return None
    meth = dict(zip(col.cells["label"], col.cells["method"]))
    lab_col = t.columns.index("Method")
    t.columns.insert(lab_col + 1, "Reward")
    t.n_label_cols += 1
    for r, b in zip(t.rows, t.bold):
        r.insert(lab_col + 1, M.reward_family(meth.get(r[lab_col], r[lab_col])))
        b.insert(lab_col + 1, False)
    t.data.insert(3, "reward_family", [M.reward_family(meth.get(x, x)) for x in t.data["label"]])
    t.notes.insert(0, "Share of held-out pairs where the method's own implicit reward (what it "
                   "logs as rewards/chosen and rewards/rejected) prefers the chosen response. "
                   "The reward differs by method family (column Reward), so rows compare only "
                   "within a family; no best is marked. Pref. acc. in the main table uses one "
                   "definition for every method.")
    return t


def uncertainty_table(col: Collected, summ: Summary) -> Table | None:
    """Per cell of the main tables: n, sd over seeds, the t-interval, the item-level SE and
    what it averages, and the variance sources."""
    if not summ.main or not len(summ.by_group):
        return None
    bg = summ.by_group[summ.by_group["metric"].isin(summ.main)]
    src = ", ".join([M.SOURCE_TRAINING_SEED] + ([M.SOURCE_SFT_SEED] if summ.per_seed_sft else []))
    rows, records = [], []
    order = {lab: i for i, lab in enumerate(col.labels)}
    bg = bg.assign(_l=bg["label"].map(order), _m=bg["metric"].map(
        {m: i for i, m in enumerate(summ.main)})).sort_values(GROUP + ["_l", "_m"], kind="stable")
    for r in bg.to_dict("records"):
        m, sp = r["metric"], spec(r["metric"])
        items = M.get(m).items if M.known(m) else None
        rows.append([r["model"], r["dataset"], r["label"], display_name(m), str(int(r["n"])),
                     fmt_num(r["mean"], sp), fmt_num(r["std"], sp),
                     f"[{fmt_num(r['ci_low'], sp)}, {fmt_num(r['ci_high'], sp)}]",
                     fmt_num(r["item_se"], sp), items or MISSING])
        records.append({k: r[k] for k in ("model", "dataset", "label", "metric", "n", "mean",
                                          "std", "ci_low", "ci_high", "item_se")}
                       | {"items": items, "interval_sources": src})
    notes = [f"Seed interval: 95% Student-t; variance sources: {src}. Item SE: sd(items) / "
             "sqrt(n_items) per run (ddof 1, as lm-eval's stderr), mean over seeds; it measures "
             "how far the fixed evaluation items could move a value, which the seed interval "
             "does not include."]
    return Table("uncertainty", "Uncertainty of the main results",
                 ["Model", "Dataset", "Method", "Metric", "n", "Mean", "SD (seeds)",
                  "95% CI (seeds)", "Item SE", "Items"], rows,
                 pd.DataFrame(records, columns=["model", "dataset", "label", "metric", "n", "mean",
                                                "std", "ci_low", "ci_high", "item_se", "items",
                                                "interval_sources"]),
                 None, notes, n_label_cols=4)


def build_tables(col: Collected, summ: Summary) -> list[Table]:
    """Every table of the report, in reading order."""
    from .profiles import aggregate_table

    out = main_tables(col, summ)
    out += comparison_tables(col, summ)
    for t in (aggregate_table(col, summ), reward_table(col, summ), reported_table(col, summ),
              uncertainty_table(col, summ)):
        if t is not None:
            out.append(t)
    for t in (
        _family_table("diversity", "Diversity of samples", col, summ, M.by_family("diversity"),
                      ["Self-BLEU in percent (lower = more diverse); Distinct-n and entropy: "
                       "higher = more diverse (docs/metrics.md)."]),
        _family_table("cost", "Cost", col, summ, M.by_family("cost"),
                      ["FLOPs estimated as 6N per trained token plus the extra forward passes "
                       "(harness/runner.py); accelerator-hours = train time x GPUs."],
                      mark_best=False),
        _family_table("displacement", "Likelihood displacement and KL", col, summ,
                      M.by_family("displacement"),
                      ["Mean summed log-probability of held-out responses under the policy and "
                       "its change from the reference; both deltas negative = the chosen "
                       "responses lost likelihood too.", KL_NOTE],
                      mark_best=False),
    ):
        if t is not None:
            out.append(t)
    from .tuning import onpolicy_table, tuning_tables

    out += tuning_tables(col)
    op = onpolicy_table(col)
    if op is not None:
        out.append(op)
    out += status_tables(col)
    prov = provenance_table(col)
    if prov is not None:
        out.append(prov)
    out.append(hparams_table(col))
    if col.smoke:
        _label_smoke(col, out)
    return out


SMOKE_NOTE = ("Smoke run (`run --smoke`): tiny stand-in models, capped steps and evaluation; "
              "these numbers test the pipeline and are not results.")


def _label_smoke(col: Collected, tables: list[Table]) -> None:
    for t in tables:
        t.title = f"SMOKE RUN: {t.title}"
        t.notes.insert(0, SMOKE_NOTE + (" (Inferred from the suite name: these cells predate "
                                        "the config's smoke flag.)" if col.smoke_inferred else ""))


def _testing_notes(m: int, alpha1: float) -> list[str]:
    """The notes on the correction and the MDE of a comparison table with ``m`` tests."""
    return [
        f"p (Holm): {CORRECTIONS[CORRECTION]}-corrected over all {m} comparisons of this table. "
        f"A verdict (better / worse) needs p (Holm) < {ALPHA}; otherwise 'not distinguishable'.",
        f"MDE: the smallest true Δ this n detects with {80}% power at the strictest level the "
        f"correction can ask of one comparison ({ALPHA}/{m} = {alpha1:.2g}, Holm's first step), "
        "given the observed sd of the per-seed differences (noncentral t, statsmodels "
        "TTestPower): MDE = d_z · sd(Δ_seed).",
    ]

