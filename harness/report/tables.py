"""The report's tables, each written as Markdown, LaTeX (booktabs) and CSV.

Rules (also printed under each table):

* **Units.** Accuracies stored as fractions (``pref/*accuracy*``, ``task/accuracy``, the
  lm-eval headline metrics) are shown in percent, like the paper's Table 1; win rates and
  Self-BLEU are percentages already. Each CSV holds the numbers in the units shown.
* **Cells.** ``mean ± h`` over seeds, where ``h`` is half the width of the 95% percentile
  bootstrap interval of the mean (:func:`harness.report.stats.summarize`; the interval need
  not be symmetric, the CSV has both ends). One seed: the mean alone. ``–``: no value.
* **Best.** Per column (and per model and data set), the highest mean (lowest for Self-BLEU) is
  bold in Markdown/LaTeX/HTML and ``best = True`` in the CSV; ties are all marked.
* **Avg.** When a table has two or more lm-eval headline columns (the benchmark columns of
  the paper's Table 1), ``Avg`` is their plain mean per run (per seed), then summarized over
  seeds like any column; a run missing one of them has no Avg. Other columns (preference
  accuracy, win rate, task accuracy) measure different things and are never averaged.
* **Averaged table** (``main_all``): when a suite has several models or data sets, each run's
  value is first averaged over the (model, data set) groups per (method, seed) — the paper's
  Table 1 averages its three models the same way — then summarized over seeds.
* **Comparison** with the baseline: paired by seed (:func:`harness.report.stats.aggregate`):
  mean difference, its 95% CI, a two-sided bootstrap p-value, and "within noise" when the CI
  contains 0.
* **lm-eval headline metric** per task: for the standard benchmarks the metric
  :data:`harness.evaluate.lmeval.STANDARD_BENCHMARKS` names (copied in :data:`HEADLINE_METRIC`
  so the report does not import torch; a test keeps the two equal), else the first present of
  ``acc_norm``, ``acc``, ``exact_match_strict_match``, ``exact_match*``, ``pass@1``,
  ``pass_at_k``, ``prompt_level_strict_acc``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .collect import STATE_ORDER, Collected, slug
from .stats import aggregate, summarize

__all__ = ["Table", "Summary", "summarize_suite", "build_tables", "to_markdown", "to_latex",
           "to_csv", "lm_eval_headlines", "METRICS", "BENCHMARK_COLUMNS", "AVG_KEY",
           "display_name", "scale_of", "escape_latex", "HEADLINE_METRIC"]

AVG_KEY = "avg/lm_eval"
MISSING = "–"

# key -> (column name, format, direction: +1 higher is better, -1 lower, 0 no "best")
METRICS: dict[str, tuple[str, str, int]] = {
    AVG_KEY: ("Avg", ".1f", +1),
    "task/accuracy": ("Task acc.", ".1f", +1),
    "pref/accuracy": ("Pref. acc.", ".1f", +1),
    "pref/accuracy_norm": ("Pref. acc. (len-norm.)", ".1f", +1),
    "pref/reward_accuracy": ("Reward acc.", ".1f", +1),
    "winrate/vs_sft": ("Win rate vs SFT", ".1f", +1),
    "winrate/lc_vs_sft": ("LC win rate vs SFT", ".1f", +1),
    "diversity/self_bleu": ("Self-BLEU", ".1f", -1),
    "diversity/distinct_2": ("Distinct-2", ".3f", +1),
    "diversity/distinct_4": ("Distinct-4", ".3f", +1),
    "diversity/entropy": ("Entropy (nats)", ".3f", +1),
    "diversity/semantic": ("Semantic div.", ".3f", +1),
    "cost/train_wall_s": ("Train time (s)", ".1f", 0),
    "cost/eval_wall_s": ("Eval time (s)", ".1f", 0),
    "cost/tokens_per_s": ("Tokens/s", ".0f", 0),
    "cost/peak_mem_mb": ("Peak memory (MB)", ".0f", 0),
    "cost/flops": ("FLOPs", ".3g", 0),
    "cost/accelerator_hours": ("Accelerator-hours", ".4f", 0),
    "displacement/chosen_logp_policy": ("log p(chosen)", ".2f", 0),
    "displacement/chosen_delta": ("Δ log p(chosen)", ".2f", 0),
    "displacement/rejected_logp_policy": ("log p(rejected)", ".2f", 0),
    "displacement/rejected_delta": ("Δ log p(rejected)", ".2f", 0),
    "kl/policy_ref": ("KL(policy || ref)", ".3f", 0),
}
ACCURACY_METRICS = ["task/accuracy", "pref/accuracy", "pref/accuracy_norm",
                    "pref/reward_accuracy", "winrate/vs_sft", "winrate/lc_vs_sft"]
FRACTION_METRICS = {"task/accuracy", "task/accuracy_sft", "pref/accuracy", "pref/accuracy_norm",
                    "pref/reward_accuracy"}
DIVERSITY_METRICS = ["diversity/self_bleu", "diversity/distinct_2", "diversity/distinct_4",
                     "diversity/entropy", "diversity/semantic"]
COST_METRICS = ["cost/train_wall_s", "cost/eval_wall_s", "cost/tokens_per_s", "cost/peak_mem_mb",
                "cost/flops", "cost/accelerator_hours"]
DISPLACEMENT_METRICS = ["displacement/chosen_logp_policy", "displacement/chosen_delta",
                        "displacement/rejected_logp_policy", "displacement/rejected_delta",
                        "kl/policy_ref"]
# lm-eval task name (as the suite lists it) -> the paper's Table 1 column
BENCHMARK_COLUMNS = {"mmlu": "MMLU", "gsm8k": "GSM8K", "gpqa": "GPQA", "gpqa_diamond": "GPQA",
                     "humaneval": "HumanEval", "truthfulqa": "TruthfulQA", "ifeval": "IFEval"}
# the headline metric of each standard benchmark, as in harness.evaluate.lmeval.STANDARD_BENCHMARKS
HEADLINE_METRIC = {"mmlu": "acc", "gsm8k": "exact_match_strict_match", "gpqa": "acc_norm",
                   "gpqa_diamond": "acc_norm", "humaneval": "pass_at_k", "truthfulqa": "acc",
                   "ifeval": "prompt_level_strict_acc"}
HEADLINE_ORDER = ["acc_norm", "acc", "exact_match_strict_match", "exact_match*", "pass@1",
                  "pass_at_k", "prompt_level_strict_acc"]
GROUP = ["model", "dataset"]


# ----------------------------------------------------------------------------- metric names
def lm_eval_headlines(metric_keys: list[str]) -> dict[str, str]:
    """lm-eval task name -> its headline metric key (rule in the module docstring)."""
    by_task: dict[str, set[str]] = {}
    for k in metric_keys:
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == "lm_eval":
            by_task.setdefault(parts[1], set()).add(parts[2])
    out = {}
    for task in sorted(by_task):
        have = by_task[task]
        order = ([HEADLINE_METRIC[task]] if task in HEADLINE_METRIC else []) + HEADLINE_ORDER
        for m in order:
            if m.endswith("*"):
                hit = sorted(h for h in have if h.startswith(m[:-1]) and not h.endswith("stderr"))
                if hit:
                    out[task] = f"lm_eval/{task}/{hit[0]}"
                    break
            elif m in have:
                out[task] = f"lm_eval/{task}/{m}"
                break
    std = list(BENCHMARK_COLUMNS)
    return dict(sorted(out.items(), key=lambda kv: (std.index(kv[0]) if kv[0] in std else len(std),
                                                    kv[0])))


def display_name(key: str) -> str:
    if key in METRICS:
        return METRICS[key][0]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "lm_eval":
        return BENCHMARK_COLUMNS.get(parts[1], parts[1])
    return key


def scale_of(key: str) -> float:
    """100 for accuracies stored as fractions (shown in percent), else 1."""
    parts = key.split("/")
    if key in FRACTION_METRICS:
        return 100.0
    if len(parts) == 3 and parts[0] == "lm_eval" and not parts[2].startswith("_") \
            and "stderr" not in parts[2]:
        return 100.0
    return 1.0


def _spec(key: str) -> tuple[str, int]:
    if key in METRICS:
        return METRICS[key][1], METRICS[key][2]
    if key.startswith("lm_eval/"):
        return ".1f", +1
    return ".4g", 0


def fmt_num(x, spec: str) -> str:
    if x is None or not isinstance(x, (int, float, np.floating)) or not math.isfinite(x):
        return MISSING
    s = format(float(x), spec)
    if s.startswith("-") and float(s) == 0:  # "-0.0" reads as a sign that is not there
        s = s[1:]
    return s


def fmt_stat(mean: float, lo: float, hi: float, n: int, spec: str) -> str:
    if n == 0 or not math.isfinite(mean):
        return MISSING
    if n == 1 or not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt_num(mean, spec)
    return f"{fmt_num(mean, spec)} ± {fmt_num((hi - lo) / 2, spec)}"


# ------------------------------------------------------------------------------ the Table
@dataclass
class Table:
    """One table: display strings (``rows``, with ``bold`` flags) and its numbers (``data``,
    written as CSV). ``name`` is the file stem under ``tables/``."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    data: pd.DataFrame
    bold: list[list[bool]] | None = None
    notes: list[str] = field(default_factory=list)
    n_label_cols: int = 1  # leading text columns (left-aligned)

    def is_bold(self, i: int, j: int) -> bool:
        return bool(self.bold and self.bold[i][j])


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(t: Table, heading: str = "###") -> str:
    out = [f"{heading} {t.title}", ""]
    out.append("| " + " | ".join(_md_escape(c) for c in t.columns) + " |")
    out.append("|" + "|".join("---" if j < t.n_label_cols else "---:"
                              for j in range(len(t.columns))) + "|")
    for i, r in enumerate(t.rows):
        cells = [(f"**{_md_escape(c)}**" if t.is_bold(i, j) and c != MISSING else _md_escape(c))
                 for j, c in enumerate(r)]
        out.append("| " + " | ".join(cells) + " |")
    if not t.rows:
        out.append("")
        out.append("(no rows)")
    if t.notes:
        out.append("")
        out.extend(f"- {n}" for n in t.notes)
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
                  "|": r"\textbar{}", "±": r"$\pm$", "–": "--", "Δ": r"$\Delta$",
                  "−": "--", "≥": r"$\geq$", "≤": r"$\leq$"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def escape_latex(s: str) -> str:
    """Escape LaTeX's special characters (and the few non-ASCII symbols the tables use)."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group(0)], str(s))


def _latex_note(note: str) -> str:
    """A note with `code` spans set in typewriter type."""
    parts = note.split("`")
    return "".join(rf"\texttt{{{escape_latex(p)}}}" if i % 2 else escape_latex(p)
                   for i, p in enumerate(parts))


def to_latex(t: Table) -> str:
    align = "l" * t.n_label_cols + "r" * (len(t.columns) - t.n_label_cols)
    out = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
           rf"\caption{{{escape_latex(t.title)}}}", rf"\label{{tab:{slug(t.name).replace('_', '-')}}}",
           r"\begin{tabular}{" + align + "}", r"\toprule",
           " & ".join(escape_latex(c) for c in t.columns) + r" \\", r"\midrule"]
    for i, r in enumerate(t.rows):
        cells = [(rf"\textbf{{{escape_latex(c)}}}" if t.is_bold(i, j) and c != MISSING
                  else escape_latex(c)) for j, c in enumerate(r)]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if t.notes:
        out.append(r"\par\smallskip{\footnotesize " +
                   r" \\ ".join(_latex_note(n) for n in t.notes) + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv(t: Table) -> str:
    return t.data.to_csv(index=False, lineterminator="\n")


# ---------------------------------------------------------------------------- summaries
@dataclass
class Summary:
    """Per-run values in display units plus their summaries over seeds.

    ``values``: done cells, one row per run, metrics scaled (:func:`scale_of`) and ``Avg``
    added. ``by_group``: :func:`aggregate` over ``(model, dataset, label)``. ``averaged``:
    per (label, seed) means over the groups, and ``overall`` its aggregate over ``label``
    (None with a single group). ``main``: main-table metric keys, ``headlines``: lm-eval
    task -> headline key."""

    values: pd.DataFrame
    by_group: pd.DataFrame
    averaged: pd.DataFrame | None
    overall: pd.DataFrame | None
    main: list[str]
    headlines: dict[str, str]
    groups: list[tuple[str, str]]
    metrics: list[str]
    _index: dict | None = field(default=None, repr=False)

    def stat(self, metric: str, label: str, group: tuple[str, str] | None = None) -> dict:
        """The aggregate row of (metric, label[, group]) as a dict, or {} when absent.
        ``group`` None: the averaged summary (the per-group one when there is one group)."""
        if self._index is None:
            idx: dict = {}
            for r in self.by_group.to_dict("records"):
                idx[(r["model"], r["dataset"], r["label"], r["metric"])] = r
            if self.overall is not None:
                for r in self.overall.to_dict("records"):
                    idx[(None, None, r["label"], r["metric"])] = r
            self._index = idx
        if group is None:
            if self.overall is None and len(self.groups) == 1:
                group = self.groups[0]
            else:
                group = (None, None)
        return self._index.get((group[0], group[1], label, metric), {})


def summarize_suite(col: Collected) -> Summary:
    done = col.done
    keys = [k for k in col.metric_columns]
    headlines = lm_eval_headlines(keys)
    if col.main_metrics:
        main = [k for k in col.main_metrics if k in keys]
        missing = [k for k in col.main_metrics if k not in keys]
        if missing:
            col.notes.append(f"report.metrics lists {', '.join(missing)}, which no finished cell "
                             f"has; known metric keys: {', '.join(keys)}.")
    else:
        main = list(headlines.values()) + [k for k in ACCURACY_METRICS if k in keys]
    vals = done[["cell_id"] + GROUP + ["method", "label", "seed", "label_noise",
                                       "data_key"]].copy()
    extra = [k for k in DIVERSITY_METRICS + COST_METRICS + DISPLACEMENT_METRICS
             + list(headlines.values()) if k in keys and k not in main]
    metrics = list(dict.fromkeys(main + extra))
    for k in metrics:
        vals[k] = done[k].to_numpy(dtype=np.float64) * scale_of(k)
    # a column no run has a value for (e.g. an LC win rate that was never defined) says nothing
    main = [k for k in main if vals[k].notna().any()]
    extra = [k for k in extra if vals[k].notna().any()]
    metrics = list(dict.fromkeys(main + extra))
    bench = [k for k in main if k in headlines.values()]
    if len(bench) >= 2:
        # mean per run over all benchmark columns; NaN when one is missing (skipna=False)
        vals[AVG_KEY] = vals[bench].mean(axis=1, skipna=False)
        pos = main.index(bench[-1]) + 1
        main = main[:pos] + [AVG_KEY] + main[pos:]
        metrics = list(dict.fromkeys(main + extra))
    vals = vals.reset_index(drop=True)
    groups = sorted({(m, d) for m, d in zip(vals["model"], vals["dataset"])})
    if len(vals):
        by_group = aggregate(vals, GROUP + ["label"], metrics, baseline=col.baseline,
                             label_col="label")
    else:
        by_group = pd.DataFrame(columns=GROUP + ["label", "metric", "n", "mean", "std",
                                                 "ci_low", "ci_high", "n_pairs", "diff"])
    averaged = overall = None
    if len(groups) > 1:
        averaged = vals.groupby(["label", "seed"], sort=True)[metrics].mean().reset_index()
        overall = aggregate(averaged, ["label"], metrics, baseline=col.baseline,
                            label_col="label")
    return Summary(values=vals, by_group=by_group, averaged=averaged, overall=overall, main=main,
                   headlines=headlines, groups=groups, metrics=metrics)


# ------------------------------------------------------------------------------- tables
STAT_NOTE = ("mean ± half-width of the 95% percentile-bootstrap CI over seeds (one seed: the "
             "mean alone); accuracies and win rates in percent; best per column in bold.")


def _labels_in(col: Collected, df: pd.DataFrame) -> list[str]:
    present = set(df["label"])
    return [lab for lab in col.labels if lab in present]


def _best_flags(means: list[float], direction: int, spec: str = ".1f") -> list[bool]:
    """Which rows hold the best mean, compared as displayed (so two values that print the
    same tie). Nothing is marked when fewer than two rows have a value or all of them tie."""
    shown = [float(fmt_num(m, spec)) if math.isfinite(m) else math.nan for m in means]
    finite = [m for m in shown if math.isfinite(m)]
    if direction == 0 or len(finite) < 2 or len(set(finite)) == 1:
        return [False] * len(means)
    best = max(finite) if direction > 0 else min(finite)
    return [math.isfinite(m) and m == best for m in shown]


def _stat_table(name: str, title: str, col: Collected, summ: Summary, metrics: list[str],
                blocks: list[tuple[tuple[str, str] | None, pd.DataFrame]],
                notes: list[str], mark_best: bool = True) -> Table:
    """Rows: (group columns when several blocks,) method label, seeds; one column per metric.
    ``blocks``: (group or None for the averaged table, the cells of that block)."""
    show_group = len(blocks) > 1
    columns = (["Model", "Dataset"] if show_group else []) + ["Method", "Seeds"] + \
        [display_name(m) for m in metrics]
    nlab = len(columns) - len(metrics)
    rows, bold, records = [], [], []
    for group, cells in blocks:
        labels = _labels_in(col, cells)
        stats = {m: [summ.stat(m, lab, group) for lab in labels] for m in metrics}
        flags = {m: (_best_flags([s.get("mean", math.nan) for s in stats[m]], _spec(m)[1],
                                 _spec(m)[0])
                     if mark_best else [False] * len(labels)) for m in metrics}
        for i, lab in enumerate(labels):
            seeds = int((cells["label"] == lab).sum())
            r = ([group[0], group[1]] if show_group else []) + [lab, str(seeds)]
            b = [False] * nlab
            for m in metrics:
                s = stats[m][i]
                r.append(fmt_stat(s.get("mean", math.nan), s.get("ci_low", math.nan),
                                  s.get("ci_high", math.nan), int(s.get("n", 0) or 0),
                                  _spec(m)[0]))
                b.append(flags[m][i])
                records.append({
                    "model": group[0] if group else "(all)",
                    "dataset": group[1] if group else "(all)",
                    "label": lab, "metric": m, "column": display_name(m),
                    "scale": scale_of(m) if m != AVG_KEY else 100.0,
                    "mean": s.get("mean", math.nan), "std": s.get("std", math.nan),
                    "ci_low": s.get("ci_low", math.nan), "ci_high": s.get("ci_high", math.nan),
                    "n": int(s.get("n", 0) or 0), "best": bool(flags[m][i])})
            rows.append(r)
            bold.append(b)
    data = pd.DataFrame(records, columns=["model", "dataset", "label", "metric", "column",
                                          "scale", "mean", "std", "ci_low", "ci_high", "n",
                                          "best"])
    return Table(name, title, columns, rows, data, bold, notes, n_label_cols=nlab)


def _column_notes(metrics: list[str]) -> str:
    parts = [f"{display_name(m)} = `{m}`" for m in metrics if m != AVG_KEY]
    return "Columns: " + "; ".join(parts) + "."


def _group_cells(summ: Summary, group: tuple[str, str]) -> pd.DataFrame:
    v = summ.values
    return v[(v["model"] == group[0]) & (v["dataset"] == group[1])]


def main_tables(col: Collected, summ: Summary) -> list[Table]:
    if not summ.main or not len(summ.values):
        return []
    notes = [STAT_NOTE, _column_notes(summ.main)]
    if AVG_KEY in summ.main:
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
        t = _stat_table("main_all", f"Main results averaged over {n_m} model(s) and {n_d} "
                        "data set(s)", col, summ, summ.main, [(None, summ.averaged)],
                        notes + ["Per (method, seed), the mean over the model/data-set groups "
                                 "that have the value, then summarized over seeds."])
        out.append(t)
    return out


def comparison_tables(col: Collected, summ: Summary) -> list[Table]:
    if col.baseline is None or not summ.main or not len(summ.values):
        return []

    def build(name, title, df, group_cols):
        df = df[df["metric"].isin(summ.main) & (df["label"] != col.baseline)]
        labels = [lab for lab in col.labels if lab in set(df["label"])]
        order = {lab: i for i, lab in enumerate(labels)}
        morder = {m: i for i, m in enumerate(summ.main)}
        df = df.assign(_l=df["label"].map(order), _m=df["metric"].map(morder))
        df = df.sort_values(group_cols + ["_l", "_m"], kind="stable")
        show_group = bool(group_cols) and len(summ.groups) > 1
        columns = (["Model", "Dataset"] if show_group else []) + \
            ["Method", "Metric", "Mean", f"Δ vs {col.baseline}", "95% CI", "p", "Pairs",
             "Verdict"]
        rows, records = [], []
        for _, r in df.iterrows():
            spec, direction = _spec(r["metric"])
            n_pairs = int(r["n_pairs"])
            diff = float(r["diff"])
            if n_pairs == 0:
                verdict = "no paired seeds"
            elif n_pairs == 1:
                verdict = "one seed: no noise estimate"
            elif bool(r["within_noise"]):
                verdict = "within noise"
            else:
                verdict = ("better" if diff * (direction or 1) > 0 else "worse")
            ci = (f"[{fmt_num(r['diff_ci_low'], spec)}, {fmt_num(r['diff_ci_high'], spec)}]"
                  if n_pairs >= 2 else MISSING)
            p = fmt_num(r["p_value"], ".4f") if n_pairs >= 2 else MISSING
            mean = fmt_stat(r["mean"], r["ci_low"], r["ci_high"], int(r["n"]), spec)
            shown = fmt_num(diff, spec)
            sign = "+" if math.isfinite(diff) and diff > 0 and shown != fmt_num(0.0, spec) else ""
            rows.append(([r["model"], r["dataset"]] if show_group else []) +
                        [r["label"], display_name(r["metric"]), mean,
                         sign + shown, ci, p, str(n_pairs), verdict])
            wn = r["within_noise"]
            records.append({
                "model": r["model"] if group_cols else "(all)",
                "dataset": r["dataset"] if group_cols else "(all)",
                "label": r["label"], "metric": r["metric"], "baseline": col.baseline,
                "mean": r["mean"], "n": int(r["n"]), "n_pairs": n_pairs, "diff": diff,
                "diff_ci_low": r["diff_ci_low"], "diff_ci_high": r["diff_ci_high"],
                "p_value": r["p_value"],
                "within_noise": (None if wn is pd.NA or (isinstance(wn, float) and math.isnan(wn))
                                 else bool(wn)),
                "verdict": verdict})
        data = pd.DataFrame(records, columns=["model", "dataset", "label", "metric", "baseline",
                                              "mean", "n", "n_pairs", "diff", "diff_ci_low",
                                              "diff_ci_high", "p_value", "within_noise",
                                              "verdict"])
        notes = [f"Paired by seed against {col.baseline!r} (same model and data set): Δ = mean "
                 "of the per-seed differences, its 95% percentile-bootstrap CI, two-sided "
                 "bootstrap p; 'within noise' when the CI contains 0. With 2-5 seeds these "
                 "intervals are too narrow: read them as a noise indication."]
        nlab = 4 if show_group else 2
        if not rows:
            return None
        return Table(name, title, columns, rows, data, None, notes, n_label_cols=nlab)

    out = [build("comparison", f"Comparison with {col.baseline} (paired by seed)",
                 summ.by_group, GROUP)]
    if summ.overall is not None:
        out.append(build("comparison_all", f"Comparison with {col.baseline}, averaged over "
                         "models and data sets", summ.overall, []))
    return [t for t in out if t is not None]


def _family_table(name, title, col, summ, metrics, notes, mark_best=True) -> Table | None:
    metrics = [m for m in metrics if m in summ.metrics and summ.values[m].notna().any()]
    if not metrics:
        return None
    blocks = [(g, _group_cells(summ, g)) for g in summ.groups]
    return _stat_table(name, title, col, summ, metrics, blocks, notes + [_column_notes(metrics)],
                       mark_best)


def status_tables(col: Collected) -> list[Table]:
    cells = col.cells
    states = [s for s in STATE_ORDER if s in set(cells["state"])] + \
        sorted(set(cells["state"]) - set(STATE_ORDER))
    rows, records = [], []
    for lab in col.labels:
        c = cells[cells["label"] == lab]
        counts = [int((c["state"] == s).sum()) for s in states]
        rows.append([lab] + [str(x) for x in counts] + [str(len(c))])
        records.append({"label": lab, **dict(zip(states, counts)), "total": len(c)})
    counts = [int((cells["state"] == s).sum()) for s in states]
    rows.append(["all"] + [str(x) for x in counts] + [str(len(cells))])
    records.append({"label": "(all)", **dict(zip(states, counts)), "total": len(cells)})
    status = Table("status", "Cells by state", ["Method"] + states + ["total"], rows,
                   pd.DataFrame(records, columns=["label"] + states + ["total"]), None,
                   ["Only 'done' cells enter the result tables and figures."])
    out = [status]
    bad = cells[cells["state"].isin(["failed", "unreadable", "superseded"])]
    rows, records = [], []
    for _, r in bad.iterrows():
        last = r["last_metrics"] if isinstance(r["last_metrics"], dict) else {}
        last_txt = ", ".join(
            f"{k}={fmt_num(v, '.4g') if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
            for k, v in sorted(last.items())[:12])
        reason = " ".join(str(r["reason"] or "").split())
        step = r["fault_step"]
        step_txt = str(int(step)) if isinstance(step, (int, float)) and not isinstance(step, bool) \
            and math.isfinite(step) else MISSING
        rows.append([r["cell_id"], r["state"], r["label"], r["model"], r["dataset"],
                     str(r["seed"]), step_txt, reason[:300] or MISSING, last_txt or MISSING])
        records.append({"cell_id": r["cell_id"], "state": r["state"], "label": r["label"],
                        "model": r["model"], "dataset": r["dataset"], "seed": int(r["seed"]),
                        "step": int(step) if step_txt != MISSING else None, "reason": reason,
                        "last_metrics": json.dumps(last, sort_keys=True)})
    if not len(bad):
        return out
    out.append(Table("failed", "Failed / diverged cells",
                     ["Cell", "State", "Method", "Model", "Dataset", "Seed", "Step", "Reason",
                      "Last finite metrics"], rows,
                     pd.DataFrame(records, columns=["cell_id", "state", "label", "model",
                                                    "dataset", "seed", "step", "reason",
                                                    "last_metrics"]),
                     None, ["A numerical fault (non-finite loss or gradient) records the step "
                            "and the last finite training metrics; see the cell's error.txt. "
                            "'superseded': a finished duplicate (same model, data set, label and "
                            "seed) that a later run replaced."], n_label_cols=9))
    return out


def hparams_table(col: Collected) -> Table:
    rows, records = [], []
    for lab in col.labels:
        c = col.cells[col.cells["label"] == lab]
        methods = sorted(set(c["method"]))
        hps = sorted(set(c["hparams"]))
        rows.append([lab, ", ".join(methods), " / ".join(hps)])
        records.append({"label": lab, "method": ", ".join(methods), "hparams": " / ".join(hps)})
    return Table("hparams", "Methods and hyperparameters", ["Method", "Loss", "Hyperparameters"],
                 rows, pd.DataFrame(records, columns=["label", "method", "hparams"]), None,
                 ["Hyperparameters as resolved in each cell's config.yaml (method defaults "
                  "included)."], n_label_cols=3)


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower())


def reported_table(col: Collected, summ: Summary) -> Table | None:
    """The paper's numbers (``reported.csv``) next to ours, benchmark by benchmark."""
    rep = col.reported
    if rep is None:
        return None
    bench_cols = [c for c in rep.columns if c not in ("method", "model", "note", "Avg")]
    has_avg = "Avg" in rep.columns
    # ours: per (label, seed) benchmark values (percent), for all groups or one model
    ours_keys: dict[str, str] = {}
    for task, key in summ.headlines.items():
        colname = BENCHMARK_COLUMNS.get(task)
        if colname in bench_cols and colname not in ours_keys:
            ours_keys[colname] = key
    show_model = bool((rep["model"] != "").any())
    vals = summ.values
    models = sorted(set(vals["model"])) if len(vals) else []
    columns = ["Method"] + (["Model"] if show_model else []) + ["Source"] + bench_cols + \
        (["Avg"] if has_avg else [])
    rows, records = [], []
    notes = []

    def ours_for(method: str, model: str) -> tuple[str | None, pd.DataFrame | None]:
        labels = [lab for lab in col.labels if _norm(lab) == _norm(method)]
        if not labels:
            meth = dict(zip(col.cells["label"], col.cells["method"]))
            labels = [lab for lab in col.labels if _norm(meth.get(lab, "")) == _norm(method)]
        if not labels or not len(vals):
            return None, None
        v = vals[vals["label"] == labels[0]]
        if model:
            mm = [m for m in models if _norm(m) == _norm(model)]
            if not mm:
                return labels[0], None
            v = v[v["model"] == mm[0]]
        if not len(v):
            return labels[0], None
        keys = list(ours_keys.values())
        per_seed = v.groupby("seed", sort=True)[keys].mean() if keys else None
        return labels[0], per_seed

    for _, r in rep.iterrows():
        label, per_seed = ours_for(r["method"], r["model"])
        paper = [r[c] for c in bench_cols] + ([r["Avg"]] if has_avg else [])
        ours_stats = []
        for c in bench_cols:
            if per_seed is not None and c in ours_keys:
                ours_stats.append(summarize(per_seed[ours_keys[c]].to_numpy(dtype=np.float64)))
            else:
                ours_stats.append({"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                                   "n": 0})
        if has_avg:
            present = [ours_keys[c] for c in bench_cols if c in ours_keys]
            if per_seed is not None and present:
                ours_stats.append(summarize(per_seed[present].mean(axis=1, skipna=False)
                                            .to_numpy(dtype=np.float64)))
            else:
                ours_stats.append({"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                                   "n": 0})
        lead = [r["method"]] + ([r["model"] or "(avg)"] if show_model else [])
        diffs = [(s["mean"] - p) if math.isfinite(s["mean"]) and math.isfinite(p) else math.nan
                 for s, p in zip(ours_stats, paper)]
        if has_avg and len(ours_keys) < len(bench_cols):
            diffs[-1] = math.nan  # our Avg covers fewer benchmarks: not comparable
        if per_seed is None:  # nothing of ours to set beside it: the paper's row alone
            rows.append(lead + ["paper (no matching run here)"] +
                        [fmt_num(x, ".1f") for x in paper])
        else:
            rows.append(lead + ["paper"] + [fmt_num(x, ".1f") for x in paper])
            rows.append(lead + [f"ours ({label})"] + [
                fmt_stat(s["mean"], s["ci_low"], s["ci_high"], int(s["n"]), ".1f")
                for s in ours_stats])
            rows.append(lead + ["ours − paper"] + [fmt_num(d, "+.1f") for d in diffs])
        for c, p, s, d in zip(bench_cols + (["Avg"] if has_avg else []), paper, ours_stats, diffs):
            records.append({"method": r["method"], "model": r["model"], "label": label,
                            "benchmark": c, "reported": p, "reproduced_mean": s["mean"],
                            "reproduced_ci_low": s["ci_low"], "reproduced_ci_high": s["ci_high"],
                            "reproduced_n": int(s["n"]), "diff": d})
        if r["note"]:
            notes.append(f"{r['method']}{' (' + r['model'] + ')' if r['model'] else ''}: {r['note']}")
    notes += _reported_consistency(rep, bench_cols, has_avg)
    mapped = ", ".join(f"{c} = `{k}`" for c, k in ours_keys.items()) or "none of our lm-eval tasks"
    notes.append(f"Ours: mean ± CI half-width over seeds, averaged over our models and data sets "
                 f"(or the named model); benchmark columns from {mapped}. Our Avg is over the "
                 f"benchmarks we ran; its difference is shown only when we ran them all. A paper "
                 f"row is matched to our runs by method (label or loss name, ignoring case and "
                 f"punctuation) and, when it names one, by model.")
    data = pd.DataFrame(records, columns=["method", "model", "label", "benchmark", "reported",
                                          "reproduced_mean", "reproduced_ci_low",
                                          "reproduced_ci_high", "reproduced_n", "diff"])
    return Table("reported_vs_reproduced", "Reported (paper) vs reproduced", columns, rows, data,
                 None, notes, n_label_cols=3 if show_model else 2)


def _reported_consistency(rep: pd.DataFrame, bench_cols: list[str], has_avg: bool) -> list[str]:
    """Check the paper's table against itself: each row's Avg against the mean of its columns,
    and an averaged row (no model) against the mean of the same method's per-model rows.
    Tolerance 0.051: the paper rounds to one decimal."""
    tol = 0.051
    notes = []
    for _, r in rep.iterrows():
        xs = [r[c] for c in bench_cols]
        if has_avg and all(math.isfinite(x) for x in xs) and math.isfinite(r["Avg"]) and xs:
            m = sum(xs) / len(xs)
            if abs(m - r["Avg"]) > tol:
                notes.append(f"check: {r['method']}{' (' + r['model'] + ')' if r['model'] else ''}"
                             f" Avg {r['Avg']:.1f} but its columns average {m:.2f}.")
    for method in dict.fromkeys(rep["method"]):
        rows = rep[rep["method"] == method]
        avg_rows = rows[rows["model"] == ""]
        per_model = rows[rows["model"] != ""]
        if len(avg_rows) != 1 or len(per_model) < 2:
            continue
        a = avg_rows.iloc[0]
        bad = []
        for c in bench_cols + (["Avg"] if has_avg else []):
            xs = per_model[c].to_numpy(dtype=np.float64)
            if np.isnan(xs).any() or not math.isfinite(a[c]):
                continue
            m = float(xs.mean())
            if abs(m - a[c]) > tol:
                bad.append(f"{c} {a[c]:.1f} vs {m:.2f}")
        if bad:
            notes.append(f"check: {method}'s averaged row differs from the mean of its "
                         f"{len(per_model)} per-model rows: {'; '.join(bad)}.")
    return notes


def build_tables(col: Collected, summ: Summary) -> list[Table]:
    """Every table of the report, in reading order."""
    out = main_tables(col, summ)
    out += comparison_tables(col, summ)
    rep = reported_table(col, summ)
    if rep is not None:
        out.append(rep)
    for t in (
        _family_table("diversity", "Diversity of samples", col, summ, DIVERSITY_METRICS,
                      ["Self-BLEU in percent (lower = more diverse); Distinct-n and entropy: "
                       "higher = more diverse (docs/metrics.md)."]),
        _family_table("cost", "Cost", col, summ, COST_METRICS,
                      ["FLOPs estimated as 6N per trained token plus the extra forward passes "
                       "(harness/runner.py); accelerator-hours = train time x GPUs."],
                      mark_best=False),
        _family_table("displacement", "Likelihood displacement and KL", col, summ,
                      DISPLACEMENT_METRICS,
                      ["Mean summed log-probability of held-out responses under the policy and "
                       "its change from the reference; both deltas negative = the chosen "
                       "responses lost likelihood too. KL: Monte-Carlo estimate on samples."],
                      mark_best=False),
    ):
        if t is not None:
            out.append(t)
    out += status_tables(col)
    out.append(hparams_table(col))
    return out
