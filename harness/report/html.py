"""``report.html`` and ``report.md``: every table and figure of a suite on one page.

The HTML is static and self-contained apart from the PNGs, which it references by relative
path (``figures/<name>.png``), so the report folder can be copied or zipped as a whole. It has
no script, no external stylesheet or font, and no timestamp: the same results give the same
bytes. Tables are rendered here from :class:`harness.report.tables.Table` (the same strings
as the Markdown and LaTeX versions), with the best value per column in bold.
"""
from __future__ import annotations

from html import escape

from .collect import STATE_ORDER, Collected
from .format import MISSING, Table, to_markdown
from .meta_tables import provenance_lines
from .plots import FigureResult

__all__ = ["render_html", "render_markdown", "sections"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
div.scroll { overflow-x: auto; max-width: 100%; }  /* a wide table scrolls inside the page */
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; vertical-align: top; }
thead th { border-bottom: 2px solid #555; text-align: left; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
ul.notes { font-size: 0.85em; color: #444; }
p.files { font-size: 0.8em; color: #666; }
figure { margin: 0.5em 0 2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; max-width: 60em; }
nav { font-size: 0.9em; columns: 2; column-gap: 3em; }
nav p { font-weight: 600; margin: 0.6em 0 0.2em 0; break-after: avoid; }
nav ul { margin: 0; padding-left: 1.2em; }
p.colors { font-size: 0.9em; }
span.key { margin-right: 1.2em; white-space: nowrap; }
span.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em;
              vertical-align: -0.1em; border-radius: 2px; }
""".strip()


def _state_counts(col: Collected) -> str:
    states = col.cells["state"]
    known = [s for s in STATE_ORDER if (states == s).any()] + \
        sorted(set(states) - set(STATE_ORDER))
    return ", ".join(f"{s} {int((states == s).sum())}" for s in known)


def sections(tables: list[Table], figures: list[FigureResult]) -> list[tuple[str, list]]:
    """The page's sections in order: (heading, items), items being tables or figures. Figures
    come first (a reader looks before reading); a figure without image (its data missing) is
    left out, not announced."""
    by = {t.name: t for t in tables}
    main = [t for t in tables if t.name.startswith("main_")]
    comp = [t for t in tables if t.name.startswith("comparison")] + \
        [by[n] for n in ("aggregate", "reward_accuracy", "uncertainty") if n in by]
    other = [by[n] for n in ("diversity", "cost", "displacement") if n in by]
    out = [("Figures", [f for f in figures if f.png is not None]),
           ("Main results", main), ("Comparison with the baseline", comp)]
    if "reported_vs_reproduced" in by:
        out.append(("Reported vs reproduced", [by["reported_vs_reproduced"]]))
    if "tuning_choice" in by:
        out.append(("Tuning (settings chosen on the dev split)", [by["tuning_choice"]]))
    out += [("Diversity, cost and displacement", other)]
    if "onpolicy_data" in by:
        out.append(("On-policy training data", [by["onpolicy_data"]]))
    out.append(("Status and provenance", [by[n] for n in ("status", "failed", "provenance") if n in by]))
    if "hparams" in by:
        out.append(("Configuration", [by["hparams"]]))
    if "tuning_search" in by:
        out.append(("Appendix: the whole search", [by["tuning_search"]]))
    return [(h, items) for h, items in out if items]


def toc_entries(secs: list[tuple[str, list]]) -> list[tuple[str, str, str]]:
    """(section, anchor, text) per item; a title shared by a table and a figure says which is which."""
    items = [(h, it) for h, its in secs for it in its]
    titles = [it.title for _, it in items]
    out = []
    for h, it in items:
        fig = not isinstance(it, Table)
        anchor = ("fig-" if fig else "t-") + it.name
        text = it.title + ((" (figure)" if fig else " (table)") if titles.count(it.title) > 1 else "")
        out.append((h, anchor, text))
    return out


def _color_key(colors: dict[str, str]) -> str:
    """One swatch per method row: the colours every figure uses."""
    if not colors:
        return ""
    sw = "".join(f'<span class="key"><span class="swatch" style="background:{escape(c)}"></span>'
                 f"{escape(lab)}</span>" for lab, c in colors.items())
    return f'<p class="colors">Colours in every figure: {sw}</p>'


def _note_html(note: str) -> str:
    """Escaped note text with `code` spans as <code>."""
    parts = note.split("`")
    return "".join(f"<code>{escape(p)}</code>" if i % 2 else escape(p) for i, p in enumerate(parts))


def _table_html(t: Table) -> str:
    out = [f'<h3 id="{escape("t-" + t.name)}">{escape(t.title)}</h3>', "<div class=\"scroll\"><table>", "<thead><tr>"]
    num = ' class="num"'
    out += [f'<th{"" if j < t.n_label_cols else num}>{escape(c)}</th>'
            for j, c in enumerate(t.columns)]
    out.append("</tr></thead>")
    out.append("<tbody>")
    for i, r in enumerate(t.rows):
        cells = []
        for j, c in enumerate(r):
            text = escape(c)
            if t.is_bold(i, j) and c != MISSING:
                text = f"<b>{text}</b>"
            cls = "" if j < t.n_label_cols else ' class="num"'
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    if not t.rows:
        out.append("<p>(no rows)</p>")
    if t.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_note_html(n)}</li>" for n in t.notes)
                   + "</ul>")
    out.append(f'<p class="files">files: <a href="tables/{escape(t.name)}.csv">CSV</a> · '
               f'<a href="tables/{escape(t.name)}.tex">LaTeX</a> · '
               f'<a href="tables/{escape(t.name)}.md">Markdown</a></p>')
    return "\n".join(out)


def _figure_html(f: FigureResult) -> str:
    head = f'<h3 id="{escape("fig-" + f.name)}">{escape(f.title)}</h3>'
    return (f'{head}\n<figure><img src="figures/{escape(f.name)}.png" alt="{escape(f.title)}">'
            f"<figcaption>{escape(f.caption)}</figcaption></figure>")


def _title(col: Collected) -> str:
    return f"Suite: {col.suite}" + (" (SMOKE RUN: not results)" if col.smoke else "")


def _header_lines(col: Collected) -> list[str]:
    lines = []
    if col.smoke:
        lines.append("SMOKE RUN (`run --smoke`): every model is a tiny stand-in, data sets and "
                     "steps are capped; these numbers test the pipeline and are not results"
                     + (" (inferred from the suite name)." if col.smoke_inferred else "."))
    lines += [f"Results folder: {col.suite_dir.name}",
             f"Cells: {len(col.cells)} ({_state_counts(col)})",
             f"Baseline for comparisons: {col.baseline if col.baseline else 'none'}"]
    failed = col.cells[col.cells["state"] == "failed"]
    if len(failed):
        faults = int(failed["reason"].fillna("").astype(str)
                     .str.startswith("NumericalFault").sum())
        lines.append(f"WARNING: {len(failed)} cell(s) failed"
                     + (f", {faults} of them diverged (non-finite loss or gradient)" if faults
                        else "") + ": see 'Failed / diverged cells'.")
    return lines + provenance_lines(col)


def render_html(col: Collected, tables: list[Table], figures: list[FigureResult],
                colors: dict[str, str] | None = None) -> str:
    """The page; ``colors``: the figures' colour per method row, shown as a key above them."""
    secs = sections(tables, figures)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>Report: {escape(_title(col)[7:])}</title>", f"<style>\n{CSS}\n</style>", "</head>",
           "<body>", f"<h1>{escape(_title(col))}</h1>",
           "<p>" + "<br>\n".join(escape(x) for x in _header_lines(col)) + "</p>"]
    if col.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in col.notes)
                   + "</ul>")
    out.append("<nav>")
    current = None
    for h, anchor, text in toc_entries(secs):
        if h != current:
            out.append(("</ul>" if current is not None else "") + f"<p>{escape(h)}</p><ul>")
            current = h
        out.append(f'<li><a href="#{escape(anchor)}">{escape(text)}</a></li>')
    out.append(("</ul>" if current is not None else "") + "</nav>")
    for h, items in secs:
        out.append(f"<h2>{escape(h)}</h2>")
        if h == "Figures":
            out.append(_color_key(colors or {}))
            out.append('<div class="figures">')
        for it in items:
            out.append(_table_html(it) if isinstance(it, Table) else _figure_html(it))
        if h == "Figures":
            out.append("</div>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def render_markdown(col: Collected, tables: list[Table], figures: list[FigureResult]) -> str:
    out = [f"# {_title(col)}", ""]
    out += [f"- {x}" for x in _header_lines(col)]
    if col.notes:
        out += [""] + [f"- note: {n}" for n in col.notes]
    for h, items in sections(tables, figures):
        out += ["", f"## {h}", ""]
        for it in items:
            if isinstance(it, Table):
                out.append(to_markdown(it, "###"))
                out.append(f"Files: [CSV](tables/{it.name}.csv), [LaTeX](tables/{it.name}.tex)")
                out.append("")
            else:
                out += [f"### {it.title}", "", f"![{it.title}](figures/{it.name}.png)", "",
                        it.caption, ""]
    return "\n".join(out).rstrip("\n") + "\n"
