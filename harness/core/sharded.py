"""Fully sharded (FSDP2) training: what the training loop does differently when accelerate shards.

A cell runs sharded when its job is started as ``accelerate launch --use_fsdp --fsdp_version 2
...`` (a SLURM profile's ``accelerate_args``, slurm/README.md). ``acc.prepare`` then calls
torch's ``fully_shard`` on the model in place: every parameter becomes a ``DTensor`` holding one
shard per process, gathered layer by layer for each forward and backward. Three things in
the loop need the whole model instead of a shard, and each is a collective that every process
must enter:

* **checkpoints** (``gather``): the full model and optimizer states, gathered to the main
  process's CPU and written in the same format as an unsharded run's (a plain
  ``model.safetensors`` and an ``optimizer.pt`` keyed by parameter index), so a checkpoint
  resumes under any number of processes, sharded or not;
* **resume** (``load_full``): a checkpoint is loaded into the sharded model and optimizer
  after ``prepare`` (loading it before, as an unsharded run does, would leave the optimizer's
  moments keyed to parameters that ``prepare`` replaced, and round fp32 master weights to the
  checkpoint's dtype);
* **the trained model** (``unsharded``): the main process gets a plain model with the gathered
  weights, which evaluation and ``save_model`` use like any other policy.

accelerate 1.15 shards only across accelerators: on CPU processes it quietly trains
data-parallel replicas instead (``DistributedType.MULTI_CPU``), each holding the whole model.
``check`` turns that into an error rather than a run that uses more memory than the user
planned for. (tests/fsdp_cpu.py lifts that gate in tests only, so that this module's
collectives run for real on CPU with gloo.)
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..errors import UserError


def requested() -> bool:
    """The process was started by ``accelerate launch --use_fsdp`` (or an FSDP config file)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def active(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def check(acc) -> None:
    """Refuse FSDP that accelerate did not set up as the core expects: sharding asked for and
    full replicas delivered (CPU processes), or FSDP version 1 (which wraps the model in another
    module and flattens its parameters; the core follows FSDP2's in-place sharding)."""
    if active(acc):
        if not getattr(acc, "is_fsdp2", False):
            raise UserError("FSDP version 1 is not supported by the training core: add --fsdp_version 2 to the "
                            "accelerate_args of the SLURM profile (slurm/README.md, 'Sharded cells')")
        return
    if requested():
        raise UserError(
            f"accelerate was launched with --use_fsdp, but it set up {acc.distributed_type} on {acc.device}: "
            f"accelerate shards only across GPUs (or other accelerators), and on CPU processes it trains "
            f"full replicas instead, each holding the whole model. Run FSDP cells on GPU nodes, or remove "
            f"--use_fsdp from the accelerate_args of the SLURM profile to train data-parallel on CPUs.")


def skeleton(model):
    """A copy of ``model`` whose parameters are on the meta device (no memory) and whose
    buffers are real: taken before ``prepare`` shards the model in place, it is what
    ``unsharded`` fills with the trained weights. Tied parameters stay tied."""
    memo: dict = {}
    for p in model.parameters():
        if id(p) not in memo:
            memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def _materialize(model) -> None:
    """Give every meta parameter real (uninitialised) CPU storage, one tensor per shared parameter."""
    made: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in made:
                made[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="cpu"), requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _names(model) -> list[str]:
    """Fully qualified names of the trainable parameters, in the order the optimizer holds them
    (``make_optimizer``: ``model.parameters()`` order; ``fully_shard`` keeps names and order)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _indexed(osd: dict, names: list[str]) -> dict:
    """An optimizer state keyed by parameter name -> the plain ``optimizer.state_dict()`` layout."""
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


def _named(osd: dict, names: list[str]) -> dict:
    """The inverse of ``_indexed``."""
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]]}


def gather(acc, model, opt=None) -> tuple[dict | None, dict | None]:
    """Full CPU state dicts of the sharded model (and optimizer, in the plain indexed layout) on
    the main process; ``(None, None)`` elsewhere. A collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    msd = get_model_state_dict(model, options=_options(cpu_offload=True))
    osd = get_optimizer_state_dict(model, opt, options=_options(cpu_offload=True)) if opt is not None else None
    if not acc.is_main_process:
        return None, None
    return msd, (None if osd is None else _indexed(osd, _names(model)))


def load_full(model, opt, checkpoint: Path, device) -> None:
    """Load a checkpoint (``save_checkpoint``'s layout) into the sharded model and optimizer.
    Every process reads the files and keeps its own shard. A collective."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, load_file(str(Path(checkpoint) / "model.safetensors")), options=_options())
    if opt is not None:
        osd = torch.load(Path(checkpoint) / "optimizer.pt", map_location="cpu", weights_only=True)
        set_optimizer_state_dict(model, opt, _named(osd, _names(model)), options=_options())


def unsharded(acc, skel, state: dict | None, device):
    """The trained model as a plain module on the main process (``skel`` filled with the
    gathered ``state``, moved to ``device``); None on the other processes."""
    if not acc.is_main_process:
        return None
    _materialize(skel)
    if hasattr(skel, "tie_weights"):
        skel.tie_weights()
    missing, unexpected = skel.load_state_dict(state, strict=False)
    tied = {n for n, _ in skel.named_parameters(remove_duplicate=False)} - {n for n, _ in skel.named_parameters()}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"the gathered FSDP state does not fit the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    return skel.to(device)
