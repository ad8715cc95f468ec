"""Advisory locks on a cell's (or a suite's) folder, safe across processes and hosts on
NFS/Lustre, with a heartbeat; see :class:`CellLock`."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from harness.results import atomic as _atomic
from harness.results.atomic import now_iso

LOCK_FILE = "lock"
DEFAULT_STALE_AFTER = 600.0   # seconds without a heartbeat before a lock may be broken
DEFAULT_HEARTBEAT_EVERY = 30.0
UNREADABLE_GRACE_S = 30.0     # an empty/garbled lock older than this was left by a crash


class LockHeldError(RuntimeError):
    """Raised by ``with CellLock(...)`` when another live process holds the lock."""


class LockLostError(RuntimeError):
    """The lock this process held was broken as stale and taken by another process (this one
    was paused or cut off for longer than ``stale_after``): it must stop writing there."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def boot_id() -> str | None:
    """This boot of this host (Linux); a lock taken before a reboot names a dead process."""
    return _read_text("/proc/sys/kernel/random/boot_id")


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), so a
    lock can tell its holder from a later process that got the same pid; None off Linux."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def slurm_job() -> tuple[str | None, int]:
    """(this process's SLURM job, attempt): ``<array job>_<task>`` for an array task, else the
    job id; the attempt is ``SLURM_RESTART_COUNT`` (0 before any requeue). A requeued job keeps
    its id and counts up its attempt."""
    env = os.environ
    job = env.get("SLURM_JOB_ID")
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    try:
        attempt = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        attempt = 0
    return job, attempt


def _read_lock(path: Path) -> tuple[dict | None, os.stat_result] | None:
    """(parsed lock content or None if unreadable, stat), or None when there is no lock."""
    try:
        st = os.stat(path)
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw.decode("utf-8"))
        if not isinstance(info, dict):
            info = None
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = None     # being written right now, or its writer crashed in between
    return info, st


def _stale_reason(info: dict | None, st: os.stat_result, stale_after: float,
                  own_job: tuple[str | None, int] | None = None) -> str | None:
    """Why the lock ``info`` (stat ``st``) no longer protects a live holder, or None.

    ``own_job``: the (SLURM job, attempt) of the process asking; a lock taken by an earlier
    attempt of the same job (a requeue, possibly on another node) is its own dead
    predecessor's."""
    age = time.time() - st.st_mtime
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s (> {stale_after:.0f} s)"
    if info is None:
        # A holder writes its lock in one write right after creating it; an empty or garbled
        # lock this old was left by a writer that crashed (or ran out of disk) in between.
        if age > min(UNREADABLE_GRACE_S, stale_after):
            return f"unreadable lock file, {age:.0f} s old (its writer died while creating it)"
        return None
    if own_job is not None and own_job[0] and info.get("job") == own_job[0]:
        before = info.get("attempt")
        if isinstance(before, int) and before < own_job[1]:
            return (f"taken by attempt {before} of this SLURM job {own_job[0]} (on {info.get('host')}), "
                    f"which was requeued; this is attempt {own_job[1]}")
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        if info.get("boot") and boot_id() and info["boot"] != boot_id():
            return "this host has rebooted since the lock was taken"
        if isinstance(pid, int) and not _pid_alive(pid):
            return f"process {pid} on this host is gone"
        start = info.get("start")
        if isinstance(pid, int) and isinstance(start, int):
            now = process_start(pid)
            if now is not None and now != start:
                return f"process {pid} on this host is gone (the pid now belongs to another process)"
    return None


def describe_holder(info: dict | None) -> str:
    """The holder of a lock as :func:`lock_info` returns it, in words for a message."""
    if not info:
        return "nobody"
    age = info.get("age_s")
    beat = f", last heartbeat {age:.0f} s ago" if isinstance(age, (int, float)) else ""
    if not info.get("token"):
        return f"an unreadable lock file ({info.get('path', 'lock')}{beat})"
    job = f", SLURM job {info['job']}" if info.get("job") else ""
    return f"host {info.get('host')} pid {info.get('pid')}{job}{beat}"


def lock_info(directory: str | os.PathLike, stale_after: float = DEFAULT_STALE_AFTER,
              filename: str = LOCK_FILE) -> dict | None:
    """Who holds the lock in ``directory``: the lock's ``host``, ``pid``, ``time``, ``token``
    (and ``job``, ``attempt`` under SLURM) plus ``path``, ``age_s`` (since the last heartbeat)
    and ``stale`` (the reason, or None); None when unlocked."""
    path = Path(directory) / filename
    got = _read_lock(path)
    if got is None:
        return None
    info, st = got
    return {**(info or {}), "path": str(path), "age_s": round(time.time() - st.st_mtime, 3),
            "stale": _stale_reason(info, st, stale_after)}


class CellLock:
    """Advisory, cross-process and cross-host lock on a directory (a cell), safe on NFS/Lustre.

    Advisory: it only excludes other ``CellLock`` users; nothing stops a plain write.

    Acquire: create ``<dir>/lock`` with ``O_CREAT | O_EXCL`` (atomic on local file systems
    and NFSv3+), holding ``{host, pid, time, token}`` plus what tells a live holder from a
    dead one: ``boot`` (the host's boot id), ``start`` (the process's start time), and under
    SLURM ``job`` and ``attempt``. If writing that content fails (disk full), the lock file is
    removed before the error propagates: a failed acquire never leaves a lock behind. While
    held, a daemon thread refreshes the file's mtime every ``heartbeat_every`` seconds
    (``heartbeat()`` does it by hand).

    Stale: a lock whose heartbeat (mtime) is older than ``stale_after`` seconds; one taken on
    this host whose process is gone (pid dead, pid reused by another process, or the host
    rebooted since); an empty or garbled lock older than ``UNREADABLE_GRACE_S``; and, for a
    requeued SLURM job, a lock taken by an earlier attempt of the same job (same job id, lower
    attempt), wherever it ran. A stale lock is broken like this: take
    a short-lived guard file ``lock.break`` (O_EXCL), re-read the lock and check it is still
    the same stale one (same token), rename it to a unique name and delete it, drop the guard,
    then try ``O_EXCL`` again. The guard and the token check mean two processes that both saw
    the same stale lock cannot both break it, and a fresh lock taken in between is never
    broken; the final ``O_EXCL`` means only one of them wins.

    Caveats: ``stale_after`` must be large compared with the clock skew between hosts (the
    mtime comes from the file server's clock, the age is measured with the local one) and
    with the longest stall of a live holder (a process frozen for longer loses its lock).
    A holder notices a lost lock at its next heartbeat (``lost`` becomes True) or at once with
    ``verify()``; ``ensure_held()`` raises :class:`LockLostError` naming the new holder, and a
    holder calls it before every write that must be its own (checkpoints, results, status).

    ``release()`` removes the lock only if it still holds our token; the lock file is first
    renamed to a unique name, checked, and put back if it turns out to be someone else's.
    A forked child does not own its parent's lock: release there is a no-op.
    """

    def __init__(self, directory: str | os.PathLike, *, stale_after: float = DEFAULT_STALE_AFTER,
                 heartbeat_every: float = DEFAULT_HEARTBEAT_EVERY, timeout: float | None = 0,
                 poll_interval: float = 0.5, filename: str = LOCK_FILE):
        if stale_after <= 0 or heartbeat_every <= 0:
            raise ValueError("stale_after and heartbeat_every must be > 0")
        if heartbeat_every >= stale_after:
            raise ValueError(f"heartbeat_every ({heartbeat_every} s) must be well below "
                             f"stale_after ({stale_after} s), or a live lock looks stale")
        self.directory = Path(directory)
        self.path = self.directory / filename
        self.guard_path = self.directory / (filename + ".break")
        self.stale_after = float(stale_after)
        self.heartbeat_every = float(heartbeat_every)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.token: str | None = None
        self.lost = False
        self.broke: str | None = None   # why the stale lock we replaced was stale, if any
        self._own_job = slurm_job()
        self._owner_pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.token is not None and self._owner_pid == os.getpid() and not self.lost

    # -- acquiring ---------------------------------------------------------------------------
    def acquire(self, timeout: float | None = 0) -> bool:
        """Try to take the lock; wait up to ``timeout`` seconds (None: forever, 0: one try).
        Returns whether it was taken."""
        if self.held:
            raise RuntimeError(f"{self.path}: already held by this CellLock (not reentrant)")
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try_create():
                return True
            got = _read_lock(self.path)
            if got is not None:
                info, st = got
                reason = _stale_reason(info, st, self.stale_after, self._own_job)
                if reason and self._break(info, st):
                    if self._try_create():
                        self.broke = reason
                        return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_interval if deadline is None
                       else max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    def _try_create(self) -> bool:
        token = uuid.uuid4().hex
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        job, attempt = self._own_job
        record = {"host": socket.gethostname(), "pid": os.getpid(), "time": now_iso(),
                  "token": token, "boot": boot_id(), "start": process_start(os.getpid())}
        if job:
            record.update(job=job, attempt=attempt)
        try:
            try:
                _atomic._write_all(fd, json.dumps(record).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            # disk full, quota, a signal: an empty or partial lock would block the cell for
            # everyone until it looks stale; it is ours, so it goes
            _unlink_quiet(self.path)
            raise
        self.broke = None
        self.token, self._owner_pid, self.lost = token, os.getpid(), False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat:{self.path}",
                                        daemon=True)
        self._thread.start()
        return True

    def _break(self, seen: dict | None, seen_st: os.stat_result) -> bool:
        """Remove the stale lock we looked at, unless it changed meanwhile. True if removed
        (or already gone)."""
        if not self._take_guard():
            return False
        try:
            got = _read_lock(self.path)
            if got is None:
                return True
            info, st = got
            if not _same_lock(seen, seen_st, info, st) or not _stale_reason(
                    info, st, self.stale_after, self._own_job):
                return False
            return _remove_if_same(self.path, info, st)
        finally:
            _unlink_quiet(self.guard_path)

    def _take_guard(self) -> bool:
        for _ in range(2):
            try:
                os.close(os.open(self.guard_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return True
            except FileExistsError:
                pass
            # A breaker needs milliseconds; a guard this old belongs to a crashed breaker.
            got = _read_lock(self.guard_path)
            if got is None:
                continue
            _, st = got
            if time.time() - st.st_mtime < min(60.0, self.stale_after):
                return False
            _remove_if_same(self.guard_path, None, st)
        return False

    # -- holding -------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                if not self.heartbeat():
                    return
            except OSError:
                continue     # a file-server hiccup; the next beat retries

    def heartbeat(self) -> bool:
        """Refresh the lock's mtime. Returns False (and sets ``lost``) if the lock file is gone
        or holds another token, i.e. it was broken as stale."""
        if self.token is None or self._owner_pid != os.getpid():
            return False
        got = _read_lock(self.path)
        if got is None or (got[0] or {}).get("token") != self.token:
            self.lost = True
            return False
        os.utime(self.path, None)
        return True

    def verify(self) -> bool:
        """Re-read the lock file now: True if it still holds our token; otherwise set ``lost``
        (it was broken as stale and maybe taken by another process) and return False."""
        if self.token is None or self._owner_pid != os.getpid() or self.lost:
            return False
        got = _read_lock(self.path)
        if got is None or (got[0] or {}).get("token") != self.token:
            self.lost = True
            return False
        return True

    def ensure_held(self) -> None:
        """Raise :class:`LockLostError`, naming who holds the lock now, unless we still do."""
        if self.verify():
            return
        holder = lock_info(self.directory, self.stale_after, self.path.name)
        raise LockLostError(
            f"{self.path}: this process lost its lock (it was paused or cut off for longer than "
            f"{self.stale_after:.0f} s, so the lock was broken as stale); now held by "
            f"{describe_holder(holder)}. Stopped without writing anything more there.")

    def release(self) -> bool:
        """Stop the heartbeat and remove the lock if it is still ours. Returns whether a lock
        of ours was removed."""
        if self.token is None or self._owner_pid != os.getpid():
            return False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        token, self.token, self._thread = self.token, None, None
        got = _read_lock(self.path)
        if got is None or (got[0] or {}).get("token") != token:
            self.lost = True
            return False
        return _remove_if_same(self.path, got[0], got[1])

    def __enter__(self) -> "CellLock":
        if not self.acquire(self.timeout):
            holder = lock_info(self.directory, self.stale_after, self.path.name)
            raise LockHeldError(
                f"{self.path}: held by {describe_holder(holder)}. Another run is working on it; "
                f"if you are sure it is dead, delete the lock file.")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"CellLock({str(self.directory)!r}, held={self.held})"


class SuiteLock(CellLock):
    """The same lock on a suite's results directory (file ``_suite.lock``), for short critical
    sections such as materializing the plan; ``with SuiteLock(d):`` waits up to 120 s."""

    def __init__(self, results_dir: str | os.PathLike, *, timeout: float | None = 120.0,
                 poll_interval: float = 0.2, **kw: Any):
        super().__init__(results_dir, timeout=timeout, poll_interval=poll_interval,
                         filename="_suite.lock", **kw)


def _same_lock(a: dict | None, a_st: os.stat_result, b: dict | None, b_st: os.stat_result) -> bool:
    if a is not None and b is not None:
        return a.get("token") == b.get("token")
    return a is None and b is None and (a_st.st_ino, a_st.st_mtime_ns) == (b_st.st_ino,
                                                                          b_st.st_mtime_ns)


def _remove_if_same(path: Path, info: dict | None, st: os.stat_result) -> bool:
    """Rename ``path`` away, check it is the file we meant (same token, or same inode and
    mtime when unreadable), delete it; put it back if it is not. True if it is gone."""
    grave = path.parent / f".{path.name}.removed.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return True
    got = _read_lock(grave)
    if got is not None and not _same_lock(info, st, got[0], got[1]):
        try:
            os.link(grave, path)   # atomic, and fails rather than overwrite a newer lock
        except OSError:
            pass
        _unlink_quiet(grave)
        return False
    _unlink_quiet(grave)
    return True


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

