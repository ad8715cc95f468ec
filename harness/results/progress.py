"""Where a running job is: ``progress.json`` in its folder (a cell's, an SFT or on-policy stage's).

Any launcher's monitor and ``python -m harness status`` read it from the folder, so it works the
same for the inline and local launchers and, through the shared file system, under SLURM. The
record (all times in seconds since the epoch, from the writer's clock)::

    {"stage": "training", "step": 12, "total": 24, "unit": "steps",
     "first_step": 0, "stage_started": 1764590000.0, "started": 1764589950.0,
     "updated": 1764590120.0, "active": true, "host": "node7", "pid": 4242}

``stage``: ``set-up``, ``sft``, ``reference pass``, ``training``, ``evaluation:<family>``,
``sampling``, ``saving``; ``step``/``total``: optimizer steps (``unit: steps``) or batches
(``unit: batches``, the reference pass, generation and evaluation; within an evaluation family
the total grows as each of its passes starts); ``first_step``: the step the stage started from
(a resumed training starts past 0), so the rate counts only the steps this process made;
``active``: false once the job has stopped (a failed or interrupted job keeps its last record;
a finished one removes the file).

Writing is cheap: a stage change is written at once, a step at most once every
``min_interval`` seconds; the file is replaced atomically (a temp file and a rename, without
fsync: it is a view of the moment, not a result), and an error writing it is ignored, so
progress can never fail a job.

How code deep inside a job reports without knowing the job: ``reporting(folder)`` makes a
:class:`JobProgress` the current one for its block; the stage owners call
``current().stage(...)`` and ``current().at(step)``, and batch loops iterate through
:func:`counted`, which counts their batches into the current stage when it is counted in
batches. Outside ``reporting`` (tests, the distributed ranks other than 0) ``current()`` is a
reporter that does nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

PROGRESS_FILE = "progress.json"
MIN_INTERVAL_S = 2.0

T = TypeVar("T")


class JobProgress:
    """The progress of one job, written to ``<folder>/progress.json`` (see the module doc)."""

    def __init__(self, folder: str | os.PathLike | None, min_interval: float | None = None, clock=time.time,
                 may_write: Callable[[], bool] | None = None):
        self.path = Path(folder) / PROGRESS_FILE if folder is not None else None
        # ``may_write``: asked before each write (e.g. the job's lock still ours: a process that
        # lost its lock writes nothing more in the folder); once it says no, nothing is written.
        self._may_write = may_write
        self.min_interval = MIN_INTERVAL_S if min_interval is None else min_interval
        self._clock = clock
        self.writes = 0                       # how many times the file was written (tests)
        self._last_write = float("-inf")
        now = clock()
        self.rec: dict = {"stage": None, "step": 0, "total": None, "unit": "steps", "first_step": 0,
                          "stage_started": now, "started": now, "updated": now, "active": True,
                          "host": socket.gethostname(), "pid": os.getpid()}
        self._fixed = True       # the stage's total is known (add_work leaves it alone)
        self._batches = False    # the stage counts batches (tick advances it)
        self._lazy_first = False  # first_step is taken from the first at() (a resumed run)

    # -- what stage owners call -------------------------------------------------------------
    def stage(self, name: str, total: int | None = None, *, unit: str = "batches", step: int | None = None) -> None:
        """Start stage ``name``. ``unit="steps"``: its owner reports steps with :meth:`at`
        (``step``: where it starts, when known; else the first ``at`` says). ``unit="batches"``:
        counted by the batch loops inside it (:func:`counted`); ``total`` None lets each loop
        add its batches to the total as it starts."""
        now = self._clock()
        self.rec.update(stage=name, step=step or 0, total=total, unit=unit, first_step=step or 0,
                        stage_started=now)
        self._fixed = total is not None
        self._batches = unit == "batches"
        self._lazy_first = unit == "steps" and step is None
        self._write(force=True)

    @contextlib.contextmanager
    def section(self, name: str, total: int | None = None, unit: str = "batches") -> Iterator[None]:
        """Stage ``name`` for the block, then back to the stage it interrupted, counts as they
        were (a reference pass met during set-up or inside an evaluation family)."""
        saved = (dict(self.rec), self._fixed, self._batches, self._lazy_first)
        self.stage(name, total, unit=unit)
        try:
            yield
        finally:
            rec, self._fixed, self._batches, self._lazy_first = saved
            keep = ("stage", "step", "total", "unit", "first_step", "stage_started")
            self.rec.update({k: rec[k] for k in keep})
            self._write(force=True)

    def at(self, step: int, total: int | None = None) -> None:
        """The stage reached ``step`` (of ``total``, when it changes)."""
        if self._lazy_first:
            self.rec["first_step"] = max(0, step - 1)
            self._lazy_first = False
        self.rec["step"] = step
        if total is not None:
            self.rec["total"] = total
        self._write()

    # -- what batch loops call (through counted) -------------------------------------------
    def add_work(self, n: int) -> None:
        if self._batches and not self._fixed:
            self.rec["total"] = (self.rec["total"] or 0) + n

    def tick(self, n: int = 1) -> None:
        if self._batches:
            self.rec["step"] += n
            self._write()

    # -- the end ----------------------------------------------------------------------------
    def finish(self, keep: bool) -> None:
        """The job stopped: ``keep`` the last record (marked inactive) or remove the file."""
        if self.path is None:
            return
        if keep:
            self.rec["active"] = False
            self._write(force=True)
        elif self._may_write is None or self._may_write():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _write(self, force: bool = False) -> None:
        now = self._clock()
        self.rec["updated"] = now
        if self.path is None or (not force and now - self._last_write < self.min_interval):
            return
        self._last_write = now
        if self._may_write is not None and not self._may_write():
            self.path = None
            return
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(json.dumps(self.rec, allow_nan=False))
            os.replace(tmp, self.path)
            self.writes += 1
        except (OSError, ValueError):  # progress must never fail the job
            with contextlib.suppress(OSError):
                tmp.unlink()


_NULL = JobProgress(None)
_current: JobProgress = _NULL


def current() -> JobProgress:
    """The job progress of the running ``reporting`` block, or one that writes nothing."""
    return _current


@contextlib.contextmanager
def reporting(folder: str | os.PathLike, stage: str = "set-up", **kw) -> Iterator[JobProgress]:
    """Make a :class:`JobProgress` for ``folder`` current for the block, starting at ``stage``.
    A block that ends normally removes the file; one that raises keeps its last record (where
    it stopped), marked inactive."""
    global _current
    prog, before = JobProgress(folder, **kw), _current
    _current = prog
    prog.stage(stage)
    ok = False
    try:
        yield prog
        ok = True
    finally:
        _current = before
        prog.finish(keep=not ok)


def counted(items: Iterable[T], n: int | None = None) -> Iterator[T]:
    """Iterate ``items`` (``n`` of them; ``len(items)`` by default), counting each one done as a
    batch of the current stage."""
    prog = current()
    prog.add_work(len(items) if n is None else n)  # type: ignore[arg-type]
    for x in items:
        yield x
        prog.tick()


# ------------------------------------------------------------------------------ reading
def read_progress(folder: str | os.PathLike) -> dict | None:
    """The folder's progress record, or None (no file, or one this version cannot read)."""
    try:
        rec = json.loads((Path(folder) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("stage"), str) else None


def eta_s(rec: dict, now: float | None = None) -> float | None:
    """Seconds left in the record's stage at the rate of the steps this process made so far
    (``(updated - stage_started) / (step - first_step)`` seconds a step), less the time since
    the record was written; None before the first step or without a total."""
    step, total, first = rec.get("step"), rec.get("total"), rec.get("first_step") or 0
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0 or step <= first:
        return None
    if step >= total:
        return 0.0
    per_step = (rec["updated"] - rec["stage_started"]) / (step - first)
    since = max(0.0, (time.time() if now is None else now) - rec["updated"])
    return max(0.0, per_step * (total - step) - since)


def duration(s: float | None) -> str:
    """``45s``, ``3m10s``, ``2h05m``; ``?`` for None."""
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def describe(rec: dict, now: float | None = None) -> str:
    """``training 12/24 ETA 3m10s``: the stage, step/total (or the step alone) and the ETA."""
    step, total = rec.get("step"), rec.get("total")
    where = rec.get("stage", "?")
    if isinstance(total, int) and total > 0:
        where += f" {step}/{total}"
        eta = eta_s(rec, now)
        if eta is not None:
            where += f" ETA {duration(eta)}"
    elif isinstance(step, int) and step > 0:
        where += f" {step}"
    return where


def short_name(job_id: str) -> str:
    """A job's id without its trailing hash: ``dpo-tiny-addition-s0-f967a7c093`` ->
    ``dpo-tiny-addition-s0``."""
    head, _, tail = job_id.rpartition("-")
    return head if head and len(tail) == 10 and all(c in "0123456789abcdef" for c in tail) else job_id


def steps_stage(name: str, total: int, inner=None):
    """Start stage ``name`` of ``total`` optimizer steps in the current job and return the
    training loop's ``on_step(step, record)`` callback: ``inner`` (the lock guard) first, then
    the step reported."""
    prog = current()
    prog.stage(name, total, unit="steps")

    def on_step(step: int, rec: dict | None = None) -> None:
        if inner is not None:
            inner(step, rec)
        prog.at(step)

    return on_step
