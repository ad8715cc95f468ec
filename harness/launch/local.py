"""The local launcher: ``workers`` long-lived worker processes take the jobs from a queue, at
most one job per worker at a time (SFT stages first, then the cells).

Each worker (:mod:`harness.launch.worker`) starts once and pays the imports of torch and
transformers once, not per job (a process per job cost about 6 s per job on a 2-core machine).
The isolation a process per job gave is kept:

* a job that raises (``sys.exit()`` included) fails alone, like under the inline launcher;
* a job whose worker dies (SIGKILL, the out-of-memory killer, ``os._exit``, a crash) is
  reported failed with its log paths, its worker is replaced, and the other jobs go on;
* a worker is retired (and replaced when there is more to do) after ``max_jobs`` jobs or once
  its resident memory has grown ``max_growth_mb`` beyond what it held after its first job, so
  memory a finished job leaves behind never accumulates (``docs``: benchmarks/README.md);
* each job's stdout and stderr go to its own files, ``<work_dir>/local/<job>.out|.err``,
  deleted when the job succeeds and kept (and named in its status) when it fails.

Threads: each worker's torch uses its share of the CPUs (``harness.threads.per_worker``), unless
the user set ``HARNESS_THREADS`` or ``OMP_NUM_THREADS``.

Stopping: workers are started with SIGINT blocked (inherited), so a Ctrl-C at the terminal, which
goes to the whole process group, reaches only this process; SIGTERM to this process (or to the
whole group) raises ``Interrupted`` here too. Either way this launcher then stops every worker
itself: SIGTERM to each, whose job in progress marks its cell pending (interrupted) and exits;
whatever is still alive after ``STOP_GRACE_S`` is SIGKILLed, with any process it started, so no
process outlives the run. A worker whose launcher dies is sent SIGTERM by the kernel. After a job
that ran out of disk space no more jobs start.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from harness import threads
from harness.launch.base import Job, JobOutcome, Progress, ProgressFn, by_stage, headline, not_started, stops_sweep, tail
from harness.launch.worker import encode_message, read_message
from harness.signals import deferred, sheltered_children

STOP_GRACE_S = 10.0
MAX_JOBS_PER_WORKER = 64        # retire a worker after this many jobs
MAX_GROWTH_MB = 1024.0          # ... or once it holds this much more than after its first job


class _Worker:
    """One worker process, its two pipes and the job it is running."""

    def __init__(self, log_dir: Path, index: int, env: dict):
        self.sock, theirs = socket.socketpair()
        self.log = log_dir / f"worker-{index}.log"
        try:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "harness.launch.worker", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(theirs.fileno(),), env=env)
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.job: Job | None = None
        self.paths: tuple[str, str] = ("", "")
        self.jobs_done = 0
        self.base_rss: float | None = None
        self.rss: float = 0.0

    def send(self, job: Job, log_dir: Path) -> None:
        self.job = job
        self.paths = (str(log_dir / f"{job.name}.out"), str(log_dir / f"{job.name}.err"))
        for p in self.paths:
            Path(p).unlink(missing_ok=True)
        # MSG_NOSIGNAL: a worker that died meanwhile is an OSError here, never a SIGPIPE
        # (the command line restores SIGPIPE's default action, which would end this process)
        self.sock.sendall(encode_message({"fn": job.fn, "args": job.args, "kwargs": job.kwargs,
                                          "stdout": self.paths[0], "stderr": self.paths[1]}), socket.MSG_NOSIGNAL)

    def close(self) -> None:
        """No more jobs: the worker exits when it reads EOF."""
        self.sock.close()


class Pool:
    """Up to ``size`` workers, started on demand, replaced when they die or retire."""

    def __init__(self, log_dir: Path, size: int, *, max_jobs: int = MAX_JOBS_PER_WORKER,
                 max_growth_mb: float = MAX_GROWTH_MB):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.size, self.max_jobs, self.max_growth_mb = size, max_jobs, max_growth_mb
        self.env = threads.worker_env(size)
        self.workers: list[_Worker] = []
        self.started = 0
        self.retired: list[_Worker] = []   # told to exit, maybe still exiting
        self.exited: list[_Worker] = []
        self.dropped: list[_Worker] = []    # died during a job or while idle

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.job is not None]

    def has_room(self) -> bool:
        return len(self.busy()) < self.size

    def submit(self, job: Job) -> _Worker:
        idle = [w for w in self.workers if w.job is None]
        w = idle[0] if idle else None
        if w is None:
            with sheltered_children():
                w = _Worker(self.log_dir, self.started, self.env)
            self.started += 1
            self.workers.append(w)
        try:
            w.send(job, self.log_dir)
        except OSError:   # it died while idle: replace it and try once more
            self._drop(w)
            return self.submit(job)
        return w

    def wait(self, timeout: float) -> list[JobOutcome]:
        """The outcomes of the jobs that ended within ``timeout`` seconds."""
        busy = self.busy()
        if not busy:
            return []
        for w in [w for w in self.retired if w.proc.poll() is not None]:   # reaped once they exit
            self.retired.remove(w)
            self.exited.append(w)
        ready, _, _ = select.select([w.sock for w in busy], [], [], timeout)
        out = []
        for w in busy:
            if w.sock in ready:
                out.append(self._collect(w))
        return out

    def _collect(self, w: _Worker) -> JobOutcome:
        job = w.job
        reply = read_message(w.sock.fileno())
        w.job = None
        if reply is None:   # EOF: the worker died during the job
            w.proc.wait()
            out = _died(job, w)
            self._drop(w)
            return out
        w.jobs_done += 1
        w.rss = reply.get("rss_mb", 0.0)
        if w.base_rss is None:
            w.base_rss = w.rss
        logs = [*w.paths, *([str(job.log_hint)] if job.log_hint else [])]
        if reply["ok"]:
            for p in w.paths:
                Path(p).unlink(missing_ok=True)
            out = JobOutcome(job.name, True, None, [str(job.log_hint)] if job.log_hint else [], reply["result"],
                             job_id=str(w.pid))
        else:
            out = JobOutcome(job.name, False, reply["error"], logs, None, job_id=str(w.pid))
        if w.jobs_done >= self.max_jobs or w.rss - w.base_rss > self.max_growth_mb:
            self.retire(w)
        return out

    def retire(self, w: _Worker) -> None:
        w.close()
        self.workers.remove(w)
        self.retired.append(w)

    def _drop(self, w: _Worker) -> None:
        w.close()
        if w in self.workers:
            self.workers.remove(w)
        _reap([w.proc], timeout=5.0)
        self.dropped.append(w)

    def close(self, timeout: float = 60.0) -> None:
        """Every job has ended: let the workers exit (EOF), then make sure they did."""
        for w in self.workers:
            w.close()
        everyone = self.workers + self.retired + self.exited
        self.workers = []
        _reap([w.proc for w in everyone], timeout=timeout)
        for w in everyone + self.dropped:   # a worker that ended cleanly or said nothing leaves no file
            if w.proc.returncode == 0 or _empty(w.log):
                w.log.unlink(missing_ok=True)
        self.retired = self.exited = []

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every worker (a job in progress marks its cell interrupted and exits), wait up
        to ``grace_s``, then SIGKILL whatever is left of their process trees."""
        procs = [w.proc for w in self.workers + self.retired]
        trees = {p.pid: _tree(p.pid) for p in procs}
        for p in procs:
            for pid in reversed(trees[p.pid]):   # descendants first
                _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            alive = set(trees[p.pid]) | (set(_tree(p.pid)) if p.poll() is None else set())
            for pid in alive:
                if pid == p.pid or _alive(pid):
                    _signal(pid, signal.SIGKILL)
        _reap(procs, timeout=5.0)
        for w in self.workers + self.retired:
            w.close()
        self.workers, self.retired = [], []


def launch_local(jobs: list[Job], work_dir: Path, *, workers: int = 2, progress: ProgressFn | None = None,
                 poll_s: float = 0.2, max_jobs: int = MAX_JOBS_PER_WORKER,
                 max_growth_mb: float = MAX_GROWTH_MB) -> list[JobOutcome]:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    stages = by_stage(jobs)
    prog = Progress([j.name for j in jobs], progress)
    outcomes: dict[str, JobOutcome] = {}
    pool = Pool(Path(work_dir) / "local", workers, max_jobs=max_jobs, max_growth_mb=max_growth_mb)
    stop = None
    try:
        for group in stages:   # a stage starts only when the previous one has finished
            queue = deque(group)
            while queue or pool.busy():
                while queue and pool.has_room() and stop is None:
                    job = queue.popleft()
                    with deferred():   # a signal here waits until the job is recorded as running
                        pool.submit(job)
                    prog.set(job.name, "running")
                if stop is not None:
                    for job in queue:
                        outcomes[job.name] = not_started(job, stop)
                        prog.set(job.name, "failed")
                    queue.clear()
                prog.emit()
                for out in pool.wait(poll_s):
                    outcomes[out.name] = out
                    prog.set(out.name, "done" if out.ok else "failed")
                    if stops_sweep(out) and stop is None:
                        stop = f"an earlier job stopped the run: {headline(out.error)}"
                prog.emit()
    except BaseException:
        # Ctrl-C, SIGTERM or an error here: stop every worker, leave no process behind
        pool.stop()
        raise
    pool.close()
    return [outcomes[j.name] for j in jobs]


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _died(job: Job, w: _Worker) -> JobOutcome:
    """The outcome of a job whose worker ended without reporting a result."""
    rc = w.proc.returncode
    how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit code {rc}"
    logs = [*w.paths, *([str(job.log_hint)] if job.log_hint else [])]
    lines = [f"job {w.pid} ended without a result (worker {how}): the worker process ended without "
             f"reporting a result: it was killed (SIGKILL, the out-of-memory killer) or crashed."]
    for p in w.paths:
        t = tail(p)
        if t:
            lines += [f"--- last lines of {p}", t]
    return JobOutcome(job.name, False, "\n".join(lines), logs, None, job_id=str(w.pid))


# ------------------------------------------------------------------------- processes
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


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _reap(procs: list[subprocess.Popen], timeout: float) -> None:
    """Wait for ``procs`` to exit (SIGKILL after ``timeout``), so none is left a zombie."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(p.pid, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except Exception:  # noqa: BLE001 - best effort: never hang the way out
                pass
