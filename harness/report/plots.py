"""The report's figures, rendered to PNG bytes, reproducible byte for byte.

Every figure is drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot, so no global
figure registry and no backend choice) inside ``matplotlib.rc_context`` with fixed settings:
seaborn's ``whitegrid`` style and ``paper`` context, the DejaVu Sans font that ships with
matplotlib (the result does not depend on the fonts a machine has), a fixed dpi, mathtext off
(a ``$`` in a token or label stays a ``$``), and PNG metadata without the ``Software`` entry
(the only metadata matplotlib writes; it names the matplotlib version). Error bars are the
95% Student-t intervals over seeds of :mod:`harness.report.stats`, never seaborn's own
bootstrap. So the same results give the same bytes. A smoke run's figures say so in the image
(top left, red) and in their titles.

Each builder returns a :class:`FigureResult`; when its data are missing the result has no
image and says why (the page leaves such a figure out rather than print a note about it).

Colours: one per method row, the same in every figure (:func:`method_colors`: Paul Tol's
colour-blind-safe hues, greys for the baseline rows); every axis is labelled with the quantity
and its unit; panels are faceted by (model, data set), never coloured by it.
"""
from __future__ import annotations

import contextvars
import io
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .collect import Collected, slug
from .summary import Summary, display_name

__all__ = ["FigureResult", "build_figures", "render_png"]

NONNEGATIVE = ("kl/policy_ref",)  # metrics that cannot be below 0 (intervals cut there)
DIVERSITY = ["diversity/self_bleu", "diversity/distinct_2", "diversity/distinct_4",
             "diversity/entropy"]
MAX_TOKENS = 48          # tokens shown per token-importance example
MAX_EXAMPLES = 4
DPI = 110
SMOKE_STAMP = "SMOKE RUN (tiny stand-in models): not results"
_SMOKE = contextvars.ContextVar("smoke", default=False)


@dataclass
class FigureResult:
    """``name``: file stem under ``figures/``; ``png``: the image, or None with ``skipped``
    saying why."""

    name: str
    title: str
    caption: str
    png: bytes | None = None
    skipped: str | None = None


def _rc() -> dict:
    import seaborn as sns

    rc: dict = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("paper"))
    rc.update({
        "font.family": ["sans-serif"], "font.sans-serif": ["DejaVu Sans"],
        "figure.dpi": DPI, "savefig.dpi": DPI, "savefig.format": "png",
        "savefig.facecolor": "white", "savefig.transparent": False,
        "svg.hashsalt": "harness-report", "text.parse_math": False,
        "axes.formatter.useoffset": False, "figure.max_open_warning": 0,
        "image.cmap": "viridis",
        # titles at the top of their axes, where matplotlib's automatic placement puts them
        # when no tick labels are on top (none of these figures has any); fixing it skips a
        # measurement of every axis's tick labels per title (a third of the drawing time)
        "axes.titley": 1.0,
    })
    return rc


@contextmanager
def _style():
    import matplotlib

    with matplotlib.rc_context(_rc()):
        yield


def render_png(fig) -> bytes:
    """The figure as PNG bytes, without the version-bearing ``Software`` metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    if _SMOKE.get():
        fig.text(0.005, 0.995, SMOKE_STAMP, ha="left", va="top", color="#c00000", fontsize=7,
                 fontweight="bold")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _panels(rows: int, cols: int, pw: float, ph: float, *, left: float = 0.75,
            right: float = 0.2, bottom: float = 0.55, top: float = 0.35, wgap: float = 0.75,
            hgap: float = 0.8):
    """A figure with a ``rows x cols`` grid of ``pw x ph``-inch panels and fixed margins (in
    inches). Fixed margins rather than constrained layout: the layout engine re-measures every
    text and doubles the drawing time, for no gain on these simple grids."""
    from matplotlib.figure import Figure

    w = left + right + cols * pw + (cols - 1) * wgap
    h = bottom + top + rows * ph + (rows - 1) * hgap
    fig = Figure(figsize=(w, h))
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wgap / pw, hspace=hgap / ph)
    return fig, axes


# One colour per method row, the same in every figure (and in the page's colour key). Paul
# Tol's colour-blind-safe qualitative schemes (personal.sron.nl/~pault): "bright" (7 distinct
# hues), then the hues of "muted" that differ from those; the baseline rows (the SFT checkpoint,
# the model as loaded) are greys, so the eye goes to the methods.
PALETTE = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#332288",
           "#999933", "#882255", "#44AA99"]
BASELINE_GREYS = {"base": "#9A9A9A", "sft": "#4D4D4D"}


def method_colors(col: Collected, extra: list[str] = ()) -> dict[str, str]:
    """Label -> colour (hex) for every row of the suite, in the report's row order, then for
    ``extra`` labels (a tuned suite's entries that have no final row)."""
    method_of = dict(zip(col.cells["label"], col.cells["method"]))
    labels = list(col.labels) + [lab for lab in extra if lab not in col.labels]
    out: dict[str, str] = {}
    rest = [lab for lab in labels if method_of.get(lab) not in BASELINE_GREYS]
    for lab in labels:
        if method_of.get(lab) in BASELINE_GREYS:
            out[lab] = BASELINE_GREYS[method_of[lab]]
    if len(rest) <= len(PALETTE):
        out.update({lab: PALETTE[i] for i, lab in enumerate(rest)})
    else:  # more rows than distinct hues: evenly spaced hues (no longer colour-blind-safe)
        import seaborn as sns

        pal = sns.color_palette("husl", len(rest)).as_hex()
        out.update({lab: pal[i] for i, lab in enumerate(rest)})
    return out




def _grid(n: int, ncols_max: int = 3) -> tuple[int, int]:
    ncols = min(ncols_max, max(n, 1))
    return (n + ncols - 1) // ncols, ncols


def _has(summ: Summary, metric: str) -> bool:
    return metric in summ.values.columns and bool(summ.values[metric].notna().any())


def _err(s: dict) -> tuple[float, float]:
    """(below, above) error-bar lengths from a summary; 0 where there is no interval."""
    m, lo, hi = s.get("mean", math.nan), s.get("ci_low", math.nan), s.get("ci_high", math.nan)
    if not (math.isfinite(m) and math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 0.0
    return max(m - lo, 0.0), max(hi - m, 0.0)


def _group_name(g: tuple[str, str]) -> str:
    return f"{g[0]} / {g[1]}"


# ----------------------------------------------------------------------------- bar charts
def _axis_label(metric: str) -> str:
    """'Task acc. (%)': a metric's display name and unit, for an axis."""
    from harness import metrics as M

    unit = M.get(metric).unit if M.known(metric) else ""
    return display_name(metric) + (f" ({unit})" if unit else "")


def _bar_panel(ax, col: Collected, summ: Summary, metric: str, colors: dict, group) -> None:
    """One bar per method row (its colour), mean and 95% t-interval over seeds."""
    labels = [lab for lab in col.labels if lab in set(summ.values["label"])]
    x = np.arange(len(labels), dtype=float)
    means, lows, highs = [], [], []
    for lab in labels:
        s = summ.stat(metric, lab, group)
        means.append(s.get("mean", math.nan))
        lo, hi = _err(s)
        lows.append(lo)
        highs.append(hi)
    heights = [m if math.isfinite(m) else math.nan for m in means]  # no value: no bar
    clipped = [_clip_pct(metric, h, e) for h, e in zip(heights, zip(lows, highs))]  # shares stay in [0, 100]
    lows, highs = [c[0] for c in clipped], [c[1] for c in clipped]
    ax.bar(x, heights, width=0.75, color=[colors[lab] for lab in labels])
    ax.errorbar(x, heights, yerr=[lows, highs], fmt="none", ecolor="0.2", capsize=2, elinewidth=0.8)
    for xi, h in zip(x, heights):
        if not math.isfinite(h):
            ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, color="0.35")
    ax.set_xticks(x)
    ax.set_xlim(-0.6, len(labels) - 0.4)  # every row keeps its slot, with or without a bar
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 3 else 0,
                       ha="right" if len(labels) > 3 else "center")
    ax.set_ylabel(_axis_label(metric))


def _bars_figure(name, title, caption, metrics, col, summ, colors) -> FigureResult:
    """Rows: metrics; columns: (model, data set) groups; one coloured bar per method."""
    metrics = [m for m in metrics if _has(summ, m)]
    if not metrics:
        return FigureResult(name, title, caption,
                            skipped="no finished cell has " + " or ".join(caption_metrics(name)))
    groups = summ.groups
    n_lab = len(set(summ.values["label"]))
    label_room = 0.35 + (min(max(len(str(x)) for x in summ.values["label"]), 30) * 0.055
                         if n_lab > 3 else 0.0)
    fig, axes = _panels(len(metrics), len(groups), max(2.6, 0.42 * n_lab + 0.8), 2.3, left=0.75,
                        bottom=label_room + 0.1, hgap=label_room + 0.45, wgap=0.85)
    for i, m in enumerate(metrics):
        for j, g in enumerate(groups):
            ax = axes[i][j]
            _bar_panel(ax, col, summ, m, colors, g)
            ax.set_title(_group_name(g) if len(groups) > 1 else display_name(m), fontsize=8)
    return FigureResult(name, title, caption, png=render_png(fig))


def caption_metrics(name: str) -> list[str]:
    return {"bars_accuracy": ["task/accuracy", "pref/accuracy"],
            "diversity": DIVERSITY}.get(name, [])


# ------------------------------------------------------------------------------ scatters
def _scatter_figure(name, title, caption, col, summ, colors, xm, ym, *, connect_methods=False,
                    logx=False) -> FigureResult:
    groups = summ.groups
    rows, ncols = _grid(len(groups))
    fig, axes = _panels(rows, ncols, 3.4, 2.6)
    labels = [lab for lab in col.labels if lab in set(summ.values["label"])]
    method_of = dict(zip(summ.values["label"], summ.values["method"]))
    for gi, g in enumerate(groups):
        ax = axes[gi // ncols][gi % ncols]
        pts = {}
        for lab in labels:
            sx, sy = summ.stat(xm, lab, g), summ.stat(ym, lab, g)
            mx, my = sx.get("mean", math.nan), sy.get("mean", math.nan)
            if not (math.isfinite(mx) and math.isfinite(my)):
                continue
            ex, ey = _clip_pct(ym, my, _err(sy)), None
            ex, ey = _clip_pct(xm, mx, _err(sx)), ex
            below = False
            if xm in NONNEGATIVE:  # a KL: the interval is cut at 0, a negative estimate drawn at 0
                below = mx < 0
                ex = (min(ex[0], max(mx, 0.0)), max(mx + ex[1], 0.0) - max(mx, 0.0))
                mx = max(mx, 0.0)
            pts[lab] = (mx, my)
            ax.errorbar([mx], [my], xerr=[[ex[0]], [ex[1]]], yerr=[[ey[0]], [ey[1]]], fmt="o",
                        color=colors[lab], ecolor=colors[lab], elinewidth=0.8, capsize=2,
                        label=lab, markerfacecolor="white" if below else colors[lab])
        if connect_methods:
            for meth in dict.fromkeys(method_of[lab] for lab in pts):
                mine = sorted((p for lab, p in pts.items() if method_of[lab] == meth))
                if len(mine) > 1:
                    first = next(lab for lab in pts if method_of[lab] == meth)
                    ax.plot([p[0] for p in mine], [p[1] for p in mine], "--", linewidth=0.8,
                            color=colors[first])
        if logx and pts and min(p[0] for p in pts.values()) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(_axis_label(xm))
        ax.set_ylabel(_axis_label(ym))
        ax.set_title(_group_name(g), fontsize=8)
        if pts and gi == 0:
            ax.legend(fontsize=6, loc="best", framealpha=0.8)
    for j in range(len(groups), rows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    return FigureResult(name, title, caption, png=render_png(fig))


def _clip_pct(metric: str, mean: float, err: tuple[float, float]) -> tuple[float, float]:
    """Error-bar lengths of a share in percent, kept inside [0, 100]."""
    if not _axis_label(metric).endswith("(%)") or not math.isfinite(mean):
        return err
    return min(err[0], max(mean, 0.0)), min(err[1], max(100.0 - mean, 0.0))


def _first(summ: Summary, candidates: list[str]) -> str | None:
    return next((m for m in candidates if _has(summ, m)), None)


def accuracy_vs_cost(col, summ, colors) -> FigureResult:
    name, title = "accuracy_vs_cost", "Accuracy vs training cost"
    ym = _first(summ, ["task/accuracy", "pref/accuracy"])
    flops = _has(summ, "cost/flops") and bool((summ.values["cost/flops"] > 0).any())
    xm = "cost/flops" if flops else ("cost/train_wall_s" if _has(summ, "cost/train_wall_s") else None)
    caption = (f"{display_name(ym)} against {display_name(xm)} per method (mean and 95% t-interval over "
               f"seeds)." if ym and xm else "accuracy against training cost")
    if ym is None or xm is None:
        return FigureResult(name, title, caption, skipped="needs task/accuracy or pref/accuracy "
                            "and cost/flops or cost/train_wall_s in finished cells")
    x = summ.values[xm][summ.values[xm] > 0]
    logx = bool(len(x)) and float(x.max()) / float(x.min()) > 100
    return _scatter_figure(name, title, caption, col, summ, colors, xm, ym, logx=logx)


def reward_kl(col, summ, colors) -> FigureResult:
    name, title = "reward_kl_frontier", "Reward-KL frontier"
    ym = _first(summ, ["task/accuracy", "winrate/vs_sft", "pref/accuracy"])
    caption = (f"{display_name(ym) if ym else 'accuracy'} against KL(policy || reference) per method, "
               "means and 95% t-intervals over seeds (the KL interval cut at 0, as a KL cannot be "
               "negative; an open marker is an older Monte-Carlo estimate below 0, drawn at 0); "
               "labels of the same loss (hyperparameter grid) are joined by a dashed line in KL order.")
    if ym is None or not _has(summ, "kl/policy_ref"):
        return FigureResult(name, title, caption, skipped="needs kl/policy_ref and task/accuracy, "
                            "winrate/vs_sft or pref/accuracy in finished cells")
    return _scatter_figure(name, title, caption, col, summ, colors, "kl/policy_ref", ym,
                           connect_methods=True)


# ------------------------------------------------------------------------------ label noise
def label_noise(col: Collected, summ: Summary, colors) -> FigureResult:
    name, title = "label_noise", "Accuracy vs label-noise rate"
    ym = _first(summ, ["task/accuracy", "pref/accuracy"])
    caption = (f"{ym} (mean and 95% t-interval over seeds) against the share of training "
               "pairs with chosen and rejected swapped, one line per method; data sets whose configs "
               "differ only in label_noise form one panel (cf. the paper's Table B8).")
    v = summ.values
    if ym is None or not len(v) or v["label_noise"].nunique() < 2:
        return FigureResult(name, title, caption, skipped="finished cells do not differ in "
                            "dataset.label_noise" if ym else "no task/accuracy or pref/accuracy")
    panels = []
    for (model, key), g in v.groupby(["model", "data_key"], sort=True):
        if g["label_noise"].nunique() >= 2:
            panels.append((model, key, sorted(set(zip(g["label_noise"], g["dataset"])))))
    if not panels:
        return FigureResult(name, title, caption, skipped="no model/data set has runs at two or "
                            "more noise rates")
    rows, ncols = _grid(len(panels))
    fig, axes = _panels(rows, ncols, 3.4, 2.6)
    labels = [lab for lab in col.labels if lab in set(v["label"])]
    for pi, (model, _key, pts) in enumerate(panels):
        ax = axes[pi // ncols][pi % ncols]
        for lab in labels:
            xs, ys, lo, hi = [], [], [], []
            for noise, ds in pts:
                s = summ.stat(ym, lab, (model, ds))
                if not math.isfinite(s.get("mean", math.nan)):
                    continue
                e = _err(s)
                xs.append(100 * noise)
                ys.append(s["mean"])
                lo.append(e[0])
                hi.append(e[1])
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="-o", color=colors[lab], capsize=2,
                            elinewidth=0.8, label=lab)
        ax.set_xlabel("label noise (% of training pairs swapped)")
        ax.set_ylabel(_axis_label(ym))
        ax.set_title(f"{model} / {', '.join(dict.fromkeys(ds for _, ds in pts))}")
        ax.legend(fontsize=7)
    for j in range(len(panels), rows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    return FigureResult(name, title, caption, png=render_png(fig))


# ---------------------------------------------------------------------- token importance
def _tok_text(t: str) -> str:
    t = "".join(c if c.isprintable() else "·" for c in str(t)).replace(" ", "␣")
    return t if len(t) <= 12 else t[:11] + "…"


def token_importance(col: Collected, colors) -> list[FigureResult]:
    """One figure per method label whose cells wrote ``token_importance.json``: the cell with
    the first (model, dataset, seed), up to four examples, one heatmap row each."""
    if not col.token_importance:
        return [FigureResult("token_importance", "Token importance",
                             "Token weights of TI-DPO cells (token_importance.json).",
                             skipped="no cell wrote token_importance.json")]
    cells = col.cells[col.cells["cell_id"].isin(list(col.token_importance))]
    out = []
    for lab in col.labels:
        c = cells[cells["label"] == lab]
        if not len(c):
            continue
        c = c.sort_values(["model", "dataset", "seed", "cell_id"], kind="stable")
        cid = str(c["cell_id"].iloc[0])
        ex = col.token_importance[cid][:MAX_EXAMPLES]
        longest = max(min(len(e["tokens"]), MAX_TOKENS) for e in ex)
        fig, axes = _panels(len(ex), 1, min(12.0, max(3.5, 0.2 * longest)), 0.45, left=0.2,
                            right=1.1, bottom=0.75, top=0.55, hgap=1.0)
        vmax = max(max((abs(float(w)) for w in e["weights"][:MAX_TOKENS] if w is not None
                        and math.isfinite(float(w))), default=1.0) for e in ex) or 1.0
        vmin = min(min((float(w) for w in e["weights"][:MAX_TOKENS] if w is not None
                        and math.isfinite(float(w))), default=0.0) for e in ex)
        vmin = min(vmin, 0.0)
        im = None
        for i, e in enumerate(ex):
            ax = axes[i][0]
            toks = e["tokens"][:MAX_TOKENS]
            w = np.array([float(x) if x is not None else np.nan for x in e["weights"][:MAX_TOKENS]],
                         dtype=float)
            im = ax.imshow(w[None, :], aspect="auto", vmin=vmin, vmax=vmax,
                           interpolation="nearest")
            ax.set_yticks([])
            ax.set_xticks(np.arange(len(toks)))
            ax.set_xticklabels([_tok_text(t) for t in toks], rotation=90, fontsize=6)
            ax.grid(False)
            more = f", first {MAX_TOKENS} of {len(e['tokens'])} tokens" \
                if len(e["tokens"]) > MAX_TOKENS else ""
            ax.set_title(f"pair {e.get('pair', i)}, {e.get('side', '?')}{more}", fontsize=7)
        cax = fig.add_axes((1 - 0.9 / fig.get_figwidth(), 0.75 / fig.get_figheight(),
                            0.12 / fig.get_figwidth(), 1 - 1.3 / fig.get_figheight()))
        fig.colorbar(im, cax=cax, label="weight")
        fig.suptitle(f"Token importance: {lab}", fontsize=8)
        out.append(FigureResult(f"token_importance_{slug(lab)}", f"Token importance: {lab}",
                                f"Token weights of cell {cid} (up to {MAX_EXAMPLES} examples; "
                                "brighter = more weight).", png=render_png(fig)))
    return out


# --------------------------------------------------------------------------------- all
def build_figures(col: Collected, summ: Summary) -> list[FigureResult]:
    """Every figure of the report, in reading order. A figure whose data are missing comes
    back without image, ``skipped`` saying why (the page leaves it out); one the suite did not
    ask for (held-out curves without ``train.eval_every``) is not made at all."""
    from .profiles import profile_figure

    from .tuning import tuning_figures

    token = _SMOKE.set(bool(col.smoke))
    try:
        figs = _figures(col, summ)
        with _style():
            figs.append(profile_figure(col, summ, method_colors(col)))
        figs += tuning_figures(col)
    finally:
        _SMOKE.reset(token)
    if col.smoke:
        for f in figs:
            f.title = f"SMOKE RUN: {f.title}"
    return figs


def _figures(col: Collected, summ: Summary) -> list[FigureResult]:
    from .curves import heldout_curves, training_panels

    with _style():
        colors = method_colors(col)
        figs = [
            _bars_figure("bars_accuracy", "Accuracy per method",
                         "Task and preference accuracy (percent), mean and 95% t-interval over "
                         "seeds; one panel per model / data set.",
                         ["task/accuracy", "pref/accuracy"], col, summ, colors),
            heldout_curves(col, colors),
            reward_kl(col, summ, colors),
            accuracy_vs_cost(col, summ, colors),
            training_panels(col, colors, "loss"),
            training_panels(col, colors, "rewards/margins"),
            _bars_figure("diversity", "Diversity per method",
                         "Self-BLEU (percent, lower = more diverse), Distinct-2/4 and token "
                         "entropy (higher = more diverse), mean and 95% t-interval over seeds.",
                         DIVERSITY, col, summ, colors),
            label_noise(col, summ, colors),
        ]
        figs = [f for f in figs if f is not None]
        figs += token_importance(col, colors)
    from .token_text import token_text_figures  # the paper's Fig. 3 form (imports this module)

    figs += token_text_figures(col)
    return figs
