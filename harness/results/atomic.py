"""Atomic file I/O for the results folder: whole-file writes that a crash never leaves half
done, strict whole-file reads, and append-only JSONL logs.

* ``atomic_write_bytes/text/json/yaml``: write a hidden temp file ``.<name>.<pid>.<random>.tmp``
  in the target's directory, flush, ``fsync``, ``os.replace`` onto the target, then ``fsync``
  the directory so the rename itself survives a power loss. A reader sees either the old
  complete file or the new complete file, never a mix. A failed write (disk full, a signal)
  removes its temp file before the error propagates. Non-finite floats (NaN, inf) are not
  valid JSON: ``atomic_write_json`` writes them as ``null`` and lists where they were under
  the top-level key ``"_nonfinite"`` (``{"eval.kl": "nan"}``), so a diverged run's metrics
  stay readable by any JSON parser and the reason stays visible.
* ``read_json``/``read_yaml``: whole-file reads that raise :class:`CorruptFileError` for a
  truncated or corrupt file instead of returning partial data.
* JSONL logs (``JsonlWriter``, ``read_jsonl``, ``truncate_jsonl``): one complete line per
  record, each written by a single ``write`` to a file opened ``O_APPEND``.  A crash mid-append
  can only leave an unterminated final line; readers drop it, writers cut it off before
  appending.  Corruption anywhere else is an error.  On resume, ``truncate_jsonl`` drops the
  records after the checkpoint so the log has no duplicate steps.

Everything relies only on operations that are atomic on NFS/Lustre as well as local file
systems: ``os.replace``/``rename`` within one directory and ``open(O_CREAT | O_EXCL)``.
Nothing here uses ``pickle``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.errors import UserError

NONFINITE_KEY = "_nonfinite"
_MISSING = object()


class CorruptFileError(UserError, ValueError):
    """A results file exists but cannot be parsed (truncated, or edited by hand)."""


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


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in ``directory`` durable (best effort)."""
    _fsync_dir(Path(directory))


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file written by someone else's code (safetensors, torch.save) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
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


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str | os.PathLike, default: Any = _MISSING) -> Any:
    """Parse the YAML file at ``path`` as ``yaml.safe_load`` does (with libyaml's C parser when
    PyYAML has it: the same safe constructors and resolver, about 10x faster, which a report
    over thousands of cells needs); same missing/corrupt rules as :func:`read_json`."""
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
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader
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

