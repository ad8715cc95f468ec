#!/usr/bin/env python
"""The memory a cell's training state takes on its GPU, by arithmetic: the numbers behind
``slurm/gpu-8b.yaml``'s sizing comments, checked against a measured smaller model.

    python benchmarks/gpu_memory.py                      # Llama-3.1-8B: full fine-tuning and LoRA r=16
    python benchmarks/gpu_memory.py --model llama-3.2-1b --lora-r 8

What a cell holds while it trains (``harness.core.train``: ``torch.optim.AdamW`` over the
trainable parameters; ``dtype: auto`` loads a pretrained model in bf16 on a GPU, so weights,
gradients and AdamW's two moments are all in the weights' dtype):

* weights: every parameter, ``bytes(dtype)`` each (tied embeddings once);
* trainable parameters (all of them, or LoRA's A and B matrices on each target projection:
  ``r * (in + out)`` each; peft keeps adapters in fp32 whatever the base dtype), their
  gradients (same dtype) and AdamW's ``exp_avg`` and ``exp_avg_sq`` (same dtype), plus its
  ``step`` counter (one fp32 scalar per trainable tensor);
* the reference: a second copy of the weights, only while it is loaded (methods that need only
  reference log-probs read them from the on-disk cache and never hold it);
* activations (not counted here: they depend on the batch, the sequence length and gradient
  checkpointing; measure them with ``bench_gpu.py``'s peak memory).

``tests/test_gpu_memory.py`` checks :func:`state_bytes` byte for byte against a tiny model's
measured parameters, gradients and optimizer states after one step of the harness's optimizer
(full and LoRA through ``harness.models.apply_lora``), and the 8B numbers against the profile.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_specs import SHAPES  # noqa: E402

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")  # harness.models.default_lora_targets for Llama/Qwen2


@dataclass(frozen=True)
class State:
    """Bytes of each part of a training state."""

    weights: int
    trainable_params: int  # a count, not bytes
    trainable: int  # the trainable weights' own bytes when they are extra (LoRA adapters); 0 for full
    grads: int
    optimizer: int
    reference: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.grads + self.optimizer + self.reference


def projections(cfg: dict) -> dict[str, tuple[int, int, int]]:
    """(in, out, count) of each attention projection across all layers."""
    d, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return {"q_proj": (d, q, L), "k_proj": (d, kv, L), "v_proj": (d, kv, L), "o_proj": (q, d, L)}


def state_bytes(shape: str, dtype: str = "bf16", lora_r: int | None = None, lora_targets=ATTN,
                reference: bool = False) -> State:
    """The training state of ``shape`` (a ``gpu_specs.SHAPES`` entry) under AdamW: full
    fine-tuning with weights in ``dtype``, or LoRA of rank ``lora_r`` (fp32 adapters) on
    ``lora_targets``; ``reference`` adds a frozen copy of the weights."""
    s = SHAPES[shape]
    b = BYTES[dtype]
    weights = s.params * b
    ref = weights if reference else 0
    if lora_r is None:
        cfg = s.config
        tensors = _full_tensor_count(s.arch, cfg)
        return State(weights, s.params, 0, weights, 2 * weights + 4 * tensors, ref)
    proj = projections(s.config)
    n = sum(lora_r * (i + o) * L for name, (i, o, L) in proj.items() if name in lora_targets)
    tensors = 2 * sum(L for name, (_, _, L) in proj.items() if name in lora_targets)
    return State(weights, n, 4 * n, 4 * n, 8 * n + 4 * tensors, ref)


def _full_tensor_count(arch: str, cfg: dict) -> int:
    """Parameter tensors of a Llama/Qwen2 model: per layer 7 projections + 2 norms (+ 3 q/k/v
    biases for Qwen2), the embedding, the final norm, and an LM head when untied."""
    per_layer = 9 + (3 if arch == "qwen2" else 0)
    return cfg["num_hidden_layers"] * per_layer + 2 + (0 if cfg.get("tie_word_embeddings") else 1)


def gb(x: int) -> str:
    return f"{x / 1e9:.2f} GB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="bf16", choices=sorted(BYTES))
    ap.add_argument("--lora-r", type=int, default=16)
    args = ap.parse_args(argv)
    full = state_bytes(args.model, args.dtype, reference=True)
    lora = state_bytes(args.model, args.dtype, lora_r=args.lora_r, reference=True)
    print(f"{args.model}: {SHAPES[args.model].params / 1e9:.3f}B parameters, weights in {args.dtype}, AdamW")
    for name, s in (("full fine-tuning", full), (f"LoRA r={args.lora_r} on {', '.join(ATTN)}", lora)):
        print(f"  {name}: weights {gb(s.weights)}, trainable {s.trainable_params / 1e6:.1f}M "
              f"(adapters {gb(s.trainable)}), gradients {gb(s.grads)}, AdamW {gb(s.optimizer)}, "
              f"reference {gb(s.reference)} while loaded; total {gb(s.total)} before activations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
