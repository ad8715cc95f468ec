"""``env_info()``: what ran a cell (versions, hardware, git commit, SLURM ids), for ``env.json``."""
from __future__ import annotations

import importlib.metadata as _metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from harness.paths import PROJECT_ROOT
from harness.results.atomic import now_iso

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

