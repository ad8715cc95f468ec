"""The one training loop, for SFT and for every preference method.

    for step in range(start, steps):
        lr <- warmup + schedule(step)
        for each micro-batch of this step's pairs (grad_accum of them):
            one policy forward over [chosen; rejected (; anchors)]  -> per-token log-probs
            features the method needs (reference log-probs, token KL, weights, anchors)
            loss = method.loss(TokenBatch).losses.mean() / grad_accum ; backward
        clip, optimizer step; log; checkpoint every N steps

Determinism and resume: the pairs of step s are a pure function of (seed, s) (a seeded
permutation per epoch), and every step reseeds torch from (seed, s) before any sampling, so
a run resumed from the checkpoint of step k replays steps k+1.. exactly as an uninterrupted
run does. The learning rate is a pure function of the step, so there is no scheduler state.
Checkpoints hold safetensors weights, the optimizer state (``torch.load(weights_only=True)``)
and a small JSON; nothing is unpickled.

The parts live beside this module, one job each: :mod:`.objectives` (what a micro-batch
computes), :mod:`.schedule` (length, learning rate, examples and seed of each step; the
optimizer) and :mod:`.checkpoint` (writing and resuming). Their public names are importable
from here as well.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.tokenize import TokenizedData
from ..schema import TrainSpec
from . import sharded
from .checkpoint import (CheckpointDamaged, checkpoints_newest_first, latest_checkpoint,  # noqa: F401
                         load_checkpoint, resume, save_checkpoint)
from .objectives import PreferenceObjective, SFTObjective, StepContext  # noqa: F401
from .schedule import lr_at, make_optimizer, reseed, resolve_schedule, step_indices, used_indices  # noqa: F401


class NumericalFault(RuntimeError):
    """A non-finite loss or gradient: the cell fails with the step and the last finite metrics."""

    def __init__(self, step: int, what: str, last_metrics: dict | None):
        self.step, self.what, self.last_metrics = step, what, last_metrics or {}
        super().__init__(f"non-finite {what} at step {step}; last finite metrics: "
                         f"{json.dumps(self.last_metrics, sort_keys=True)[:500]}")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024.0


@dataclass
class TrainResult:
    """``wall_s`` and ``tokens`` cover every step of the run, those before a resume included."""

    steps: int
    wall_s: float
    tokens: int
    last_metrics: dict
    resumed_from: int | None
    damaged_checkpoints: list[str] = field(default_factory=list)  # skipped on resume, file named
    # the trained model to evaluate and save: the one passed in, or under FSDP a plain copy
    # with the gathered weights on the main process (None on the others; core/sharded.py)
    model: Any = None


def train(model, data: TokenizedData, objective, cfg: TrainSpec, seed: int, run_dir: Path, *,
          accelerator=None, tokenizer=None, log_name: str = "train_log.jsonl",
          desc: str = "", on_step: Callable[[int, dict], None] | None = None,
          trackers=None, evaluator: Callable[[Any, int], dict] | None = None) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps; resumable from ``run_dir``.

    ``trackers`` (:class:`harness.trackers.Trackers`): every logged step goes to them too, and
    they are closed as failed if training raises. ``evaluator(model, step) -> dict``: with
    ``cfg.eval_every``, run before the first step, every ``eval_every`` steps and after the last,
    on the main process; its records go to ``eval_log.jsonl`` (and the trackers, as ``eval/``)."""
    try:
        return _train(model, data, objective, cfg, seed, Path(run_dir), accelerator, tokenizer, log_name,
                      desc, on_step, trackers, evaluator)
    except BaseException:
        if trackers is not None:
            trackers.finish(failed=True)
        raise


def _train(model, data, objective, cfg, seed, run_dir, accelerator, tokenizer, log_name, desc, on_step,
           trackers, evaluator) -> TrainResult:
    """``train`` itself (see there): set up, then one optimizer step at a time, then hand the
    trained model back."""
    from accelerate import Accelerator

    if len(data) == 0:
        raise ValueError("no training examples left after tokenization")
    cfg = resolve_schedule(cfg, len(data))
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_precision(cfg))
    if not acc.is_main_process:
        trackers = evaluator = None
    run = _set_up(model, cfg, acc, run_dir, log_name, trackers)
    run.evals = _EvalLog(run_dir / "eval_log.jsonl", evaluator, cfg.eval_every, run.start, run.resumed, trackers)
    run.evals.at(run.model, 0, acc)
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0
    bar = _progress(cfg.steps, run.start, desc)
    for step in range(run.start, cfg.steps):
        rec = _step(run, objective, data, StepContext(seed, step, pad_id, acc.device, tokenizer))
        _after_step(run, step + 1, rec, on_step, bar)
    trained = _finish(run, bar)
    return TrainResult(cfg.steps, run.step_time, run.tokens, run.last_metrics, run.resumed, run.damaged, trained)


@dataclass
class _Run:
    """What the loop carries from set-up to the end of one ``train`` call. ``last_metrics``,
    ``tokens`` and ``step_time`` start from the training log of a resumed run (the last finite
    metrics, for a fault right after the resume, and the cost of the steps done before the
    interruption)."""

    acc: Any
    model: Any          # as accelerate prepared it
    opt: Any
    cfg: TrainSpec      # with its schedule resolved (steps, warmup_steps)
    ckpt_root: Path
    resumed: int | None
    damaged: list[str]
    fsdp: bool
    skeleton: Any = None        # FSDP: the plain model the gathered weights go into (main process)
    trackers: Any = None
    writer: Any = None          # the training log (main process only)
    evals: Any = None           # _EvalLog
    last_metrics: dict = field(default_factory=dict)
    tokens: int = 0
    step_time: float = 0.0
    full_state: dict | None = None  # FSDP: the weights gathered at the last checkpoint

    @property
    def start(self) -> int:
        return self.resumed or 0


def _set_up(model, cfg: TrainSpec, acc, run_dir: Path, log_name: str, trackers) -> _Run:
    """Model on its device in training mode, the optimizer, the newest intact checkpoint (if
    any) loaded, accelerate's wrapping, and the training log cut back to that checkpoint."""
    from ..results import read_jsonl

    sharded.check(acc)
    fsdp = sharded.active(acc)
    model.to(acc.device)
    model.train()
    opt = make_optimizer(model, cfg)
    ckpt_root = run_dir / "checkpoints"
    # under FSDP the optimizer state is loaded after prepare, into the shards (core/sharded.py)
    resumed, damaged = resume(ckpt_root, model, None if fsdp else opt, acc.device)
    skel = sharded.skeleton(model) if fsdp and acc.is_main_process else None
    model, opt = acc.prepare(model, opt)
    if fsdp and resumed is not None:
        sharded.load_full(model, opt, ckpt_root / f"step-{resumed:08d}", acc.device)
    run = _Run(acc, model, opt, cfg, ckpt_root, resumed, damaged, fsdp, skel, trackers)
    log_path = run_dir / log_name
    if acc.is_main_process:  # one writer per file: other ranks never touch the log
        run.writer = _restarted_log(log_path, resumed, run.start)
        previous = read_jsonl(log_path) if resumed is not None and log_path.exists() else []
        run.last_metrics = previous[-1] if previous else {}
        run.tokens = sum(int(r.get("tokens", 0)) for r in previous)
        run.step_time = sum(float(r.get("step_s", 0.0)) for r in previous)
    return run


def _restarted_log(path: Path, resumed: int | None, start: int):
    """A writer for a log of step records: on resume the file is cut back to the checkpoint's
    step ``start``; a fresh run starts a fresh file."""
    from ..results import JsonlWriter, truncate_jsonl

    if resumed is not None and path.exists():
        truncate_jsonl(path, keep_while=lambda r: r.get("step", 0) <= start)
    elif resumed is None and path.exists():
        path.unlink()
    return JsonlWriter(path)


def _step(run: _Run, objective, data: TokenizedData, ctx: StepContext) -> dict:
    """Optimizer step ``ctx.step`` (0-based): learning rate, the step's examples, forward and
    backward over its micro-batches, clip and update. Returns the step's log record."""
    cfg, acc, step = run.cfg, run.acc, ctx.step
    t0 = time.perf_counter()
    lr = lr_at(step, cfg)
    for g in run.opt.param_groups:
        g["lr"] = lr
    idx = step_indices(len(data), step, cfg.batch_size * cfg.grad_accum, ctx.seed)
    reseed(ctx.seed, step)
    sums, n_tok = _accumulate(run, objective, data, idx, ctx)
    gn = _clip_and_update(run, step)
    dt = time.perf_counter() - t0
    world = acc.num_processes
    run.tokens += n_tok * world
    run.step_time += dt
    rec = {"step": step + 1, **{k: round(v, 8) for k, v in sums.items()}, "grad_norm": round(gn, 8),
           "lr": lr, "tokens": n_tok * world, "tokens_per_s": round(n_tok * world / dt, 2), "step_s": round(dt, 5),
           "peak_mem_mb": round(peak_memory_mb(acc.device), 1)}
    for k, v in ctx.counters.items():
        rec[f"count/{k}"] = v
    run.last_metrics = rec
    return rec


def _accumulate(run: _Run, objective, data: TokenizedData, idx: list[int], ctx: StepContext):
    """Forward and backward over the step's ``grad_accum`` micro-batches, every process taking
    its share of each: (the metrics averaged over the micro-batches, tokens this process read).
    A non-finite loss is a :class:`NumericalFault`, and so is a non-finite implicit reward."""
    cfg, acc, model = run.cfg, run.acc, run.model
    world, rank = acc.num_processes, acc.process_index
    micro = [idx[m * cfg.batch_size:(m + 1) * cfg.batch_size] for m in range(cfg.grad_accum)]
    sums: dict[str, float] = {}
    n_tok = 0
    for m, mb in enumerate(micro):
        mine = mb[rank::world] if world > 1 else mb
        sync = acc.no_sync(model) if (world > 1 and m < len(micro) - 1) else nullcontext()
        with sync, acc.autocast():
            loss, metrics, ntk = objective.step(model, data, mine, ctx)
        if not torch.isfinite(loss):
            raise NumericalFault(ctx.step + 1, "loss", run.last_metrics)
        bad = sorted(k for k, v in metrics.items() if k.startswith("rewards/") and not math.isfinite(v))
        if bad:  # a method's implicit reward is part of its result: NaN is a fault, finite loss or not
            raise NumericalFault(ctx.step + 1, f"{bad[0]} (the loss was finite)", run.last_metrics)
        acc.backward(loss / cfg.grad_accum)
        n_tok += ntk
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v / len(micro)
    return sums, n_tok


def _clip_and_update(run: _Run, step: int) -> float:
    """Clip the gradient to ``max_grad_norm`` (or only measure its norm), then the optimizer
    step; a non-finite norm is a :class:`NumericalFault` and nothing is updated."""
    model = run.model
    if run.cfg.max_grad_norm is not None:
        gn = run.acc.clip_grad_norm_(model.parameters(), run.cfg.max_grad_norm)
    else:
        gn = torch.norm(torch.stack([p.grad.detach().norm() for p in model.parameters() if p.grad is not None]))
    gn = float(gn)
    if not math.isfinite(gn):
        raise NumericalFault(step + 1, "gradient norm", run.last_metrics)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    return gn


def _after_step(run: _Run, done: int, rec: dict, on_step, bar) -> None:
    """After ``done`` steps: the log (every ``log_every`` steps and the last) and trackers, the
    evaluation when due, the caller's ``on_step``, the progress bar, and the checkpoint (every
    ``checkpoint_every`` steps and the last)."""
    cfg = run.cfg
    last = done == cfg.steps
    if run.writer is not None and (done % cfg.log_every == 0 or last):
        run.writer.write(rec)
        if run.trackers is not None:
            run.trackers.log(rec, done)
    run.evals.at(run.model, done, run.acc, last=last)
    if on_step is not None:
        on_step(done, rec)
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}")
    if last or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
        _checkpoint(run, done)


def _checkpoint(run: _Run, step: int) -> None:
    """Save the checkpoint of ``step`` (main process) and drop the oldest beyond
    ``keep_checkpoints``; under FSDP every process takes part in gathering the full states."""
    from ..results import rotate_checkpoints

    run.full_state, full_opt = sharded.gather(run.acc, run.model, run.opt) if run.fsdp else (None, None)
    if run.acc.is_main_process:
        save_checkpoint(run.ckpt_root, step, run.acc.unwrap_model(run.model), run.opt, run.full_state, full_opt)
        rotate_checkpoints(run.ckpt_root, run.cfg.keep_checkpoints)


def _finish(run: _Run, bar):
    """Close the logs and the bar; the trained model: the one passed in, or under FSDP a plain
    copy with the gathered weights (main process; ``sharded.unsharded``)."""
    if run.writer is not None:
        run.writer.close()
    run.evals.close()
    if bar is not None:
        bar.close()
    if not run.fsdp:
        return run.acc.unwrap_model(run.model)
    if run.start >= run.cfg.steps:  # resumed from the final checkpoint (else the last step gathered the weights)
        run.full_state, _ = sharded.gather(run.acc, run.model)
    return sharded.unsharded(run.acc, run.skeleton, run.full_state, run.acc.device)


def log_means(log_path: Path, keys) -> dict[str, float]:
    """``{"train/<key with / as _>": mean}`` over the records of a training log that hold the
    key (the logged steps, ``train.log_every``); keys no record holds are left out."""
    from ..results import read_jsonl

    recs = read_jsonl(log_path) if Path(log_path).is_file() else []
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in recs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if vals:
            out["train/" + k.replace("/", "_")] = round(sum(vals) / len(vals), 6)
    return out


class _EvalLog:
    """The evaluations during training (``train.eval_every``): before the first step, every
    ``every`` steps and after the last, into ``eval_log.jsonl`` (cut back to the checkpoint on
    resume, like the training log) and the trackers."""

    def __init__(self, path: Path, evaluator, every: int, start: int, resumed, trackers):
        self.evaluator, self.every, self.trackers = (evaluator, every, trackers) if every else (None, 0, None)
        self.start, self.writer = start, None
        if self.evaluator is None:
            return
        self.writer = _restarted_log(path, resumed, start)

    def at(self, model, step: int, acc, last: bool = False) -> None:
        if self.evaluator is None or (step == 0 and self.start > 0):
            return
        if step and step % self.every and not last:
            return
        t0 = time.perf_counter()
        rec = {"step": step, **self.evaluator(acc.unwrap_model(model), step)}
        rec["eval_s"] = round(time.perf_counter() - t0, 4)
        self.writer.write(rec)
        if self.trackers is not None:
            self.trackers.log(rec, step, prefix="eval/")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _precision(cfg: TrainSpec) -> str:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available()):
        return "bf16"
    return "no"


def _progress(total: int, start: int, desc: str):
    if not sys.stderr.isatty() or os.environ.get("HARNESS_NO_PROGRESS"):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc or "train", leave=False, dynamic_ncols=True)
