"""The token-importance figure in the form of the TI-DPO paper's Fig. 3: response text with every
token shaded by its weight.

For each method label whose cells wrote ``token_importance.json`` (TI-DPO cells; the runner
computes the weights of a few held-out pairs with the trained policy, the cell's own weight
settings), the cell with the first (model, dataset, seed) is shown: up to ``MAX_PAIRS`` pairs,
each as two rows (chosen, rejected) and two columns: the method's weights, and uniform
weights (every token 1, which is what DPO gives each token's log-ratio). Both columns share
one colour scale, so the uniform column also shows how the method's weights compare with
DPO's in size (the paper's unnormalized prior gives long responses a mean weight near 0.2:
its margin is that much smaller than DPO's at the same beta).

Layout: one monospace cell per character; a token covers its characters and is drawn on a
box coloured by its weight; lines wrap at ``WIDTH`` characters, and a response is cut after
``MAX_LINES`` lines (the caption then says so). Spaces show as spaces, a newline as "⏎",
other characters that do not print as "·". No torch; matplotlib only, drawn like every report
figure (``plots._style``, PNG without version metadata), so the same data give the same bytes.
"""
from __future__ import annotations

import math

from .collect import Collected, slug
from .plots import FigureResult, _style, render_png

__all__ = ["token_text_figures"]

MAX_PAIRS = 3
WIDTH = 56  # characters per line
MAX_LINES = 4
CHAR_W, LINE_H = 0.075, 0.2  # inches


def _shown(tok: str) -> str:
    return "".join("⏎" if c == "\n" else (c if c.isprintable() else "·") for c in str(tok))


def layout(tokens: list[str], width: int = WIDTH, max_lines: int = MAX_LINES) -> tuple[list[tuple], bool]:
    """``[(token index, line, column, text)]`` with tokens placed left to right and wrapped
    (a token wider than a line is split over lines), and whether the text was cut."""
    out, line, col = [], 0, 0
    for i, tok in enumerate(tokens):
        text = _shown(tok) or "·"
        if col and col + len(text) > width:
            line, col = line + 1, 0
        while text:
            if line >= max_lines:
                return out, True
            piece, text = text[: width - col], text[width - col:]
            out.append((i, line, col, piece))
            col += len(piece)
            if text:
                line, col = line + 1, 0
    return out, False


def _finite(ws) -> list[float]:
    return [float(w) for w in ws if w is not None and math.isfinite(float(w))]


def _draw(ax, placed, weights, cmap, norm, cols: int, lines: int, title: str) -> None:
    from matplotlib.patches import Rectangle

    for i, line, col, text in placed:
        w = weights[i]
        w = float(w) if w is not None and math.isfinite(float(w)) else float("nan")
        face = cmap(norm(w)) if math.isfinite(w) else (0.85, 0.85, 0.85, 1.0)
        ax.add_patch(Rectangle((col, -line - 1), len(text), 0.9, facecolor=face, edgecolor="white", linewidth=0.4))
        lum = 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2]
        ax.text(col + len(text) / 2, -line - 0.55, text, ha="center", va="center", family="DejaVu Sans Mono",
                fontsize=7, color="black" if lum > 0.5 else "white")
    ax.set_xlim(0, cols)
    ax.set_ylim(-lines, 0)
    ax.axis("off")
    ax.set_title(title, fontsize=7, loc="left", pad=2)


def _pairs(examples: list[dict]) -> list[tuple]:
    """``[(pair, prompt, chosen example, rejected example)]`` for the first pairs with both sides."""
    by: dict = {}
    for e in examples:
        by.setdefault(e.get("pair"), {})[e.get("side")] = e
    out = [(p, (d["chosen"].get("prompt") or d["rejected"].get("prompt")), d["chosen"], d["rejected"])
           for p, d in by.items() if "chosen" in d and "rejected" in d]
    return out[:MAX_PAIRS]


def _figure(lab: str, cid: str, pairs: list[tuple]) -> FigureResult:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    cmap = matplotlib.colormaps["YlOrRd"]
    vmax = max([1.0] + [w for _, _, c, r in pairs for w in _finite(c["weights"]) + _finite(r["weights"])])
    norm = Normalize(vmin=0.0, vmax=vmax)
    laid = {(p, side): layout(e["tokens"]) for p, _, c, r in pairs for side, e in (("chosen", c), ("rejected", r))}
    cut = any(c for _, c in laid.values())
    cols = max([34] + [col + len(t) for placed, _ in laid.values() for _, _, col, t in placed])
    lines = max([1] + [line + 1 for placed, _ in laid.values() for _, line, _, _ in placed])
    pw, ph, gap, head = cols * CHAR_W, lines * LINE_H, 0.22, 0.05
    W = 2 * pw + 0.3 + 0.5 + 1.1  # two panels, their gap, the left margin, the colour bar
    H = 0.45 + len(pairs) * (head + 2 * (ph + gap) + 0.2)
    fig = Figure(figsize=(W, H))
    y = H - 0.45
    for p, prompt, ch, rj in pairs:
        label = f"pair {p}" + (f" — prompt: {_shown(prompt)[:80]}" if prompt else "")
        fig.text(0.3 / W, y / H, label, fontsize=7, va="top", weight="bold")
        y -= head
        for side, e in (("chosen", ch), ("rejected", rj)):
            y -= ph + gap  # the panel's title sits in the gap above it
            placed = laid[(p, side)][0]
            for k, (weights, name) in enumerate(((e["weights"], lab), ([1.0] * len(e["tokens"]), "DPO (uniform)"))):
                ax = fig.add_axes(((0.3 + k * (pw + 0.3)) / W, y / H, pw / W, ph / H))
                _draw(ax, placed, weights, cmap, norm, cols, lines, f"{side}: {name}")
        y -= 0.2
    cax = fig.add_axes(((W - 0.95) / W, 0.35 / H, 0.1 / W, (H - 0.95) / H))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="token weight")
    fig.suptitle(f"Token weights: {lab} (left) and DPO (right), held-out pairs", fontsize=8, x=0.3 / W, y=1 - 0.12 / H,
                 ha="left", va="top")
    caption = (f"Held-out pairs of cell {cid}: each response token shaded by the weight {lab} gives its "
               "log-ratio (left) and by DPO's uniform weight 1 (right), on one colour scale "
               "(as in the TI-DPO paper's Fig. 3)." + (f" Responses longer than {MAX_LINES} lines of "
                                                        f"{WIDTH} characters are cut." if cut else ""))
    return FigureResult(f"token_text_{slug(lab)}", f"Token weights as text: {lab}", caption, png=render_png(fig))


def token_text_figures(col: Collected) -> list[FigureResult]:
    """One figure per method label with token_importance.json; none (not even a skipped
    entry: the heatmap figure already says so) when no cell wrote one."""
    if not col.token_importance:
        return []
    cells = col.cells[col.cells["cell_id"].isin(list(col.token_importance))]
    out = []
    with _style():
        for lab in col.labels:
            c = cells[cells["label"] == lab]
            if not len(c):
                continue
            cid = str(c.sort_values(["model", "dataset", "seed", "cell_id"], kind="stable")["cell_id"].iloc[0])
            pairs = _pairs(col.token_importance[cid])
            if pairs:
                out.append(_figure(lab, cid, pairs))
    return out
