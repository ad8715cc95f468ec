"""Run a module under real FSDP2 on CPU processes (gloo), for tests only.

    python -m accelerate.commands.launch --num_processes 2 --use_fsdp --fsdp_version 2 ... \\
        tests/fsdp_cpu.py -m harness.runner SUITE_DIR cell CELL_ID

accelerate 1.15 turns ``--use_fsdp`` on CPU processes into plain data parallelism
(``AcceleratorState`` sets ``DistributedType.FSDP`` only when the processes are of a multi-GPU
kind; on CPU it stays ``MULTI_CPU``), and the training core refuses that
(``harness/core/sharded.py``). torch's ``fully_shard`` itself runs on CPU tensors with the gloo
backend. This wrapper lifts accelerate's gate, nothing else: the state is marked multi-GPU
after accelerate has initialised gloo and picked the CPU device, so ``Accelerator.prepare``
takes its FSDP2 path (``fsdp2_prepare_model``) and every collective of the training core's
sharded path runs for real. It also prints, per process, what ``prepare`` returned, so a test
can check that the model was sharded (``FSDP... DTensor (Shard(dim=0),)``).
"""
from __future__ import annotations

import runpy
import sys

import accelerate
import accelerate.state as state
from accelerate.utils import DistributedType

_init = state.PartialState.__init__


def _multi_gpu_kind(self, cpu: bool = False, **kw):
    _init(self, cpu=cpu, **kw)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.MULTI_GPU
        state.PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


_prepare = accelerate.Accelerator.prepare


def _reporting_prepare(self, *args, **kw):
    out = _prepare(self, *args, **kw)
    for obj in (out if isinstance(out, (tuple, list)) else (out,)):
        if hasattr(obj, "named_parameters"):
            p = next(obj.parameters())
            print(f"fsdp-cpu: rank {self.process_index} {self.distributed_type} {type(obj).__name__} "
                  f"{type(p).__name__} {getattr(p, 'placements', None)}", flush=True)
    return out


state.PartialState.__init__ = _multi_gpu_kind
accelerate.Accelerator.prepare = _reporting_prepare

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: fsdp_cpu.py -m MODULE [ARGS...]")
    module = sys.argv[2]
    sys.argv = [module] + sys.argv[3:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
