"""The local launcher: each job in its own process via submitit's local executor, at most
``workers`` at a time (sft stage first, then the cells).

submitit's local executor starts a process per ``submit`` with no bound on how many run at
once, so this module keeps a rolling pool: it submits the next job whenever fewer than
``workers`` are running. A process per job isolates crashes: a job killed by SIGKILL or the
OOM killer is reported failed with its log paths while the others carry on.
"""
from __future__ import annotations

import time
from pathlib import Path

import submitit

from harness.launch.base import (
    Job,
    JobOutcome,
    Progress,
    ProgressFn,
    by_stage,
    outcome_with_result,
    outcome_without_result,
)

# submitit's local default is 2 minutes, after which it kills the job; cells can run for hours
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


def launch_local(jobs: list[Job], work_dir: Path, *, workers: int = 2,
                 progress: ProgressFn | None = None, poll_s: float = 0.2) -> list[JobOutcome]:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    stages = by_stage(jobs)
    # cluster= always explicit: with SLURM installed, AutoExecutor would pick slurm on its own
    executor = submitit.AutoExecutor(folder=Path(work_dir) / "submitit", cluster="local")
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    prog = Progress([j.name for j in jobs], progress)
    outcomes: dict[str, JobOutcome] = {}
    running: dict[str, tuple[Job, object]] = {}
    try:
        for group in stages:   # a stage starts only when the previous one has finished
            queue = list(group)
            while queue or running:
                while queue and len(running) < workers:
                    job = queue.pop(0)
                    running[job.name] = (job, executor.submit(job.fn, *job.args, **job.kwargs))
                    prog.set(job.name, "running")
                for name, (job, sjob) in list(running.items()):
                    if not sjob.done():
                        continue
                    out = _collect(sjob, job)
                    outcomes[name] = out
                    del running[name]
                    prog.set(name, "done" if out.ok else "failed")
                prog.emit()
                if running:
                    time.sleep(poll_s)
    except BaseException:
        # Ctrl-C or an error here: don't leave orphan worker processes behind
        for _, sjob in running.values():
            sjob.cancel(check=False)
        raise
    return [outcomes[j.name] for j in jobs]


def _collect(sjob, job: Job, grace_s: float = 2.0) -> JobOutcome:
    # The task writes its result before it exits, so on a local disk the file is there when the
    # process is gone; the short grace only covers slow filesystems.
    deadline = time.monotonic() + grace_s
    while not sjob.paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if sjob.paths.result_pickle.exists():
        return outcome_with_result(sjob, job)
    return outcome_without_result(sjob, job, sjob.state)
