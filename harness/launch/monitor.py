"""What a person watching a launch sees: the job counts and, for each running job, one line
with its stage, step/total and ETA, read from the job's ``progress.json``
(:mod:`harness.results.progress`).

The same for every launcher: a thread reads the jobs' folders every ``poll_s`` seconds, so it
sees a cell in this process (inline), in a worker process (local) or on a SLURM node (through
the shared file system) alike. A job's line is printed when its stage changes, and otherwise at
most every ``every_s`` seconds while its step moves, so a fast loop never floods the terminal::

    [5 jobs] pending=4 running=1 done=0 failed=0
    dpo-tiny-addition-s0  reference pass 4/8 ETA 12s
    dpo-tiny-addition-s0  training 12/24 ETA 3m10s
    dpo-tiny-addition-s0  evaluation:greedy 3/8 ETA 40s

On a terminal the counts stay on the last line (rewritten in place), the job lines scroll above
it; elsewhere (a log file, a pipe) every line is a plain line.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from harness.results.progress import describe, read_progress, short_name

EVERY_S = 30.0   # a job's line again at most this often while only its step moves
POLL_S = 2.0
STARTED_SLACK_S = 60.0  # a record started this long before the launch still counts (clock skew)


class Monitor:
    """The launch's ``progress`` callback (job counts) and, in a thread, the jobs' own
    progress. ``with Monitor(jobs) as m: launch(..., progress=m)``."""

    def __init__(self, jobs, stream=None, *, every_s: float | None = None, poll_s: float | None = None,
                 tty: bool | None = None, clock=time.time):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = EVERY_S if every_s is None else every_s
        self._clock = clock
        # reading N folders every poll: at most about 100 reads a second on a shared file system
        self.poll_s = poll_s if poll_s is not None else max(POLL_S, len(jobs) / 100)
        self.folders = {j.name: Path(j.log_hint) for j in jobs if j.log_hint}
        self.total = len(jobs)
        self.t0 = clock()
        self._shown: dict[str, tuple] = {}   # job -> (stage, step, when printed)
        self._counts = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the launcher's callback ---------------------------------------------------------------
    def __call__(self, counts: dict) -> None:
        s = " ".join(f"{k}={counts.get(k, 0)}" for k in ("pending", "running", "done", "failed"))
        with self._lock:
            if s == self._counts:
                return
            self._counts = s
            if self.tty:
                end = "\n" if counts.get("pending", 0) + counts.get("running", 0) == 0 else ""
                self.stream.write(f"\r\033[K[{self.total} jobs] {s}{end}")
            else:
                self.stream.write(f"[{self.total} jobs] {s}\n")
            self.stream.flush()

    # -- the jobs' progress ----------------------------------------------------------------------
    def lines(self) -> list[str]:
        """The job lines due now (and remember them as shown)."""
        now, out = self._clock(), []
        width = max((len(short_name(n)) for n in self.folders), default=0)
        for name, folder in self.folders.items():
            rec = read_progress(folder)
            if rec is None or not rec.get("active") or rec.get("started", 0) < self.t0 - STARTED_SLACK_S:
                continue  # not started, finished, or left by an earlier run
            stage, step = rec.get("stage"), rec.get("step")
            seen = self._shown.get(name)
            if seen is not None:
                if seen[:2] == (stage, step) or (seen[0] == stage and now - seen[2] < self.every_s):
                    continue
            self._shown[name] = (stage, step, now)
            out.append(f"{short_name(name):{width}s}  {describe(rec, now)}")
        return out

    def poll(self) -> None:
        lines = self.lines()
        if not lines:
            return
        with self._lock:
            if self.tty:  # above the counts line, which is written again below them
                self.stream.write("\r\033[K" + "\n".join(lines) + "\n" + (f"[{self.total} jobs] {self._counts}"
                                                                          if self._counts else ""))
            else:
                self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - watching must never stop the run
                pass

    def __enter__(self) -> "Monitor":
        # the training loop's own bar (a TTY under the inline launcher) would fight these lines
        self._env = os.environ.get("HARNESS_NO_PROGRESS")
        os.environ["HARNESS_NO_PROGRESS"] = "1"
        self._thread = threading.Thread(target=self._run, name="progress-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._env is None:
            os.environ.pop("HARNESS_NO_PROGRESS", None)
        else:
            os.environ["HARNESS_NO_PROGRESS"] = self._env
