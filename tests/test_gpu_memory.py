"""benchmarks/gpu_memory.py: the training-state arithmetic behind slurm/gpu-8b.yaml, checked byte
for byte against a tiny model's measured weights, gradients and AdamW states after one step of the
harness's own optimizer (full fine-tuning, and LoRA through harness.models.apply_lora), and the
profile's 8B numbers against the same arithmetic."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_memory  # noqa: E402
import gpu_specs  # noqa: E402

from harness.core.train import make_optimizer  # noqa: E402
from harness.schema import LoraSpec, ModelSpec, TrainSpec  # noqa: E402


def _nbytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a tied weight counts once)."""
    seen = {}
    for t in tensors:
        if torch.is_tensor(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _measured(dtype: torch.dtype, lora_r: int | None) -> gpu_memory.State:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(gpu_specs.transformers_config("tiny", 0, 1), dtype=dtype)
    weights = _nbytes(model.parameters())
    if lora_r is not None:
        from harness.models import apply_lora

        model = apply_lora(model, ModelSpec(name="tiny", lora=LoraSpec(r=lora_r)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, TrainSpec(lr=1e-3))
    ids = torch.randint(2, 512, (2, 12))
    model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    opt.step()
    return gpu_memory.State(
        weights=weights, trainable_params=sum(p.numel() for p in trainable),
        trainable=0 if lora_r is None else _nbytes(trainable), grads=_nbytes(p.grad for p in trainable),
        optimizer=_nbytes(t for st in opt.state.values() for t in st.values()), reference=0)


@pytest.mark.parametrize("dtype, name", [(torch.bfloat16, "bf16"), (torch.float32, "fp32")])
@pytest.mark.parametrize("lora_r", [None, 16])
def test_state_arithmetic_matches_a_measured_model(dtype, name, lora_r):
    assert _measured(dtype, lora_r) == gpu_memory.state_bytes("tiny", name, lora_r=lora_r)


def test_tiny_lora_count_by_hand():
    """tiny: hidden 64, q 4x16 = 64, k/v 2x16 = 32, 2 layers; r=16 on q,k,v,o:
    16 * ((64+64) + (64+32) + (64+32) + (64+64)) * 2 = 14,336 adapter weights (fp32: 57,344 bytes)."""
    s = gpu_memory.state_bytes("tiny", "bf16", lora_r=16)
    assert (s.trainable_params, s.trainable, s.grads) == (14_336, 57_344, 57_344)
    assert s.optimizer == 2 * 57_344 + 4 * 16  # two fp32 moments + a step counter per adapter tensor


def test_llama_3_1_8b_parameter_count():
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(gpu_specs.transformers_config("llama-3.1-8b", 0, 1))
    # by hand: embeddings 128256*4096 x2 (untied) = 1,050,673,152; per layer q,o 4096^2 x2 + k,v 4096*1024 x2
    # = 41,943,040, MLP 3*4096*14336 = 176,160,768, norms 8,192 -> 218,112,000 x 32; final norm 4,096
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248 == gpu_specs.SHAPES["llama-3.1-8b"].params


def test_the_8b_profile_states_the_arithmetic():
    """The sizing comments of slurm/gpu-8b.yaml say what the arithmetic gives for Llama-3.1-8B."""
    text = (ROOT / "slurm" / "gpu-8b.yaml").read_text()
    full_bf16 = gpu_memory.state_bytes("llama-3.1-8b", "bf16")
    full_fp32 = gpu_memory.state_bytes("llama-3.1-8b", "fp32")
    lora = gpu_memory.state_bytes("llama-3.1-8b", "bf16", lora_r=16)
    assert f"base weights {round(full_bf16.weights / 1e9)} GB" in text  # 16 GB
    assert lora.trainable + lora.grads + lora.optimizer < 1e9 and "adapters + AdamW states < 1 GB" in text
    bf16_gb, fp32_gb = (round((s.weights + s.grads + s.optimizer) / 1e9) for s in (full_bf16, full_fp32))
    bf16_pp = round((full_bf16.weights + full_bf16.grads + full_bf16.optimizer) / full_bf16.trainable_params)
    fp32_pp = round((full_fp32.weights + full_fp32.grads + full_fp32.optimizer) / full_fp32.trainable_params)
    assert (bf16_pp, fp32_pp) == (8, 16)
    m = re.search(r"bf16 weights \(dtype: auto on a GPU\): (\d+) bytes/parameter, (\d+) GB for 8B, plus the (\d+) GB", text)
    assert m and (int(m[1]), int(m[2]), int(m[3])) == (bf16_pp, bf16_gb, round(full_bf16.weights / 1e9)), \
        "profile's bf16 full fine-tuning line"
    m = re.search(r"fp32 weights \([^)]*\):\s*#?\s*(\d+) bytes/parameter, (\d+) GB for 8B, (\d+) GB per GPU", text)
    assert m and (int(m[1]), int(m[2]), int(m[3])) == (fp32_pp, fp32_gb, round(fp32_gb / 8)), \
        "profile's fp32 full fine-tuning line"
