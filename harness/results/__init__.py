"""The results folder: plain files written so that a crash, a SIGKILL, a full disk or a second
process never leaves a half-written or ambiguous result behind.

Layout (contract, see DESIGN.md "Results")::

    results/<suite>/<cell_id>/   config.yaml  metrics.json  train_log.jsonl  samples.jsonl
                                 env.json     status       lock   progress.json (while running)
    results/<suite>/_sft/<stage_id>/   the same status/config files, plus the checkpoint

Why plain files: SLURM clusters share results over NFS or Lustre, where one file per run with
an atomic rename is safe and SQLite's locking is not.  Everything here relies only on
operations that are atomic on those file systems (NFSv3+ on Linux): ``os.replace``/``rename``
within one directory, and ``open(O_CREAT | O_EXCL)``.

One module per job; this package re-exports their public names, so ``harness.results.X``
keeps working for every caller:

* :mod:`harness.results.atomic`: atomic writes, strict reads, JSONL logs;
* :mod:`harness.results.status`: the ``status`` file (``pending | running | done | failed``);
* :mod:`harness.results.locks`: ``CellLock``/``SuiteLock`` with a heartbeat;
* :mod:`harness.results.env`: ``env_info`` for ``env.json``;
* :mod:`harness.results.layout`: listing cells, checkpoint rotation, sizes;
* :mod:`harness.results.progress`: ``progress.json``, where a running job is (stage, step/total),
  for the launch monitor and ``harness status``.

Safety: nothing here uses ``pickle``, and result files are never unpickled; they are JSON,
YAML (``yaml.safe_load`` only) and JSONL.  Code elsewhere that reads checkpoints must call
``torch.load(..., weights_only=True)``, so a results folder copied from someone else cannot
run code.
"""
from __future__ import annotations

from harness.results.atomic import (
    NONFINITE_KEY,
    CorruptFileError,
    JsonlWriter,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    is_temp_name,
    now_iso,
    read_json,
    read_jsonl,
    read_yaml,
    truncate_jsonl,
)
from harness.results.env import env_info
from harness.results.layout import CONFIG_FILE, METRICS_FILE, dir_size_bytes, list_cells, rotate_checkpoints
from harness.results.locks import (
    DEFAULT_HEARTBEAT_EVERY,
    DEFAULT_STALE_AFTER,
    LOCK_FILE,
    CellLock,
    LockHeldError,
    SuiteLock,
    lock_info,
)
from harness.results.status import STATES, STATUS_FILE, read_status, write_status

__all__ = [
    "STATES", "CorruptFileError", "LockHeldError",
    "now_iso", "is_temp_name",
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_yaml",
    "read_json", "read_yaml",
    "JsonlWriter", "read_jsonl", "truncate_jsonl",
    "write_status", "read_status",
    "CellLock", "SuiteLock", "lock_info",
    "env_info", "rotate_checkpoints", "dir_size_bytes", "list_cells",
    "NONFINITE_KEY", "STATUS_FILE", "LOCK_FILE", "CONFIG_FILE", "METRICS_FILE",
    "DEFAULT_STALE_AFTER", "DEFAULT_HEARTBEAT_EVERY",
]
