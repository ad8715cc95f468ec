"""Summaries and the markdown table of ``bench_dpo.py``'s runs (also ``--resummarize``).

Row names, goals and the per-token statistics live here so that a saved JSON can be summarized
again without running anything. See README.md next to this file for the method.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

# Two clocks: wall time, and the process's CPU time. With one torch thread and nothing else
# running they agree; on a shared machine the CPU time leaves out the time the process waited
# for a core, so it is the steadier measure there (it still includes cache and memory-bandwidth
# contention). Every number is kept for both; --clock picks the one the table shows.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


HARNESS_DPO = ("harness DPO, cold cache", "harness DPO, warm cache")
TRL_DPO = ("TRL DPO", "TRL DPO, precompute_ref_log_probs")
TIDPO_ROWS = ("TI-DPO, policy weights", "TI-DPO, reference weights (cached)",
              "TI-DPO, reference anchors, policy weights", "TI-DPO, reference anchors and weights (cached)",
              "weighted DPO, policy weights", "weighted DPO, reference weights (cached)")
# Diagnostic: sampling the per-step anchors alone (the same batches, prompts and settings as the
# TI-DPO rows with policy anchors), no training: the floor that per-step sampling adds to a step.
SAMPLING = "anchor sampling alone (per step)"
GOALS = {"TI-DPO, policy weights": 1.5, "TI-DPO, reference weights (cached)": 1.1,
         "TI-DPO, reference anchors, policy weights": 1.5, "TI-DPO, reference anchors and weights (cached)": 1.1,
         "weighted DPO, policy weights": 1.5, "weighted DPO, reference weights (cached)": 1.1}
# Diagnostic: the policy forward + backward alone on the same batches (the harness's collate
# and logits_to_keep forward, loss = sum of log-probs), no optimizer and no training loop — the
# most any loop can get out of this model implementation on this machine.
BARE = "bare forward+backward (no loop, no optimizer)"


@dataclass
class Run:
    periods: dict[str, list[float]]  # clock -> seconds per measured step
    tokens: list[int]  # tokens of the measured steps
    setup: dict[str, float]  # clock -> one-time cost before the first step (cache fill, trainer init)
    precompute: dict[str, float]  # clock -> the reference pass alone (part of setup; 0 when none)
    extra: dict = field(default_factory=dict)

    def s_per_token(self, clock: str) -> list[float]:
        return [p / t for p, t in zip(self.periods[clock], self.tokens)]

    def tokens_per_s(self, clock: str) -> float:
        return 1.0 / statistics.median(self.s_per_token(clock))


def summaries(b, runs, rates, args) -> dict:
    """``{clock: summary}`` with the median, plus ``{clock}-q25`` with the faster quartile."""
    out = {}
    for c in CLOCKS:
        out[c] = summarize(b, runs, rates, args, c, "median")
        out[f"{c}-q25"] = summarize(b, runs, rates, args, c, "q25")
    return out


STATS = {
    "median": statistics.median,
    # the faster quartile: noise from other processes only ever adds time, so on a busy
    # machine a low quantile tracks the cost of the work itself more closely than the median
    "q25": lambda xs: statistics.quantiles(xs, n=4, method="inclusive")[0] if len(xs) > 1 else xs[0],
}


def summarize(b, runs: dict, rates: list[dict], args, clock: str, stat: str = "median") -> dict:
    """Per-token step cost pooled over rounds, ratios, the k-cell suite estimate and the goals,
    for one clock and one statistic (``STATS``)."""
    med = statistics.median
    pool = STATS[stat]
    rate = med([x[clock] for x in rates]) * 1e9
    N = b.n_matmul
    tok_step = b.tokens_per_pair * b.batch  # mean tokens per optimizer step (one epoch)
    r = {}
    for row, rs in runs.items():
        # Pooled over rounds, per token: the median over every timed step of every round of
        # (step period / tokens of that step's pairs), so that batches with more padding or
        # longer pairs do not skew a row, and a load spike costs one step, not one round.
        spt = pool([v for x in rs for v in x.s_per_token(clock)])
        d = {"tokens_per_s": 1.0 / spt, "step_s": spt * tok_step, "setup_s": med([x.setup[clock] for x in rs]),
             "tokens_per_s_by_round": [x.tokens_per_s(clock) for x in rs]}
        flops = {HARNESS_DPO[0]: 6, HARNESS_DPO[1]: 6, TRL_DPO[0]: 8, TRL_DPO[1]: 6, BARE: 6}.get(row)
        if flops is not None:
            d["flops_per_token_step"] = flops * N
            d["matmul_share_step"] = flops * N * d["tokens_per_s"] / rate
        pre = [x.precompute[clock] for x in rs if x.precompute[clock]]
        if pre and row in HARNESS_DPO + TRL_DPO:
            # one epoch pays the reference pass once: spread it over the run's steps
            d["reference_pass_s"] = med(pre)
            d["tokens_per_s_amortized"] = tok_step / (tok_step / d["tokens_per_s"] + d["reference_pass_s"] / b.steps)
            d["matmul_share_amortized"] = 8 * N * d["tokens_per_s_amortized"] / rate
        r[row] = d
    h_warm = r[HARNESS_DPO[1]]
    ratios, suite, goals = _against_trl(r, b, args) if TRL_DPO[0] in r else ({}, None, [])
    for row in TIDPO_ROWS + (SAMPLING,):
        if row in r:
            r[row]["x_dpo_step"] = r[row]["step_s"] / h_warm["step_s"]
            ratios[f"{row} / DPO step"] = r[row]["x_dpo_step"]
    goals += [(f"{row} <= {GOALS[row]}x DPO step", r[row]["x_dpo_step"], -GOALS[row]) for row in TIDPO_ROWS if row in r]
    return {
        "clock": clock, "stat": stat, "matmul_gflops": [x[clock] for x in rates], "matmul_gflops_median": rate / 1e9,
        "rows": r, "ratios": ratios, "suite": suite,
        "goals": [{"goal": g, "value": v, "met": (v >= lim) if lim > 0 else (v <= -lim)} for g, v, lim in goals],
    }


def _against_trl(r: dict, b, args) -> tuple[dict, dict, list]:
    """Ratios against TRL, the k-cell suite estimate and the DPO goals."""
    h_cold, h_warm = r[HARNESS_DPO[0]], r[HARNESS_DPO[1]]
    t_def, t_pre = r[TRL_DPO[0]], r[TRL_DPO[1]]
    ratios = {
        "cold (amortized) / TRL default": h_cold["tokens_per_s_amortized"] / t_def["tokens_per_s"],
        "warm / TRL precompute (steps)": h_warm["tokens_per_s"] / t_pre["tokens_per_s"],
        "warm / TRL precompute (amortized)": h_warm["tokens_per_s"] / t_pre.get("tokens_per_s_amortized",
                                                                                  t_pre["tokens_per_s"]),
        "warm / TRL default": h_warm["tokens_per_s"] / t_def["tokens_per_s"],
        "TRL precompute (steps) / TRL default": t_pre["tokens_per_s"] / t_def["tokens_per_s"],
        "harness warm step / matmul rate": h_warm["matmul_share_step"],
        "harness warm / bare forward+backward": h_warm["tokens_per_s"] / r[BARE]["tokens_per_s"] if BARE in r else None,
        "TRL precompute step / matmul rate": t_pre["matmul_share_step"],
    }
    # k reference-based cells on one (model, data): the harness fills the cache once and every
    # cell reads it; TRL runs the reference forward in every step (default) or one
    # precompute pass per cell (its cache lives with the in-memory data set of one trainer)
    k, S = args.k_cells, b.steps
    pre_h, pre_t = h_cold["reference_pass_s"], t_pre.get("reference_pass_s", 0.0)
    suite = {
        "k": k, "steps_per_cell": S,
        "harness_s": pre_h + k * S * h_warm["step_s"], "harness_reference_s": pre_h,
        "trl_default_s": k * S * t_def["step_s"],
        "trl_default_reference_s": k * S * (t_def["step_s"] - t_pre["step_s"]),
        "trl_precompute_s": k * (pre_t + S * t_pre["step_s"]), "trl_precompute_reference_s": k * pre_t,
    }
    goals = [
        ("harness cold cache (pass amortized) >= 1.0x TRL default", ratios["cold (amortized) / TRL default"], 1.0),
        ("harness warm cache >= 1.0x TRL precompute (steps)", ratios["warm / TRL precompute (steps)"], 1.0),
        ("harness warm cache >= 1.3x TRL default", ratios["warm / TRL default"], 1.3),
        ("harness warm step >= 80% of the matmul rate", ratios["harness warm step / matmul rate"], 0.8),
    ]
    return ratios, suite, goals


# ---------------------------------------------------------------------------- table
def table(res: dict, clock: str, stat: str = "median") -> str:
    key = clock if stat == "median" else f"{clock}-{stat}"
    L = []
    m = res["machine"]
    L.append(f"Machine: {m['cpu']}, {m['cores']} cores, 1 torch thread; torch {m['torch']}, "
             f"transformers {m['transformers']}, trl {m['trl']}; load average {m['load_before']} before, "
             f"{m['load_after']} after. Times: {clock} clock, {stat} over all timed steps of all rounds.\n")
    for size, meta in res["sizes"].items():
        s = meta[key]
        L.append(f"### {size}: {meta['params'] / 1e6:.2f}M parameters (N = {meta['matmul_params'] / 1e6:.2f}M), "
                 f"batch {meta['batch']}, {meta['tokens_per_pair']:.0f} tokens/pair, {meta['steps']} steps per run "
                 f"(first {meta['warmup'] + 1} untimed) x {meta['rounds']} rounds; matmul rate "
                 f"{s['matmul_gflops_median']:.0f} GFLOP/s\n")
        L.append("| configuration | step (ms) | tokens/s | reference pass (s) | tokens/s incl. pass "
                 "(one epoch) | FLOPs/token | % of matmul rate (step / incl. pass) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for row in HARNESS_DPO + TRL_DPO + (BARE,):
            if row not in s["rows"]:
                continue
            d = s["rows"][row]
            pre = f"{d['reference_pass_s']:.2f}" if "reference_pass_s" in d else "-"
            am = f"{d['tokens_per_s_amortized']:.0f}" if "tokens_per_s_amortized" in d else "-"
            share = f"{100 * d['matmul_share_step']:.0f}%"
            if "matmul_share_amortized" in d:
                share += f" / {100 * d['matmul_share_amortized']:.0f}%"
            L.append(f"| {row} | {1e3 * d['step_s']:.1f} | {d['tokens_per_s']:.0f} | {pre} | {am} | "
                     f"{d['flops_per_token_step'] // meta['matmul_params']}N | {share} |")
        tid = [row for row in TIDPO_ROWS + (SAMPLING,) if row in s["rows"]]
        if tid:
            L.append("")
            L.append("| TI-DPO configuration | step (ms) | x DPO step (warm cache) |")
            L.append("|---|---:|---:|")
            L.append(f"| DPO, warm cache | {1e3 * s['rows'][HARNESS_DPO[1]]['step_s']:.1f} | 1.00 |")
            for row in tid:
                d = s["rows"][row]
                L.append(f"| {row} | {1e3 * d['step_s']:.1f} | {d['x_dpo_step']:.2f} |")
        u = s["suite"]
        L.append("")
        if u is not None:
            L.append(f"Suite of k = {u['k']} reference-based cells x {u['steps_per_cell']} steps on one (model, data): "
                     f"harness {u['harness_s']:.1f} s (one reference pass, {u['harness_reference_s']:.2f} s); "
                     f"TRL default {u['trl_default_s']:.1f} s (reference forwards in every step, ~"
                     f"{u['trl_default_reference_s']:.1f} s); TRL precompute {u['trl_precompute_s']:.1f} s "
                     f"({u['k']} reference passes, {u['trl_precompute_reference_s']:.2f} s).")
            L.append("")
        L.append("| goal | measured | met |")
        L.append("|---|---:|:---:|")
        for g in s["goals"]:
            L.append(f"| {g['goal']} | {g['value']:.2f} | {'yes' if g['met'] else 'no'} |")
        L.append("")
    return "\n".join(L)


def resummarize(args) -> int:
    from types import SimpleNamespace

    res = json.loads(args.resummarize.read_text())
    for size, meta in res["sizes"].items():
        runs = {row: [Run(x["periods"], x["tokens"], x["setup"], x["precompute"]) for x in rs]
                for row, rs in meta["runs"].items()}
        rates = [dict(zip(CLOCKS, v)) for v in zip(*(meta[c]["matmul_gflops"] for c in CLOCKS))]
        b = SimpleNamespace(n_matmul=meta["matmul_params"], tokens_per_pair=meta["tokens_per_pair"], steps=meta["steps"],
                            batch=meta["batch"])
        a = SimpleNamespace(k_cells=args.k_cells)
        meta.update(summaries(b, runs, rates, a))
    text = table(res, args.clock, args.stat)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    if args.table:
        args.table.write_text(text + "\n")
    return 0


