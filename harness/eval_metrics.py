"""``python -m harness eval results/<suite> --metrics [families]``: the project's own evaluation
metrics (:mod:`harness.evaluate.families`), made again on finished cells from the policies they
kept, without retraining.

Each done cell of the suite's plan (tuning trials aside) is rebuilt as its own evaluation step
saw it, through the cell's own code (:func:`harness.cell.open_cell`): its config read back
(``config.yaml``, :mod:`harness.config.cell`), plugins, method, data set and split, the reference
(its SFT stage's checkpoint, or the suite's model as configured) and tokenizer; the policy is the
one it kept in ``model/`` (:mod:`harness.policy_store`; the ``sft`` row's policy is its reference,
the ``base`` row's the model before SFT). The families then run with the cell's ``eval`` settings
and seed (:func:`harness.cell.run_evaluation`): greedy answers and seeded samples are drawn as the
run drew them, so a family made again on an unchanged cell gives the run's values. Each family's
metrics go to ``<cell>/eval/metrics/<family>.json`` (:mod:`harness.results.evaluated`), which the
report reads in place of the run's values; ``samples.jsonl`` of the later evaluation goes to
``<cell>/eval/``; the run's own files are never rewritten.

``--metrics`` alone: every family that applies under the cell's eval settings (also when the run
had ``eval.enabled: false``); ``--metrics kl,diversity``: those (a family that does not apply to a
cell, such as ``preference`` for the ``sft`` row, is named and left out). Resumable: a family a
cell has in ``eval/metrics/`` is skipped unless ``--force`` (the run's own metrics.json does not
count: making a family again after its code changed is what this is for).

Checked before any model loads (exit 2, nothing written): the family names (did-you-mean), the
results folder, and that every trained cell to evaluate kept its policy.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import UserError


APPLIED = "_applied"   # eval/metrics/_applied.json: the families that applied to the cell (no "family" key)


def family_names() -> list[str]:
    from .evaluate.families import FAMILIES

    return [f.name for f in FAMILIES]


def parse_families(text: str | None) -> list[str] | None:
    """``--metrics`` alone (``text`` None or "all"): None, every family that applies; else the
    names, each checked against the registered families."""
    from methods.settings import did_you_mean

    if text is None or text.strip() in ("", "all"):
        return None
    known = family_names()
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [f"--metrics: unknown metric family {n!r}.{did_you_mean(n, known)} Known: {', '.join(known)} "
           "(or --metrics alone for every family the cells' eval settings enable)"
           for n in names if n not in known]
    if bad:
        raise UserError(problems=bad)
    return names


def plan(suite_dir: Path, families: list[str] | None, force: bool, skip_unsaved: bool) -> list[tuple]:
    """(folder, cfg, families or None) of each cell with something to do; raises UserError
    (nothing written) for trained cells without a kept policy unless ``skip_unsaved``."""
    from .eval_saved import suite_cells, without_unsaved
    from .results.evaluated import evaluated_families

    todo = []
    for folder, cfg in suite_cells(suite_dir):
        have = set() if force else evaluated_families(folder)
        if families is None:
            applied = _applied(folder)
            if force or applied is None or not set(applied) <= have:
                todo.append((folder, cfg, None, have))
        elif [f for f in families if f not in have]:
            todo.append((folder, cfg, [f for f in families if f not in have], have))
    todo, unsaved = without_unsaved(todo, skip_unsaved)
    if unsaved:
        print(f"{len(unsaved)} cells without a kept policy skipped", file=sys.stderr)
    return todo


def _applied(folder: Path) -> list[str] | None:
    """The families an earlier ``--metrics`` alone found applicable to the cell (None: none ran)."""
    from .results import read_json
    from .results.evaluated import family_path

    try:
        r = read_json(family_path(folder, APPLIED))
    except Exception:  # noqa: BLE001 - missing or unreadable: evaluate again
        return None
    return r.get("applied") if isinstance(r, dict) and isinstance(r.get("applied"), list) else None


def evaluate_suite(suite_dir: Path, families: list[str] | None, *, force: bool = False,
                   skip_unsaved: bool = False) -> int:
    """The command (module docstring) without the report; returns its exit status (0 every cell
    evaluated or had nothing to do, 1 some cell failed: the error is printed, the others go on)."""
    suite_dir = Path(suite_dir)
    todo = plan(suite_dir, families, force, skip_unsaved)
    print(f"{suite_dir}: {len(todo)} cells to evaluate on "
          f"{', '.join(families) if families else 'every metric family that applies'}", flush=True)
    failed = 0
    for i, (folder, cfg, fams, have) in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] {folder.name}"
        print(f"{tag}: {', '.join(fams) if fams else 'metrics'}", flush=True)
        t0 = time.time()
        try:
            got = evaluate_cell(suite_dir, folder, fams, skip=have)
        except Exception as e:  # noqa: BLE001 - one cell's failure is reported, the others go on
            failed += 1
            print(f"{tag}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        done = ", ".join(f"{f} ({len(m)} values)" for f, m in got.items()) or "no family applies"
        print(f"{tag}: done in {time.time() - t0:.1f}s: {done}", flush=True)
    return 1 if failed else 0


def evaluate_cell(suite_dir: Path, folder: Path, families: list[str] | None,
                  skip: set[str] = frozenset()) -> dict[str, dict]:
    """Rebuild the cell's evaluation (module docstring), run ``families`` (None: every one that
    applies, less ``skip``) and write each one's ``eval/metrics/<family>.json``; returns
    {family: metrics}. Named families that do not apply to the cell are said on stderr."""
    from .cell import run_evaluation
    from .eval_saved import _empty_cuda_cache, weights_label
    from .results import atomic_write_json
    from .results.atomic import now_iso
    from .results.evaluated import EVAL_DIR, family_path, write_family

    cell = load_for_evaluation(suite_dir, folder)
    wanted = [n for n in (families or family_names()) if n not in skip]
    got: dict[str, dict] = {}
    try:
        run_evaluation(cell, out_dir=folder / EVAL_DIR, families=wanted, by_family=got)
    finally:
        cell.policy = cell.start = None
        _empty_cuda_cache()
    for name, metrics in got.items():
        write_family(folder, name, metrics, weights=weights_label(folder, cell.cfg), seed=cell.cfg.seed)
    if families is None:  # which families applied: a later `--metrics` alone has nothing left to do
        atomic_write_json(family_path(folder, APPLIED), {"applied": sorted(set(got) | set(skip)),
                                                         "evaluated": now_iso()})
    missing = [n for n in families or () if n not in got]
    if missing:
        print(f"{folder.name}: not applicable to this cell (its eval settings or row kind): {', '.join(missing)}",
              file=sys.stderr)
    return got


def load_for_evaluation(suite_dir: Path, folder: Path):
    """The cell as its evaluation step had it (:func:`harness.cell.open_cell`): the reference
    loaded as the cell loaded it, and the policy it evaluated: its kept policy, the reference
    itself for the ``sft`` row (as :func:`harness.cell.set_up`), the model before SFT for the
    ``base`` row."""
    from .cell import open_cell
    from .policy_store import load_policy

    cell = open_cell(Path(suite_dir), Path(folder), keep_reference=True)
    ref, cell.tok = cell.start.load(copy_for_policy=False)
    cfg = cell.cfg
    if cell.method is None and not (cfg.is_base and cfg.sft_stage):
        cell.policy = ref       # set_up: the sft row's policy is its reference
    else:
        cell.policy, _ = load_policy(folder, cfg, cell.data)
    return cell
