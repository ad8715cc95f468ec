"""GPU check of the training core: every method, bf16 autocast on CUDA against fp32 on CPU.

For each registered method it builds the same Llama-architecture model (hidden 256, 4 layers)
and reference on both devices, computes the first-step loss and rewards on the same batch
(anchors sampled once on the CPU and reused, so the comparison is deterministic) in fp32 on
the CPU and under bf16 autocast on the GPU, and checks them within bf16 tolerance. It then
trains each method a few steps on the GPU in bf16 through the real loop (train()), checking
that every logged loss is finite, and records tokens/s and peak CUDA memory.

    python scripts/gpu_check.py --out gpu_check.json        # needs a CUDA device
    python scripts/gpu_check.py --device cpu --steps 2      # dry run of the script itself

Exit status 0 when every method is within tolerance and trains finitely, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import methods  # noqa: E402
from harness import schema  # noqa: E402
from harness.core.features import Features  # noqa: E402
from harness.core.train import PreferenceObjective, StepContext, train  # noqa: E402
from harness.data.tasks import make_task  # noqa: E402
from harness.data.tokenize import tokenize  # noqa: E402
from harness.models import build_tiny, char_tokenizer  # noqa: E402

BF16_REL_TOL = 3e-2  # bf16 keeps ~8 bits of mantissa; sums over ~20 tokens stay within a few %


def setup():
    task = make_task("reverse", {"n_pairs": 64, "n_sft": 8, "n_heldout": 8})
    data = task.generate()
    tok = char_tokenizer(task.alphabet)
    spec = schema.TinyModelSpec(hidden_size=256, num_layers=4, num_heads=4)
    td = tokenize(data.train, tok, 128, 64)
    return tok, spec, td


def first_step(name, tok, spec, td, device, bf16, anchors):
    pol, ref = build_tiny(spec, tok, 0).to(device), build_tiny(spec, tok, 1).to(device)
    m = methods.get(name)
    feats = Features(m, td, ref_model=ref, cache_dir=None, device=torch.device(device),
                     pad_id=tok.pad_token_id, tokenizer=tok)
    idx = list(range(8))
    if anchors is not None:
        feats.anchors = lambda *a, **k: anchors
    obj = PreferenceObjective(m, feats)
    ctx = StepContext(0, 0, tok.pad_token_id, torch.device(device), tok)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        _, out, _ = obj.forward(pol, td, idx, ctx)
    return {"loss": out.losses.float().mean().item(),
            "chosen_reward": out.chosen_rewards.float().mean().item(),
            "rejected_reward": out.rejected_rewards.float().mean().item()}


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    tok, spec, td = setup()
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    rows, ok = [], True
    for name in methods.available():
        anchors = None
        if "anchor" in methods.get(name).needs:
            from harness.core.anchors import sample_anchors
            from methods.feature_specs import AnchorSpec

            torch.manual_seed(0)
            anchors = sample_anchors(build_tiny(spec, tok, 0), td.prompts[:8], AnchorSpec(max_new_tokens=16),
                                     tokenizer=tok, pad_id=tok.pad_token_id, device=torch.device("cpu"))
        cpu = first_step(name, tok, spec, td, "cpu", False, anchors)
        dev = first_step(name, tok, spec, td, args.device, args.device == "cuda", anchors)
        errs = {k: rel(dev[k], cpu[k]) for k in cpu}
        within = all(e <= BF16_REL_TOL for e in errs.values())
        # a few real bf16 training steps through the loop
        pol = build_tiny(spec, tok, 0)
        m = methods.get(name)
        feats = Features(m, td, ref_model=build_tiny(spec, tok, 1), cache_dir=None,
                         device=torch.device(args.device), pad_id=tok.pad_token_id, tokenizer=tok)
        cfg = schema.TrainSpec(steps=args.steps, batch_size=8, lr=1e-4, checkpoint_every=0,
                               precision="bf16" if args.device == "cuda" else "fp32")
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            res = train(pol, td, PreferenceObjective(m, feats), cfg, 0, Path(d), tokenizer=tok)
            log = [json.loads(x) for x in (Path(d) / "train_log.jsonl").read_text().splitlines()]
        wall = time.perf_counter() - t0
        finite = all(math.isfinite(r["loss"]) for r in log)
        row = {"method": name, "cpu_fp32": cpu, "gpu_bf16": dev, "rel_err": errs, "within_tol": within,
               "train_steps": len(log), "train_finite": finite, "first_loss": log[0]["loss"],
               "last_loss": log[-1]["loss"], "tokens_per_s": round(res.tokens / wall, 1),
               "peak_mem_mb": log[-1]["peak_mem_mb"]}
        ok &= within and finite
        rows.append(row)
        print(f"{name:16s} loss cpu {cpu['loss']:.5f} gpu {dev['loss']:.5f} rel {errs['loss']:.2e} "
              f"rewards rel {max(errs['chosen_reward'], errs['rejected_reward']):.2e} "
              f"{'OK' if within else 'OUT OF TOL'}; {len(log)} bf16 steps finite={finite} "
              f"{row['tokens_per_s']:.0f} tok/s peak {row['peak_mem_mb']:.0f} MB", flush=True)
    out = {"card": card, "torch": torch.__version__, "tolerance": BF16_REL_TOL, "ok": ok, "methods": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"card: {card}; all within tolerance and finite: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
