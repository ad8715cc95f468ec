"""Training checkpoints: write one so that a power loss never leaves a half one that looks
whole, find the complete ones, and resume from the newest intact one.

A checkpoint is a folder ``step-XXXXXXXX/`` holding safetensors weights, the optimizer state
(read back with ``torch.load(weights_only=True)``) and a small ``meta.json`` written last;
nothing is unpickled. A damaged checkpoint is skipped with a warning naming its file, never
fatal (:func:`resume`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

class CheckpointDamaged(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file and why."""


def save_checkpoint(root: Path, step: int, model, opt, model_state: dict | None = None,
                    opt_state: dict | None = None) -> Path:
    """``root/step-XXXXXXXX/``: weights (safetensors), optimizer state, then ``meta.json``
    last, so a checkpoint without meta.json is incomplete and ignored. Each file is fsynced
    before meta.json is written and the folder renamed into place (then the rename is fsynced
    too), so after a power loss a checkpoint with meta.json has all its bytes; weight files get
    the mode of every other result file (0666 less the umask). ``model_state``/``opt_state``:
    states gathered already (FSDP, ``sharded.gather``), written instead of the objects' own."""
    from safetensors.torch import save_file

    from ..results import atomic_write_json
    from ..results.atomic import fsync_dir, fsync_file
    from ..results.layout import share_like_other_files

    d = Path(root) / f"step-{step:08d}"
    tmp = Path(root) / f".step-{step:08d}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (model_state or model.state_dict()).items()}
    # tied weights share storage; safetensors refuses shared tensors, so clone them
    save_file({k: v.clone() for k, v in state.items()}, str(tmp / "model.safetensors"))
    torch.save(opt_state if opt_state is not None else opt.state_dict(), tmp / "optimizer.pt")
    share_like_other_files([tmp / "model.safetensors", tmp / "optimizer.pt"])
    for name in ("model.safetensors", "optimizer.pt"):
        fsync_file(tmp / name)
    atomic_write_json(tmp / "meta.json", {"step": step})
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)
    fsync_dir(Path(root))
    return d


def checkpoints_newest_first(root: Path) -> list[Path]:
    """The complete checkpoints (those with meta.json) under ``root``, newest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / "meta.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(root: Path) -> Path | None:
    done = checkpoints_newest_first(root)
    return done[0] if done else None


def load_checkpoint(d: Path, model, opt, device) -> int:
    """Resume ``model`` and ``opt`` from checkpoint ``d``; returns its step. Every file is
    read and checked before anything is applied, so a damaged checkpoint (truncated, garbled,
    an optimizer file that is not plain tensors) raises :class:`CheckpointDamaged` naming the
    file and leaves the model and optimizer as they were."""
    from safetensors.torch import load_file

    from ..results.layout import safetensors_problem

    d = Path(d)
    weights, optim, meta = d / "model.safetensors", d / "optimizer.pt", d / "meta.json"
    # safetensors and torch.load take "cpu" but not "cpu:0", the device accelerate gives each CPU
    # process of a distributed run; loading to "cpu" and copying into the model is the same
    where = "cpu" if torch.device(device).type == "cpu" else str(device)
    problem = safetensors_problem(weights)
    if problem:
        raise CheckpointDamaged(problem)
    try:
        step = int(json.loads(meta.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointDamaged(f"{meta}: unreadable ({type(e).__name__}: {e})") from e
    try:
        state = load_file(str(weights), device=where)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointDamaged(f"{weights}: cannot be loaded ({type(e).__name__}: {e})") from e
    own = model.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise CheckpointDamaged(f"{weights}: holds other tensors than this model's (a checkpoint of another run?)")
    opt_state = None
    if opt is not None:
        try:
            opt_state = torch.load(optim, map_location=where, weights_only=True)
        except Exception as e:  # noqa: BLE001 - zip, pickle and weights-only errors alike
            raise CheckpointDamaged(f"{optim}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    model.load_state_dict(state)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    return step


def resume(ckpt_root: Path, model, opt, device) -> tuple[int | None, list[str]]:
    """Load the newest intact checkpoint under ``ckpt_root``: (its step or None when there is
    none, and one line per damaged checkpoint skipped on the way, naming its file). A damaged
    one is never fatal: training resumes from an older one, or from the start."""
    damaged = []
    for d in checkpoints_newest_first(ckpt_root):
        try:
            step = load_checkpoint(d, model, opt, device)
        except CheckpointDamaged as e:
            damaged.append(str(e))
            print(f"warning: checkpoint {d.name} is damaged and skipped: {e}", file=sys.stderr, flush=True)
            continue
        return step, damaged
    return None, damaged
