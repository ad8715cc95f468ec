"""``python -m harness``: run | validate | report | status | eval | ls.

``run`` and ``validate`` take ``--set KEY.PATH=VALUE`` (edits of the suite, checked with it:
``harness.config.overrides``) and ``--only KEY=V[,V]`` (a part of the plan, ids unchanged:
``harness.config.only``); every option is checked like a suite key (``harness.cli_options``).

Exit codes (``run``; see harness.sweep): 0 every SFT stage and cell of the plan is done; 1 some
failed (their folders say why); 2 invalid input (suite, data, arguments, the results folder),
with a message naming the file, line/row and key (or the option), and nothing written; 3 some not done and none
failed (held by another run, waiting for an SFT stage, a full disk, stopped by the scheduler);
130/143 stopped by Ctrl-C/SIGTERM (what was running is marked pending and resumes).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli_options import add_suite_edits, select_finals
from .cli_options import check_runnable as _check_runnable
from .cli_results import _eval_parser, _status_parser, cmd_eval, cmd_report, cmd_status
from .errors import UserError

EPILOG = """examples:
  python -m harness run suites/quickstart.yaml            # SFT, train, evaluate, report
  python -m harness run SUITE --dry-run                    # the plan, nothing trained
  python -m harness run SUITE --launcher local --workers 2
  python -m harness run SUITE --launcher slurm             # job arrays through submitit
  python -m harness run SUITE --retry-failed               # rerun failed cells too
  python -m harness run SUITE --set train.steps=5 --only method=dpo --only seed=0
  python -m harness validate SUITE
  python -m harness report results/quickstart
  python -m harness status results/quickstart             # each job's state, stage, step, ETA
  python -m harness eval results/quickstart --tasks hellaswag,embedded_mc   # saved cells, no retraining
  python -m harness eval results/quickstart --metrics kl,diversity           # the project's metrics again
  python -m harness ls methods
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 too; keep its usage line, drop nothing
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness", description="Train and compare preference-optimization methods.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a suite (skips done cells, resumes interrupted ones)")
    r.add_argument("suite", help="suite YAML file")
    r.add_argument("--launcher", choices=["inline", "local", "slurm"], help="override the suite's launcher")
    r.add_argument("--workers", type=int, help="parallel workers for --launcher local")
    r.add_argument("--results", default="results", help="results root (default: results/)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and exit; nothing is written")
    r.add_argument("--retry-failed", action="store_true", help="also rerun cells whose status is failed")
    r.add_argument("--smoke", action="store_true",
                   help="swap models for tiny stand-ins of the same family and benchmarks for local ones")
    r.add_argument("--plugin", action="append", default=[], help="method plugin (.py file or module); repeatable")
    r.add_argument("--no-report", action="store_true", help="don't write the report at the end")
    add_suite_edits(r)
    v = sub.add_parser("validate", help="check a suite and print its plan; nothing is written")
    v.add_argument("suite")
    v.add_argument("--results", default="results")
    v.add_argument("--plugin", action="append", default=[])
    v.add_argument("--smoke", action="store_true")
    add_suite_edits(v)
    rep = sub.add_parser("report", help="tables, figures and report.html from a results folder")
    rep.add_argument("results_dir", help="results/<suite> (or a results root holding several suites)")
    rep.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    rep.add_argument("--baseline", help="row compared against (default: the suite's report.baseline or dpo)")
    _status_parser(sub)
    _eval_parser(sub)
    ls = sub.add_parser("ls", help="list registered methods, embedded tasks or launchers")
    ls.add_argument("what", choices=["methods", "tasks", "launchers"])
    ls.add_argument("--plugin", action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    import signal

    from .signals import reset, stop_on_signals
    from .sweep import EXIT_NOT_DONE, NO_SPACE_MARKS

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... | head` ends quietly
    args = parser().parse_args(argv)
    reset()
    try:
        with stop_on_signals():
            if args.cmd == "ls":
                return cmd_ls(args)
            if args.cmd == "validate":
                return cmd_validate(args)
            if args.cmd == "run":
                return cmd_run(args)
            if args.cmd == "report":
                return cmd_report(args)
            if args.cmd == "status":
                return cmd_status(args)
            if args.cmd == "eval":
                return cmd_eval(args)
    except UserError as e:
        print("error: " + ("\n  " if len(e.problems) > 1 else ""), end="", file=sys.stderr)
        print("\n  ".join(e.problems), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\n{_interrupted_line(e)}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except OSError as e:
        if not any(m in f"[Errno {e.errno}]" for m in NO_SPACE_MARKS):
            raise
        print(f"error: {e.strerror} writing {e.filename or '?'}: free some space (or raise the quota), then "
              f"rerun the same command; finished cells are kept and the others resume.", file=sys.stderr)
        return EXIT_NOT_DONE
    return 0


def _interrupted_line(e: BaseException) -> str:
    from .signals import interrupted_reason

    return f"{interrupted_reason(e)}: stopped; what was running is marked pending. Rerun the same command to resume."


def _plugins(specs):
    import methods

    for s in specs:
        try:
            methods.load_plugin(s)
        except methods.MethodConfigError as e:
            raise UserError(f"--plugin {s}: {e}") from None


# ------------------------------------------------------------------------------- ls
def cmd_ls(args) -> int:
    import methods

    _plugins(args.plugin)
    if args.what == "methods":
        for name in methods.available():
            cls = methods.get_class(name)
            needs = ", ".join(sorted(cls.needs)) or "-"
            print(f"{name:16s} needs: {needs}")
            print(f"{'':16s} {cls.summary()}")
            hp = ", ".join(h.describe() for h in cls.hparams_spec.values()) or "(no hyperparameters)"
            print(f"{'':16s} defaults: {hp}\n")
    elif args.what == "tasks":
        from .data.tasks import TASKS

        for name in TASKS.names():
            print(TASKS.get(name).describe() + "\n")
    else:
        print("inline   run cells in this process, one after another (debugging, tests)")
        print("local    --workers long-lived worker processes on this machine, jobs from a queue")
        print("slurm    submitit SLURM job arrays; resources from a profile in slurm/")
    return 0


# ------------------------------------------------------------------------- validate
def _load_plans(args, check_hub: bool = True):
    """(the checked suite with its ``--set`` edits, its whole plan, the part ``--only`` selects)."""
    from . import config
    from .cli_options import check_options
    from .config.only import parse_only, select

    check_options(args)
    only = parse_only(getattr(args, "only", []))
    specs = getattr(args, "plugin", [])
    _plugins(specs)
    loaded = config.load_suite(Path(args.suite), getattr(args, "set", []))
    if getattr(args, "smoke", False):
        from .smoke import smoke_suite

        loaded = smoke_suite(loaded)
    # Cells load their plugins from their config: a --plugin must be there too, or a worker
    # process (local, slurm launchers) would not know the method. Plugins are not part of
    # the cell id, so this changes no id.
    known = set(loaded.suite.plugins)
    for s in specs:
        ref = str(Path(s).expanduser().resolve()) if (s.endswith(".py") or "/" in s or "\\" in s) else s
        if ref not in known:
            loaded.suite.plugins.append(ref)
            known.add(ref)
    _check_data(loaded, check_hub)
    plan = config.expand(loaded)
    if getattr(args, "smoke", False):
        from .smoke import mark_plan

        mark_plan(plan)  # config.yaml says smoke: true; ids are unchanged
    return loaded, plan, select(only, plan)


def _check_data(loaded, check_hub: bool = True) -> None:
    """Read and validate every data file and hub data set now, before anything is written,
    and print what was read and dropped: a bad row or an unreachable hub data set is invalid
    input (exit 2, the file and row or the whole reason named), not a failure of each cell
    later. A hub data set is downloaded into the local datasets cache here (the jobs then read
    it from there); ``check_hub=False`` (``run --dry-run``) leaves hub data sets unchecked.
    Embedded tasks are checked by the suite validation."""
    from .data.loading import load_dataset
    from .data.realdata import describe_counts

    for d in loaded.suite.datasets:
        if d.path or (d.hub and check_hub):
            print(describe_counts(d.name, load_dataset(d, loaded.base_dir).stats, d.on_bad_rows), flush=True)


def _describe(plan, results_root: Path) -> str:
    """The plan in words; a tuned suite's second phase (finals) too."""
    from . import config

    text = config.describe_plan(plan, results_root)
    if plan.tuned:
        from .tuning import describe_finals

        text += "\n" + "\n".join(describe_finals(plan, results_root))
    return text


def cmd_validate(args) -> int:
    """Every check ``run`` makes before it writes or trains (``_check_runnable``), then the plan."""
    from .cli_options import describe_edits
    from .sweep import check_folder_names

    loaded, whole, plan = _load_plans(args)
    check_folder_names(whole, Path(args.results), str(args.suite))
    _check_runnable(plan)
    print(f"{args.suite}: valid")
    for line in describe_edits(args, whole, plan):
        print(line)
    print(_describe(plan, Path(args.results)))
    print("\n".join(_disk_lines(plan)))
    return 0


def _disk_lines(plan) -> list[str]:
    from .policy_store import describe_disk

    return describe_disk(plan)


# ------------------------------------------------------------------------------ run
def cmd_run(args) -> int:
    """Validate, write the plan into the results folder, launch what is not done, then say
    how every stage and cell of the plan stands; the exit status says the same (harness.sweep).
    A tuned suite runs in two phases (docs/protocol.md): its trials and untuned rows, then, once
    each method's setting is chosen on dev, its finals."""
    from . import config
    from .launch.describe import describe_launch
    from .sweep import check_folder_names, check_results_root

    from .cli_options import check_launcher_options, describe_edits, record_whole_plan, suite_text

    loaded, whole, plan = _load_plans(args, check_hub=not args.dry_run)
    suite = loaded.suite
    results_root = Path(args.results)
    suite_dir = results_root / suite.name
    suite.launcher = plan.suite.launcher = config.launcher_overrides(suite.launcher, type=args.launcher,
                                                                     workers=args.workers)
    check_launcher_options(args, suite.launcher)
    check_folder_names(whole, results_root, str(args.suite))
    profile = _slurm_profile(suite, loaded, args.smoke)
    for line in describe_edits(args, whole, plan):
        print(line)
    if args.dry_run:
        print(_describe(plan, results_root))
        print("\n".join(_disk_lines(plan)))
        print()
        print(describe_launch(plan, suite.launcher, profile, suite_dir))
        return 0
    _check_runnable(plan)
    check_results_root(results_root)
    _check_written(plan, suite_dir)
    from .runner import materialize

    for note in materialize(plan, suite_dir, suite_text(loaded)):
        print(f"note: {note}", file=sys.stderr)
    record_whole_plan(args, whole, plan, suite_dir)
    t0 = time.time()
    items, stop = _run_phase(args, plan, suite_dir, profile,
                             "phase 1 (trials and untuned rows)" if plan.tuned else "")
    if plan.tuned and stop is None:  # phase 2: each method's setting chosen on dev, its finals on test
        from .tuning import finals_plan

        finals, sel = finals_plan(whole, suite_dir)  # every group's choice; --only then selects
        finals = select_finals(args, finals, whole)
        print(f"tuning: settings chosen on dev by {sel.metric} ({suite_dir / '_tuning' / 'selection.json'}):")
        print("\n".join(sel.summary()))
        if finals.cells:
            _check_written(finals, suite_dir)
            for note in materialize(finals, suite_dir, phase1=plan):
                print(f"note: {note}", file=sys.stderr)
            record_whole_plan(args, whole, finals, suite_dir)
            more, stop = _run_phase(args, finals, suite_dir, profile, "finals")
            known = {i for _, i, _, _ in items}
            items += [it for it in more if it[1] not in known]
    if plan.tuned:
        print(f"finished in {time.time() - t0:.1f}s (both phases)")
    return _finish(args, suite_dir, items, stop)


def _check_written(plan, suite_dir: Path) -> None:
    """Refuse (exit 2) a results folder whose written configs do not read back as this
    version's (a folder from an incompatible version of the harness)."""
    from . import config

    config.check_written_configs(
        [(suite_dir / "_sft" / s.stage_id, config.StageConfig) for s in plan.sft_stages]
        + [(suite_dir / "_onpolicy" / s.stage_id, config.OnPolicyStageConfig) for s in plan.onpolicy_stages]
        + [(suite_dir / c.cell_id, config.CellConfig) for c in plan.cells])


def _run_phase(args, plan, suite_dir: Path, profile, phase: str = ""):
    """Launch every stage and cell of ``plan`` that is not done (failed cells only with
    ``--retry-failed``): (the plan's items, why the sweep must stop now or None)."""
    from .runner import plan_jobs

    suite = plan.suite
    items = plan_jobs(plan, suite_dir)
    jobs, skipped_failed = _jobs_to_run(items, suite_dir, args.retry_failed)
    n_done = sum(1 for k, i, f, _ in items if k == "cell" and _state(f) == "done")
    n_sft, n_op = (sum(1 for j in jobs if j.stage == k) for k in ("sft", "onpolicy"))
    what = f"{phase}: " if phase else ""
    print(f"suite {suite.name}: {what}{len(plan.cells)} cells ({n_done} done, {len(skipped_failed)} failed and skipped"
          f"{' - rerun with --retry-failed' if skipped_failed else ''}), "
          f"{n_sft} SFT stages{f', {n_op} on-policy sample stages' if n_op else ''} and "
          f"{sum(1 for j in jobs if j.stage == 'cell')} cells to run on {suite.launcher.type}; results in {suite_dir}")
    return items, _launch(suite, suite_dir, jobs, profile)


def _state(folder: Path) -> str:
    from .results import read_status

    return read_status(folder)["state"]


def _jobs_to_run(items, suite_dir: Path, retry_failed: bool):
    """The launcher's jobs (each with its config from the plan) and the failed cells left out.
    An on-policy sample stage runs with the SLURM profile's ``sft`` resources."""
    from .launch import Job
    from .runner import run_job

    jobs, skipped_failed = [], []
    for kind, job_id, folder, cfg in items:
        st = _state(folder)
        if st == "done":
            continue
        if kind == "cell" and st == "failed" and not retry_failed:
            skipped_failed.append(job_id)
            continue
        jobs.append(Job(name=job_id, fn=run_job, args=(str(suite_dir.resolve()), kind, job_id),
                        kwargs={"retry_failed": True, "config": cfg}, stage=kind,
                        resources="cell" if kind == "cell" else "sft", log_hint=str(folder)))
    return jobs, skipped_failed


def _launch(suite, suite_dir: Path, jobs, profile) -> str | None:
    """Run ``jobs`` and say how they went; returns why the sweep must stop (the disk is full)
    or None. Ctrl-C / SIGTERM mark the jobs' folders interrupted and propagate."""
    from .launch import format_summary, launch
    from .launch.monitor import Monitor
    from .sweep import mark_interrupted, out_of_space, record_hard_failures

    t0 = time.time()
    outcomes, interrupted = [], None
    if jobs:
        try:
            with Monitor(jobs) as monitor:  # counts, and each running job's stage, step and ETA
                outcomes = launch(jobs, suite.launcher, suite_dir / "_launch", profile=profile, progress=monitor)
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        from .signals import interrupted_reason

        mark_interrupted([Path(j.log_hint) for j in jobs], interrupted_reason(interrupted))
        raise interrupted
    record_hard_failures(outcomes, {j.name: Path(j.log_hint) for j in jobs})
    failed = [o for o in outcomes if (not o.ok and not o.resumable)
              or (isinstance(o.result, dict) and o.result.get("state") == "failed")]
    stopped = [o for o in outcomes if not o.ok and o.resumable]
    print(f"finished in {time.time() - t0:.1f}s: {len(outcomes) - len(failed) - len(stopped)} ok, "
          f"{len(failed)} failed" + (f", {len(stopped)} stopped" if stopped else ""))
    if failed or stopped:
        print(format_summary(outcomes), file=sys.stderr)
    if failed:
        print("each failed cell's folder holds `status` (reason, step, last finite metrics) and "
              "`error.txt` (traceback); fix the cause, then rerun with --retry-failed", file=sys.stderr)
    return out_of_space(outcomes)


def _finish(args, suite_dir: Path, items, full: str | None) -> int:
    """Say what is not done, write the report, and return the exit status (harness.sweep)."""
    from .sweep import EXIT_NOT_DONE, exit_code, not_done_lines, plan_states

    states = plan_states([(k, i, f) for k, i, f, _ in items])
    for line in not_done_lines(states):
        print(line, file=sys.stderr)
    if full:
        print(f"error: {full}: free some space (or raise the quota), then rerun the same command; finished "
              f"cells are kept and the others resume.", file=sys.stderr)
        return EXIT_NOT_DONE
    if not args.no_report and any(s.state == "done" for s in states if s.kind == "cell"):
        from .report import build_report

        print(f"report: {build_report(suite_dir)}")
    return exit_code(states)


def _slurm_profile(suite, loaded, smoke: bool):
    """The SLURM profile a run uses (None for other launchers); shrunk to one CPU and no GPUs
    under ``--smoke``, where every model is a tiny stand-in (keeping partition, account, qos
    and setup lines, which the cluster needs whatever the job's size)."""
    if suite.launcher.type != "slurm":
        return None
    from .launch.profile import load_profile, smoke_profile
    from .paths import slurm_profile

    # the same lookup as validate's (harness.paths)
    profile = load_profile(slurm_profile(suite.launcher.slurm_profile, loaded.base_dir))
    return smoke_profile(profile) if smoke else profile
