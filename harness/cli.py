"""``python -m harness``: run | validate | report | ls.

Exit codes: 0 success; 1 some cells failed (their folders say why); 2 invalid input
(suite, data, arguments), with a message naming the file, line/row and key, and nothing written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import UserError

EPILOG = """examples:
  python -m harness run suites/quickstart.yaml            # SFT, train, evaluate, report
  python -m harness run SUITE --dry-run                    # the plan, nothing trained
  python -m harness run SUITE --launcher local --workers 2
  python -m harness run SUITE --launcher slurm             # job arrays through submitit
  python -m harness run SUITE --retry-failed               # rerun failed cells too
  python -m harness validate SUITE
  python -m harness report results/quickstart
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
    v = sub.add_parser("validate", help="check a suite and print its plan; nothing is written")
    v.add_argument("suite")
    v.add_argument("--results", default="results")
    v.add_argument("--plugin", action="append", default=[])
    v.add_argument("--smoke", action="store_true")
    rep = sub.add_parser("report", help="tables, figures and report.html from a results folder")
    rep.add_argument("results_dir", help="results/<suite> (or a results root holding several suites)")
    rep.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    rep.add_argument("--baseline", help="row compared against (default: the suite's report.baseline or dpo)")
    ls = sub.add_parser("ls", help="list registered methods, embedded tasks or launchers")
    ls.add_argument("what", choices=["methods", "tasks", "launchers"])
    ls.add_argument("--plugin", action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... | head` ends quietly
    args = parser().parse_args(argv)
    try:
        if args.cmd == "ls":
            return cmd_ls(args)
        if args.cmd == "validate":
            return cmd_validate(args)
        if args.cmd == "run":
            return cmd_run(args)
        if args.cmd == "report":
            return cmd_report(args)
    except UserError as e:
        print("error: " + ("\n  " if len(e.problems) > 1 else ""), end="", file=sys.stderr)
        print("\n  ".join(e.problems), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


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
        print("local    submitit local executor, --workers parallel processes")
        print("slurm    submitit SLURM job arrays; resources from a profile in slurm/")
    return 0


# ------------------------------------------------------------------------- validate
def _load(args):
    from . import config

    specs = getattr(args, "plugin", [])
    _plugins(specs)
    loaded = config.load_suite(Path(args.suite))
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
    _check_data(loaded)
    plan = config.expand(loaded)
    if getattr(args, "smoke", False):
        from .smoke import mark_plan

        mark_plan(plan)  # config.yaml says smoke: true; ids are unchanged
    return loaded, plan


def _check_data(loaded) -> None:
    """Read and validate every local data file now, before anything is written: a bad row
    is invalid input (exit 2, the file and row named), not a failure of each cell later.
    Embedded tasks are checked by the suite validation; hub data sets are loaded by the
    jobs (loading them here could mean a download)."""
    from .data.loading import load_dataset

    for d in loaded.suite.datasets:
        if d.path:
            load_dataset(d, loaded.base_dir)


def _describe(plan, results_root: Path) -> str:
    """The plan in words; a tuned suite's second phase (finals) too."""
    from . import config

    text = config.describe_plan(plan, results_root)
    if plan.tuned:
        from .tuning import describe_finals

        text += "\n" + "\n".join(describe_finals(plan, results_root))
    return text


def cmd_validate(args) -> int:
    loaded, plan = _load(args)
    print(f"{args.suite}: valid")
    print(_describe(plan, Path(args.results)))
    return 0


# ------------------------------------------------------------------------------ run
def cmd_run(args) -> int:
    from . import config
    from .paths import slurm_profile
    from .results import read_status
    from .runner import materialize

    loaded, plan = _load(args)
    suite = loaded.suite
    results_root = Path(args.results)
    suite_dir = results_root / suite.name
    if args.dry_run:
        print(_describe(plan, results_root))
        return 0
    suite.launcher = config.launcher_overrides(suite.launcher, type=args.launcher, workers=args.workers)
    _check_runnable(plan)
    profile = None
    if suite.launcher.type == "slurm":  # the same lookup as validate's (harness.paths)
        profile = slurm_profile(suite.launcher.slurm_profile, loaded.base_dir)
    _check_written(plan, suite_dir)
    materialize(plan, suite_dir, Path(loaded.path).read_text() if getattr(loaded, "path", None) else None)
    t0 = time.time()
    failed, skipped_failed = _run_phase(plan, suite_dir, args, profile)
    cells = list(plan.cells)
    if plan.tuned:  # phase 2: choose each method's setting on dev, then its final seeds on test
        from .tuning import finals_plan

        finals, sel = finals_plan(plan, suite_dir)
        print(f"tuning: settings chosen on dev by {sel.metric} ({suite_dir / '_tuning' / 'selection.json'}):")
        print("\n".join(sel.summary()))
        if finals.cells:
            _check_written(finals, suite_dir)
            materialize(finals, suite_dir)
            f2, s2 = _run_phase(finals, suite_dir, args, profile, phase="finals")
            failed, skipped_failed, cells = failed + f2, skipped_failed + s2, cells + finals.cells
    print(f"finished in {time.time() - t0:.1f}s")
    if not args.no_report and any(read_status(suite_dir / c.cell_id)["state"] == "done" for c in cells):
        from .report import build_report

        out = build_report(suite_dir)
        print(f"report: {out}")
    return 1 if failed or skipped_failed else 0


def _check_written(plan, suite_dir: Path) -> None:
    from . import config

    config.check_written_configs(
        [(suite_dir / "_sft" / s.stage_id, config.StageConfig) for s in plan.sft_stages]
        + [(suite_dir / "_onpolicy" / s.stage_id, config.OnPolicyStageConfig) for s in plan.onpolicy_stages]
        + [(suite_dir / c.cell_id, config.CellConfig) for c in plan.cells])


def _run_phase(plan, suite_dir: Path, args, profile, phase: str = "") -> tuple[list, list]:
    """Launch every stage and cell of ``plan`` that is not done (failed cells only with
    ``--retry-failed``); (failed outcomes, failed cells skipped)."""
    from .launch import Job, format_summary, launch
    from .results import read_status
    from .runner import run_job

    suite = plan.suite
    jobs = []
    states = {}
    for kind, stages, res in (("sft", plan.sft_stages, "sft"), ("onpolicy", plan.onpolicy_stages, "sft")):
        for s in stages:
            folder = suite_dir / ("_sft" if kind == "sft" else "_onpolicy") / s.stage_id
            if read_status(folder)["state"] != "done":
                jobs.append(Job(name=s.stage_id, fn=run_job, args=(str(suite_dir.resolve()), kind, s.stage_id),
                                kwargs={"retry_failed": True}, stage=kind, resources=res, log_hint=str(folder)))
    skipped_failed = []
    for c in plan.cells:
        st = read_status(suite_dir / c.cell_id)["state"]
        states[c.cell_id] = st
        if st == "done":
            continue
        if st == "failed" and not args.retry_failed:
            skipped_failed.append(c.cell_id)
            continue
        jobs.append(Job(name=c.cell_id, fn=run_job, args=(str(suite_dir.resolve()), "cell", c.cell_id),
                        kwargs={"retry_failed": True}, stage="cell", resources="cell",
                        log_hint=str(suite_dir / c.cell_id)))
    done = sum(1 for c in plan.cells if states[c.cell_id] == "done")
    n_sft, n_op = (sum(1 for j in jobs if j.stage == k) for k in ("sft", "onpolicy"))
    what = f"{phase}: " if phase else ("phase 1 (trials and untuned rows): " if plan.tuned else "")
    print(f"suite {suite.name}: {what}{len(plan.cells)} cells ({done} done, {len(skipped_failed)} failed and skipped"
          f"{' - rerun with --retry-failed' if skipped_failed else ''}), "
          f"{n_sft} SFT stages{f', {n_op} on-policy sample stages' if n_op else ''} and "
          f"{sum(1 for j in jobs if j.stage == 'cell')} cells to run on {suite.launcher.type}; results in {suite_dir}")
    t0 = time.time()
    outcomes = []
    if jobs:
        outcomes = launch(jobs, suite.launcher, suite_dir / "_launch", profile_path=profile,
                          progress=_progress_printer(len(jobs)))
    _record_hard_failures(outcomes, {j.name: Path(j.log_hint) for j in jobs})
    failed = [o for o in outcomes if not o.ok or (isinstance(o.result, dict) and o.result.get("state") == "failed")]
    locked = [o.name for o in outcomes if o.ok and isinstance(o.result, dict) and o.result.get("state") == "locked"]
    print(f"{what}finished in {time.time() - t0:.1f}s: {len(outcomes) - len(failed)} ok, {len(failed)} failed")
    if locked:
        print(f"{len(locked)} skipped: another process holds their lock and is running them "
              f"(rerun, or `report`, once it is done): {', '.join(locked)}")
    if failed:
        print(format_summary(outcomes), file=sys.stderr)
        print("each failed cell's folder holds `status` (reason, step, last finite metrics) and "
              "`error.txt` (traceback); fix the cause, then rerun with --retry-failed", file=sys.stderr)
    return failed, skipped_failed


def _record_hard_failures(outcomes, folders: dict) -> None:
    """A job killed hard (SIGKILL, OOM, time limit without requeue) could not mark its own
    folder failed; do it here with the launcher's reason and log paths, unless a live process
    holds the folder's lock (another run is working on it)."""
    from .launch.base import headline
    from .results import lock_info, read_status, write_status

    for o in outcomes:
        folder = folders.get(o.name)
        if o.ok or folder is None or read_status(folder)["state"] in ("failed", "done"):
            continue
        info = lock_info(folder)
        if info is not None and not info.get("stale"):
            continue
        write_status(folder, "failed", reason=f"job ended without a result: {headline(o.error)}",
                     logs=list(o.log_paths), job_id=o.job_id)


def _check_runnable(plan) -> None:
    """Fail fast (before any training) on what can only fail later: hub-only models or
    benchmarks on an offline machine."""
    from .evaluate.lmeval import check_available
    from .hub import hub_reachable, offline

    ev = plan.suite.eval
    tasks = sorted({t for t in ev.lm_eval_tasks if not t.startswith("embedded")})
    if tasks:
        check_available(tasks, allow_code_execution=ev.allow_code_execution)
    for m in plan.suite.models:
        if m.hub and not m.path and (offline() or not hub_reachable()):
            raise UserError(f"model {m.name!r}: hub id {m.hub!r} cannot be downloaded here (offline). "
                            f"Give a local `path:`, run on a connected machine, or use `run --smoke` "
                            f"to exercise the pipeline with tiny stand-ins.")


def _progress_printer(total: int):
    last = {"t": 0.0, "s": None}
    tty = sys.stderr.isatty()

    def show(counts: dict) -> None:
        s = " ".join(f"{k}={counts.get(k, 0)}" for k in ("pending", "running", "done", "failed"))
        if s == last["s"]:
            return
        last["s"] = s
        if tty:
            print(f"\r[{total} jobs] {s}   ", end="", file=sys.stderr, flush=True)
            if counts.get("pending", 0) + counts.get("running", 0) == 0:
                print(file=sys.stderr)
        else:
            print(f"[{total} jobs] {s}", file=sys.stderr, flush=True)

    return show


# --------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from .report import build_report

    d = Path(args.results_dir)
    if not d.is_dir():
        raise UserError(f"{d}: no such results folder; give results/<suite> as written by `harness run`")
    out = build_report(d, out_dir=Path(args.out) if args.out else None, baseline=args.baseline)
    print(f"report: {out}")
    return 0
