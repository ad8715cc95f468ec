"""The local launcher: each job in its own process via submitit's local executor, at most
``workers`` at a time (sft stage first, then the cells).

submitit's local executor starts a process per ``submit`` with no bound on how many run at
once, so this module keeps a rolling pool: it submits the next job whenever fewer than
``workers`` are running. A process per job isolates crashes: a job killed by SIGKILL or the
OOM killer is reported failed with its log paths while the others carry on.

Stopping: each job runs in a submitit "controller" process that starts the worker process.
Both are started with SIGINT blocked (inherited), so a Ctrl-C at the terminal, which goes to
the whole process group, reaches only this process; SIGTERM to this process (or to the whole
group) raises ``Interrupted`` here too. Either way this launcher then stops every running job
itself: SIGTERM to each controller, which passes it to its worker, whose job marks its cell
pending (interrupted) and exits; whatever is still alive after ``STOP_GRACE_S`` is SIGKILLed,
worker and controller, so no process outlives the run. A worker that dies without a result is
reported as such (submitit calls such a process "FINISHED"), and after a job that ran out of
disk space no more jobs start. The submitit files of a job that succeeded are deleted when it
is collected; a failed job keeps its logs (its status names them).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import submitit

from harness.launch.base import (
    Job,
    JobOutcome,
    Progress,
    ProgressFn,
    by_stage,
    headline,
    not_started,
    outcome_with_result,
    outcome_without_result,
    stops_sweep,
)
from harness.signals import deferred, sheltered_children

# submitit's local default is 2 minutes, after which it kills the job; cells can run for hours
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
STOP_GRACE_S = 10.0


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
    stop = None
    try:
        for group in stages:   # a stage starts only when the previous one has finished
            queue = list(group)
            while queue or running:
                while queue and len(running) < workers and stop is None:
                    job = queue.pop(0)
                    with deferred(), sheltered_children():
                        running[job.name] = (job, executor.submit(job.fn, *job.args, **job.kwargs))
                    prog.set(job.name, "running")
                if stop is not None:
                    for job in queue:
                        outcomes[job.name] = not_started(job, stop)
                        prog.set(job.name, "failed")
                    queue = []
                for name, (job, sjob) in list(running.items()):
                    if not sjob.done():
                        continue
                    out = _collect(sjob, job)
                    outcomes[name] = out
                    del running[name]
                    prog.set(name, "done" if out.ok else "failed")
                    if stops_sweep(out) and stop is None:
                        stop = f"an earlier job stopped the run: {headline(out.error)}"
                prog.emit()
                if running:
                    time.sleep(poll_s)
    except BaseException:
        # Ctrl-C, SIGTERM or an error here: stop every worker, leave no process behind
        stop_jobs([sjob for _, sjob in running.values()])
        raise
    return [outcomes[j.name] for j in jobs]


def _collect(sjob, job: Job, grace_s: float = 2.0) -> JobOutcome:
    # The task writes its result before it exits, so on a local disk the file is there when the
    # process is gone; the short grace only covers slow filesystems.
    deadline = time.monotonic() + grace_s
    while not sjob.paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if sjob.paths.result_pickle.exists():
        out = outcome_with_result(sjob, job)
        _prune(sjob, keep_logs=not out.ok)
        return out
    out = outcome_without_result(
        sjob, job, "worker process gone",
        "the worker process ended without reporting a result: it was killed (SIGKILL, the "
        "out-of-memory killer) or crashed")
    _prune(sjob, keep_logs=True)
    return out


def _prune(sjob, keep_logs: bool) -> None:
    """Delete a collected job's submitit files (its pickled call and result; its logs too,
    unless a failed job's status points at them)."""
    folder = Path(sjob.paths.folder)
    for p in folder.glob(f"{sjob.job_id}_*"):
        if keep_logs and p.name.endswith((".out", ".err")):
            continue
        p.unlink(missing_ok=True)


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(d.name))
    return kids


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:   # a zombie (exited, not yet reaped) is not running
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_jobs(sjobs: list, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each job's controller (it passes the signal on to its worker, whose job marks
    its cell interrupted and exits), wait up to ``grace_s`` for them, then SIGKILL whatever of
    their process trees is left."""
    pids = {}
    for sjob in sjobs:
        try:
            pid = int(sjob.job_id)
        except (TypeError, ValueError):
            continue
        pids[pid] = _tree(pid)
        for p in reversed(pids[pid]):   # the worker first: a controller may die before passing it on
            try:
                os.kill(p, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for tree in pids.values() for p in tree):
        for sjob in sjobs:
            sjob.done()   # reaps an exited controller
        time.sleep(0.1)
    for root, tree in pids.items():
        # a worker started after the SIGTERM (the controller was still starting it) is in the
        # tree only now
        for p in set(tree) | (set(_tree(root)) if _alive(root) else set()):
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
    for sjob in sjobs:
        proc = getattr(sjob, "_process", None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - best effort: never hang the way out
                pass
