"""What ``bench_gpu.py`` measures against: model shapes, cards' peak rates, FLOP counts, kernels.

* ``SHAPES``: real model sizes written out from the models' published ``config.json`` files,
  built with ``from_config`` and random weights (nothing is downloaded). Only the shapes
  matter for speed and memory; each entry names its source and the parameter count the
  config gives (checked in tests/test_bench_gpu.py).
* ``PEAK_BF16_TFLOPS``: dense (no sparsity) bf16 tensor-core peaks from the vendors'
  datasheets, matched against ``torch.cuda.get_device_name()``; a card not in the table gets
  no MFU unless ``--peak-tflops`` is given.
* ``row_flops``: model FLOPs of one row, counted as PaLM's MFU does (Chowdhery et al. 2022,
  appendix B: matmul FLOPs of the weights plus attention scores), with two refinements: the
  LM head counts only at the scored (response) positions, which is all a DPO step needs, and
  causal attention counts the n(n+1)/2 query-key pairs it computes rather than n^2.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Shape:
    arch: str  # transformers model_type: "llama" or "qwen2"
    config: dict  # the config.json values that set the compute (and a few that set numerics)
    params: int  # the parameter count these values give (tied embeddings counted once)
    source: str  # where the values come from
    notes: str = ""


SHAPES: dict[str, Shape] = {
    "smollm2-360m": Shape(
        "llama",
        dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
             num_key_value_heads=5, head_dim=64, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
             rope_theta=100000.0, max_position_embeddings=8192, hidden_act="silu", attention_bias=False,
             mlp_bias=False),
        361_821_120, "https://huggingface.co/HuggingFaceTB/SmolLM2-360M/blob/main/config.json"),
    "qwen2.5-0.5b": Shape(
        "qwen2",
        dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rms_norm_eps=1e-6,
             rope_theta=1000000.0, max_position_embeddings=32768, hidden_act="silu", use_sliding_window=False,
             sliding_window=None, max_window_layers=24),
        494_032_768, "https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json",
        "q/k/v projections carry biases (Qwen2 architecture); 0.49B parameters, 0.36B without embeddings"),
    "llama-3.2-1b": Shape(
        "llama",
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5,
             rope_theta=500000.0, max_position_embeddings=131072, hidden_act="silu", attention_bias=False,
             mlp_bias=False, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        1_235_814_400, "https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json"),
    # the model slurm/gpu-8b.yaml is sized for (benchmarks/gpu_memory.py); too big for one card's DPO step
    "llama-3.1-8b": Shape(
        "llama",
        dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False, rms_norm_eps=1e-5,
             rope_theta=500000.0, max_position_embeddings=131072, hidden_act="silu", attention_bias=False,
             mlp_bias=False, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        8_030_261_248, "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json"),
    # the CI size: the same code path in seconds on one CPU thread
    "tiny": Shape(
        "llama",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
             rope_theta=10000.0, max_position_embeddings=2048, hidden_act="silu"),
        106_816, "this file (a test size)"),
}


def transformers_config(name: str, pad_id: int, eos_id: int):
    from transformers import AutoConfig

    s = SHAPES[name]
    return AutoConfig.for_model(s.arch, **s.config, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id,
                                attention_dropout=0.0)


# ------------------------------------------------------------------------ peak rates
@dataclass(frozen=True)
class Peak:
    match: tuple[str, ...]  # all of these (case-insensitive) in the device name
    exclude: tuple[str, ...]  # none of these
    tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    source: str


_NV = "NVIDIA datasheet"
PEAKS: tuple[Peak, ...] = (  # first match wins: the more specific entries come first
    Peak(("H100", "PCIE"), (), 756.0, f"{_NV}: H100 Tensor Core GPU, H100 PCIe, BF16 1,513 TFLOPS with sparsity"),
    Peak(("H100", "NVL"), (), 835.5, f"{_NV}: H100 Tensor Core GPU, H100 NVL, BF16 1,671 TFLOPS with sparsity"),
    Peak(("H100",), (), 989.4, f"{_NV}: H100 Tensor Core GPU, H100 SXM, BF16 1,979 TFLOPS with sparsity"),
    Peak(("H200", "NVL"), (), 835.5, f"{_NV}: H200 Tensor Core GPU, H200 NVL, BF16 1,671 TFLOPS with sparsity"),
    Peak(("GH200",), (), 989.4, f"{_NV}: GH200 Grace Hopper Superchip, BF16 1,979 TFLOPS with sparsity"),
    Peak(("H200",), (), 989.4, f"{_NV}: H200 Tensor Core GPU, H200 SXM, BF16 1,979 TFLOPS with sparsity"),
    Peak(("B200",), ("GB200",), 2250.0, f"{_NV}: HGX B200, BF16 4.5 PFLOPS per GPU with sparsity"),
    Peak(("A100",), (), 312.0, f"{_NV}: A100 Tensor Core GPU, BF16 312 TFLOPS (624 with sparsity), SXM and PCIe"),
    Peak(("L40S",), (), 362.05, f"{_NV}: L40S GPU, BF16 362.05 TFLOPS (733 with sparsity)"),
    Peak(("L40",), ("L40S",), 181.05, f"{_NV}: L40 GPU, BF16 181.05 TFLOPS (362.1 with sparsity)"),
    Peak(("L4",), ("L40",), 121.0, f"{_NV}: L4 Tensor Core GPU, BF16 242 TFLOPS with sparsity"),
    Peak(("A10",), ("A100", "A10G"), 125.0, f"{_NV}: A10 Tensor Core GPU, BF16 125 TFLOPS (250 with sparsity)"),
    Peak(("A40",), (), 149.7, f"{_NV}: A40, BF16 149.7 TFLOPS (299.4 with sparsity)"),
    Peak(("RTX A6000",), (), 154.8, f"{_NV}: RTX A6000, tensor 309.7 TFLOPS with sparsity"),
    Peak(("RTX 4090",), (), 165.2, "NVIDIA Ada Lovelace architecture whitepaper: RTX 4090, FP16/BF16 tensor with "
                                   "FP32 accumulate 165.2 TFLOPS (what torch's bf16 matmuls use)"),
    Peak(("MI300X",), (), 1307.4, "AMD Instinct MI300X datasheet: BF16 1,307.4 TFLOPS dense"),
)


def peak_for(device_name: str) -> Peak | None:
    """The table entry for a device name, or None for a card the table does not know."""
    name = device_name.upper()
    for p in PEAKS:
        if all(m.upper() in name for m in p.match) and not any(x.upper() in name for x in p.exclude):
            return p
    return None


# ----------------------------------------------------------------------------- FLOPs
@dataclass(frozen=True)
class FlopModel:
    """The numbers of a model that its FLOPs depend on."""

    layers: int
    hidden: int
    attn_dim: int  # heads x head_dim (the width of the query-key and attention-value products)
    body: int  # weights of the per-layer matmuls (attention projections and MLP), biases excluded
    vocab: int

    @classmethod
    def of(cls, config) -> "FlopModel":
        d, L = config.hidden_size, config.num_hidden_layers
        hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
        q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size
        return cls(L, d, q, L * per_layer, config.vocab_size)

    def forward(self, n: int, scored: int) -> int:
        """Forward FLOPs of one row of ``n`` tokens whose last ``scored`` positions need logits:
        2 per weight per token, the LM head at the scored positions, and for each layer the
        query-key and attention-value products over the n(n+1)/2 causal pairs (2 FLOPs each)."""
        return 2 * self.body * n + 2 * self.vocab * self.hidden * scored + 4 * self.layers * self.attn_dim * n * (n + 1) // 2


def pair_flops(fm: FlopModel, prompt: int, chosen: int, rejected: int, passes: int) -> int:
    """FLOPs of one pair: ``passes`` forward-equivalents of each row (3 = forward + backward of
    the policy; 4 = plus a reference forward every step)."""
    return passes * (fm.forward(prompt + chosen, chosen) + fm.forward(prompt + rejected, rejected))


# --------------------------------------------------------------------------- kernels
@dataclass
class Variant:
    """A way to run the same step: attention kernel and fused layer kernels."""

    name: str
    attn: str  # transformers attn_implementation
    liger: bool = False
    skip: str | None = None  # why this variant cannot run here
    info: dict = field(default_factory=dict)


def variants(wanted: list[str], device: torch.device) -> list[Variant]:
    """The wanted variants, each with the reason it cannot run here (None when it can)."""
    out = []
    for w in wanted:
        if w == "sdpa":
            out.append(Variant("sdpa", "sdpa"))
        elif w == "fa2":
            out.append(Variant("flash-attention-2", "flash_attention_2", skip=_fa2_problem(device)))
        elif w == "liger":
            out.append(Variant("sdpa + liger", "sdpa", liger=True, skip=_liger_problem(device)))
        else:
            raise ValueError(f"unknown variant {w!r}; choose from sdpa, fa2, liger")
    return out


def _fa2_problem(device: torch.device) -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install flash-attn --no-build-isolation; needs CUDA)"
    if device.type != "cuda":
        return "FlashAttention-2 runs on CUDA devices only"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"FlashAttention-2 needs an Ampere or newer GPU (compute capability {major}.x)"
    return None


def _liger_problem(device: torch.device) -> str | None:
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel; needs triton and a GPU)"
    if device.type != "cuda":
        return "Liger's triton kernels run on GPUs only"
    return None


def apply_liger(model, arch: str) -> None:
    """Liger's RMSNorm, RoPE and SwiGLU kernels on this model instance; its fused LM-head
    losses are left off (neither framework computes a cross-entropy loss in a DPO step)."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_qwen2

    fn = {"llama": apply_liger_kernel_to_llama, "qwen2": apply_liger_kernel_to_qwen2}[arch]
    fn(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)
