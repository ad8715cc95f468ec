"""The inline launcher: every job in this process, one after another (sft stage first).

For debugging (breakpoints work, tracebacks are local) and for tiny suites where a subprocess
per cell costs more than the cell. A raising job (``sys.exit()`` included) is recorded as failed
and the others still run, except after a job that ran out of disk space: the rest would too, so
they are reported not started.
"""
from __future__ import annotations

from pathlib import Path

from harness.launch.base import (Job, JobOutcome, Progress, ProgressFn, by_stage, headline, not_started,
                                 run_inline_call, stops_sweep)


def launch_inline(jobs: list[Job], work_dir: Path | None = None, *,
                  progress: ProgressFn | None = None) -> list[JobOutcome]:
    stages = by_stage(jobs)
    prog = Progress([j.name for j in jobs], progress)
    results: dict[str, JobOutcome] = {}
    stop = None
    for group in stages:
        for job in group:
            if stop is not None:
                results[job.name] = not_started(job, stop)
                prog.set(job.name, "failed")
                continue
            prog.set(job.name, "running")
            prog.emit()
            ok, value, err = run_inline_call(job.fn, job.args, job.kwargs)
            logs = [str(job.log_hint)] if job.log_hint else []
            results[job.name] = JobOutcome(job.name, ok, err, logs, value)
            if stops_sweep(results[job.name]):
                stop = f"an earlier job stopped the run: {headline(err)}"
            prog.set(job.name, "done" if ok else "failed")
            prog.emit()
    return [results[j.name] for j in jobs]
