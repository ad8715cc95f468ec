"""The worker of tests/test_distributed.py's FSDP resume test, one per process:

    accelerate launch --num_processes 2 --use_fsdp --fsdp_version 2 ... \\
        tests/fsdp_cpu.py -m fsdp_worker OUT_DIR

Trains ``core_helpers.run_dpo`` (6 steps, checkpoint every 3) twice under FSDP: once
uninterrupted (``OUT_DIR/a``), once stopped after step 4 and started again (``OUT_DIR/b``,
which resumes from the step-3 checkpoint). The main process writes the trained (gathered)
weights of both runs to ``OUT_DIR/{a,b}.safetensors`` and what it saw to ``OUT_DIR/result.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from core_helpers import Stopped, run_dpo


def main(out: Path) -> None:
    torch.set_num_threads(1)
    _, a, _ = run_dpo(out / "a", steps=6, checkpoint_every=3)
    try:
        run_dpo(out / "b", steps=6, checkpoint_every=3, stop_at=4)
        raise AssertionError("run b was not stopped")
    except Stopped:
        pass
    _, b, _ = run_dpo(out / "b", steps=6, checkpoint_every=3)
    if a.model is None:  # not the main process
        return
    from safetensors.torch import save_file

    for name, res in (("a", a), ("b", b)):
        save_file({k: v.detach().contiguous().clone() for k, v in res.model.state_dict().items()},
                  str(out / f"{name}.safetensors"))
    (out / "result.json").write_text(json.dumps({
        "resumed_from": [a.resumed_from, b.resumed_from],
        "model_type": type(a.model).__name__,
        "parameter_types": sorted({type(p).__name__ for p in a.model.parameters()}),
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
