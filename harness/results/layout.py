"""The results folder's layout on disk: listing the cells of a suite folder, rotating
training checkpoints, and measuring sizes."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from harness.results.atomic import CorruptFileError, read_yaml
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
        try:
            entry["lock"] = lock_info(d, stale_after)
        except Exception:  # noqa: BLE001 - a listing must not fail on one odd lock file
            entry["lock"] = None
        entry["error"] = "; ".join(errors) or None
        cells.append(entry)
    return cells
