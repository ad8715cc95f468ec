#!/usr/bin/env python
"""DPO throughput of the harness against TRL 1.16's ``DPOTrainer``, and TI-DPO's step cost.

    python benchmarks/bench_dpo.py                      # both sizes, 3 rounds (~20 min of CPU)
    python benchmarks/bench_dpo.py --size medium --rounds 5 --out bench.json --table bench.md
    python benchmarks/bench_dpo.py --resummarize bench.json --stat q25 --clock wall
    python benchmarks/bench_dpo.py --quick              # the smoke test's setting (tiny, seconds)

One process, one torch thread, the same model (initial weights copied), the same tokenized
data and the same batch size for every configuration. Each round runs every configuration
once, harness and TRL alternating (the order is reversed on odd rounds so that slow drift of a
shared machine's load cancels). A row's cost is the median (or, ``--stat q25``, the faster
quartile) over every timed step of every round of (step period / tokens of the step), in
process CPU time or wall time (``--clock``; the JSON holds all four). See README.md next to
this file for the method, the measured numbers and what they mean.

What one *run* is: a fresh copy of the initial policy (and reference) trained for ``--steps``
optimizer steps on a data set of exactly ``batch x steps`` pairs (one epoch). The step time is
the period between consecutive step ends (harness: ``train(on_step=...)``; TRL: a
``TrainerCallback.on_step_end``), so it holds everything each loop does per step (collation,
forward, reference log-probs, loss, backward, clipping, optimizer step, per-step logging), and
no one-time setup. The first ``--warmup`` periods of every run are dropped. One-time costs —
the reference pass that fills a cache (harness cold cache, TRL ``precompute_ref_log_probs``)
— are timed separately and, for the "amortized" numbers, spread over the run's steps.

Throughput counts the real (non-pad) tokens of prompt + chosen and prompt + rejected of the
pairs each step trains on, the same count for both frameworks (the TRL collator is wrapped to
record the tokens of each batch it builds). FLOPs use the usual dense-transformer estimate:
N = the parameters that take part in matrix products (all but the input embedding table),
6N per token for the policy forward + backward and 2N per token for each extra forward
(reference); attention scores and softmax are not counted. The matmul rate is measured in
the same process (``torch.mm`` of 1024 x 1024 float32, one thread) before every round.
"""
from __future__ import annotations

import os

# One thread, offline, quiet — set before torch / transformers are imported.
for _k, _v in (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("TOKENIZERS_PARALLELISM", "false"),
               ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
               ("HARNESS_NO_PROGRESS", "1"), ("TQDM_DISABLE", "1"), ("TRL_EXPERIMENTAL_SILENCE", "1"),
               ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_k, _v)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)

import torch.nn.functional as F  # noqa: E402

import methods  # noqa: E402
from harness.core.features import Features  # noqa: E402
from harness.core.train import PreferenceObjective, step_indices, train  # noqa: E402
from harness.data.pairs import PreferencePair  # noqa: E402
from harness.data.tokenize import tokenize  # noqa: E402
from harness.models import build_tiny, char_tokenizer  # noqa: E402
from harness.schema import TinyModelSpec, TrainSpec  # noqa: E402
from methods.base import LossOutput  # noqa: E402
from methods.tidpo import TIDPO, weighted_logratios  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_summary import (BARE, CLOCKS, HARNESS_DPO, SAMPLING, STATS, TIDPO_ROWS, TRL_DPO,  # noqa: E402
                           Run, resummarize, summaries, table)

# ------------------------------------------------------------------------- settings
SIZES = {
    # the test suite's tiny model (ENVIRONMENT.md: hidden 128 x 2 layers)
    "tiny": TinyModelSpec(arch="llama", hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256),
    # matrix products dominate: ~4.3M parameters with the 256-symbol vocabulary
    "medium": TinyModelSpec(arch="llama", hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
}
# 253 characters + <pad>, <eos>, <unk> = a 256-token, byte-sized vocabulary. A character
# tokenizer (not ByT5) because it adds no special tokens to a prompt, so the harness and TRL
# build token-for-token identical rows (checked at run time).
ALPHABET = "".join(chr(0x100 + i) for i in range(253))
PROMPT_LEN = (54, 66)  # characters, uniform
RESPONSE_LEN = (72, 86)  # characters, uniform, + EOS: rows of ~140 tokens, ~280 per pair
BATCH = 8
LR = 1e-6
BETA = 0.1
SEED = 0


def now() -> dict[str, float]:
    return {k: f() for k, f in CLOCKS.items()}


def since(t0: dict[str, float]) -> dict[str, float]:
    t = now()
    return {k: t[k] - t0[k] for k in CLOCKS}

class WeightedDPO(TIDPO):
    """TI-DPO's importance-weighted DPO term alone (no triplet, hence no anchor sample and no
    per-step reference forward): ``-log sigma(beta (sum_t w_t r_t(y_w) - sum_t w_t r_t(y_l)))``.
    Benchmark-only; it isolates what the token weights cost on top of DPO."""

    name = "weighted-dpo (benchmark)"
    needs = frozenset({"reference", "token_weights"})

    def loss(self, b):
        s_w, s_l = weighted_logratios(b)
        return LossOutput(losses=-F.logsigmoid(self.beta * (s_w - s_l)), chosen_rewards=(self.beta * s_w).detach(),
                          rejected_rewards=(self.beta * s_l).detach())


def make_method(row: str, anchor_tokens: int | None = None):
    if row.startswith("TI-DPO"):
        hp = {"importance_source": "policy" if "policy" in row else "reference",
              "anchor_source": "reference" if "reference anchors" in row else "policy"}
        if anchor_tokens:
            hp["anchor_max_new_tokens"] = anchor_tokens
        return methods.get("tidpo", **hp)
    if row.startswith("weighted DPO"):
        return WeightedDPO(importance_source="policy" if "policy" in row else "reference")
    return methods.get("dpo", beta=BETA)


# ----------------------------------------------------------------------------- data
def make_pairs(n: int, seed: int = SEED) -> list[PreferencePair]:
    rng = random.Random(seed)

    def text(lo_hi):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(*lo_hi)))

    return [PreferencePair(text(PROMPT_LEN), text(RESPONSE_LEN), text(RESPONSE_LEN), {}) for _ in range(n)]


def pair_tokens(data, i: int) -> int:
    p = len(data.prompts[i])
    return 2 * p + len(data.chosen[i]) + len(data.rejected[i])


def matmul_gflops(seconds: float = 0.5, n: int = 1024) -> dict[str, float]:
    """Single-thread float32 ``torch.mm`` rate (GFLOP/s) per clock, best of short repeats."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = {k: float("inf") for k in CLOCKS}
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = now()
        a @ b
        for k, v in since(t0).items():
            best[k] = min(best[k], v)
    return {k: 2 * n ** 3 / v / 1e9 for k, v in best.items()}


def matmul_params(model) -> int:
    """N for the 6N rule: every parameter except the input embedding table (a lookup)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


# ----------------------------------------------------------------------- one run each
class Bench:
    def __init__(self, size: str, steps: int, warmup: int, workdir: Path, anchor_tokens: int | None = None):
        self.size, self.steps, self.warmup, self.workdir = size, steps, warmup, workdir
        self.batch = BATCH
        self.anchor_tokens = anchor_tokens  # None: the method's default (64)
        self.tok = char_tokenizer(ALPHABET)
        self.base = build_tiny(SIZES[size], self.tok, seed=SEED)
        self.base.eval()  # a pristine copy; every run trains a deepcopy
        self.pairs = make_pairs(BATCH * steps)
        self.data = tokenize(self.pairs, self.tok, max_length=512, max_prompt_length=256)
        assert len(self.data) == len(self.pairs)
        self.n_params = sum(p.numel() for p in self.base.parameters())
        self.n_matmul = matmul_params(self.base)
        self.tokens_per_pair = sum(pair_tokens(self.data, i) for i in range(len(self.data))) / len(self.data)
        self._n = 0
        self.checked_trl_tokens = False

    def fresh(self):
        m = copy.deepcopy(self.base)
        m.train()
        return m

    def tmp(self, what: str) -> Path:
        self._n += 1
        d = self.workdir / f"{self.size}-{what}-{self._n}"
        d.mkdir(parents=True)
        return d

    def _measured(self, stamps: list[dict], tokens: list[int]) -> tuple[dict[str, list[float]], list[int]]:
        """Periods between consecutive step ends (steps 2..S), minus the first ``warmup``."""
        periods = {k: [b[k] - a[k] for a, b in zip(stamps, stamps[1:])][self.warmup:] for k in CLOCKS}
        return periods, tokens[1:len(stamps)][self.warmup:]

    # -------------------------------------------------------------------- harness
    def harness(self, row: str, cache_dir: Path) -> Run:
        torch.set_num_threads(1)
        m = make_method(row, self.anchor_tokens)
        model, ref = self.fresh(), self.fresh()
        counters: dict = {}
        t0 = now()
        feats = Features(m, self.data, ref_model=ref, cache_dir=cache_dir, device=torch.device("cpu"),
                         pad_id=self.tok.pad_token_id, tokenizer=self.tok, counters=counters)
        setup = since(t0)
        cfg = TrainSpec(steps=self.steps, batch_size=BATCH, lr=LR, checkpoint_every=0, max_length=512,
                        max_prompt_length=256, precision="fp32", max_grad_norm=1.0)
        stamps: list[dict] = []
        step_s: list[float] = []

        def on_step(step, rec):
            stamps.append(now())
            step_s.append(rec["step_s"])

        train(model, self.data, PreferenceObjective(m, feats), cfg, SEED, self.tmp("run"), tokenizer=self.tok,
              on_step=on_step)
        tokens = [sum(pair_tokens(self.data, i) for i in step_indices(len(self.data), s, BATCH, SEED))
                  for s in range(self.steps)]
        periods, toks = self._measured(stamps, tokens)
        cold = counters.get("ref_cache_hit") == 0
        return Run(periods, toks, setup, setup if cold else {k: 0.0 for k in CLOCKS},
                   {"inner_step_s": statistics.median(step_s[self.warmup + 1:] or step_s),
                    "counters": {k: v for k, v in counters.items()}})

    def bare(self) -> Run:
        from harness.core.batch import collate, gather_logps, response_logits

        torch.set_num_threads(1)
        model = self.fresh()
        stamps, tokens = [], []
        for step in range(self.steps):
            idx = step_indices(len(self.data), step, BATCH, SEED)
            d = self.data
            rows = collate([d.prompts[i] for i in idx] * 2, [d.chosen[i] for i in idx] + [d.rejected[i] for i in idx],
                           self.tok.pad_token_id)
            gather_logps(response_logits(model, rows), rows).sum().backward()
            model.zero_grad(set_to_none=True)
            stamps.append(now())
            tokens.append(rows.n_tokens)
        periods, toks = self._measured(stamps, tokens)
        return Run(periods, toks, {k: 0.0 for k in CLOCKS}, {k: 0.0 for k in CLOCKS})

    def sampling(self) -> Run:
        """Per-step anchor sampling alone: each step's prompts, the policy's settings, the
        same reseeding as the training loop; no forward, backward or optimizer."""
        from harness.core.anchors import sample_anchors
        from harness.core.schedule import reseed as _reseed
        from methods.feature_specs import spec_for

        torch.set_num_threads(1)
        model = self.fresh()
        spec = spec_for(make_method(TIDPO_ROWS[0], self.anchor_tokens), "anchor")
        stamps, tokens, sampled = [], [], []
        for step in range(self.steps):
            idx = step_indices(len(self.data), step, BATCH, SEED)
            _reseed(SEED, step)
            out = sample_anchors(model, [self.data.prompts[i] for i in idx], spec, tokenizer=self.tok,
                                 pad_id=self.tok.pad_token_id, device=torch.device("cpu"))
            stamps.append(now())
            tokens.append(sum(pair_tokens(self.data, i) for i in idx))
            sampled.append(sum(map(len, out)))
        periods, toks = self._measured(stamps, tokens)
        return Run(periods, toks, {k: 0.0 for k in CLOCKS}, {k: 0.0 for k in CLOCKS},
                   {"sampled_tokens": sampled[1:][self.warmup:]})

    # ------------------------------------------------------------------------ TRL
    def trl(self, precompute: bool) -> Run:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer

        torch.set_num_threads(1)
        pre = {k: 0.0 for k in CLOCKS}

        class TimedDPOTrainer(DPOTrainer):
            def _precompute_ref_logps(self, *a, **kw):
                t0 = now()
                out = super()._precompute_ref_logps(*a, **kw)
                for k, v in since(t0).items():
                    pre[k] += v
                return out

        stamps: list[dict] = []

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                stamps.append(now())

        ds = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in self.pairs])
        with warnings.catch_warnings():  # DPOConfig's own gradient_checkpointing deprecation notice
            warnings.simplefilter("ignore")
            args = DPOConfig(
                output_dir=str(self.tmp("trl")), per_device_train_batch_size=BATCH, max_steps=self.steps,
                learning_rate=LR, beta=BETA, max_length=512, precompute_ref_log_probs=precompute,
                use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
                logging_strategy="no", save_strategy="no", disable_tqdm=True, seed=SEED,
                max_grad_norm=1.0, weight_decay=0.0, dataloader_num_workers=0,
            )
        model, ref = self.fresh(), self.fresh()
        t0 = now()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = TimedDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds,
                                      processing_class=self.tok, callbacks=[Stamp()])
        setup = since(t0)
        if not self.checked_trl_tokens:
            self._check_same_tokens(trainer.train_dataset)
            self.checked_trl_tokens = True
        batch_tokens: list[int] = []
        collate = trainer.data_collator

        def counting(examples):
            out = collate(examples)
            batch_tokens.append(int(out["attention_mask"].sum()))
            return out

        trainer.data_collator = counting
        # Trainer prints a summary dict at the end of train(); keep the benchmark's output readable
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer.train()
        periods, toks = self._measured(stamps, batch_tokens)
        return Run(periods, toks, setup, pre, {"optimizer": str(args.optim)})

    def _check_same_tokens(self, ds) -> None:
        """TRL's tokenized rows must equal the harness's, token for token: same work."""
        d = self.data
        for i in range(len(ds)):
            ex = ds[i]
            if (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]) != (d.prompts[i], d.chosen[i], d.rejected[i]):
                raise SystemExit(f"benchmark bug: TRL tokenized pair {i} differently from the harness")


# --------------------------------------------------------------------------- driver
def run_size(size: str, args, workdir: Path, log) -> dict:
    b = Bench(size, args.steps, args.warmup, workdir, args.anchor_tokens)
    log(f"\n== {size}: {b.n_params / 1e6:.2f}M parameters (N = {b.n_matmul / 1e6:.2f}M in matmuls), "
        f"batch {BATCH}, {b.tokens_per_pair:.0f} tokens per pair, {args.steps} steps x {args.rounds} rounds")
    # harness and TRL alternate; the cold row comes first in round 1, so the warm row always
    # finds a filled cache (the key is (data, reference weights), the same in every round)
    rows = [HARNESS_DPO[0]] + ([] if args.no_trl else [TRL_DPO[0]]) + [HARNESS_DPO[1]] + \
        ([] if args.no_trl else [TRL_DPO[1], BARE]) + ([] if args.no_tidpo else list(TIDPO_ROWS) + [SAMPLING])
    runs: dict[str, list[Run]] = {r: [] for r in rows}
    rates: list[float] = []
    warm_dir = None
    shared_cache = b.tmp("shared-cache")  # TI-DPO rows: reference weights computed in round 1, then cached
    if not args.quick:
        # The first runs in a process pay one-time costs (allocator growth, lazy imports, first
        # kernels); one untimed run of each framework keeps them out of round 1.
        b.harness(HARNESS_DPO[0], b.tmp("warmup-cache"))
        if not args.no_trl:
            b.trl(precompute=False)
        log("  (untimed warm-up runs done)")
    for rnd in range(args.rounds):
        rates.append(matmul_gflops(0.2 if args.quick else 0.5))
        for row in (rows if rnd % 2 == 0 else rows[::-1]):
            if row in TRL_DPO:
                r = b.trl(precompute=row == TRL_DPO[1])
            elif row == BARE:
                r = b.bare()
            elif row == SAMPLING:
                r = b.sampling()
            elif row == HARNESS_DPO[0]:
                cold_dir = b.tmp("cache")  # empty: the run pays the reference pass
                r = b.harness(row, cold_dir)
                warm_dir = cold_dir
            elif row == HARNESS_DPO[1]:
                r = b.harness(row, warm_dir)
            else:
                r = b.harness(row, shared_cache)
            runs[row].append(r)
            c = args.clock
            log(f"  round {rnd + 1} {row:42s} {r.tokens_per_s(c):8.0f} tok/s (median step)"
                f"  setup {r.setup[c]:6.2f} s" +
                (f"  (reference pass {r.precompute[c]:.2f} s)" if r.precompute[c] else "") + f"  [{c} clock]")
    meta = {"size": size, "params": b.n_params, "matmul_params": b.n_matmul, "batch": BATCH, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds, "tokens_per_pair": b.tokens_per_pair,
            "tokens_per_step": b.tokens_per_pair * BATCH,
            "runs": {row: [{"periods": r.periods, "tokens": r.tokens, "setup": r.setup, "precompute": r.precompute,
                            **r.extra} for r in rs] for row, rs in runs.items()}}
    return {**meta, **summaries(b, runs, rates, args)}


def machine() -> dict:
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("tiny", "medium", "both"), default="both")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run (= one epoch of batch x steps pairs)")
    ap.add_argument("--warmup", type=int, default=2, help="step periods dropped at the start of every run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all configurations, alternating")
    ap.add_argument("--k-cells", type=int, default=5, help="cells per (model, data) in the suite estimate")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                    help="clock of the printed table (both are in the JSON); cpu = process CPU time")
    ap.add_argument("--stat", choices=tuple(STATS), default="median",
                    help="statistic of the per-step costs in the printed table (both are in the JSON)")
    ap.add_argument("--no-tidpo", action="store_true", help="skip the TI-DPO rows")
    ap.add_argument("--no-trl", action="store_true",
                    help="skip TRL and the bare forward+backward (TI-DPO against the harness's DPO only)")
    ap.add_argument("--anchor-tokens", type=int, help="TI-DPO anchor_max_new_tokens (default: the method's, 64)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny size, 3 steps, 1 round, 8-token anchors: checks that everything runs (the smoke test)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--table", type=Path, help="write the markdown table here")
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--resummarize", type=Path, metavar="JSON",
                    help="recompute the summaries and the table from the raw runs of an earlier --out file")
    args = ap.parse_args(argv)
    if args.resummarize:
        return resummarize(args)
    if args.quick:
        args.size, args.steps, args.warmup, args.rounds = "tiny", 3, 0, 1
        args.anchor_tokens = args.anchor_tokens or 8
    if args.steps < args.warmup + 2:
        ap.error("--steps must be at least --warmup + 2")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    res = {"machine": machine(), "settings": {"batch": BATCH, "lr": LR, "beta": BETA, "steps": args.steps,
                                              "warmup": args.warmup, "rounds": args.rounds,
                                              "anchor_max_new_tokens": args.anchor_tokens or 64,
                                              "prompt_chars": PROMPT_LEN, "response_chars": RESPONSE_LEN},
           "sizes": {}}

    def log(msg):
        print(msg, flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for size in (("tiny", "medium") if args.size == "both" else (args.size,)):
            res["sizes"][size] = run_size(size, args, work, log)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = table(res, args.clock, args.stat)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
