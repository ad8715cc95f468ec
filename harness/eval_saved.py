"""``python -m harness eval results/<suite> --tasks t1,t2``: evaluate finished cells again,
from the policies they kept, without retraining.

Each done cell of the suite's plan (tuning trials aside: they keep nothing) is loaded from its
``model/`` (:mod:`harness.policy_store`; a baseline row from its SFT stage or the configured
model) and evaluated with lm-eval on the tasks named: lm-eval's own names (``hellaswag``,
``truthfulqa_mc2``, any task or group it knows), the project's aliases (``mmlu``, ``gsm8k``, ...),
the embedded tasks (``embedded_gen``, ``embedded_mc``, written from the cell's held-out data),
or tasks of an ``--include-path`` folder. Each task's metrics go to ``<cell>/eval/<task>.json``
(:mod:`harness.results.evaluated`) and the report shows them as columns, as if the run had
evaluated them.

Checked before any model is loaded (exit 2, nothing written): the results folder, every task
name (an unknown one gets a did-you-mean), the tasks' data and modules (as ``validate``), and
that every cell to evaluate kept its policy (the fix named otherwise). Resumable: a task a cell
has already (in ``eval/`` or in the run's own ``metrics.json``) is skipped unless ``--force``.
Exit status: 0 every cell evaluated (or had nothing to do); 1 some cell failed (the error is
printed, the others go on); 2 invalid input.
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

from .errors import UserError


def parse_tasks(text: str) -> list[str]:
    names = list(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))
    if not names:
        raise UserError("--tasks: give one or more lm-eval task names, comma-separated (e.g. "
                        "--tasks hellaswag,embedded_mc)")
    return names


def check_tasks(names: list[str], include_path: Path | None, allow_code_execution: bool) -> None:
    """Every name known and runnable here (:func:`harness.evaluate.lmeval.check_available`); the
    embedded tasks are written per cell, so need no folder."""
    from .evaluate.lmeval import EMBEDDED_TASKS, check_available

    if include_path is not None and not include_path.is_dir():
        raise UserError(f"--include-path {include_path}: no such folder (give a folder of lm-eval task YAML files)")
    others = [n for n in names if n not in EMBEDDED_TASKS]
    if others:
        check_available(others, include_path=include_path, allow_code_execution=allow_code_execution)


def suite_cells(suite_dir: Path) -> list[tuple[Path, object]]:
    """(folder, CellConfig) of every done cell of the suite's plan, tuning trials aside; the
    others are named on stderr."""
    from .config.cell import load_cell_config
    from .results import list_cells
    from .results.layout import read_plan

    if not suite_dir.is_dir():
        raise UserError(f"{suite_dir}: no such results folder; give results/<suite> as written by `harness run`")
    entries = list_cells(suite_dir)
    plan = read_plan(suite_dir)
    if plan is not None:
        entries = [e for e in entries if e["cell_id"] in set(plan["cells"])]
    if not entries:
        raise UserError(f"{suite_dir}: no cells found; give results/<suite> as written by `harness run`")
    out, not_done = [], []
    for e in entries:
        if e["state"] != "done":
            not_done.append(f"{e['cell_id']} ({e['state']})")
            continue
        cfg = load_cell_config(Path(e["dir"]))
        if cfg.tuning is not None and cfg.tuning.role == "trial":
            continue
        out.append((Path(e["dir"]), cfg))
    if not_done:
        print(f"not done, not evaluated: {', '.join(not_done)}", file=sys.stderr)
    return out


def already(folder: Path, names: list[str]) -> set[str]:
    """The tasks of ``names`` that ``folder`` has evaluated (later, or in its run)."""
    from .results import read_json
    from .results.evaluated import evaluated_tasks

    done = evaluated_tasks(folder) & set(names)
    try:
        m = read_json(folder / "metrics.json")
    except Exception:  # noqa: BLE001 - an unreadable metrics.json: not done cell (checked by state)
        m = {}
    return done | {n for n in names if any(str(k).startswith(f"lm_eval/{n}/") for k in m)}


def evaluate_suite(suite_dir: Path, names: list[str], *, limit: int | None = None, force: bool = False,
                   include_path: Path | None = None, allow_code_execution: bool = False,
                   skip_unsaved: bool = False, report: bool = True) -> int:
    """The command (module docstring); returns its exit status."""
    suite_dir = Path(suite_dir)
    check_tasks(names, include_path, allow_code_execution)
    todo = []
    for folder, cfg in suite_cells(suite_dir):
        tasks = [n for n in names if force or n not in already(folder, names)]
        if tasks:
            todo.append((folder, cfg, tasks))
    todo, unsaved = without_unsaved(todo, skip_unsaved)
    print(f"{suite_dir}: {len(todo)} cells to evaluate on {', '.join(names)}"
          + (f" ({len(unsaved)} without a kept policy skipped)" if unsaved else ""), flush=True)
    failed = 0
    for i, (folder, cfg, tasks) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {folder.name}: {', '.join(tasks)}", flush=True)
        t0 = time.time()
        try:
            got = evaluate_cell(folder, cfg, tasks, limit=limit, include_path=include_path,
                                allow_code_execution=allow_code_execution)
        except Exception as e:  # noqa: BLE001 - one cell's failure is reported, the others go on
            failed += 1
            print(f"[{i}/{len(todo)}] {folder.name}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        heads = ", ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in got.items()
                          if not k.rsplit("/", 1)[1].startswith("_") and not k.endswith("_stderr"))
        print(f"[{i}/{len(todo)}] {folder.name}: done in {time.time() - t0:.1f}s: {heads}", flush=True)
    if report and todo and failed < len(todo):
        from .report import build_report

        print(f"report: {build_report(suite_dir)}")
    return 1 if failed else 0


def evaluate_cell(folder: Path, cfg, tasks: list[str], *, limit: int | None = None,
                  include_path: Path | None = None, allow_code_execution: bool = False) -> dict[str, float]:
    """Load the cell's policy, run ``tasks`` and write each one's ``eval/<task>.json``."""
    import lm_eval

    from .cell import device, stage_data
    from .evaluate.families import write_embedded_tasks
    from .evaluate.lmeval import EMBEDDED_TASKS, run_lm_eval
    from .policy_store import load_policy
    from .results.evaluated import EVAL_DIR, write_evaluated

    data = stage_data(cfg).scored_on(cfg.split)
    model, tok = load_policy(folder, cfg, data)
    weights = weights_label(folder, cfg)
    groups: dict[Path | None, list[str]] = {}
    for n in tasks:
        groups.setdefault(folder / EVAL_DIR / "lm_eval_tasks" if n in EMBEDDED_TASKS else include_path, []).append(n)
    out: dict[str, float] = {}
    try:
        for inc, names in groups.items():
            if inc is not None and names[0] in EMBEDDED_TASKS:
                write_embedded_tasks(data, cfg.eval.lm_eval_limit, inc)
            m = run_lm_eval(model, tok, names, include_path=inc, limit=limit, batch_size=cfg.eval.batch_size,
                            device=str(device()), seed=cfg.seed,
                            allow_code_execution=allow_code_execution or cfg.eval.allow_code_execution)
            for n in names:
                mine = {k: v for k, v in m.items() if k.startswith(f"lm_eval/{n}/")}
                write_evaluated(folder, n, mine, limit=limit, lm_eval_version=getattr(lm_eval, "__version__", None),
                                weights=weights)
                out.update(mine)
    finally:
        del model
        gc.collect()
        _empty_cuda_cache()
    return out


def weights_label(folder: Path, cfg) -> str:
    """Which weights a later evaluation of the cell read (recorded with its results)."""
    from .policy_store import kept

    man = kept(folder)
    return f"model/ ({man['kind']})" if man else (f"_sft/{cfg.sft_stage}/model" if cfg.method.name == "sft"
                                                  else "the suite's model (config.yaml)")


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def without_unsaved(todo: list[tuple], skip_unsaved: bool) -> tuple[list[tuple], list[tuple]]:
    """``todo`` (tuples starting with folder, cell config) less the trained cells that kept no
    policy, and those cells; raises UserError naming each with the fix (nothing written) unless
    ``skip_unsaved``. The baseline rows need no kept policy (their weights are the start model)."""
    from .policy_store import NoSavedModel, kept

    unsaved = [(t[0], t[1]) for t in todo if t[1].trains and kept(t[0]) is None]
    if unsaved and not skip_unsaved:
        raise UserError(problems=[str(NoSavedModel(f, c)) for f, c in unsaved]
                        + ["or pass --skip-unsaved to evaluate only the cells that kept their policy"])
    return [t for t in todo if (t[0], t[1]) not in unsaved], unsaved

