#!/usr/bin/env python
"""The harness's DPO and TI-DPO step against TRL 1.16's ``DPOTrainer`` on one GPU, at real sizes.

    python benchmarks/bench_gpu.py                                    # every shape and kernel, 2 rounds
    python benchmarks/bench_gpu.py --models llama-3.2-1b --rounds 3 --steps 12
    python benchmarks/bench_gpu.py --device cpu --models tiny --quick  # the CI test (seconds)

Models are built with ``from_config`` from the published shapes in ``gpu_specs.SHAPES``
(random weights, nothing downloaded), in bf16 on a GPU (what a cell does with ``dtype: auto``),
under each kernel variant that can run here (SDPA; FlashAttention-2 and Liger when installed;
the others are listed with the reason). Every configuration trains the same data (8 pairs x
up to 1,024 tokens a row by default) for ``--steps`` steps from the same seeded weights:

* harness: ``harness.core.train.train`` with ``PreferenceObjective(method, Features(...))``,
  the code path of a cell: a reference loaded through ``ref_loader`` only to fill the on-disk
  log-prob cache (timed once, as "reference pass"), then dropped; DPO and TI-DPO (token weights
  from the policy, every step, or from the reference, cached);
* TRL: ``DPOTrainer`` with its defaults (a reference forward every step), with
  ``precompute_ref_log_probs`` (and no ``ref_model``: no reference held while training), and
  with ``train_sampling_strategy="group_by_length"``.

Rounds alternate harness and TRL and reverse the order every other round. A row's throughput
is 1 / median(step period / step tokens) over every timed step of every round; its MFU is the
same statistic over model FLOPs (``gpu_specs.row_flops``) divided by the card's dense bf16 peak
(``gpu_specs.PEAKS``, or ``--peak-tflops``); peak memory is ``torch.cuda.max_memory_allocated``
over the run (reset before the run's models are built). Results go to ``--out-dir`` as
``<card>.json`` and ``<card>.md``. benchmarks/README.md has the method, goals and results.
"""
from __future__ import annotations

import os

for _k, _v in (("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
               ("HF_DATASETS_OFFLINE", "1"), ("HARNESS_NO_PROGRESS", "1"), ("TQDM_DISABLE", "1"),
               ("TRL_EXPERIMENTAL_SILENCE", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_k, _v)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import methods  # noqa: E402
from gpu_specs import SHAPES, FlopModel, apply_liger, pair_flops, peak_for, transformers_config, variants  # noqa: E402
from harness.core import train as train_module  # noqa: E402
from harness.core.features import Features  # noqa: E402
from harness.core.train import PreferenceObjective, step_indices, train  # noqa: E402
from harness.data.pairs import PreferencePair  # noqa: E402
from harness.data.tokenize import tokenize  # noqa: E402
from harness.models import char_tokenizer  # noqa: E402
from harness.paths import slug  # noqa: E402
from harness.schema import TrainSpec  # noqa: E402

ALPHABET = "".join(chr(0x100 + i) for i in range(253))  # one token per character (bench_dpo.py)
LR, BETA, SEED = 1e-6, 0.1, 0

HARNESS_ROWS = ("harness DPO", "harness TI-DPO, policy weights", "harness TI-DPO, reference weights")
TRL_ROWS = ("TRL DPO", "TRL DPO, precompute_ref_log_probs", "TRL DPO, group_by_length")
ROW_KEYS = dict(zip(("dpo", "tidpo-policy", "tidpo-reference", "trl", "trl-precompute", "trl-grouped"),
                    HARNESS_ROWS + TRL_ROWS))
NOT_SUPPORTED = {  # what issue 15 asks for and neither framework offers in these versions
    "padding-free batches": "the harness pads every micro-batch to its longest row; TRL 1.16 accepts "
                            "padding_free=True but warns and falls back to padding ('temporarily unavailable "
                            "since the DPO refactor', DPOConfig docstring)",
    "length-grouped batches (harness)": "the harness draws each step's pairs from a seeded permutation "
                                        "(step_indices), with no length grouping; TRL's is measured",
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def make_pairs(n: int, max_length: int, fixed: bool, seed: int = SEED) -> list[PreferencePair]:
    """``n`` random pairs whose rows (prompt + response + EOS) fit ``max_length`` tokens: prompts
    of max/4..max/2 characters, responses of max/4..max/2-1 (``fixed``: max/2 and max/2-1)."""
    rng = random.Random(seed)
    half = max_length // 2
    p_len, r_len = ((half, half), (half - 1, half - 1)) if fixed else ((max_length // 4, half),
                                                                         (max_length // 4, half - 1))

    def text(lo_hi):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(*lo_hi)))

    return [PreferencePair(text(p_len), text(r_len), text(r_len), {}) for _ in range(n)]


class Bench:
    """One model shape under one kernel variant: its data, and one run of each configuration."""

    def __init__(self, shape: str, variant, args, workdir: Path):
        self.shape, self.variant, self.args, self.workdir = shape, variant, args, workdir
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.tok = char_tokenizer(ALPHABET, max_length=args.max_length)
        self.config = transformers_config(shape, self.tok.pad_token_id, self.tok.eos_token_id)
        self.flop_model = FlopModel.of(self.config)
        self.dtype = torch.bfloat16 if args.weights == "bf16" else torch.float32
        self.pairs = make_pairs(args.batch * args.steps, args.max_length, args.lengths == "fixed")
        self.data = tokenize(self.pairs, self.tok, args.max_length, args.max_length // 2 + 1, False)
        assert len(self.data) == len(self.pairs)
        self.cache = workdir / "ref-cache"
        self._n = 0
        self.reference_pass_s: float | None = None
        self.checked_trl = False

    def build(self):
        """The model, seeded: the policy and its reference start from the same weights."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(SEED)
        with torch.device(self.device):
            m = AutoModelForCausalLM.from_config(self.config, attn_implementation=self.variant.attn, dtype=self.dtype)
        if self.variant.liger:
            apply_liger(m, SHAPES[self.shape].arch)
        m.generation_config.pad_token_id = self.tok.pad_token_id
        m.generation_config.eos_token_id = self.tok.eos_token_id
        return m

    def tmp(self, what: str) -> Path:
        self._n += 1
        d = self.workdir / f"{what}-{self._n}"
        d.mkdir(parents=True)
        return d

    def pair(self, i: int) -> tuple[int, int, int]:
        d = self.data
        return len(d.prompts[i]), len(d.chosen[i]), len(d.rejected[i])

    def tokens_and_flops(self, lengths: list[tuple[int, int, int]], passes: int) -> tuple[int, int]:
        toks = sum(2 * p + c + r for p, c, r in lengths)
        return toks, sum(pair_flops(self.flop_model, p, c, r, passes) for p, c, r in lengths)

    def measured(self, stamps, per_step) -> dict:
        """Step periods (between consecutive step ends) with their tokens and FLOPs, first
        ``--warmup`` periods dropped."""
        w = self.args.warmup
        periods = [b - a for a, b in zip(stamps, stamps[1:])][w:]
        steps = per_step[1:len(stamps)][w:]
        return {"periods": periods, "tokens": [t for t, _ in steps], "flops": [f for _, f in steps]}

    # ------------------------------------------------------------------------ harness
    def features(self, method, counters):
        bench = self

        class BenchFeatures(Features):
            # the cell knows its reference's fingerprint from the SFT stage; so does the benchmark
            ref_id = f"bench-{bench.shape}-{bench.variant.attn}-{bench.args.weights}-{SEED}"

        return BenchFeatures(method, self.data, ref_loader=self.build, cache_dir=self.cache, device=self.device,
                             pad_id=self.tok.pad_token_id, tokenizer=self.tok, counters=counters)

    def fill_cache(self) -> None:
        """The reference pass that fills the log-prob cache every harness DPO run then reads."""
        free(self.device)
        sync(self.device)
        t0 = time.perf_counter()
        self.features(methods.get("dpo", beta=BETA), {})
        sync(self.device)
        self.reference_pass_s = time.perf_counter() - t0

    def harness(self, row: str) -> dict:
        if row == HARNESS_ROWS[0]:
            m = methods.get("dpo", beta=BETA)
        else:
            src = "policy" if "policy" in row else "reference"
            m = methods.get("tidpo", importance_source=src, **self.args.tidpo)
        free(self.device)
        model = self.build()
        counters: dict = {}
        feats = self.features(m, counters)
        cfg = TrainSpec(steps=self.args.steps, batch_size=self.args.batch, lr=LR, checkpoint_every=0,
                        max_length=self.args.max_length, max_prompt_length=self.args.max_length // 2 + 1,
                        precision="bf16" if self.cuda else "fp32", max_grad_norm=1.0)
        stamps: list[float] = []

        def on_step(step, rec):
            sync(self.device)
            stamps.append(time.perf_counter())

        per_step = [self.tokens_and_flops([self.pair(i) for i in step_indices(len(self.data), s, self.args.batch, SEED)], 3)
                    for s in range(self.args.steps)]
        # train() writes a checkpoint after its last step, outside every timed period: skipped
        # here (GBs per run at these sizes), the rest is the cell's code path
        with _no_final_checkpoint():
            train(model, self.data, PreferenceObjective(m, feats), cfg, SEED, self.tmp("harness"), tokenizer=self.tok,
                  on_step=on_step)
        out = {**self.measured(stamps, per_step), "peak_gb": peak_gb(self.device),
               "counters": {k: v for k, v in counters.items() if isinstance(v, int)}}
        del model, feats
        return out

    # ---------------------------------------------------------------------------- TRL
    def trl(self, row: str) -> dict:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer

        precompute, grouped = row == TRL_ROWS[1], row == TRL_ROWS[2]
        free(self.device)
        stamps: list[float] = []
        device = self.device

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                sync(device)
                stamps.append(time.perf_counter())

        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                 # the sampler's lengths: characters are tokens here (+ EOS on the longer response)
                 "length": len(p.prompt) + max(len(p.chosen), len(p.rejected)) + 1} for p in self.pairs]
        # the sampler reads the "length" column, which the trainer would drop as unused
        extra = {"train_sampling_strategy": "group_by_length", "remove_unused_columns": False} if grouped else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args = DPOConfig(
                output_dir=str(self.tmp("trl")), per_device_train_batch_size=self.args.batch, max_steps=self.args.steps,
                learning_rate=LR, beta=BETA, max_length=self.args.max_length, precompute_ref_log_probs=precompute,
                use_cpu=not self.cuda, bf16=self.cuda, gradient_checkpointing=False, report_to="none",
                logging_strategy="no", save_strategy="no", disable_tqdm=True, seed=SEED, max_grad_norm=1.0,
                weight_decay=0.0, dataloader_num_workers=0, **extra)
            # precompute: no ref_model, so TRL fills its log-probs from the (identical) initial policy
            # and holds no reference while training, as the harness does
            trainer = DPOTrainer(model=self.build(), ref_model=None if precompute else self.build(), args=args,
                                 train_dataset=Dataset.from_list(rows), processing_class=self.tok, callbacks=[Stamp()])
        if not self.checked_trl:
            self._check_same_tokens(trainer.train_dataset)
            self.checked_trl = True
        per_step: list[tuple[int, int]] = []
        collate = trainer.data_collator
        passes = 3 if precompute else 4

        def counting(examples):
            lengths = [(len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples]
            per_step.append(self.tokens_and_flops(lengths, passes))
            return collate(examples)

        trainer.data_collator = counting
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer.train()
        out = {**self.measured(stamps, per_step), "peak_gb": peak_gb(self.device), "optimizer": str(args.optim),
               "reference_held": trainer.ref_model is not None}
        del trainer
        return out

    def _check_same_tokens(self, ds) -> None:
        """TRL's tokenized rows must be the harness's, token for token: the same work."""
        d = self.data
        for i in range(len(ds)):
            ex = ds[i]
            if (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]) != (d.prompts[i], d.chosen[i], d.rejected[i]):
                raise SystemExit(f"benchmark bug: TRL tokenized pair {i} differently from the harness")


@contextlib.contextmanager
def _no_final_checkpoint():
    saved = train_module.save_checkpoint
    train_module.save_checkpoint = lambda *a, **k: None
    try:
        yield
    finally:
        train_module.save_checkpoint = saved


# ---------------------------------------------------------------------------- summary
def summarize(runs: list[dict], peak_tflops: float | None) -> dict:
    """Median per-token and per-FLOP cost over every timed step of every round."""
    s_tok = [p / t for r in runs for p, t in zip(r["periods"], r["tokens"])]
    s_flop = [p / f for r in runs for p, f in zip(r["periods"], r["flops"])]
    if not s_tok:
        return {"tokens_per_s": None, "tflops": None, "mfu": None, "step_ms": None, "peak_gb": None, "steps": 0}
    tok_s = 1.0 / statistics.median(s_tok)
    tflops = 1.0 / statistics.median(s_flop) / 1e12
    mean_tokens = statistics.mean(t for r in runs for t in r["tokens"])
    peaks = [r["peak_gb"] for r in runs if r.get("peak_gb") is not None]
    return {"tokens_per_s": tok_s, "tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None,
            "step_ms": 1000 * mean_tokens / tok_s, "peak_gb": max(peaks) if peaks else None, "steps": len(s_tok)}


def run_variant(shape: str, variant, rows: list[str], args, workdir: Path, peak: float | None, log) -> dict:
    b = Bench(shape, variant, args, workdir)
    b.fill_cache()
    log(f"  reference pass (fills the harness's cache): {b.reference_pass_s:.2f} s")
    if not args.quick:  # one untimed run of each framework keeps first-call costs out of round 1
        b.harness(HARNESS_ROWS[0])
        b.trl(TRL_ROWS[0])
    runs: dict[str, list[dict]] = {r: [] for r in rows}
    for rnd in range(args.rounds):
        for row in (rows if rnd % 2 == 0 else rows[::-1]):
            r = b.harness(row) if row in HARNESS_ROWS else b.trl(row)
            runs[row].append(r)
            tok = sum(r["tokens"]) / max(sum(r["periods"]), 1e-12)
            mem = "n/a (CPU)" if r["peak_gb"] is None else f"{r['peak_gb']:.1f} GB"
            log(f"  round {rnd + 1} {row:38s} {tok:10.0f} tok/s (mean step)  peak memory {mem}")
    free(b.device)
    return {"reference_pass_s": b.reference_pass_s, "runs": runs,
            "summary": {row: summarize(rs, peak) for row, rs in runs.items()},
            "tokens_per_pair": statistics.mean(2 * p + c + r for p, c, r in map(b.pair, range(len(b.data))))}


# ----------------------------------------------------------------------------- driver
def machine(device: torch.device) -> dict:
    import importlib.metadata as md

    import transformers
    import trl

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {_cpu_name()}"
    return {"card": card, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "trl": trl.__version__,
            "flash_attn": version("flash-attn") or version("flash_attn"), "liger_kernel": version("liger-kernel"),
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_entry(card: str, override: float | None) -> dict:
    if override:
        return {"tflops": override, "source": "--peak-tflops"}
    p = peak_for(card)
    if p is None:
        return {"tflops": None, "source": f"'{card}' is not in gpu_specs.PEAKS; pass --peak-tflops"}
    return {"tflops": p.tflops, "source": p.source}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-360m,qwen2.5-0.5b,llama-3.2-1b",
                    help=f"comma-separated shapes from gpu_specs.SHAPES: {', '.join(SHAPES)}")
    ap.add_argument("--variants", default="sdpa,fa2,liger", help="comma-separated: sdpa, fa2, liger")
    ap.add_argument("--rows", default=",".join(ROW_KEYS),
                    help="comma-separated configurations: " + "; ".join(f"{k} = {v}" for k, v in ROW_KEYS.items()))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights", choices=("bf16", "fp32"), help="weights dtype (default: bf16 on a GPU, fp32 on CPU)")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--max-length", type=int, help="longest row (prompt + response) in tokens (default 1024; "
                                                  "--quick: 64)")
    ap.add_argument("--lengths", choices=("varied", "fixed"), default="varied",
                    help="varied: prompts max/4..max/2, responses max/4..max/2-1 tokens; fixed: every row max")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="step periods dropped at the start of every run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all configurations, alternating")
    ap.add_argument("--anchor-tokens", type=int, default=None, help="TI-DPO anchor_max_new_tokens (default: the method's)")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, for a card gpu_specs.PEAKS lacks")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results", help="where <card>.json and <card>.md go")
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--quick", action="store_true", help="3 steps, 1 round, no warm-up runs, 8-token anchors")
    ap.add_argument("--report", type=Path, metavar="JSON", help="print the Markdown report of a saved result")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 0, 1
        args.anchor_tokens = args.anchor_tokens or 8
    args.max_length = args.max_length or (64 if args.quick else 1024)
    if args.steps < args.warmup + 2:
        ap.error("--steps must be at least --warmup + 2")
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in SHAPES:
            ap.error(f"--models: unknown shape {m!r}; choose from {', '.join(SHAPES)}")
    keys = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in keys:
        if r not in ROW_KEYS:
            ap.error(f"--rows: unknown configuration {r!r}; choose from {', '.join(ROW_KEYS)}")
    args.rows = [ROW_KEYS[r] for r in keys]
    args.weights = args.weights or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.tidpo = {"anchor_max_new_tokens": args.anchor_tokens} if args.anchor_tokens else {}
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.report:
        from gpu_report import table

        print(table(json.loads(args.report.read_text())), end="")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (the tiny CI size) or on a GPU machine", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("HARNESS_THREADS") or os.environ.get("OMP_NUM_THREADS") or 1))
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    res = run(args, device)
    from gpu_report import table

    text = table(res)
    print("\n" + text)
    name = slug(res["machine"]["card"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out_dir / f"{name}.md").write_text(text)
    print(f"wrote {args.out_dir / (name + '.json')} and {args.out_dir / (name + '.md')}")
    return 0


def run(args, device: torch.device) -> dict:
    mach = machine(device)
    peak = peak_entry(mach["card"], args.peak_tflops)
    res = {"machine": mach, "peak": peak, "not_supported": NOT_SUPPORTED, "shapes": {},
           "settings": {"batch": args.batch, "max_length": args.max_length, "lengths": args.lengths,
                        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "weights": args.weights,
                        "lr": LR, "beta": BETA, "seed": SEED, "rows": args.rows, "tidpo": args.tidpo or "defaults"}}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        for shape in args.models:
            spec = SHAPES[shape]
            res["shapes"][shape] = entry = {"params": spec.params, "source": spec.source, "variants": {}}
            print(f"\n== {shape}: {spec.params / 1e6:.1f}M parameters, {args.batch} pairs x up to "
                  f"{args.max_length} tokens, {args.steps} steps x {args.rounds} rounds", flush=True)
            for v in variants(args.variants.split(","), device):
                if v.skip:
                    entry["variants"][v.name] = {"skipped": v.skip}
                    print(f"  {v.name}: skipped: {v.skip}", flush=True)
                    continue
                print(f" -- {v.name}", flush=True)
                try:
                    entry["variants"][v.name] = run_variant(shape, v, args.rows, args, work / f"{shape}-{slug(v.name)}",
                                                            peak["tflops"], lambda msg: print(msg, flush=True))
                except (RuntimeError, ImportError, ValueError) as e:  # a kernel that installs but fails here
                    if v.name == "sdpa":
                        raise
                    entry["variants"][v.name] = {"skipped": f"failed: {type(e).__name__}: {str(e)[:300]}"}
                    print(f"  {v.name}: failed: {e}", flush=True)
                    free(device)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
