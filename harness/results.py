"""The results folder: plain files written so that a crash, a SIGKILL or a second process never
leaves a half-written or ambiguous result behind.

Layout (contract, see DESIGN.md "Results")::

    results/<suite>/<cell_id>/   config.yaml  metrics.json  train_log.jsonl  samples.jsonl
                                 env.json     status       lock
    results/<suite>/_sft/<stage_id>/   the same status/config files, plus the checkpoint

Why plain files: SLURM clusters share results over NFS or Lustre, where one file per run with
an atomic rename is safe and SQLite's locking is not.  Everything here relies only on
operations that are atomic on those file systems (NFSv3+ on Linux): ``os.replace``/``rename``
within one directory, and ``open(O_CREAT | O_EXCL)``.

What this module provides:

* atomic writes (``atomic_write_bytes/text/json/yaml``): write a hidden temp file
  ``.<name>.<pid>.<random>.tmp`` in the target's directory, flush, ``fsync``, ``os.replace``
  onto the target, then ``fsync`` the directory so the rename itself survives a power loss.
  A reader sees either the old complete file or the new complete file, never a mix.
  Non-finite floats (NaN, inf) are not valid JSON: ``atomic_write_json`` writes them as
  ``null`` and lists where they were under the top-level key ``"_nonfinite"``
  (``{"eval.kl": "nan"}``), so a diverged run's metrics stay readable by any JSON parser and
  the reason stays visible.
* ``read_json``/``read_yaml``: whole-file reads that raise :class:`CorruptFileError` for a
  truncated or corrupt file instead of returning partial data.
* JSONL logs (``JsonlWriter``, ``read_jsonl``, ``truncate_jsonl``): one complete line per
  record, each written by a single ``write`` to a file opened ``O_APPEND``.  A crash mid-append
  can only leave an unterminated final line; readers drop it, writers cut it off before
  appending.  Corruption anywhere else is an error.  On resume, ``truncate_jsonl`` drops the
  records after the checkpoint so the log has no duplicate steps.
* status files (``write_status``, ``read_status``): ``pending | running | done | failed``.
* advisory locks (``CellLock``, ``SuiteLock``) with a heartbeat; see :class:`CellLock`.
* ``env_info``: versions, hardware, git commit, SLURM ids, for ``env.json``.
* disk hygiene: ``rotate_checkpoints``, ``dir_size_bytes``; and ``list_cells`` for the
  report and progress views.

Safety: nothing here uses ``pickle``, and result files are never unpickled; they are JSON,
YAML (``yaml.safe_load`` only) and JSONL.  Code elsewhere that reads checkpoints must call
``torch.load(..., weights_only=True)``, so a results folder copied from someone else cannot
run code.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _metadata
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.errors import UserError
from harness.paths import PROJECT_ROOT

__all__ = [
    "STATES", "CorruptFileError", "LockHeldError",
    "now_iso", "is_temp_name",
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_yaml",
    "read_json", "read_yaml",
    "JsonlWriter", "read_jsonl", "truncate_jsonl",
    "write_status", "read_status",
    "CellLock", "SuiteLock", "lock_info",
    "env_info", "rotate_checkpoints", "dir_size_bytes", "list_cells",
]

STATES = ("pending", "running", "done", "failed")
STATUS_FILE = "status"
LOCK_FILE = "lock"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
NONFINITE_KEY = "_nonfinite"
DEFAULT_STALE_AFTER = 600.0   # seconds without a heartbeat before a lock may be broken
DEFAULT_HEARTBEAT_EVERY = 30.0

_MISSING = object()
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CorruptFileError(UserError, ValueError):
    """A results file exists but cannot be parsed (truncated, or edited by hand)."""


class LockHeldError(RuntimeError):
    """Raised by ``with CellLock(...)`` when another live process holds the lock."""


def now_iso() -> str:
    """Current UTC time as ISO 8601 with an explicit offset (parseable by
    ``datetime.fromisoformat`` on every supported Python)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def is_temp_name(name: str) -> bool:
    """True for names this module (or a crash of it) leaves behind: hidden or ``*.tmp``."""
    return name.startswith(".") or name.endswith(".tmp")


# ---------------------------------------------------------------------------------------------
# atomic writes

def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable. Some file systems refuse fsync on a directory; the rename is
    # still atomic there, only its durability after a power loss is weaker.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (``os.write`` may write less than asked). A module-level function so
    tests can slow it down to kill a writer mid-write."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; creates missing parent directories.

    Readers (on this host or another one sharing the file system) see the old content or the
    new one, never part of it. A crash leaves at most a hidden ``.<name>.<pid>.<hex>.tmp``
    file next to the target, which every reader here ignores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """``atomic_write_bytes`` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def _jsonable(obj: Any, where: str, nonfinite: dict | None) -> Any:
    """Plain JSON types from ``obj``: numpy/torch scalars and arrays via ``item``/``tolist``,
    tuples as lists, paths as strings. Non-finite floats become ``None`` and are recorded in
    ``nonfinite`` (key path -> "nan" | "inf" | "-inf") unless ``nonfinite`` is None."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if nonfinite is None or math.isfinite(obj):
            return obj
        nonfinite[where or "."] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"cannot write a {type(k).__name__} key at {where or 'top level'}"
                                f" as JSON; use str keys")
            key = str(k)
            out[key] = _jsonable(v, f"{where}.{key}" if where else key, nonfinite)
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]", nonfinite) for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):   # numpy / torch scalar
        return _jsonable(obj.item(), where, nonfinite)
    if hasattr(obj, "tolist"):                                      # numpy array / tensor
        return _jsonable(obj.tolist(), where, nonfinite)
    if hasattr(obj, "item") and type(obj).__module__.startswith("numpy"):
        return _jsonable(obj.item(), where, nonfinite)
    raise TypeError(f"cannot write {type(obj).__name__} at {where or 'top level'} as JSON")


def _to_json_text(obj: Any, allow_nan: bool, indent: int | None) -> str:
    nonfinite: dict | None = None if allow_nan else {}
    plain = _jsonable(obj, "", nonfinite)
    if nonfinite:
        if isinstance(plain, dict):
            plain[NONFINITE_KEY] = {**(plain.get(NONFINITE_KEY) or {}), **nonfinite}
        # a top-level list has nowhere to record them; the values are still written as null
    return json.dumps(plain, sort_keys=True, indent=indent, allow_nan=allow_nan,
                      ensure_ascii=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, allow_nan: bool = False,
                      indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2) atomically.

    With ``allow_nan=False`` (default) NaN/inf are written as ``null`` and, for a dict, their
    key paths are listed under ``"_nonfinite"`` (e.g. ``{"loss": null, "_nonfinite":
    {"loss": "nan"}}``), because strict JSON parsers (jq, JavaScript, pandas' engine)
    reject the ``NaN`` token. ``allow_nan=True`` writes Python's non-standard ``NaN`` token.
    """
    return atomic_write_text(path, _to_json_text(obj, allow_nan, indent) + "\n")


def _yamlable(obj: Any) -> Any:
    # yaml.safe_dump refuses tuples, paths and numpy scalars; floats (NaN too) are fine in YAML.
    if isinstance(obj, dict):
        return {(_yamlable(k) if not isinstance(k, str) else k): _yamlable(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_yamlable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if not isinstance(obj, (str, bytes, bool, int, float, type(None))) and hasattr(obj, "item"):
        return obj.item()
    return obj


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` with ``yaml.safe_dump`` (keys in insertion order, block style) atomically."""
    text = yaml.safe_dump(_yamlable(obj), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)
    return atomic_write_text(path, text)


def read_json(path: str | os.PathLike, default: Any = _MISSING) -> Any:
    """Parse the whole JSON file at ``path``.

    Missing file: return ``default`` if given, else raise ``FileNotFoundError``.
    Unparseable (truncated, empty, edited): raise :class:`CorruptFileError` naming the file;
    partial data is never returned (a truncated object or array cannot parse).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if default is _MISSING:
            raise
        return default
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(
            f"{path}: not valid JSON ({e}); the file is truncated or corrupt. Delete it (or "
            f"its cell directory) and rerun the cell to regenerate it.") from None


def read_yaml(path: str | os.PathLike, default: Any = _MISSING) -> Any:
    """Parse the YAML file at ``path`` with ``yaml.safe_load``; same missing/corrupt rules as
    :func:`read_json`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if default is _MISSING:
            raise
        return default
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path}: not UTF-8 text ({e}); delete it and rerun.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CorruptFileError(f"{path}: not valid YAML ({e}); delete it and rerun.") from None


# ---------------------------------------------------------------------------------------------
# JSONL logs

def _split_jsonl(path: Path) -> tuple[list[tuple[int, bytes]], bytes | None, int]:
    """Terminated lines as (line number, bytes), the unterminated tail (or None), and the byte
    offset where the tail starts."""
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    body, tail = raw[:end], raw[end:]
    lines = [(i + 1, ln) for i, ln in enumerate(body.split(b"\n")[:-1])] if body else []
    return lines, (tail if tail else None), end


def _parse_line(path: Path, lineno: int, line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(
            f"{path}, line {lineno}: not valid JSON ({e}). Only an unfinished last line is "
            f"expected after a crash; this one is followed by more data, so the file was "
            f"damaged. Delete the file (or the lines from {lineno} on) and rerun the cell."
        ) from None


def _tail_record(tail: bytes | None) -> Any:
    """The record in an unterminated last line, or _MISSING when it is a crash leftover."""
    if tail is None or not tail.strip(b" \t\r\x00"):
        return _MISSING
    try:
        return json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _MISSING


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """All records of a JSONL file, in order.

    Blank lines are skipped. An unterminated last line that does not parse is what a crash
    mid-append leaves; it is dropped. One that parses (a file written by hand without a final
    newline) is kept. Any other unparseable line raises :class:`CorruptFileError` with its
    line number. A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    lines, tail, _ = _split_jsonl(path)
    out = [_parse_line(path, n, ln) for n, ln in lines if ln.strip()]
    rec = _tail_record(tail)
    if rec is not _MISSING:
        out.append(rec)
    return out


def truncate_jsonl(path: str | os.PathLike, keep_while: Callable[[Any], bool]) -> int:
    """Keep the leading records for which ``keep_while(record)`` is true, drop the first one
    for which it is false and everything after it; rewrite atomically. Returns the number kept.

    Used on resume: ``truncate_jsonl(log, lambda r: r["step"] <= ckpt_step)`` so the steps
    replayed after the checkpoint are not logged twice. Kept lines are copied byte for byte.
    Call it before opening a :class:`JsonlWriter` on the same file (the rewrite replaces the
    file, so a writer opened earlier would append to the old copy). Missing file: returns 0.
    """
    path = Path(path)
    if not path.exists():
        return 0
    lines, tail, _ = _split_jsonl(path)
    kept: list[bytes] = []
    stopped = False
    for n, ln in lines:
        if not ln.strip():
            continue
        if not keep_while(_parse_line(path, n, ln)):
            stopped = True
            break
        kept.append(ln)
    if not stopped:
        rec = _tail_record(tail)
        if rec is not _MISSING and keep_while(rec):
            kept.append(tail.rstrip(b"\r"))
    atomic_write_bytes(path, b"".join(ln + b"\n" for ln in kept))
    return len(kept)


class JsonlWriter:
    """Append-only JSONL log: ``write(record)`` adds one complete line.

    Each line goes out in one ``write`` on a file opened with ``O_APPEND``, so a crash leaves
    at most an unfinished last line, and concurrent appenders never interleave within a line
    (on local file systems; on NFS, keep one writer per file, which the cell lock ensures).
    On open, an unfinished last line left by an earlier crash is cut off (or terminated, if it
    is a complete record missing only its newline), so new records never glue onto it.
    ``fsync_every=N`` fsyncs after every N records (0: only on close); the OS page cache is
    flushed anyway, so a killed process loses nothing, only a machine crash can.
    Non-finite floats are written as null with an ``"_nonfinite"`` entry, like
    :func:`atomic_write_json`.
    """

    def __init__(self, path: str | os.PathLike, fsync_every: int = 0):
        if fsync_every < 0:
            raise ValueError(f"fsync_every must be >= 0, got {fsync_every}")
        self.path = Path(path)
        self.fsync_every = fsync_every
        self._since_sync = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _repair_tail(self) -> None:
        if not self.path.exists():
            return
        _, tail, tail_start = _split_jsonl(self.path)
        if tail is None:
            return
        if _tail_record(tail) is _MISSING:
            os.truncate(self.path, tail_start)
        else:
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def write(self, record: Any) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: JsonlWriter is closed")
        line = _to_json_text(record, allow_nan=False, indent=None) + "\n"
        _write_all(self._fd, line.encode("utf-8"))
        self._since_sync += 1
        if self.fsync_every and self._since_sync >= self.fsync_every:
            os.fsync(self._fd)
            self._since_sync = 0

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# status

def write_status(cell_dir: str | os.PathLike, state: str, **info: Any) -> dict:
    """Write ``<cell_dir>/status`` atomically and return what was written.

    ``state`` is one of ``pending | running | done | failed``. ``info`` holds whatever helps a
    reader: ``reason`` (why it failed), ``step``, ``last_metrics``, ``log`` (path of the job's
    log), ... ``host``, ``pid`` and ``updated`` (UTC ISO time) are filled in unless given.
    """
    if state not in STATES:
        raise ValueError(f"status state must be one of {', '.join(STATES)}; got {state!r}")
    status = {"host": socket.gethostname(), "pid": os.getpid(), "updated": now_iso(), **info,
              "state": state}
    text = _to_json_text(status, allow_nan=False, indent=2)
    atomic_write_text(Path(cell_dir) / STATUS_FILE, text + "\n")
    return json.loads(text)


def read_status(cell_dir: str | os.PathLike) -> dict:
    """The cell's status dict; ``{"state": "new"}`` when it has no status file yet."""
    status = read_json(Path(cell_dir) / STATUS_FILE, default=None)
    if status is None:
        return {"state": "new"}
    if not isinstance(status, dict) or status.get("state") not in STATES:
        raise CorruptFileError(f"{Path(cell_dir) / STATUS_FILE}: not a status record "
                               f"(expected a JSON object with state in {STATES}); delete it "
                               f"and rerun the cell.")
    return status


# ---------------------------------------------------------------------------------------------
# locks

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


def _stale_reason(info: dict | None, st: os.stat_result, stale_after: float) -> str | None:
    age = time.time() - st.st_mtime
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s (> {stale_after:.0f} s)"
    if info is not None and info.get("host") == socket.gethostname():
        pid = info.get("pid")
        if isinstance(pid, int) and not _pid_alive(pid):
            return f"process {pid} on this host is gone"
    return None


def lock_info(directory: str | os.PathLike, stale_after: float = DEFAULT_STALE_AFTER,
              filename: str = LOCK_FILE) -> dict | None:
    """Who holds the lock in ``directory``: the lock's ``host``, ``pid``, ``time``, ``token``
    plus ``age_s`` (since the last heartbeat) and ``stale`` (the reason, or None); None when
    unlocked."""
    got = _read_lock(Path(directory) / filename)
    if got is None:
        return None
    info, st = got
    return {**(info or {}), "age_s": round(time.time() - st.st_mtime, 3),
            "stale": _stale_reason(info, st, stale_after)}


class CellLock:
    """Advisory, cross-process and cross-host lock on a directory (a cell), safe on NFS/Lustre.

    Advisory: it only excludes other ``CellLock`` users; nothing stops a plain write.

    Acquire: create ``<dir>/lock`` with ``O_CREAT | O_EXCL`` (atomic on local file systems
    and NFSv3+), holding ``{host, pid, time, token}``. While held, a daemon thread refreshes
    the file's mtime every ``heartbeat_every`` seconds (``heartbeat()`` does it by hand).

    Stale: a lock whose heartbeat (mtime) is older than ``stale_after`` seconds, or, when it
    was taken on this host, whose pid no longer exists. A stale lock is broken like this: take
    a short-lived guard file ``lock.break`` (O_EXCL), re-read the lock and check it is still
    the same stale one (same token), rename it to a unique name and delete it, drop the guard,
    then try ``O_EXCL`` again. The guard and the token check mean two processes that both saw
    the same stale lock cannot both break it, and a fresh lock taken in between is never
    broken; the final ``O_EXCL`` means only one of them wins.

    Caveats: ``stale_after`` must be large compared with the clock skew between hosts (the
    mtime comes from the file server's clock, the age is measured with the local one) and
    with the longest stall of a live holder (a process frozen for longer loses its lock).
    A holder notices a lost lock at its next heartbeat (``lost`` becomes True).

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
                if _stale_reason(info, st, self.stale_after) and self._break(info, st):
                    if self._try_create():
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
        content = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "time": now_iso(), "token": token}).encode()
        try:
            _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
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
            if not _same_lock(seen, seen_st, info, st) or not _stale_reason(info, st,
                                                                          self.stale_after):
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
            holder = lock_info(self.directory, self.stale_after, self.path.name) or {}
            raise LockHeldError(
                f"{self.path}: held by host {holder.get('host')} pid {holder.get('pid')} "
                f"(last heartbeat {holder.get('age_s')} s ago). Another run is working on it; "
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


# ---------------------------------------------------------------------------------------------
# environment

_PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers",
             "huggingface-hub", "lm_eval", "alpaca_eval", "pandas", "numpy", "scipy",
             "submitit", "peft", "pyyaml", "prefopt-harness")
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME",
               "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_CLUSTER_NAME",
               "SLURM_PROCID", "SLURM_NTASKS")


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except Exception:
        return _safe(lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _torch_info() -> dict:
    info: dict = {"torch_version": None, "torch_cuda_version": None, "cuda_available": None,
                  "gpu_count": None, "gpu_names": None}
    try:
        import torch
    except Exception:
        return info
    info["torch_version"] = _safe(lambda: torch.__version__)
    info["torch_cuda_version"] = _safe(lambda: torch.version.cuda)
    info["cuda_available"] = _safe(torch.cuda.is_available)
    if info["cuda_available"]:
        info["gpu_count"] = _safe(torch.cuda.device_count)
        info["gpu_names"] = _safe(lambda: [torch.cuda.get_device_name(i)
                                           for i in range(torch.cuda.device_count())])
    else:
        info["gpu_count"], info["gpu_names"] = 0, []
    return info


def _git(root: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _project_root() -> Path:
    """The project's git work tree (``harness.paths.PROJECT_ROOT``; a function so tests can
    point it elsewhere)."""
    return PROJECT_ROOT


def _git_info() -> dict:
    """Commit and dirty flag of the repository holding ``harness/``. ``HARNESS_GIT_COMMIT``
    (and optionally ``HARNESS_GIT_DIRTY``) override it: a launcher copies a snapshot of the
    code to the cluster without ``.git`` and records them before copying."""
    env_commit = os.environ.get("HARNESS_GIT_COMMIT")
    if env_commit:
        dirty = os.environ.get("HARNESS_GIT_DIRTY")
        return {"git_commit": env_commit, "git_source": "env",
                "git_dirty": None if dirty is None else dirty.strip().lower() in
                ("1", "true", "yes"), "git_dirty_files": None}
    root = _project_root()
    head = _git(root, "rev-parse", "--verify", "HEAD")
    if head is None:
        return {"git_commit": None, "git_source": None, "git_dirty": None,
                "git_dirty_files": None}
    porcelain = _git(root, "status", "--porcelain")
    changed = None
    if porcelain is not None:
        # results written by the run itself must not make every later cell look dirty
        changed = [ln for ln in porcelain.splitlines()
                   if ln.strip() and not ln[3:].lstrip('"').startswith("results/")]
    return {"git_commit": head.strip(), "git_source": "git",
            "git_dirty": None if changed is None else bool(changed),
            "git_dirty_files": None if changed is None else [ln[3:] for ln in changed[:50]]}


def env_info() -> dict:
    """What ran a cell, for ``env.json``: Python, OS, host, CPU, RAM, torch/CUDA and GPUs,
    package versions (None when not installed), git commit and dirty flag, SLURM ids.
    Never raises; anything it cannot find is None. JSON-serializable."""
    info: dict = {
        "collected_at": now_iso(),
        "python_version": _safe(platform.python_version),
        "python_implementation": _safe(platform.python_implementation),
        "python_executable": sys.executable or None,
        "platform": _safe(platform.platform),
        "hostname": _safe(socket.gethostname),
        "cpu_count": _safe(os.cpu_count),
        "cpu_affinity": _safe(lambda: len(os.sched_getaffinity(0))),
        "cpu_model": _safe(_cpu_model),
        "ram_bytes": _safe(_ram_bytes),
    }
    info.update(_safe(_torch_info) or {"torch_version": None, "torch_cuda_version": None,
                                       "cuda_available": None, "gpu_count": None,
                                       "gpu_names": None})
    info["packages"] = {name: _safe(lambda n=name: _metadata.version(n)) for name in _PACKAGES}
    info.update(_safe(_git_info) or {"git_commit": None, "git_source": None,
                                     "git_dirty": None, "git_dirty_files": None})
    slurm = {k: os.environ[k] for k in _SLURM_VARS if k in os.environ}
    info["slurm"] = slurm or None
    return info


# ---------------------------------------------------------------------------------------------
# disk hygiene and listing

def rotate_checkpoints(ckpt_root: str | os.PathLike, keep: int) -> list[Path]:
    """Keep the ``keep`` newest ``step-XXXXXXXX`` directories (by step number) under
    ``ckpt_root`` and delete the others; returns the deleted paths.

    Each victim is first renamed to a hidden name, then deleted, so a half-deleted checkpoint
    never looks like a loadable one to a resume; hidden leftovers of an interrupted rotation
    are deleted too. Anything not named ``step-<digits>`` is left alone.
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise ValueError(f"keep must be an int >= 0, got {keep!r}")
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            steps.append((int(m.group(1)), p))
        elif p.name.startswith(".step-") and p.name.endswith(".deleting") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    steps.sort()
    victims = [p for _, p in steps[:max(0, len(steps) - keep)]]
    for p in victims:
        trash = root / f".{p.name}.{os.getpid()}.deleting"
        os.rename(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return victims


def dir_size_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files under ``path`` (symlinks not followed; files that
    vanish during the walk are skipped); 0 when it does not exist."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):
        return st.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def list_cells(results_suite_dir: str | os.PathLike,
               stale_after: float = DEFAULT_STALE_AFTER) -> list[dict]:
    """One dict per cell directory of ``results/<suite>/``, sorted by cell id.

    Skips names starting with ``_`` (``_sft`` and other internals) or ``.`` and temp files,
    and directories holding none of ``status``, ``config.yaml``, ``metrics.json``.
    Each entry: ``cell_id``, ``dir``, ``state`` (from ``status``, ``"new"`` without one),
    ``status`` (the whole record), ``config`` (parsed ``config.yaml`` or None),
    ``has_metrics``, ``lock`` (see :func:`lock_info`; a ``running`` cell whose lock is
    missing or stale was interrupted), and ``error`` (why a file could not be read, or None;
    such a cell gets ``state`` ``"unreadable"``). A missing directory gives ``[]``.
    """
    root = Path(results_suite_dir)
    if not root.is_dir():
        return []
    cells = []
    for d in sorted(root.iterdir(), key=lambda p: p.name):
        if d.name.startswith(("_", ".")) or d.name.endswith(".tmp") or not d.is_dir():
            continue
        if not any((d / f).exists() for f in (STATUS_FILE, CONFIG_FILE, METRICS_FILE)):
            continue
        entry: dict = {"cell_id": d.name, "dir": str(d), "error": None,
                       "has_metrics": (d / METRICS_FILE).is_file()}
        errors = []
        try:
            entry["status"] = read_status(d)
            entry["state"] = entry["status"]["state"]
        except (CorruptFileError, OSError) as e:
            entry["status"], entry["state"] = None, "unreadable"
            errors.append(str(e))
        try:
            entry["config"] = read_yaml(d / CONFIG_FILE, default=None)
        except (CorruptFileError, OSError) as e:
            entry["config"] = None
            errors.append(str(e))
        entry["lock"] = _safe(lambda: lock_info(d, stale_after))
        entry["error"] = "; ".join(errors) or None
        cells.append(entry)
    return cells
