"""The report's figures over training steps.

* ``heldout_curves`` (cells trained with ``train.eval_every``): held-out preference accuracy
  and log-ratio margin against the optimizer step, one line per method (mean over seeds, band
  of one standard deviation), one column per (model, data set). Both have one definition for
  every method (docs/metrics.md), so the methods share an axis: the score-vs-step figure of
  preference-optimization papers.
* ``training_loss`` and ``training_margins``: each method's training loss and its own reward
  margin (``rewards/margins``) on the training batches, one panel per method (faceted, each
  with its own y-axis): losses differ in scale by orders of magnitude (IPO's squared loss
  starts near (1/(2 beta))^2) and each method's implicit reward means something else, so they
  must not share an axis.

Failed runs are drawn one by one, dotted, with an x at their last logged step.
"""
from __future__ import annotations

import math

import numpy as np

from harness import metrics as M

from .collect import Collected
from .plots import FigureResult, _group_name, _panels, render_png

__all__ = ["heldout_curves", "training_panels", "HELDOUT_METRICS"]

HELDOUT_METRICS = [("pref/accuracy", 100.0, "held-out preference accuracy (%)"),
                   ("pref/logratio_margin", 1.0, "held-out log-ratio margin (nats)")]
MAX_COLS = 4


def _states(col: Collected) -> dict:
    return dict(zip(col.cells["cell_id"], col.cells["state"]))


def _draw(ax, cl, states: dict, color: str, label: str, scale: float = 1.0) -> bool:
    """Mean over the done runs (± one sd band), failed runs dotted; True if anything was drawn."""
    drawn = False
    done = cl[cl["cell_id"].map(states) == "done"]
    if len(done):
        st = done.groupby("step", sort=True)["value"].agg(["mean", "std", "count"])
        steps = st.index.to_numpy(dtype=float)
        mean = st["mean"].to_numpy() * scale
        ax.plot(steps, mean, color=color, label=label, linewidth=1.5)
        band = st["count"].to_numpy() >= 2
        if band.any():
            sd = st["std"].to_numpy() * scale
            ax.fill_between(steps, np.where(band, mean - sd, mean), np.where(band, mean + sd, mean),
                            color=color, alpha=0.2, linewidth=0)
        drawn = True
    for cid in sorted(set(cl["cell_id"])):
        if states.get(cid) != "failed":
            continue
        one = cl[cl["cell_id"] == cid].sort_values("step", kind="stable")
        ax.plot(one["step"].to_numpy(dtype=float), one["value"].to_numpy() * scale, ":", color=color,
                linewidth=1.0, label=f"{label} s{int(one['seed'].iloc[0])} (failed)")
        ax.plot([float(one["step"].iloc[-1])], [float(one["value"].iloc[-1]) * scale], "x", color=color,
                markersize=6)
        drawn = True
    return drawn


def heldout_curves(col: Collected, colors: dict) -> FigureResult | None:
    """None when no cell wrote eval_log.jsonl (the suite did not ask for it)."""
    name, title = "heldout_curves", "Held-out scores during training"
    ev = col.eval_curves
    if ev is None or not len(ev):
        return None
    states = _states(col)
    ev = ev[ev["cell_id"].map(states).isin(["done", "failed"])]
    metrics = [m for m in HELDOUT_METRICS if (ev["metric"] == m[0]).any()]
    if not metrics:
        return None
    groups = sorted({(m, d) for m, d in zip(ev["model"], ev["dataset"])})
    labels = [lab for lab in col.labels if lab in set(ev["label"])]
    fig, axes = _panels(len(metrics), len(groups), 3.4, 2.3, left=0.8, wgap=0.75, hgap=0.75,
                        bottom=0.5 + 0.18 * math.ceil(len(labels) / 4))
    for gi, g in enumerate(groups):
        cg = ev[(ev["model"] == g[0]) & (ev["dataset"] == g[1])]
        for mi, (m, scale, ylabel) in enumerate(metrics):
            ax = axes[mi][gi]
            cm = cg[cg["metric"] == m]
            for lab in labels:
                _draw(ax, cm[cm["label"] == lab], states, colors[lab], lab, scale)
            if m == "pref/accuracy":
                ax.axhline(50, color="0.5", linewidth=0.7, linestyle="--")  # chance (a tie scores 1/2)
            ax.set_xlabel("optimizer step")
            if gi == 0:
                ax.set_ylabel(ylabel)
            ax.set_title(_group_name(g), fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=7, frameon=False)
    caption = ("Held-out preference accuracy (the summed log-ratio ranks the chosen response first; dashed: "
               "chance) and log-ratio margin (chosen minus rejected, DPO's implicit reward margin at beta = 1) "
               "against the optimizer step, evaluated every train.eval_every steps: mean over seeds, band of "
               "one standard deviation. One definition for every method, so the methods share an axis.")
    return FigureResult(name, title, caption, png=render_png(fig))


def training_panels(col: Collected, colors: dict, metric: str) -> FigureResult | None:
    """``metric`` ("loss" or "rewards/margins") per method, one panel each (own y-axis); None
    when no training log has it."""
    states = _states(col)
    cur = col.curves
    if len(cur):
        cur = cur[(cur["metric"] == metric) & cur["cell_id"].map(states).isin(["done", "failed"])]
    if not len(cur):
        return None
    groups = sorted({(m, d) for m, d in zip(cur["model"], cur["dataset"])})
    labels = [lab for lab in col.labels if lab in set(cur["label"])]
    method_of = dict(zip(col.cells["label"], col.cells["method"]))
    rows_per_group = math.ceil(len(labels) / MAX_COLS)
    ncols = math.ceil(len(labels) / rows_per_group)  # balanced rows: 6 panels as 3 + 3, not 4 + 2
    fig, axes = _panels(rows_per_group * len(groups), ncols, 2.5, 1.7, left=0.75, wgap=0.7, hgap=0.85,
                        top=0.45)
    for gi, g in enumerate(groups):
        cg = cur[(cur["model"] == g[0]) & (cur["dataset"] == g[1])]
        for li, lab in enumerate(labels):
            ax = axes[gi * rows_per_group + li // ncols][li % ncols]
            if not _draw(ax, cg[cg["label"] == lab], states, colors[lab], lab):
                ax.text(0.5, 0.5, "no log", ha="center", va="center", transform=ax.transAxes, color="0.5")
            where = f" — {_group_name(g)}" if len(groups) > 1 else ""
            ax.set_title(f"{lab}{where}", fontsize=8, color=colors[lab])
            ax.set_xlabel("optimizer step")
            if li % ncols == 0:
                ax.set_ylabel("training loss" if metric == "loss" else "reward margin")
            if metric != "loss":
                ax.text(0.02, 0.96, M.reward_family(method_of.get(lab, "")), transform=ax.transAxes,
                        fontsize=6, va="top", color="0.35")
        for j in range(len(labels), rows_per_group * ncols):
            axes[gi * rows_per_group + j // ncols][j % ncols].set_visible(False)
    if metric == "loss":
        return FigureResult("training_loss", "Training loss per method", (
            "Each method's training loss on its training batches, one panel per method with its own y-axis "
            "(losses differ in scale: IPO's squared loss starts near (1/(2 beta))^2); mean over seeds, band of "
            "one standard deviation; failed runs dotted."), png=render_png(fig))
    return FigureResult("training_margins", "Reward margins on training batches", (
        "Each method's own implicit reward margin (rewards/margins) on its training batches, one panel per "
        "method: the rewards mean different things per method (named in grey in each panel), so they do not "
        "share an axis; compare methods on the held-out log-ratio margin instead."), png=render_png(fig))
