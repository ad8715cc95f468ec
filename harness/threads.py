"""How many CPU threads a job's torch uses: the cores this process may run on, shared fairly.

A job's torch would otherwise take its default (about one thread per core of the machine,
whatever share of it the job was given), so two local workers on two cores run four busy
threads that fight for them: the quickstart measured 2.8x slower that way (issue 15). The rule:

* a user's explicit ``HARNESS_THREADS`` (or ``OMP_NUM_THREADS``) always wins;
* otherwise a job uses the CPUs it was granted, divided among the processes that share them:
  under SLURM the allocation's ``SLURM_CPUS_PER_TASK`` (else ``SLURM_CPUS_ON_NODE``); elsewhere
  the CPUs this process may run on (its affinity mask, further capped by a cgroup CPU quota,
  as in a container). The local launcher divides them among its workers (``per_worker``);
  the inline launcher's one process uses them all; under a distributed launch the processes of
  one node (``LOCAL_WORLD_SIZE``) share them.

Torch-free until :func:`apply` runs: the launcher imports it to size its workers.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

# The variable the local launcher sets in a worker's environment: how many threads that
# worker's jobs use (the user's own HARNESS_THREADS / OMP_NUM_THREADS come first).
WORKER_VAR = "HARNESS_WORKER_THREADS"


def _positive_int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def explicit() -> int | None:
    """The thread count the user set (``HARNESS_THREADS``, else ``OMP_NUM_THREADS``), or None."""
    for var in ("HARNESS_THREADS", "OMP_NUM_THREADS"):
        n = _positive_int(os.environ.get(var))
        if n is not None:
            return n
    return None


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded
    up, or None when there is no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def granted_cpus() -> int:
    """The CPUs this process was granted: SLURM's allocation under SLURM, else its affinity
    mask capped by a cgroup quota."""
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        n = _positive_int(os.environ.get(var))
        if n is not None:
            return n
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, quota) if quota else n)


def per_worker(workers: int) -> int:
    """Threads for each of ``workers`` local worker processes: the user's setting, else the
    granted CPUs divided among them (at least one each)."""
    return explicit() or max(1, granted_cpus() // max(1, workers))


def for_this_process() -> int:
    """Threads for a job in this process: the user's setting; else what the local launcher
    gave this worker; else the granted CPUs shared by the node's processes of a distributed
    launch (``LOCAL_WORLD_SIZE``, 1 otherwise)."""
    n = explicit() or _positive_int(os.environ.get(WORKER_VAR))
    if n is not None:
        return n
    local = _positive_int(os.environ.get("LOCAL_WORLD_SIZE")) or 1
    return max(1, granted_cpus() // local)


def worker_env(workers: int, env: dict | None = None) -> dict:
    """The environment of a local worker: ``env`` (default: this process's) with the worker's
    share of threads, also as ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` when the user set none,
    so OpenMP starts with that many threads instead of one per core."""
    out = dict(os.environ if env is None else env)
    n = per_worker(workers)
    out[WORKER_VAR] = str(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        out.setdefault(var, str(n))
    return out


def apply(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default :func:`for_this_process`); returns it."""
    import torch

    n = n or for_this_process()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
