"""The report of a tuned suite (docs/protocol.md): chosen settings, the whole search, the
sensitivity of each method to its knobs, the reward-KL frontier, and the on-policy data.

* ``tuning_choice``: per (model, data set) and method entry, the setting the trials chose on
  the dev split (every searched key), its dev score, and how many trials ran of how large a
  space (``_tuning/selection.json`` has the space sizes; the chosen setting itself comes from
  the finals' ``config.yaml``, so the table shows what the finals ran).
* ``tuning_search`` (appendix): every trial, its searched values, dev score (mean over trial
  seeds) and state; the chosen one marked.
* ``sensitivity`` figure: per (model, data set) a row of panels, one per searched numeric key
  (beta, lr, ...); per method, the dev score against the key's value, each point the best
  trial with that value (the other knobs at their best: a profile, so a method is not
  penalised for a subsampled grid).
* ``reward_kl_frontier_<model>_<dataset>``: one figure per task, the DPO paper's Fig. 2
  protocol on the trials: per method, the graded reward (``task/score``; a judge's
  ``task/reward``; exact-match accuracy otherwise) against KL(policy || reference), one point per
  trial (mean over trial seeds), the trials at the method's chosen values of its other knobs
  joined in beta order; the SFT checkpoint at KL 0.
* ``onpolicy_data``: per row that trains on on-policy samples, the training examples and what
  they are made of (``onpolicy/*`` of ``metrics.json``), mean over seeds.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from harness import metrics as M

from .collect import Collected, slug
from .format import MISSING, Table, fmt_num
from .plots import FigureResult, _panels, _style, method_colors, render_png

__all__ = ["tuning_tables", "tuning_figures", "onpolicy_table"]

REWARDS = ["task/score", "task/reward", "task/accuracy"]


def _metric_of(col: Collected) -> str | None:
    """The suite's ``tuning.metric`` (from suite.yaml), else the first of the usual ones."""
    from harness.results import CorruptFileError, read_yaml

    try:
        y = read_yaml(col.suite_dir / "suite.yaml", default=None)
    except (CorruptFileError, OSError):
        y = None
    key = ((y or {}).get("tuning") or {}).get("metric") if isinstance(y, dict) else None
    if isinstance(key, str) and key in col.trials.columns:
        return key
    return next((k for k in ("task/accuracy", "task/reward", "pref/accuracy") if k in col.trials.columns), None)


def _space_sizes(col: Collected) -> dict:
    from harness.results import CorruptFileError, read_json

    try:
        sel = read_json(col.suite_dir / "_tuning" / "selection.json")
    except (CorruptFileError, OSError):
        return {}
    return {(g.get("model"), g.get("dataset"), g.get("entry")): g.get("space_size")
            for g in (sel.get("groups") or []) if isinstance(g, dict)}


def _trial_means(col: Collected, keys: list[str]) -> pd.DataFrame:
    """One row per (model, dataset, entry, point): the mean over trial seeds of ``keys``,
    ``n`` done seeds and the states."""
    t = col.trials
    rows = []
    for (model, dataset, entry, point), g in t.groupby(["model", "dataset", "entry", "point"], sort=True):
        done = g[g["state"] == "done"]
        r = {"model": model, "dataset": dataset, "entry": entry, "point": point, "method": g["method"].iloc[0],
             "n": len(done), "states": "/".join(sorted(set(g["state"])))}
        for k in keys:
            vals = done[k].dropna() if k in done.columns else pd.Series(dtype=float)
            r[k] = float(vals.mean()) if len(vals) else math.nan
        rows.append(r)
    return pd.DataFrame(rows)


def _chosen(col: Collected) -> dict:
    """(model, dataset, entry) -> the chosen point (JSON), from the finals' configs."""
    f = col.cells[col.cells["role"] == "final"]
    return {(m, d, e): p for m, d, e, p in zip(f["model"], f["dataset"], f["entry"], f["point"])}


def _order(col: Collected, entries) -> list[str]:
    known = [lab for lab in col.labels if lab in set(entries)]
    return known + sorted(set(entries) - set(known))


def _value_text(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tuning_tables(col: Collected) -> list[Table]:
    if col.trials is None or col.trials.empty:
        return []
    metric = _metric_of(col)
    if metric is None:
        return []
    m = M.get(metric)
    means = _trial_means(col, [metric])
    chosen, sizes = _chosen(col), _space_sizes(col)
    keys = list(dict.fromkeys(k for p in means["point"] for k in json.loads(p)))
    spec = m.fmt
    choice_rows, choice_data, search_rows, search_data = [], [], [], []
    for (model, dataset), g in means.groupby(["model", "dataset"], sort=True):
        for entry in _order(col, g["entry"]):
            e = g[g["entry"] == entry]
            pick = chosen.get((model, dataset, entry))
            for _, r in e.iterrows():
                pt = json.loads(r["point"])
                is_pick = r["point"] == pick
                search_rows.append([model, dataset, entry] + [_value_text(pt[k]) if k in pt else MISSING for k in keys]
                                   + [fmt_num(r[metric] * m.scale, spec), str(r["n"]), r["states"],
                                      "chosen" if is_pick else ""])
                search_data.append({"model": model, "dataset": dataset, "entry": entry, **pt,
                                    "dev_" + metric: r[metric], "n": r["n"], "states": r["states"], "chosen": is_pick})
            row = e[e["point"] == pick]
            dev = float(row[metric].iloc[0]) if len(row) else math.nan
            pt = json.loads(pick) if pick else {}
            size = sizes.get((model, dataset, entry))
            choice_rows.append([model, dataset, entry] + [_value_text(pt[k]) if k in pt else MISSING for k in keys]
                               + [fmt_num(dev * m.scale, spec), f"{len(e)} of {size if size else '?'}"])
            choice_data.append({"model": model, "dataset": dataset, "entry": entry, **pt, "dev_" + metric: dev,
                                "trials": len(e), "space_size": size})
    name = f"{m.display} on dev"
    direction = "higher" if m.direction > 0 else "lower"
    choice = Table("tuning_choice", "Chosen settings (tuned on the dev split)",
                   ["Model", "Data set", "Method"] + keys + [name, "Trials"], choice_rows,
                   pd.DataFrame(choice_data), None,
                   [f"Each method's setting was chosen on the dev split by {metric} ({direction} is better; "
                    f"mean over the trial seeds); the final seeds in the main tables ran at it and were scored on "
                    f"the disjoint test split. Trials: run of the method's search space (the same budget for "
                    f"every method; a larger space is subsampled, seeded). '{MISSING}': not searched for this "
                    f"method, or no final (every trial failed or lacks the metric)."], n_label_cols=3 + len(keys))
    search = Table("tuning_search", "Appendix: the whole search (every trial, dev split)",
                   ["Model", "Data set", "Method"] + keys + [name, "Seeds", "State", ""], search_rows,
                   pd.DataFrame(search_data), None,
                   [f"Every trial of every method: its searched values and {metric} on the dev split (mean over "
                    f"the n trial seeds that finished). 'chosen': the setting the finals ran."],
                   n_label_cols=3 + len(keys))
    return [choice, search]


def onpolicy_table(col: Collected) -> Table | None:
    keys = [k for k in M.by_family("onpolicy") if k in col.cells.columns and col.cells[k].notna().any()]
    if not keys:
        return None
    done = col.done[col.done[keys[0]].notna()]
    rows, data = [], []
    for (model, dataset), g in done.groupby(["model", "dataset"], sort=True):
        for lab in _order(col, g["label"]):
            x = g[g["label"] == lab]
            vals = {k: float(x[k].mean()) for k in keys}
            rows.append([model, dataset, lab, str(len(x))] + [fmt_num(vals[k] * M.get(k).scale, M.get(k).fmt)
                                                               for k in keys])
            data.append({"model": model, "dataset": dataset, "label": lab, "n": len(x), **vals})
    return Table("onpolicy_data", "On-policy training data", ["Model", "Data set", "Method", "Seeds"]
                 + [M.get(k).display for k in keys], rows, pd.DataFrame(data), None,
                 ["Rows that train on samples of their SFT checkpoint (harness/data/onpolicy.py), mean over "
                  "seeds: prompts sampled, training examples (pairs, or best samples for RFT), prompts dropped "
                  "because every sample tied (pairs) or the best scored below rft_min_score (RFT), the share of "
                  "chosen and rejected responses that are correct (oracle judge), the mean score margin of a "
                  "pair and the mean score of all samples."], n_label_cols=4)


# ------------------------------------------------------------------------------ figures
def _numeric_keys(means: pd.DataFrame) -> list[str]:
    keys = list(dict.fromkeys(k for p in means["point"] for k in json.loads(p)))
    good = []
    for k in keys:
        vals = [json.loads(p).get(k) for p in means["point"]]
        vals = [v for v in vals if v is not None]
        if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) and len(set(vals)) > 1:
            good.append(k)
    order = {"beta": 0, "lr": 1}
    return sorted(good, key=lambda k: (order.get(k, 2), k))[:4]


def _value_axis(ax, vals) -> None:
    """Log scale for values spanning a decade or more; ticks at the searched values, written
    plainly (mathtext is off in the report's style, so the default log labels would be raw TeX)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    vals = sorted(set(vals))
    if vals and min(vals) > 0 and max(vals) / min(vals) >= 10:
        ax.set_xscale("log")
    if vals:
        ax.xaxis.set_major_locator(FixedLocator(vals))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{v:g}" for v in vals], fontsize=6)


def sensitivity_figure(col: Collected, metric: str, colors: dict) -> FigureResult:
    name, title = "sensitivity", "Sensitivity to the searched settings (dev split)"
    m = M.get(metric)
    caption = (f"{m.display} on the dev split against each searched setting, per method; each point is the best "
               f"trial with that value (mean over trial seeds), the other settings at their best.")
    means = _trial_means(col, [metric])
    keys = _numeric_keys(means)
    if means.empty or not keys:
        return FigureResult(name, title, caption, skipped="needs trials that vary a numeric setting")
    groups = sorted(set(zip(means["model"], means["dataset"])))
    fig, axes = _panels(len(groups), len(keys), 3.2, 2.4)
    for gi, (model, dataset) in enumerate(groups):
        g = means[(means["model"] == model) & (means["dataset"] == dataset)]
        for ki, key in enumerate(keys):
            ax, xs_all = axes[gi][ki], []
            for entry in _order(col, g["entry"]):
                pts: dict = {}
                for p, v in zip(g.loc[g["entry"] == entry, "point"], g.loc[g["entry"] == entry, metric]):
                    x = json.loads(p).get(key)
                    if x is None or not math.isfinite(v):
                        continue
                    best = max if m.direction > 0 else min
                    pts[x] = best(pts.get(x, v), v)
                if len(pts) < 1:
                    continue
                xs = sorted(pts)
                xs_all += xs
                ax.plot(xs, [pts[x] * m.scale for x in xs], "o-", color=colors.get(entry), label=entry,
                        linewidth=1, markersize=3)
            _value_axis(ax, xs_all)
            ax.set_xlabel(key)
            ax.set_ylabel(f"{m.display} (dev)")
            ax.set_title(f"{model} / {dataset}", fontsize=8)
            if xs_all:
                ax.legend(fontsize=6)
    return FigureResult(name, title, caption, png=render_png(fig))


def frontier_figures(col: Collected, colors: dict) -> list[FigureResult]:
    reward = next((k for k in REWARDS if k in col.trials.columns and col.trials[k].notna().any()), None)
    if reward is None or "kl/policy_ref" not in col.trials.columns:
        return []
    means = _trial_means(col, [reward, "kl/policy_ref", reward + "_sft"])
    chosen = _chosen(col)
    out = []
    for (model, dataset), g in means.groupby(["model", "dataset"], sort=True):
        name = f"reward_kl_frontier_{slug(model)}_{slug(dataset)}"
        title = f"Reward-KL frontier: {model} / {dataset} (dev split)"
        rm = M.get(reward)
        caption = (f"{rm.display} against KL(policy || reference) for every trial (mean over trial seeds), the "
                   f"DPO paper's Fig. 2 protocol; per method, the trials at its chosen values of the other "
                   f"settings are joined in order of beta; the SFT checkpoint sits at KL 0.")
        fig, axes = _panels(1, 1, 4.6, 3.3)
        ax = axes[0][0]
        for entry in _order(col, g["entry"]):
            e = g[(g["entry"] == entry) & g[reward].notna() & g["kl/policy_ref"].notna()]
            if e.empty:
                continue
            c = colors.get(entry)
            ax.scatter(e["kl/policy_ref"], e[reward] * rm.scale, color=c, s=10, alpha=0.35)
            pick = json.loads(chosen.get((model, dataset, entry)) or "{}")
            line = [(json.loads(p).get("beta", 0.0), kl, r) for p, kl, r in zip(e["point"], e["kl/policy_ref"], e[reward])
                    if all(json.loads(p).get(k) == v for k, v in pick.items() if k != "beta")]
            line.sort(key=lambda t: (t[0] if isinstance(t[0], (int, float)) else 0.0, t[1]))
            if line:
                ax.plot([t[1] for t in line], [t[2] * rm.scale for t in line], "o-", color=c, label=entry,
                        linewidth=1, markersize=4)
        sft = g[reward + "_sft"].dropna() if reward + "_sft" in g.columns else pd.Series(dtype=float)
        if len(sft):
            ax.scatter([0.0], [float(np.mean(sft)) * rm.scale], marker="*", s=80, color="black", label="SFT")
        ax.set_xlabel("KL(policy || reference), nats")
        ax.set_ylabel(f"{rm.display} (dev)")
        ax.legend(fontsize=6)
        out.append(FigureResult(name, title, caption, png=render_png(fig)))
    return out


def tuning_figures(col: Collected) -> list[FigureResult]:
    if col.trials is None or col.trials.empty:
        return []
    metric = _metric_of(col)
    with _style():
        colors = method_colors(col, sorted(set(col.trials["entry"]) - set(col.labels)))
        figs = [sensitivity_figure(col, metric, colors)] if metric else []
        figs += frontier_figures(col, colors)
    return figs
