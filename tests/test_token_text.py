"""The token-importance figure as text (harness/report/token_text.py): layout by hand, one figure
per TI-DPO label from token_importance.json, the same bytes twice, no torch."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pandas as pd

from harness.report.token_text import layout, token_text_figures


def test_layout_wraps_and_cuts():
    # width 6: "ab" "cd" fill 0-3, "efg" does not fit after col 4 -> next line
    placed, cut = layout(["ab", "cd", "efg", "h"], width=6, max_lines=3)
    assert placed == [(0, 0, 0, "ab"), (1, 0, 2, "cd"), (2, 1, 0, "efg"), (3, 1, 3, "h")] and not cut
    # a token wider than a line is split over lines; a newline shows as a symbol
    placed, cut = layout(["abcdefgh", "\n"], width=6, max_lines=3)
    assert placed == [(0, 0, 0, "abcdef"), (0, 1, 0, "gh"), (1, 1, 2, "⏎")] and not cut
    placed, cut = layout(["abc"] * 5, width=6, max_lines=2)
    assert [p[0] for p in placed] == [0, 1, 2, 3] and cut


def _collected(examples_by_cell: dict, labels: dict):
    cells = pd.DataFrame([{"cell_id": c, "label": labels[c], "model": "m", "dataset": "d", "seed": i}
                          for i, c in enumerate(examples_by_cell)])
    return SimpleNamespace(token_importance=examples_by_cell, cells=cells, labels=sorted(set(labels.values())))


def _ex(pair, side, toks, ws, prompt=None):
    e = {"pair": pair, "side": side, "tokens": toks, "weights": ws}
    if prompt:
        e["prompt"] = prompt
    return e


def test_one_figure_per_label_reproducible():
    long = [f"w{i} " for i in range(60)]
    ex = [_ex(0, "chosen", ["4", "2", "<eos>"], [0.2, 1.4, 0.9], "12+30="),
          _ex(0, "rejected", ["4", "3", "<eos>"], [0.3, 0.5, float("nan")]),
          _ex(1, "chosen", long, [0.1] * 60), _ex(1, "rejected", ["x"], [1.0]),
          _ex(2, "chosen", ["y"], [1.0])]  # no rejected side: left out
    col = _collected({"c1": ex, "c2": ex[:2]}, {"c1": "TI-DPO", "c2": "TI-DPO (released)"})
    figs = token_text_figures(col)
    assert [f.name for f in figs] == ["token_text_TI-DPO", "token_text_TI-DPO-released"]
    assert all(f.png and f.png.startswith(b"\x89PNG") for f in figs)
    assert "cut" in figs[0].caption and "cut" not in figs[1].caption  # 60 words do not fit in 4 lines
    assert [f.png for f in token_text_figures(col)] == [f.png for f in figs]
    assert token_text_figures(_collected({}, {})) == []


def test_no_torch():
    code = "import sys, harness.report.token_text; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
