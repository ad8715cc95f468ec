"""The results folder's layout on disk: listing the cells of a suite folder and the plan they
belong to, rotating training checkpoints, checking saved weights are intact, sizes, modes and
crash leftovers."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from harness.results.atomic import CorruptFileError, atomic_write_json, read_json, read_yaml
from harness.results.locks import DEFAULT_STALE_AFTER, lock_info
from harness.results.status import STATUS_FILE, read_status

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


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


def _cell_dirs(results_suite_dir: str | os.PathLike) -> Iterator[Path]:
    """The cell directories of ``results/<suite>/`` in cell-id order (the folders that
    :func:`list_cells` lists), without reading their files."""
    root = Path(results_suite_dir)
    if not root.is_dir():
        return
    for d in sorted(root.iterdir(), key=lambda p: p.name):
        if d.name.startswith(("_", ".")) or d.name.endswith(".tmp") or not d.is_dir():
            continue
        if any((d / f).exists() for f in (STATUS_FILE, CONFIG_FILE, METRICS_FILE)):
            yield d


def has_cells(results_suite_dir: str | os.PathLike) -> bool:
    """Whether ``results/<suite>/`` holds at least one cell: ``bool(list_cells(...))`` without
    reading every cell's files (it stops at the first)."""
    return next(_cell_dirs(results_suite_dir), None) is not None


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
    cells = []
    for d in _cell_dirs(results_suite_dir):
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
        try:
            entry["lock"] = lock_info(d, stale_after)
        except Exception:  # noqa: BLE001 - a listing must not fail on one odd lock file
            entry["lock"] = None
        entry["error"] = "; ".join(errors) or None
        cells.append(entry)
    return cells


# ----------------------------------------------------------------------------- the plan
PLAN_FILE = "plan.json"


def write_plan(suite_dir: str | os.PathLike, suite: str, cells: list[str], sft_stages: list[str]) -> Path:
    """Record which cell and SFT-stage folders make up the suite as it was last run into this
    folder (``plan.json``). The report aggregates exactly these cells; other folders (from an
    earlier version of the suite) are listed apart, never mixed in."""
    return atomic_write_json(Path(suite_dir) / PLAN_FILE,
                             {"suite": suite, "cells": list(cells), "sft_stages": list(sft_stages)})


def read_plan(suite_dir: str | os.PathLike) -> dict | None:
    """The recorded plan, or None for a folder written before plans were recorded (or whose
    plan file is unreadable: then every cell folder counts, as before)."""
    try:
        plan = read_json(Path(suite_dir) / PLAN_FILE, default=None)
    except (CorruptFileError, OSError):
        return None
    if not isinstance(plan, dict) or not isinstance(plan.get("cells"), list):
        return None
    return plan


# ----------------------------------------------------------------------------- integrity
def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why the safetensors file at ``path`` is not intact (missing, truncated, garbled
    header), or None. Reads only the header: an 8-byte little-endian length, a JSON object
    whose tensors' ``data_offsets`` must end exactly where the file ends. This catches a file
    cut short by a crash or a full disk without loading it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path}: truncated ({size} bytes, not even a header)"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return f"{path}: truncated or not a safetensors file (header of {n} bytes, file {size} bytes)"
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        return f"{path}: missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path}: unreadable safetensors header ({e})"
    if not isinstance(header, dict):
        return f"{path}: not a safetensors file (header is not an object)"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"{path}: truncated ({size} bytes, its header describes {expected})"
    return None


def saved_model_problem(model_dir: str | os.PathLike) -> str | None:
    """Why a model folder written by ``save_pretrained`` (an SFT stage's ``model/``) cannot be
    loaded as it is, or None: its config.json must parse and every weights file it needs
    (one ``model.safetensors``, or the shards its index lists) must be intact."""
    d = Path(model_dir)
    try:
        read_json(d / "config.json")
    except FileNotFoundError:
        return f"{d / 'config.json'}: missing"
    except (CorruptFileError, OSError) as e:
        return str(e).split(";")[0]
    index = d / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set((read_json(index).get("weight_map") or {}).values()))
        except (CorruptFileError, OSError, AttributeError) as e:
            return f"{index}: unreadable ({e})"
    else:
        files = ["model.safetensors"]
    for name in files:
        problem = safetensors_problem(d / name)
        if problem:
            return problem
    return None


def file_mode() -> int:
    """The mode a new file gets here (0o666 less the umask), read without changing the umask
    (which is process-wide and racy to flip) where /proc tells it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


def share_like_other_files(paths) -> None:
    """Give weight files the mode every other result file has. safetensors writes its files
    0600 whatever the umask, which locks a group-shared results folder's weights away from the
    group; this sets them to 0666 less the umask, as ``open`` would."""
    mode = file_mode()
    for p in paths:
        try:
            os.chmod(p, mode)
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------- leftovers
# ``.<name>.<pid>.<8 hex>.tmp``: the temp file of an atomic write (harness.results.atomic)
TEMP_LEFTOVER = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def remove_temp_leftovers(folder: str | os.PathLike, *, recursive: bool = False,
                          min_age_s: float | None = None) -> list[Path]:
    """Delete the temp files of atomic writes whose writer was killed mid-write (SIGKILL, OOM,
    a node failure); returns them. Readers never mistake them for results; this keeps folders
    clean. ``min_age_s=None``: the caller holds the folder's lock (no other live process
    writes there), so every leftover of another pid goes. Otherwise (shared folders such as
    ``_cache/`` and ``report/``, where another process may be writing right now) only a
    leftover untouched for ``min_age_s`` seconds whose pid is not alive here, or untouched for
    ten times that, goes: a live writer's temp file is written continuously."""
    import time

    from harness.results.locks import _pid_alive

    root = Path(folder)
    if not root.is_dir():
        return []
    found = root.rglob(".*.tmp") if recursive else root.iterdir()
    gone = []
    for p in found:
        m = TEMP_LEFTOVER.match(p.name)
        if not m or not p.is_file() or int(m.group(1)) == os.getpid():
            continue
        if min_age_s is not None:
            try:
                age = time.time() - p.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < min_age_s or (age < 10 * min_age_s and _pid_alive(int(m.group(1)))):
                continue
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def done_problem(folder: str | os.PathLike, kind: str = "cell") -> str | None:
    """Why a folder whose status says ``done`` does not hold a usable result, or None.

    A cell needs a ``metrics.json`` that parses as a JSON object; an SFT stage (``kind``
    "sft") a readable ``stage.json`` and an intact ``model/`` (see
    :func:`saved_model_problem`); an on-policy sample stage a readable ``stage.json`` and its
    ``samples.jsonl``. Deleting such a file and rerunning is how a user asks for the
    result to be made again, so a missing one is a reason to rerun, not an error."""
    folder = Path(folder)
    name = "stage.json" if kind in ("sft", "onpolicy") else METRICS_FILE
    try:
        data = read_json(folder / name)
    except FileNotFoundError:
        return f"{folder / name}: missing"
    except (CorruptFileError, OSError) as e:
        return str(e).split(";")[0]
    if not isinstance(data, dict):
        return f"{folder / name}: not a JSON object"
    if kind == "sft":
        return saved_model_problem(folder / "model")
    if kind == "onpolicy" and not (folder / "samples.jsonl").is_file():
        return f"{folder / 'samples.jsonl'}: missing"
    return None
