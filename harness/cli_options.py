"""The command line's own options, checked like suite keys before anything is read or written,
and the pieces of ``run`` / ``validate`` that ``--set`` and ``--only`` add.

Every option's value goes through the same checker as the suite key it stands for
(``methods.settings``): ``--workers`` is ``launcher.workers`` (an integer > 0, and only for the
local launcher); ``--results`` and ``report --out`` must be folders this user can create or
write; ``--set`` and ``--only`` must be readable (their meaning is checked with the suite:
``harness.config.overrides``, ``harness.config.only``); ``--plugin`` must import. A bad option
is a ``UserError`` naming it (exit 2), raised before the suite's data are read.
"""
from __future__ import annotations

from pathlib import Path

from methods.settings import Checker

from .errors import UserError
from .schema import LauncherSpec


def check_options(args) -> None:
    """The options of ``run`` / ``validate`` that need no suite to be checked."""
    from .config.only import parse_only
    from .config.overrides import parse_overrides
    from .sweep import check_results_root

    problems = []
    workers = getattr(args, "workers", None)
    if workers is not None:
        problems += _as_key("--workers", workers, LauncherSpec, "workers")
    for parse, opts in ((parse_overrides, getattr(args, "set", [])), (parse_only, getattr(args, "only", []))):
        try:
            parse(list(opts))
        except UserError as e:
            problems += e.problems
    if getattr(args, "results", None) is not None:
        try:
            check_results_root(Path(args.results))
        except UserError as e:
            problems += e.problems
    if problems:
        raise UserError(problems=problems)


def _as_key(option: str, value, cls: type, key: str) -> list[str]:
    """``value`` checked as the field ``key`` of the schema class ``cls``."""
    c = Checker()
    c.fields(cls, {key: value}, ())
    return [f"{option} {value}: {p.reason} (the suite key launcher.{key})" for p in c.problems]


def check_launcher_options(args, launcher: LauncherSpec) -> None:
    """``--workers`` only where it means something: the local launcher's worker count."""
    if getattr(args, "workers", None) is not None and launcher.type != "local":
        how = "--launcher" if getattr(args, "launcher", None) else "the suite's launcher.type"
        raise UserError(f"--workers {args.workers}: applies to the local launcher only; this run uses "
                        f"{launcher.type!r} ({how}). Add --launcher local, or drop --workers")


def check_report_out(out: str | None) -> None:
    """``report --out`` must be a folder this user can create or write to."""
    if out is None:
        return
    from .sweep import check_results_root

    check_results_root(Path(out), option="--out")


def describe_edits(args, whole, plan) -> list[str]:
    """What ``--set`` and ``--only`` did, in words (``validate`` and ``run`` print it)."""
    from .config.only import parse_only

    out = [f"--set {t}" for t in getattr(args, "set", [])]
    if out:
        out = [f"with {', '.join(out)} (the suite file as edited so; cell ids are those of that edit)"]
    only = parse_only(getattr(args, "only", []))
    if only:
        out.append(f"{only.describe()}: {len(plan.cells)} of the suite's {len(whole.cells)} cells, "
                   f"{len(plan.sft_stages)} of {len(whole.sft_stages)} SFT stages (ids unchanged; the report "
                   f"covers every done cell of the suite)")
    return out


def suite_text(loaded) -> str | None:
    """The suite as it runs, for the results folder's ``suite.yaml``: the file, or with
    ``--set`` the edited mapping (``harness.config.overrides``)."""
    if getattr(loaded, "path", None) is None:
        return None
    if not loaded.overrides:
        return Path(loaded.path).read_text()
    from .config.overrides import overridden_text

    return overridden_text(loaded.source, loaded.data, list(loaded.overrides))


def record_whole_plan(args, whole, ran, suite_dir: Path) -> None:
    """Under ``--only``: record the whole suite's cells in ``plan.json`` (materialize wrote
    only the selected ones), so the report keeps every done cell of the suite and a later run
    without ``--only`` finds the selected ones done. ``ran``: the plan just materialized (a
    tuned suite's finals are added to the whole first phase)."""
    if not getattr(args, "only", None):
        return
    from .results.layout import write_plan

    cells = [c.cell_id for c in whole.cells] + [c.cell_id for c in ran.cells]
    stages = [s.stage_id for s in whole.sft_stages] + [s.stage_id for s in ran.sft_stages]
    if whole.tuned and ran is not whole:
        from .tuning import finals_plan

        finals, _ = finals_plan(whole, suite_dir, write=False)
        cells += [c.cell_id for c in finals.cells]
        stages += [s.stage_id for s in finals.sft_stages]
    write_plan(suite_dir, whole.suite.name, list(dict.fromkeys(cells)), list(dict.fromkeys(stages)))


def add_suite_edits(p) -> None:
    """``--set`` and ``--only`` (harness.config.overrides, harness.config.only)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="edit a suite key as the file would (e.g. train.steps=5, 'seeds=[0,1]', "
                        "methods.dpo.hparams.beta=0.2); changes cell ids as that edit would; repeatable")
    p.add_argument("--only", action="append", default=[], metavar="KEY=V[,V...]",
                   help="only the cells with these values of method, model, dataset or seed (ids "
                        "unchanged; stages they need run too); repeat to narrow")


def select_finals(args, finals, whole):
    """A tuned suite's finals as ``--only`` selects them."""
    from .config.only import parse_only, select

    return select(parse_only(getattr(args, "only", [])), finals, whole=whole)


def check_runnable(plan) -> None:
    """Fail fast (before any training) on what can only fail later: hub-only models or
    benchmarks on an offline machine."""
    from .evaluate.lmeval import check_available
    from .hub import model_problem

    ev = plan.suite.eval
    tasks = sorted({t for t in ev.lm_eval_tasks if not t.startswith("embedded")})
    if tasks:
        check_available(tasks, allow_code_execution=ev.allow_code_execution)
    problems = [model_problem(m.name, m.hub, m.gguf_file, m.revision) for m in plan.suite.models
                if m.hub and not m.path]
    if any(problems):
        raise UserError(problems=[p for p in problems if p])
