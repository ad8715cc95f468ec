"""The report over a suite's results: ``python -m harness report results/<suite>``.

Parts: :mod:`.collect` reads the results folder into tables (with each cell's provenance);
:mod:`.stats` the statistics over seeds (Student-t intervals, paired tests, Holm correction,
minimum detectable effects); :mod:`.summary` puts runs in display units and summarizes them,
with names, directions and scales from the metric registry :mod:`harness.metrics`;
:mod:`.tables`, :mod:`.meta_tables`, :mod:`.reported` and :mod:`.profiles` (aggregates across
tasks after Agarwal et al. 2021) build the tables, rendered by :mod:`.format` (Markdown,
LaTeX, CSV); :mod:`.plots` the figures (PNG); :mod:`.html` the page that shows them all.

Output folder (default ``results/<suite>/report/``)::

    report.html   report.md   MANIFEST
    tables/<name>.md  tables/<name>.tex  tables/<name>.csv
    figures/<name>.png

Tables: ``main_<model>_<dataset>`` (one per model and data set, laid out like the paper's
Table 1), ``main_all`` (averaged, with several groups), ``comparison`` / ``comparison_all``
(paired against the baseline, Holm-corrected), ``aggregate`` (IQM and probability of
improvement over tasks, with several groups), ``reward_accuracy`` (each method's own reward),
``reported_vs_reproduced`` (when ``reported.csv`` sits in the results folder),
``uncertainty`` (seed interval and item-level SE per main cell), ``diversity``, ``cost``,
``displacement``, ``status``, ``failed`` (cells that failed, diverged or were superseded),
``provenance`` (commits and uncommitted changes), ``hparams`` (each only when it has data).
Figures (first on the page, one colour per method row in all of them, with a colour key):
``bars_accuracy``, ``heldout_curves`` (with ``train.eval_every``), ``reward_kl_frontier``,
``accuracy_vs_cost``, ``training_loss`` and ``training_margins`` (one panel per method),
``diversity``, ``label_noise``, ``token_importance_<label>``, ``token_text_<label>``,
``performance_profiles`` (each only when its data exist; a figure without data is left out).
A smoke run (``run --smoke``) says so in the page title, every table title and note, every
figure and the index.

Every file is written atomically, and the same results give byte-identical files (no
timestamps, fixed bootstrap seeds, fixed plotting settings). ``MANIFEST`` lists every file
written with its SHA-256 (``sha256sum -c MANIFEST`` checks them); a rerun overwrites its own
files and deletes the ones a previous run listed in ``MANIFEST`` but this run did not write
(e.g. the table of a model no longer in the results). Nothing else in the folder is touched.

A folder holding several suites (subfolders with cells) gets one report per suite under
``<out>/<suite>/`` and an ``index.html`` linking them.
"""
from __future__ import annotations

import hashlib
from html import escape
from pathlib import Path

from harness.errors import UserError

__all__ = ["build_report"]

MANIFEST = "MANIFEST"


def _write_all(out_dir: Path, files: dict[str, bytes]) -> None:
    from harness.results import atomic_write_bytes, atomic_write_text

    out_dir = Path(out_dir)
    old = out_dir / MANIFEST
    previous: list[str] = []
    if old.is_file():
        for line in old.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("  ", 1)
            if len(parts) == 2:
                previous.append(parts[1])
    for rel, data in sorted(files.items()):
        atomic_write_bytes(out_dir / rel, data)
    root = out_dir.resolve()
    for rel in previous:
        if rel in files or rel == MANIFEST:
            continue
        p = (out_dir / rel)
        # only plain files inside the report folder, as a manifest line could be edited
        try:
            inside = p.resolve().is_relative_to(root) and ".." not in Path(rel).parts
        except OSError:
            inside = False
        if inside and p.is_file() and not p.is_symlink():
            p.unlink()
    lines = [f"{hashlib.sha256(data).hexdigest()}  {rel}" for rel, data in sorted(files.items())]
    atomic_write_text(out_dir / MANIFEST, "\n".join(lines) + "\n")


def _report_files(suite_dir: Path, baseline: str | None) -> tuple[dict[str, bytes], bool]:
    """The report's files and whether the suite is a smoke run."""
    from .collect import collect
    from .format import to_csv, to_latex, to_markdown
    from .html import render_html, render_markdown
    from .plots import build_figures
    from .summary import summarize_suite
    from .tables import build_tables

    col = collect(suite_dir, baseline=baseline)
    summ = summarize_suite(col)
    tables = build_tables(col, summ)
    figures = build_figures(col, summ)
    files: dict[str, bytes] = {}
    for t in tables:
        files[f"tables/{t.name}.md"] = to_markdown(t, "#").encode()
        files[f"tables/{t.name}.tex"] = to_latex(t).encode()
        files[f"tables/{t.name}.csv"] = to_csv(t).encode()
    for f in figures:
        if f.png is not None:
            files[f"figures/{f.name}.png"] = f.png
    from .plots import method_colors

    colors = {}  # the colour key above the figures: the rows that have results
    if any(f.png is not None for f in figures):
        done = set(col.done["label"])
        colors = {lab: c for lab, c in method_colors(col).items() if lab in done}
    files["report.html"] = render_html(col, tables, figures, colors).encode()
    files["report.md"] = render_markdown(col, tables, figures).encode()
    return files, col.smoke


def build_report(suite_dir: Path, out_dir: Path | None = None, baseline: str | None = None) -> Path:
    """Write the report of ``suite_dir`` (``results/<suite>``) into ``out_dir`` (default
    ``suite_dir/report``) and return that folder. ``baseline``: the method label (or name)
    the others are compared with; default: the suite's ``report.baseline``, else ``dpo``.
    Raises UserError when the folder holds no cells, or when an explicit ``baseline`` names no
    method of a suite (with several suites, of any of them)."""
    from .collect import find_suites

    suite_dir = Path(suite_dir)
    out_root = Path(out_dir) if out_dir is not None else suite_dir / "report"
    suites = find_suites(suite_dir)
    if not suites:
        raise UserError(f"{suite_dir}: no cells found (no subfolder with a status, config.yaml or "
                        "metrics.json, nor a suite folder holding such cells). Point `harness "
                        "report` at results/<suite> as written by `python -m harness run "
                        "SUITE.yaml`.")
    if suites == [suite_dir]:
        _write_all(out_root, _report_files(suite_dir, baseline)[0])
        return out_root
    files: dict[str, bytes] = {}
    smoke = {}
    for s in suites:
        written, smoke[s] = _report_files(s, baseline)
        _write_all(out_root / s.name, written)
    tag = {s: " (SMOKE RUN: not results)" if smoke[s] else "" for s in suites}
    links = "".join(f'<li><a href="{escape(s.name)}/report.html">{escape(s.name)}</a>'
                    f'{escape(tag[s])}</li>' for s in suites)
    files["index.html"] = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                           f"<title>Reports: {escape(suite_dir.name)}</title></head><body>"
                           f"<h1>Reports in {escape(suite_dir.name)}</h1><ul>{links}</ul>"
                           "</body></html>\n").encode()
    files["index.md"] = ("# Reports in " + suite_dir.name + "\n\n" +
                         "".join(f"- [{s.name}]({s.name}/report.md){tag[s]}\n" for s in suites)).encode()
    _write_all(out_root, files)
    return out_root
