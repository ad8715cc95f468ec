"""The commands that read a results folder: ``report``, ``status`` and ``eval`` (their parsers and
what they do); ``harness.cli`` dispatches to them."""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError


# --------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from .report import build_report

    from .cli_options import check_report_out

    d = Path(args.results_dir)
    check_report_out(args.out)
    if not d.is_dir():
        raise UserError(f"{d}: no such results folder; give results/<suite> as written by `harness run`")
    out = build_report(d, out_dir=Path(args.out) if args.out else None, baseline=args.baseline)
    print(f"report: {out}")
    return 0


# --------------------------------------------------------------------------- status
def _status_parser(sub) -> None:
    st = sub.add_parser("status", help="where each stage and cell of a results folder stands (during or after a run)")
    st.add_argument("results_dir", help="results/<suite>")


def cmd_status(args) -> int:
    from .launch.status import status_table

    print(status_table(Path(args.results_dir)))
    return 0


# ----------------------------------------------------------------------------- eval
def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a suite's finished cells from their kept policies (lm-eval tasks, "
                                    "the project's own metrics); adds columns to the report without retraining")
    e.add_argument("results_dir", help="results/<suite> as written by `harness run`")
    e.add_argument("--tasks",
                   help="comma-separated lm-eval tasks: lm-eval's own names (hellaswag, truthfulqa_mc2, ...), "
                        "the project's aliases (mmlu, gsm8k, ...), embedded_gen/embedded_mc, or tasks of --include-path")
    e.add_argument("--metrics", nargs="?", const="all", metavar="FAMILIES",
                   help="the project's own evaluation metrics again: alone, every family the cells' eval settings "
                        "enable; or comma-separated family names (preference, reward_accuracy, greedy, winrate, kl, "
                        "diversity, lm_eval); results in <cell>/eval/metrics/")
    e.add_argument("--limit", type=_positive_int, help="examples per task (default: all)")
    e.add_argument("--force", action="store_true", help="evaluate again the tasks (metric families) a cell has already")
    e.add_argument("--include-path", type=Path, help="a folder of your own lm-eval task YAML files")
    e.add_argument("--allow-code-execution", action="store_true",
                   help="let tasks such as humaneval run model-written code here (no sandbox)")
    e.add_argument("--skip-unsaved", action="store_true",
                   help="evaluate the cells that kept their policy and skip the others (default: exit 2)")
    e.add_argument("--no-report", action="store_true", help="don't rewrite the report at the end")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return n


def cmd_eval(args) -> int:
    """--tasks (harness.eval_saved) and/or --metrics (harness.eval_metrics): every name checked
    before either writes anything; one report at the end."""
    from . import eval_metrics
    from .eval_saved import evaluate_suite, parse_tasks

    if args.tasks is None and args.metrics is None:
        raise UserError("eval: give --tasks (lm-eval tasks), --metrics (the project's own metrics), or both")
    tasks = parse_tasks(args.tasks) if args.tasks is not None else None
    families = eval_metrics.parse_families(args.metrics) if args.metrics is not None else None
    suite_dir = Path(args.results_dir)
    if args.metrics is not None:  # checked here so that --tasks writes nothing when --metrics is wrong
        eval_metrics.plan(suite_dir, families, args.force, args.skip_unsaved)
    rc = 0
    if tasks is not None:
        rc = evaluate_suite(suite_dir, tasks, limit=args.limit, force=args.force, include_path=args.include_path,
                            allow_code_execution=args.allow_code_execution, skip_unsaved=args.skip_unsaved,
                            report=False)
    if args.metrics is not None:
        rc = max(rc, eval_metrics.evaluate_suite(suite_dir, families, force=args.force,
                                                 skip_unsaved=args.skip_unsaved))
    if not args.no_report:
        from .report import build_report

        print(f"report: {build_report(suite_dir)}")
    return rc
