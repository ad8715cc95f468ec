"""The Markdown report of ``bench_gpu.py`` (from its JSON, so a saved run can be reprinted:
``python benchmarks/bench_gpu.py --report RESULT.json``)."""
from __future__ import annotations

HARNESS_DPO, TRL_DPO, TRL_PRE = "harness DPO", "TRL DPO", "TRL DPO, precompute_ref_log_probs"
GOAL_MFU, GOAL_SHAPE = 0.40, "llama-3.2-1b"
HOPPER_CLASS = ("H100", "H200", "GH200", "B200")


def _f(x, fmt: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, fmt)


def _params(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _peak(gib) -> str:
    return "n/a (CPU: torch keeps no allocator statistics)" if gib is None else f"{gib:.2f}"


def _ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    peak = res["peak"]
    lines = [f"# bench_gpu.py on {m['card']}", "",
             f"{m['date']}; torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, "
             f"flash-attn {m['flash_attn'] or 'not installed'}, liger-kernel {m['liger_kernel'] or 'not installed'}, "
             f"Python {m['python']}.",
             (f"Peak dense bf16: {peak['tflops']} TFLOP/s ({peak['source']})." if peak.get("tflops")
              else f"Peak dense bf16: unknown ({peak['source']}): no MFU."), "",
             f"Settings: {s['batch']} pairs per step, rows up to {s['max_length']} tokens ({s['lengths']} lengths), "
             f"{s['steps']} steps per run ({s['warmup']} warm-up periods dropped), rounds: {s['rounds']}, "
             f"weights {s['weights']}, lr {s['lr']}, beta {s['beta']}; TI-DPO {s['tidpo']}.", ""]
    for name, shape in res["shapes"].items():
        lines += [f"## {name} ({_params(shape['params'])} parameters; {shape['source']})", "",
                  "| configuration | kernels | step (ms) | tokens/s | vs TRL DPO | vs TRL precompute | TFLOP/s | MFU "
                  "| peak memory (GiB) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for vname, v in shape["variants"].items():
            if v.get("skipped"):
                continue
            summ = v["summary"]
            base, pre = summ.get(TRL_DPO, {}).get("tokens_per_s"), summ.get(TRL_PRE, {}).get("tokens_per_s")
            for row, x in summ.items():
                lines.append(f"| {row} | {vname} | {_f(x['step_ms'], '.1f')} | {_f(x['tokens_per_s'], '.0f')} | "
                             f"{_ratio(x['tokens_per_s'], base)} | {_ratio(x['tokens_per_s'], pre)} | "
                             f"{_f(x['tflops'], '.3g')} | {_f(x['mfu'], '.1%')} | {_peak(x['peak_gb'])} |")
        lines.append("")
        for vname, v in shape["variants"].items():
            if v.get("skipped"):
                lines.append(f"- {vname}: not run: {v['skipped']}")
            else:
                lines.append(f"- {vname}: the harness's reference pass (cache fill, {s['batch'] * s['steps']} pairs) "
                             f"took {v['reference_pass_s']:.2f} s; {v['tokens_per_pair']:.0f} tokens per pair.")
        lines.append("")
    lines += ["FLOPs: policy forward + backward = 3 forward passes of chosen and rejected rows (4 for TRL DPO, "
              "which runs the reference every step); TI-DPO rows are counted like DPO (what the method adds "
              "shows as lower MFU). A forward pass: 2 FLOPs per matmul weight per token, the LM head at the "
              "scored positions only, causal attention scores (gpu_specs.py).", "",
              "Not supported in these versions:", ""]
    lines += [f"- {k}: {v}" for k, v in res["not_supported"].items()]
    lines += ["", "## Goals", "", "| goal | measured | met? |", "|---|---|:---:|"]
    lines += [f"| {g} | {meas} | {ok} |" for g, meas, ok in goals(res)]
    return "\n".join(lines) + "\n"


def goals(res: dict) -> list[tuple[str, str, str]]:
    """(goal, what was measured, met?) for issue 15's three goals, per shape under SDPA."""
    out = []
    card = res["machine"]["card"].upper()
    hopper = any(k in card for k in HOPPER_CLASS)
    for name, shape in res["shapes"].items():
        v = shape["variants"].get("sdpa")
        if not v or v.get("skipped"):
            continue
        summ = v["summary"]
        h = summ.get(HARNESS_DPO, {})
        for trl_row in (TRL_DPO, TRL_PRE):
            t = summ.get(trl_row, {})
            if h.get("tokens_per_s") and t.get("tokens_per_s"):
                r = h["tokens_per_s"] / t["tokens_per_s"]
                out.append((f"{name}: harness DPO tokens/s >= {trl_row}", f"{r:.2f}x", "yes" if r >= 1.0 else "no"))
        t = summ.get(TRL_DPO, {})
        if h.get("peak_gb") is not None and t.get("peak_gb") is not None:
            ok = h["peak_gb"] <= t["peak_gb"]
            out.append((f"{name}: harness DPO peak memory <= TRL DPO", f"{h['peak_gb']:.2f} vs {t['peak_gb']:.2f} GiB",
                        "yes" if ok else "no"))
        if name == GOAL_SHAPE:
            mfu = h.get("mfu")
            if mfu is None:
                out.append((f"MFU >= 40% at {name} (H100/H200 class)", "unknown card: no peak", "n/a"))
            else:
                met = ("yes" if mfu >= GOAL_MFU else "no") if hopper else "n/a (not an H100/H200-class card)"
                out.append((f"MFU >= 40% at {name} (H100/H200 class)", f"{mfu:.1%}", met))
    return out
