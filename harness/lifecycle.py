"""What happens around a job, apart from its training: the config it runs with, the suite
folder's lock, whether its SFT stage lets it start, its lock while it works, and the record of
how it ended. Used by :mod:`harness.runner` (``materialize``, ``run_job``)."""
from __future__ import annotations

import contextlib
import errno
import shutil
import sys
import time
import traceback
import typing
from pathlib import Path
from typing import Any

from .errors import UserError

SUITE_LOCK_WAIT_S = 60.0
SUITE_LOCK_QUIET_S = 3.0
NO_SPACE = (28, 122)  # ENOSPC, EDQUOT
STAGE_DIRS = {"sft": "_sft", "onpolicy": "_onpolicy"}  # where each kind of stage keeps its folders
STAGE_NAMES = {"sft": "SFT stage", "onpolicy": "on-policy stage"}


def plan_jobs(plan, suite_dir: Path) -> list[tuple[str, str, Path, dict]]:
    """``(kind, id, folder, config)`` for every SFT stage, on-policy sample stage, then cell of
    ``plan``: the
    configs the jobs run with. They come from the suite (and the command line) only; a
    ``config.yaml`` found in a results folder is a record of them, never their source."""
    suite_dir = Path(suite_dir)
    items = [("sft", s.stage_id, suite_dir / "_sft" / s.stage_id, s.config) for s in plan.sft_stages]
    items += [("onpolicy", s.stage_id, suite_dir / "_onpolicy" / s.stage_id, s.config)
              for s in plan.onpolicy_stages]
    items += [("cell", c.cell_id, suite_dir / c.cell_id,
               {**c.config, "cell_id": c.cell_id, "sft_stage": c.sft_stage_id}) for c in plan.cells]
    return items




@contextlib.contextmanager
def suite_lock(suite_dir: Path) -> typing.Iterator[None]:
    """Hold the suite folder's lock for the block: taken at once, or after a wait that says
    who holds it; a user error (exit 2) naming the holder if it is not free within
    SUITE_LOCK_WAIT_S."""
    from .results import SuiteLock, lock_info
    from .results.locks import describe_holder

    lock = SuiteLock(suite_dir, timeout=0)
    # the section it guards takes milliseconds: a short wait is another run passing through
    if not lock.acquire(timeout=SUITE_LOCK_QUIET_S):
        holder = lock_info(suite_dir, filename="_suite.lock")
        print(f"waiting up to {SUITE_LOCK_WAIT_S:.0f} s for {lock.path}, held by {describe_holder(holder)} "
              f"(another `harness run` setting up this results folder)", file=sys.stderr, flush=True)
        if not lock.acquire(timeout=SUITE_LOCK_WAIT_S):
            holder = lock_info(suite_dir, filename="_suite.lock")
            raise UserError(f"{lock.path}: held by {describe_holder(holder)} for more than "
                            f"{SUITE_LOCK_WAIT_S:.0f} s. Another `harness run` is setting up this results "
                            f"folder: wait for it, or, if no such process is alive, delete {lock.path} and rerun.")
    try:
        yield
    finally:
        lock.release()


def write_config(folder: Path, cfg: dict) -> list[str]:
    """Write ``cfg`` as the folder's config.yaml unless it is there already; a note when a
    different one was there."""
    import yaml

    from .results import CorruptFileError, atomic_write_yaml, read_yaml
    from .results.atomic import _yamlable

    path = folder / "config.yaml"
    try:
        existing = read_yaml(path, default=None)
    except CorruptFileError:
        existing = "unreadable"
    want = yaml.safe_load(yaml.safe_dump(_yamlable(cfg)))
    if existing == want:
        return []
    atomic_write_yaml(path, cfg)
    if existing is None:
        return []
    keys = sorted(k for k in set(want) | set(existing if isinstance(existing, dict) else {})
                  if not isinstance(existing, dict) or existing.get(k) != want.get(k))
    return [f"{path}: differed from the suite's plan ({', '.join(keys) or 'unreadable'}); rewritten from "
            f"the suite (code and trust settings come only from the suite and the command line)"]


class StageDamaged(RuntimeError):
    """A cell's SFT stage is marked done but its model cannot be loaded."""


class LockGuard:
    """``on_step`` callback of a locked job: stops it (LockLostError) as soon as its lock was
    taken by another process, checking the lock file at most once a second (and at once when
    the heartbeat has already noticed)."""

    def __init__(self, lock, every_s: float = 1.0):
        self.lock, self.every_s, self._last = lock, every_s, 0.0

    def __call__(self, step: int | None = None, rec: dict | None = None) -> None:
        now = time.monotonic()
        if self.lock.lost or now - self._last >= self.every_s:
            self._last = now
            self.lock.ensure_held()


def record_failure(folder: Path, e: BaseException) -> typing.NoReturn:
    """Record why the job stopped, then raise: Ctrl-C/SIGTERM and a full disk leave the folder
    pending (resumable with a plain rerun), anything else marks it failed. A plugin's
    ``sys.exit()`` is a failure of the job, raised as RuntimeError so no launcher mistakes
    it for the end of the whole run."""
    from .results import atomic_write_text, write_status
    from .signals import interrupted_reason

    if isinstance(e, KeyboardInterrupt):
        write_status(folder, "pending", reason=interrupted_reason(e))
        raise e
    if out_of_space(e, folder):
        try:
            write_status(folder, "pending", reason="stopped: no space left on device")
        except OSError:
            pass  # the status cannot be written either; `running` without a lock reads the same
        raise OSError(errno.ENOSPC, "No space left on device", str(folder)) from e
    reason = f"{type(e).__name__}: {e}"
    if isinstance(e, SystemExit):
        reason = f"the job called sys.exit({e.code!r}) (a plugin or library exiting the process)"
    info: dict[str, Any] = {"reason": reason[:2000], "log": str(folder / "error.txt")}
    if hasattr(e, "step") and hasattr(e, "last_metrics"):  # core.train.NumericalFault
        info.update(step=e.step, last_metrics=e.last_metrics)
    atomic_write_text(folder / "error.txt", traceback.format_exc())
    write_status(folder, "failed", **info)
    if isinstance(e, SystemExit):
        raise RuntimeError(reason) from e
    raise e


def out_of_space(e: BaseException, folder: Path) -> bool:
    """Whether ``e`` (or an error it came from) means the disk or quota is full. Libraries
    that write files of their own say so in their own ways: an OSError with ENOSPC/EDQUOT,
    safetensors' "os error 28", torch's bare "file write failed"; so when an error mentions
    writing, a folder with (almost) no free space left decides."""
    chain, x = [], e
    while x is not None and len(chain) < 10:
        chain.append(x)
        x = x.__cause__ or x.__context__
    for x in chain:
        if isinstance(x, OSError) and x.errno in NO_SPACE:
            return True
        text = str(x)
        if any(m in text for m in ("No space left on device", "Disk quota exceeded", "os error 28",
                                   "os error 122")):
            return True
    if any("write" in str(x).lower() for x in chain):
        try:
            return shutil.disk_usage(folder).free < (1 << 20)
        except OSError:
            return False
    return False


def stage_problem(suite_dir: Path, sid: str | None, kind: str = "sft") -> str | None:
    """Why a job cannot start from its SFT (or on-policy, ``kind``) stage now (the stage is not
    done, or its result is damaged), or None. The cell is then left pending with this reason, not failed: a plain
    rerun trains the stage again and then the cell."""
    from .results import lock_info, read_status
    from .results.layout import done_problem

    if not sid:
        return None
    stage = suite_dir / STAGE_DIRS[kind] / sid
    what = STAGE_NAMES[kind]
    st = read_status(stage)
    state, reason = st["state"], st.get("reason")
    if state == "done":
        problem = done_problem(stage, kind)
        return None if problem is None else stage_damaged(stage, problem, what)
    if state == "failed":
        log = f"; see {stage / 'error.txt'}" if (stage / "error.txt").is_file() else ""
        return f"waiting for {what} {sid}, which failed ({reason}){log}"
    holder = lock_info(stage)
    if state == "running" and holder is not None and not holder.get("stale"):
        return f"waiting for {what} {sid}, which is still running"
    if state == "running" or reason:
        why = (reason or "its process ended without finishing it: killed, or its job was cancelled")
        why = why.removeprefix("interrupted").strip(" ()") or why
        return f"waiting for {what} {sid}, which was interrupted ({why})"
    return f"waiting for {what} {sid}, which has not run yet"


def stage_damaged(stage: Path, problem: str, what: str = "SFT stage") -> str:
    """Mark a done stage with a damaged model pending (under its lock, when free), so the next
    run trains it again; the reason for the waiting cell."""
    from .results import CellLock, write_status

    lock = CellLock(stage)
    if lock.acquire(timeout=0):
        try:
            write_status(stage, "pending", reason=f"was done, but {problem}: made again")
        finally:
            lock.release()
    return (f"waiting for {what} {stage.name}, whose result is damaged ({problem}); "
            f"the next run makes it again")
