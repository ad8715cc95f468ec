"""A report table and its three renderings: Markdown, LaTeX (booktabs) and CSV; number format.

A :class:`Table` holds display strings (with bold flags) for Markdown/LaTeX/HTML and the
numbers behind them as a DataFrame for the CSV, so a reader can recompute anything shown.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .collect import slug

__all__ = ["Table", "to_markdown", "to_latex", "to_csv", "escape_latex", "fmt_num", "fmt_stat",
           "MISSING"]

MISSING = "–"


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


def fmt_num(x, spec: str) -> str:
    if x is None or not isinstance(x, (int, float, np.floating)) or not math.isfinite(x):
        return MISSING
    s = format(float(x), spec)
    if s.startswith("-") and float(s) == 0:  # "-0.0" reads as a sign that is not there
        s = s[1:]
    return s


def fmt_stat(mean: float, lo: float, hi: float, n: int, spec: str, seeds: int | None = None) -> str:
    """``mean ± half-width`` (the t-interval is symmetric); the mean alone for one value;
    `` (n=k)`` appended when ``k`` is below the row's seed count ``seeds``."""
    if n == 0 or not math.isfinite(mean):
        return MISSING
    if n == 1 or not (math.isfinite(lo) and math.isfinite(hi)):
        s = fmt_num(mean, spec)
    else:
        s = f"{fmt_num(mean, spec)} ± {fmt_num((hi - lo) / 2, spec)}"
    if seeds is not None and n < seeds:
        s += f" (n={n})"
    return s


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
                  "−": "--", "≥": r"$\geq$", "≤": r"$\leq$", "β": r"$\beta$", "·": r"$\cdot$",
                  "†": r"$\dagger$"}
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
