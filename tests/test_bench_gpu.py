"""benchmarks/bench_gpu.py: its shapes, FLOP counts and peak table against numbers worked out by
hand, and the whole script at the tiny size on CPU (the same code path a GPU run takes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_specs  # noqa: E402


@pytest.mark.parametrize("name, params", [
    # published totals, by hand from each config.json (tied embeddings counted once):
    # SmolLM2-360M: embed 49152*960 = 47,185,920; per layer q,o 960*960 x2 + k,v 960*320 x2 = 2,457,600,
    #   MLP 3*960*2560 = 7,372,800, norms 1,920 -> 9,832,320 x 32 = 314,634,240; final norm 960
    ("smollm2-360m", 361_821_120),
    # Qwen2.5-0.5B: embed 151936*896 = 136,134,656; per layer q 896*896+896, k,v (896*128+128) x2,
    #   o 896*896 -> 1,836,160; MLP 3*896*4864 = 13,074,432; norms 1,792 -> 14,912,384 x 24; norm 896
    ("qwen2.5-0.5b", 494_032_768),
    # Llama-3.2-1B: embed 128256*2048 = 262,668,288; per layer q,o 2048^2 x2 + k,v 2048*512 x2 =
    #   10,485,760, MLP 3*2048*8192 = 50,331,648, norms 4,096 -> 60,821,504 x 16; final norm 2,048
    ("llama-3.2-1b", 1_235_814_400),
])
def test_shapes_have_the_published_parameter_counts(name, params):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(gpu_specs.transformers_config(name, 0, 1))
    assert sum(p.numel() for p in model.parameters()) == params == gpu_specs.SHAPES[name].params
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied, as published


def test_flops_of_a_row_by_hand():
    """tiny: hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128, vocab 512."""
    fm = gpu_specs.FlopModel.of(gpu_specs.transformers_config("tiny", 0, 1))
    # per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 + MLP 3*64*128 = 36,864; 2 layers
    assert (fm.body, fm.attn_dim, fm.vocab, fm.hidden, fm.layers) == (73_728, 64, 512, 64, 2)
    # a row of 10 tokens, 4 scored: 2*73,728*10 = 1,474,560 weights; LM head 2*512*64*4 = 262,144;
    # attention 4 (QK and AV, 2 FLOPs each) * 2 layers * 64 * 55 causal pairs = 28,160
    assert fm.forward(10, 4) == 1_764_864
    # a pair (prompt 6, responses 4 and 3) trained (x3) and with a reference forward (x4)
    rejected = 2 * 73_728 * 9 + 2 * 512 * 64 * 3 + 4 * 2 * 64 * 45
    assert gpu_specs.pair_flops(fm, 6, 4, 3, 3) == 3 * (1_764_864 + rejected)
    assert gpu_specs.pair_flops(fm, 6, 4, 3, 4) == 4 * (1_764_864 + rejected)


@pytest.mark.parametrize("device, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.5), ("NVIDIA GH200 480GB", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.05),
    ("NVIDIA L40", 181.05), ("NVIDIA L4", 121.0), ("NVIDIA A10", 125.0), ("NVIDIA B200", 2250.0),
    ("NVIDIA GeForce RTX 4090", 165.2), ("AMD Instinct MI300X", 1307.4),
    ("NVIDIA A10G", None), ("Tesla T4", None), ("CPU Intel Xeon", None),
])
def test_peak_table(device, tflops):
    p = gpu_specs.peak_for(device)
    assert (p.tflops if p else None) == tflops
    assert p is None or "datasheet" in p.source or "whitepaper" in p.source


def test_kernels_that_cannot_run_here_say_why():
    vs = {v.name: v for v in gpu_specs.variants(["sdpa", "fa2", "liger"], torch.device("cpu"))}
    assert vs["sdpa"].skip is None
    assert "flash-attn is not installed" in vs["flash-attention-2"].skip or "CUDA" in vs["flash-attention-2"].skip
    assert "liger-kernel is not installed" in vs["sdpa + liger"].skip or "GPU" in vs["sdpa + liger"].skip
    with pytest.raises(ValueError, match="unknown variant"):
        gpu_specs.variants(["xformers"], torch.device("cpu"))


@pytest.mark.slow  # ~20 s of CPU: torch, transformers and TRL imported in a fresh process, six short runs
def test_tiny_run_on_cpu(tmp_path):
    """The CI run: every configuration trains through its framework's real loop (the harness's
    ``train()`` with a warm reference cache, TRL's ``DPOTrainer``), and the result is written as
    JSON and Markdown named after the device, with MFU against the given peak."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--models", "tiny",
                        "--quick", "--peak-tflops", "0.05", "--out-dir", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    js = list(tmp_path.glob("cpu-*.json"))
    assert len(js) == 1 and js[0].with_suffix(".md").is_file()
    res = json.loads(js[0].read_text())
    assert res["peak"] == {"tflops": 0.05, "source": "--peak-tflops"}
    v = res["shapes"]["tiny"]["variants"]
    assert "not installed" in v["flash-attention-2"]["skipped"] or "CUDA" in v["flash-attention-2"]["skipped"]
    summ = v["sdpa"]["summary"]
    assert set(summ) == {"harness DPO", "harness TI-DPO, policy weights", "harness TI-DPO, reference weights",
                         "TRL DPO", "TRL DPO, precompute_ref_log_probs", "TRL DPO, group_by_length"}
    for row, s in summ.items():
        assert s["steps"] == 2 and s["tokens_per_s"] > 0 and 0 < s["mfu"] == s["tflops"] / 0.05, row
    runs = v["sdpa"]["runs"]
    assert runs["harness DPO"][0]["counters"]["ref_cache_hit"] == 1  # the cell's cached reference
    assert "ref_forward" not in runs["harness DPO"][0]["counters"]  # no reference in the step
    assert [runs[r][0]["reference_held"] for r in ("TRL DPO", "TRL DPO, precompute_ref_log_probs")] == [True, False]
    # the same data: a step's tokens are its pairs' prompt + chosen and prompt + rejected tokens
    assert all(t > 0 for r in runs.values() for t in r[0]["tokens"])
    md = js[0].with_suffix(".md").read_text()
    assert all(s["peak_gb"] is None for s in summ.values()) and "| n/a (CPU" in md  # no CUDA allocator here
    assert "## Goals" in md and "harness DPO tokens/s >= TRL DPO" in md and "not run: " in md
    import gpu_report

    assert gpu_report.table(res) == md  # what `bench_gpu.py --report` prints from a saved JSON
