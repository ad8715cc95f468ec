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
image and says why (the HTML report prints that).
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

CURVE_METRICS = ["loss", "rewards/margins", "rewards/accuracies"]
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


def _colors(labels: list[str]) -> dict[str, tuple]:
    import seaborn as sns

    pal = sns.color_palette("colorblind" if len(labels) <= 10 else "husl", max(len(labels), 1))
    return {lab: tuple(pal[i]) for i, lab in enumerate(labels)}


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
def _bar_panel(ax, col: Collected, summ: Summary, metric: str, colors: dict) -> None:
    labels = [lab for lab in col.labels if lab in set(summ.values["label"])]
    groups = summ.groups
    several = len(groups) > 1
    width = 0.8 / max(len(groups), 1)
    import seaborn as sns

    gpal = sns.color_palette("deep", max(len(groups), 1))
    x = np.arange(len(labels), dtype=float)
    for gi, g in enumerate(groups):
        means, lows, highs, cols = [], [], [], []
        for lab in labels:
            s = summ.stat(metric, lab, g)
            means.append(s.get("mean", math.nan))
            lo, hi = _err(s)
            lows.append(lo)
            highs.append(hi)
            cols.append(gpal[gi] if several else colors[lab])
        pos = x - 0.4 + width * (gi + 0.5)
        heights = [m if math.isfinite(m) else math.nan for m in means]  # no value: no bar
        ax.bar(pos, heights, width=width * 0.95, color=cols,
               label=_group_name(g) if several else None)
        ax.errorbar(pos, heights, yerr=[lows, highs], fmt="none", ecolor="0.2", capsize=2,
                    elinewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 3 else 0,
                       ha="right" if len(labels) > 3 else "center")
    ax.set_title(display_name(metric) + f" ({metric})")


def _bars_figure(name, title, caption, metrics, col, summ, colors) -> FigureResult:
    metrics = [m for m in metrics if _has(summ, m)]
    if not metrics:
        return FigureResult(name, title, caption,
                            skipped="no finished cell has " + " or ".join(caption_metrics(name)))
    rows, ncols = _grid(len(metrics), 2)
    n_lab = len(set(summ.values["label"]))
    several = len(summ.groups) > 1
    label_room = 0.35 + (min(max(len(str(x)) for x in summ.values["label"]), 30) * 0.055
                         if n_lab > 3 else 0.0)
    fig, axes = _panels(rows, ncols, max(3.0, 0.5 * n_lab + 0.8), 2.4, left=0.55,
                        bottom=label_room + (0.1 + 0.22 * math.ceil(len(summ.groups) / 4)
                                             if several else 0.1),
                        hgap=label_room + 0.45)
    for i, m in enumerate(metrics):
        _bar_panel(axes[i // ncols][i % ncols], col, summ, m, colors)
    for j in range(len(metrics), rows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    if several:
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=7,
                   frameon=False)
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
            pts[lab] = (mx, my)
            ex, ey = _err(sx), _err(sy)
            ax.errorbar([mx], [my], xerr=[[ex[0]], [ex[1]]], yerr=[[ey[0]], [ey[1]]], fmt="o",
                        color=colors[lab], ecolor=colors[lab], elinewidth=0.8, capsize=2,
                        label=lab)
        if connect_methods:
            for meth in dict.fromkeys(method_of[lab] for lab in pts):
                mine = sorted((p for lab, p in pts.items() if method_of[lab] == meth))
                if len(mine) > 1:
                    first = next(lab for lab in pts if method_of[lab] == meth)
                    ax.plot([p[0] for p in mine], [p[1] for p in mine], "--", linewidth=0.8,
                            color=colors[first])
        if logx and pts and min(p[0] for p in pts.values()) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(f"{display_name(xm)} ({xm})")
        ax.set_ylabel(f"{display_name(ym)} ({ym})")
        ax.set_title(_group_name(g))
        if pts:
            ax.legend(fontsize=7)
    for j in range(len(groups), rows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    return FigureResult(name, title, caption, png=render_png(fig))


def _first(summ: Summary, candidates: list[str]) -> str | None:
    return next((m for m in candidates if _has(summ, m)), None)


def accuracy_vs_cost(col, summ, colors) -> FigureResult:
    name, title = "accuracy_vs_cost", "Accuracy vs training cost"
    ym = _first(summ, ["task/accuracy", "pref/accuracy"])
    flops = _has(summ, "cost/flops") and bool((summ.values["cost/flops"] > 0).any())
    xm = "cost/flops" if flops else ("cost/train_wall_s" if _has(summ, "cost/train_wall_s") else None)
    caption = (f"{ym} against {xm} per method (mean and 95% t-interval over seeds)." if ym and xm
               else "accuracy against training cost")
    if ym is None or xm is None:
        return FigureResult(name, title, caption, skipped="needs task/accuracy or pref/accuracy "
                            "and cost/flops or cost/train_wall_s in finished cells")
    x = summ.values[xm][summ.values[xm] > 0]
    logx = bool(len(x)) and float(x.max()) / float(x.min()) > 100
    return _scatter_figure(name, title, caption, col, summ, colors, xm, ym, logx=logx)


def reward_kl(col, summ, colors) -> FigureResult:
    name, title = "reward_kl_frontier", "Reward-KL frontier"
    ym = _first(summ, ["task/accuracy", "winrate/vs_sft", "pref/accuracy"])
    caption = (f"{ym} against KL(policy || reference) per method; labels of the same loss "
               "(hyperparameter grid) are joined by a dashed line in KL order.")
    if ym is None or not _has(summ, "kl/policy_ref"):
        return FigureResult(name, title, caption, skipped="needs kl/policy_ref and task/accuracy, "
                            "winrate/vs_sft or pref/accuracy in finished cells")
    return _scatter_figure(name, title, caption, col, summ, colors, "kl/policy_ref", ym,
                           connect_methods=True)


# ------------------------------------------------------------------------ training curves
def training_curves(col: Collected, summ: Summary, colors) -> FigureResult:
    name, title = "training_curves", "Training curves"
    caption = ("Per method, the mean over seeds of finished runs with a band of ± one standard "
               "deviation; failed runs are drawn one by one (dotted, x at the last logged step).")
    cur = col.curves
    ok_states = dict(zip(col.cells["cell_id"], col.cells["state"]))
    if len(cur):
        cur = cur[cur["metric"].isin(CURVE_METRICS)]
        cur = cur[cur["cell_id"].map(ok_states).isin(["done", "failed"])]
    metrics = [m for m in CURVE_METRICS if len(cur) and (cur["metric"] == m).any()]
    if not metrics:
        return FigureResult(name, title, caption, skipped="no train_log.jsonl with loss or "
                            "rewards/* in finished or failed cells")
    groups = sorted({(m, d) for m, d in zip(cur["model"], cur["dataset"])})
    fig, axes = _panels(len(groups), len(metrics), 3.0, 2.0, left=0.55, wgap=0.6, hgap=0.75)
    labels = [lab for lab in col.labels if lab in set(cur["label"])]
    for gi, g in enumerate(groups):
        cg = cur[(cur["model"] == g[0]) & (cur["dataset"] == g[1])]
        for mi, m in enumerate(metrics):
            ax = axes[gi][mi]
            cm = cg[cg["metric"] == m]
            for lab in labels:
                cl = cm[cm["label"] == lab]
                done = cl[cl["cell_id"].map(ok_states) == "done"]
                if len(done):
                    st = done.groupby("step", sort=True)["value"].agg(["mean", "std", "count"])
                    steps = st.index.to_numpy(dtype=float)
                    ax.plot(steps, st["mean"].to_numpy(), color=colors[lab], label=lab,
                            linewidth=1.1)
                    band = st["count"].to_numpy() >= 2
                    if band.any():
                        sd = st["std"].to_numpy()
                        mean = st["mean"].to_numpy()
                        ax.fill_between(steps, np.where(band, mean - sd, mean),
                                        np.where(band, mean + sd, mean), color=colors[lab],
                                        alpha=0.2, linewidth=0)
                for cid in sorted(set(cl["cell_id"])):
                    if ok_states.get(cid) != "failed":
                        continue
                    one = cl[cl["cell_id"] == cid].sort_values("step", kind="stable")
                    seed = int(one["seed"].iloc[0])
                    ax.plot(one["step"].to_numpy(dtype=float), one["value"].to_numpy(), ":",
                            color=colors[lab], linewidth=1.0, label=f"{lab} s{seed} (failed)")
                    ax.plot([float(one["step"].iloc[-1])], [float(one["value"].iloc[-1])], "x",
                            color=colors[lab], markersize=6)
            ax.set_title(f"{m} — {_group_name(g)}")
            ax.set_xlabel("step")
            if gi == 0 and mi == 0:
                ax.legend(fontsize=7)
    return FigureResult(name, title, caption, png=render_png(fig))


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
        ax.set_ylabel(f"{display_name(ym)} ({ym})")
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
    """Every figure of the report, in reading order (skipped ones included, without image)."""
    from .profiles import profile_figure

    from .tuning import tuning_figures

    token = _SMOKE.set(bool(col.smoke))
    try:
        figs = _figures(col, summ)
        with _style():
            figs.append(profile_figure(col, summ, _colors(col.labels)))
        figs += tuning_figures(col)
    finally:
        _SMOKE.reset(token)
    if col.smoke:
        for f in figs:
            f.title = f"SMOKE RUN: {f.title}"
    return figs


def _figures(col: Collected, summ: Summary) -> list[FigureResult]:
    with _style():
        colors = _colors(col.labels)
        figs = [
            _bars_figure("bars_accuracy", "Accuracy per method",
                         "Task and preference accuracy (percent), mean and 95% t-interval over "
                         "seeds; bars grouped by model / data set when there are several.",
                         ["task/accuracy", "pref/accuracy"], col, summ, colors),
            accuracy_vs_cost(col, summ, colors),
            reward_kl(col, summ, colors),
            training_curves(col, summ, colors),
            _bars_figure("diversity", "Diversity of samples",
                         "Self-BLEU (percent, lower = more diverse), Distinct-2/4 and token "
                         "entropy (higher = more diverse), mean and 95% t-interval over seeds.",
                         DIVERSITY, col, summ, colors),
            label_noise(col, summ, colors),
        ]
        figs += token_importance(col, colors)
    from .token_text import token_text_figures  # the paper's Fig. 3 form (imports this module)

    figs += token_text_figures(col)
    return figs
