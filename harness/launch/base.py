"""What every launcher shares: the job and outcome records, stage ordering, progress counts,
the end-of-run summary, and turning a finished submitit job into an outcome.

A launcher takes ``Job``s and returns one ``JobOutcome`` per job, in the order given. A job that
fails (raises, or dies hard: SIGKILL, out of memory, time limit) is an outcome with ``ok=False``,
never an exception of the launcher, so one bad cell never takes a sweep down with it.
"""
from __future__ import annotations

import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.paths import PROJECT_ROOT

# sft stages produce the checkpoints the cells start from; onpolicy stages sample from those
# checkpoints the data some cells train on
STAGE_ORDER = ("sft", "onpolicy", "cell")
RESOURCES = ("sft", "cell")  # the SLURM profile's sections; an onpolicy stage runs with "sft"'s

ProgressFn = Callable[[dict], None]


@dataclass
class Job:
    """One unit of work: ``fn(*args, **kwargs)``.

    ``fn`` must be a module-level function (or a picklable callable) importable in a fresh
    interpreter: the local and SLURM launchers pickle it by reference.
    """

    name: str                         # unique within a launch, e.g. the cell id or "sft-<id>"
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    stage: str = "cell"               # each stage's jobs run and finish before the next stage's start
    resources: str = "cell"           # key into the SLURM profile: "sft" | "cell"
    log_hint: str | None = None       # the job's own log (its cell folder), shown in summaries


@dataclass
class JobOutcome:
    name: str
    ok: bool
    error: str | None = None          # traceback, or why the job ended without a result
    log_paths: list[str] = field(default_factory=list)  # submitit stdout/stderr, then log_hint
    result: Any = None                # fn's return value when ok
    job_id: str | None = None         # the local PID or SLURM job id, when there is one
    resumable: bool = False           # stopped from outside (scheduler, full disk), not broken:
                                      # its folder stays pending, a plain rerun resumes it


def check_jobs(jobs: list[Job]) -> None:
    """Programming errors of the caller (not user input), so plain ValueError."""
    seen = set()
    for j in jobs:
        if j.name in seen:
            raise ValueError(f"duplicate job name {j.name!r}")
        seen.add(j.name)
        if j.stage not in STAGE_ORDER:
            raise ValueError(f"job {j.name!r}: stage {j.stage!r} is not one of {STAGE_ORDER}")
        if j.resources not in RESOURCES:
            raise ValueError(f"job {j.name!r}: resources {j.resources!r} is not one of {RESOURCES}")
        if not callable(j.fn):
            raise ValueError(f"job {j.name!r}: fn is not callable")


def by_stage(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by stage in run order (sft first), keeping the given order within a stage;
    empty stages are dropped."""
    check_jobs(jobs)
    groups = [[j for j in jobs if j.stage == s] for s in STAGE_ORDER]
    return [g for g in groups if g]


class Progress:
    """Counts jobs by state and calls ``progress`` with a copy whenever the counts change."""

    STATES = ("pending", "running", "done", "failed")

    def __init__(self, names: Iterable[str], callback: ProgressFn | None):
        self._state = {n: "pending" for n in names}
        self._callback = callback
        self._last: dict | None = None
        self.emit()

    def set(self, name: str, state: str) -> None:
        assert state in self.STATES, state
        self._state[name] = state

    def counts(self) -> dict:
        c = {s: 0 for s in self.STATES}
        for s in self._state.values():
            c[s] += 1
        return c

    def emit(self) -> None:
        c = self.counts()
        if c != self._last and self._callback is not None:
            self._callback(dict(c))
        self._last = c


def error_text() -> str:
    return traceback.format_exc().rstrip()


def run_inline_call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any, str | None]:
    """Runs one call, turning an exception into (False, None, traceback). ``SystemExit`` (a
    plugin calling ``sys.exit()``) is a failure of that job too; only KeyboardInterrupt
    (Ctrl-C, SIGTERM) stops the run."""
    try:
        return True, fn(*args, **kwargs), None
    except (Exception, SystemExit):  # noqa: BLE001 - a failing job must not stop the others
        return False, None, error_text()


NO_SPACE_MARKS = ("[Errno 28]", "[Errno 122]")   # ENOSPC, EDQUOT


def stops_sweep(outcome: "JobOutcome") -> bool:
    """A job that ran out of disk space (or quota): every later job would too, so a launcher
    starts no more jobs after it."""
    return not outcome.ok and any(m in headline(outcome.error) for m in NO_SPACE_MARKS)


def not_started(job: Job, why: str) -> "JobOutcome":
    return JobOutcome(job.name, False, f"not started: {why}", [str(job.log_hint)] if job.log_hint else [],
                      None, resumable=True)


def log_paths_of(sjob: Any, job: Job) -> list[str]:
    """The submitit stdout/stderr files of a job (task 0), then the job's own log."""
    paths = []
    try:
        p = sjob.task(0).paths if sjob.num_tasks > 1 else sjob.paths
        paths = [str(p.stdout), str(p.stderr)]
    except Exception:  # noqa: BLE001 - a summary must not fail on a half-submitted job
        pass
    if job.log_hint:
        paths.append(str(job.log_hint))
    return paths


def tail(path: str | Path, n: int = 20) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def outcome_with_result(sjob: Any, job: Job) -> JobOutcome:
    """Outcome of a submitit job whose result file exists (success or a raised exception)."""
    task = sjob.task(0) if sjob.num_tasks > 1 else sjob
    logs = log_paths_of(sjob, job)
    try:
        return JobOutcome(job.name, True, None, logs, task.result(), job_id=sjob.job_id)
    except Exception as e:  # noqa: BLE001 - FailedJobError carries the job's traceback
        return JobOutcome(job.name, False, _trace_of(e), logs, None, job_id=sjob.job_id)


def _trace_of(e: Exception) -> str:
    """The job's own traceback out of submitit's FailedJobError message (which wraps it in
    dashed lines between a header and log hints); the whole message otherwise."""
    text = str(e).strip() or repr(e)
    parts = re.split(r"\n-{10,}\n", text)
    if len(parts) >= 3 and parts[1].lstrip().startswith("Traceback"):
        return parts[1].strip()
    return text


def outcome_without_result(sjob: Any, job: Job, state: str, why: str | None = None,
                           resumable: bool = False) -> JobOutcome:
    """Outcome of a job that ended without writing a result: killed (SIGKILL, out of memory),
    cancelled, over its time limit, or its node failed. ``why`` says which, when the launcher
    knows; the error quotes the stderr tail."""
    logs = log_paths_of(sjob, job)
    why = why or ("the process was killed (signal, out of memory, time limit, cancelled) or crashed "
                  "before it could report")
    lines = [f"job {sjob.job_id} ended without a result (state: {state}): {why}."]
    for p in logs[:2]:
        t = tail(p)
        if t:
            lines += [f"--- last lines of {p}", t]
    return JobOutcome(job.name, False, "\n".join(lines), logs, None, job_id=sjob.job_id, resumable=resumable)


def headline(error: str | None) -> str:
    """One line saying what went wrong: a traceback's last line (the exception), otherwise the
    first line (our own "ended without a result" messages start with the reason)."""
    lines = [ln.strip() for ln in (error or "").strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def format_summary(outcomes: list[JobOutcome]) -> str:
    """A few lines for the terminal: counts, then each failed job (and each one stopped from
    outside, resumable) with its error's last line and where to read the logs."""
    failed = [o for o in outcomes if not o.ok and not o.resumable]
    stopped = [o for o in outcomes if not o.ok and o.resumable]
    lines = [f"{len(outcomes)} jobs: {len(outcomes) - len(failed) - len(stopped)} done, {len(failed)} failed"
             + (f", {len(stopped)} stopped (resumable)" if stopped else "")]
    for word, group in (("FAILED", failed), ("STOPPED", stopped)):
        for o in group:
            jid = f" (job {o.job_id})" if o.job_id else ""
            lines.append(f"  {word} {o.name}{jid}: {headline(o.error)}")
            if o.log_paths:
                lines.append(f"    logs: {', '.join(o.log_paths)}")
    return "\n".join(lines)


SNAPSHOT_PACKAGES = ("harness", "methods")


def snapshot_code(work_dir: Path) -> Path:
    """Copies the ``harness`` and ``methods`` packages to ``work_dir/snapshot/<stamp>/`` and
    returns that folder. Jobs put it first on PYTHONPATH, so editing the working tree while
    jobs wait in the queue (or get requeued days later) does not change what they run.

    A plain copy rather than ``submitit.helpers.RsyncSnapshot``: that one needs rsync and a git
    repository, copies only committed files and changes the submitting process's working dir.
    """
    root = PROJECT_ROOT
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**6:06d}"
    dest = Path(work_dir) / "snapshot" / stamp
    for pkg in SNAPSHOT_PACKAGES:
        src = root / pkg
        if src.is_dir():
            shutil.copytree(src, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest
