"""A cell's (or SFT stage's) ``status`` file: ``pending | running | done | failed``, plus
whatever helps a reader (reason, step, last finite metrics, log paths)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from harness.results.atomic import CorruptFileError, _to_json_text, atomic_write_text, now_iso, read_json

STATES = ("pending", "running", "done", "failed")
STATUS_FILE = "status"


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

