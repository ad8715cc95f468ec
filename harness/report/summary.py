"""Per-run values in display units and their summaries over seeds, for the tables and figures.

Metric names, directions, scales and formats come from the metric registry
(:mod:`harness.metrics`). Rules:

* **Units.** Accuracies stored as fractions (``pref/*accuracy*``, ``task/accuracy``, the lm-eval
  headline metrics) are shown in percent, like the paper's Table 1; win rates and Self-BLEU are
  percentages already. Item-level standard errors are scaled the same way.
* **Avg.** When a table has two or more lm-eval headline columns, ``Avg`` is their plain mean
  per run (per seed), then summarized over seeds like any column; a run missing one of them has
  no Avg.
* **Averaged over groups** (``overall``): with several (model, data set) groups, each run's
  value is first averaged over the groups per (method, seed) (the paper's Table 1 averages its
  three models the same way), then summarized over seeds.
* **Degenerate values are not numbers.** A length-controlled win rate whose GLM fit collapsed
  (``winrate/lc_collapsed``; for results written before that flag, a length coefficient of
  exactly 0: the cross-validated L1 penalty removed the length term, and what is left is the
  plain win rate shrunk towards 50) is dropped from its seed's values and counted in
  ``collapsed``.
* **lm-eval headline metric** per task: the metric :data:`harness.metrics.HEADLINE_METRIC`
  names for a standard benchmark, else the first present of ``acc_norm``, ``acc``,
  ``exact_match_strict_match``, ``exact_match*``, ``pass@1``, ``pass_at_k``,
  ``prompt_level_strict_acc``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import metrics as M

from .collect import Collected
from .stats import aggregate

__all__ = ["Summary", "summarize_suite", "lm_eval_headlines", "display_name", "scale_of", "spec",
           "direction", "GROUP", "MAIN_METRICS", "LC_KEY", "LC_COEF_KEY"]

GROUP = ["model", "dataset"]
HEADLINE_ORDER = ["acc_norm", "acc", "exact_match_strict_match", "exact_match*", "pass@1",
                  "pass_at_k", "prompt_level_strict_acc"]
# the default main table: every "accuracy" family metric (reward accuracy has its own table)
MAIN_METRICS = M.by_family("accuracy")
LC_KEY, LC_COEF_KEY = "winrate/lc_vs_sft", "winrate/lc_length_coef"
LC_FLAG_KEY = "winrate/lc_collapsed"


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
        order = ([M.HEADLINE_METRIC[task]] if task in M.HEADLINE_METRIC else []) + HEADLINE_ORDER
        for m in order:
            if m.endswith("*"):
                hit = sorted(h for h in have if h.startswith(m[:-1]) and not h.endswith("stderr"))
                if hit:
                    out[task] = f"lm_eval/{task}/{hit[0]}"
                    break
            elif m in have:
                out[task] = f"lm_eval/{task}/{m}"
                break
    std = list(M.BENCHMARK_COLUMNS)
    return dict(sorted(out.items(), key=lambda kv: (std.index(kv[0]) if kv[0] in std else len(std),
                                                    kv[0])))


def _metric(key: str) -> M.Metric | None:
    return M.get(key) if M.known(key) else None


def display_name(key: str) -> str:
    m = _metric(key)
    return m.display if m is not None else key


def scale_of(key: str) -> float:
    """Stored value -> shown value (100 for accuracies stored as fractions, else 1)."""
    m = _metric(key)
    return m.scale if m is not None else 1.0


def spec(key: str) -> str:
    m = _metric(key)
    return m.fmt if m is not None else ".4g"


def direction(key: str) -> int:
    m = _metric(key)
    return m.direction if m is not None else 0


@dataclass
class Summary:
    """Per-run values in display units plus their summaries over seeds.

    ``values``: done cells, one row per run, metrics scaled (:func:`scale_of`), ``Avg`` added,
    degenerate values NaN; ``item_se``: the same rows, each metric's item-level standard error
    (scaled; NaN without one). ``by_group``: :func:`aggregate` over ``(model, dataset, label)``
    plus ``item_se`` (mean over seeds) and ``collapsed`` (seeds whose value was degenerate).
    ``averaged``: per (label, seed) means over the groups, and ``overall`` its aggregate (None
    with a single group). ``main``: main-table metric keys; ``headlines``: lm-eval task ->
    headline key; ``per_seed_sft``: every done cell's SFT checkpoint was trained per seed."""

    values: pd.DataFrame
    item_se: pd.DataFrame
    by_group: pd.DataFrame
    averaged: pd.DataFrame | None
    overall: pd.DataFrame | None
    main: list[str]
    headlines: dict[str, str]
    groups: list[tuple[str, str]]
    metrics: list[str]
    per_seed_sft: bool = False
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

    def runs(self, group: tuple[str, str] | None) -> pd.DataFrame:
        """Per-run values of one group (one row per label and seed); the averaged runs for
        None (the group's own when there is only one)."""
        if group is None and self.averaged is not None:
            return self.averaged
        if group is None:
            group = self.groups[0]
        v = self.values
        return v[(v["model"] == group[0]) & (v["dataset"] == group[1])]


def _main_keys(col: Collected, keys: list[str], headlines: dict[str, str]) -> list[str]:
    if col.main_metrics:
        missing = [k for k in col.main_metrics if k not in keys]
        if missing:
            col.notes.append(f"report.metrics lists {', '.join(missing)}, which no finished cell "
                             f"has; known metric keys: {', '.join(keys)}.")
        return [k for k in col.main_metrics if k in keys]
    return list(headlines.values()) + [k for k in MAIN_METRICS if k in keys]


def _scaled(done: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """(values, item SEs, LC-collapsed flags) of the done cells in display units."""
    vals = done[["cell_id"] + GROUP + ["method", "label", "seed", "label_noise", "data_key"]].copy()
    ses = vals[["cell_id"] + GROUP + ["label", "seed"]].copy()
    collapsed = pd.Series(False, index=done.index)
    if LC_COEF_KEY in done.columns:  # results written before the flag: w_len == 0
        collapsed = done[LC_COEF_KEY].eq(0.0)
    if LC_FLAG_KEY in done.columns:
        flag = done[LC_FLAG_KEY]
        collapsed = flag.eq(1.0).where(flag.notna(), collapsed)
    for k in metrics:
        x = done[k].to_numpy(dtype=np.float64) * scale_of(k)
        if k == LC_KEY:
            x = np.where(collapsed.to_numpy(), np.nan, x)
        vals[k] = x
        ses[k] = _item_se(done, k) * scale_of(k)
    return vals.reset_index(drop=True), ses.reset_index(drop=True), collapsed.reset_index(drop=True)


def _item_se(done: pd.DataFrame, key: str) -> np.ndarray:
    """Each run's item-level SE of ``key`` (stored units): the recorded one, else for 0/1 items
    recovered exactly from the share and the item count (:func:`harness.metrics.binary_stderr`)."""
    m = _metric(key)
    out = np.full(len(done), np.nan)
    if m is None:
        return out
    if m.stderr_key and m.stderr_key in done.columns:
        out = done[m.stderr_key].to_numpy(dtype=np.float64).copy()
    if m.n_key and m.n_key in done.columns:
        derived = np.array([M.binary_stderr(p, n) for p, n in
                            zip(done[key].to_numpy(dtype=np.float64),
                                done[m.n_key].to_numpy(dtype=np.float64))])
        out = np.where(np.isnan(out), derived, out)
    return out


def summarize_suite(col: Collected) -> Summary:
    done = col.done
    keys = list(col.metric_columns)
    headlines = lm_eval_headlines(keys)
    main = _main_keys(col, keys, headlines)
    families = (M.by_family("diversity") + M.by_family("cost") + M.by_family("displacement")
                + M.by_family("reward"))
    extra = [k for k in families + list(headlines.values()) if k in keys and k not in main]
    metrics = list(dict.fromkeys(main + extra))
    vals, ses, collapsed = _scaled(done, metrics)
    # a column no run has a value for (e.g. an LC win rate that was never defined) says nothing,
    # unless its values were all degenerate: then the table says so
    lc_flagged = LC_KEY in metrics and bool(collapsed.any())
    main = [k for k in main if vals[k].notna().any() or (k == LC_KEY and lc_flagged)]
    extra = [k for k in extra if vals[k].notna().any()]
    metrics = list(dict.fromkeys(main + extra))
    bench = [k for k in main if k in headlines.values()]
    if len(bench) >= 2:
        # mean per run over all benchmark columns; NaN when one is missing (skipna=False)
        vals[M.AVG_KEY] = vals[bench].mean(axis=1, skipna=False)
        # the Avg of G benchmarks per run: its item SE is sqrt(sum se^2) / G (independent items)
        ses[M.AVG_KEY] = np.sqrt((ses[bench] ** 2).sum(axis=1, skipna=False)) / len(bench)
        pos = main.index(bench[-1]) + 1
        main = main[:pos] + [M.AVG_KEY] + main[pos:]
        metrics = list(dict.fromkeys(main + extra))
    groups = sorted({(m, d) for m, d in zip(vals["model"], vals["dataset"])})
    by_group = _aggregate(col, vals, ses, collapsed, GROUP + ["label"], metrics)
    averaged = overall = None
    if len(groups) > 1:
        averaged = vals.groupby(["label", "seed"], sort=True)[metrics].mean().reset_index()
        # item SE of a mean over the groups that have the value: sqrt(sum se^2) / count
        cnt = vals.groupby(["label", "seed"], sort=True)[metrics].count().to_numpy()
        sq = (ses[["label", "seed"]].join(ses[metrics] ** 2)
              .groupby(["label", "seed"], sort=True)[metrics].sum(min_count=1).to_numpy())
        avg_se = averaged[["label", "seed"]].copy()
        avg_se[metrics] = np.sqrt(sq) / np.where(cnt > 0, cnt, np.nan)
        n_coll = pd.Series(False, index=averaged.index)
        overall = _aggregate(col, averaged, avg_se, n_coll, ["label"], metrics)
    per_seed = bool(len(done)) and bool(done["sft_per_seed"].all())
    return Summary(values=vals, item_se=ses, by_group=by_group, averaged=averaged,
                   overall=overall, main=main, headlines=headlines, groups=groups,
                   metrics=metrics, per_seed_sft=per_seed)


def _aggregate(col: Collected, vals: pd.DataFrame, ses: pd.DataFrame, collapsed: pd.Series,
               group_cols: list[str], metrics: list[str]) -> pd.DataFrame:
    """:func:`aggregate` plus the mean item SE over seeds and the count of collapsed LC fits."""
    if not len(vals):
        return pd.DataFrame(columns=group_cols + ["metric", "n", "mean", "std", "se", "ci_low",
                                                  "ci_high", "n_pairs", "diff", "item_se",
                                                  "collapsed"])
    out = aggregate(vals, group_cols, metrics, baseline=col.baseline, label_col="label")
    se_mean = ses.groupby(group_cols, sort=True)[metrics].mean()
    coll = (vals[group_cols].assign(_c=collapsed.to_numpy())
            .groupby(group_cols, sort=True)["_c"].sum())

    def key(r):
        k = tuple(r[c] for c in group_cols)
        return k if len(k) > 1 else k[0]

    out["item_se"] = [float(se_mean.loc[key(r), r["metric"]]) if key(r) in se_mean.index
                      else math.nan for r in out.to_dict("records")]
    out["collapsed"] = [int(coll.get(key(r), 0)) if r["metric"] == LC_KEY else 0
                        for r in out.to_dict("records")]
    return out
