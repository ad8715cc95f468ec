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
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data.tokenize import TokenizedData
from ..schema import TrainSpec
from . import sharded
from .batch import collate, compact, gather_logps, response_logits


class NumericalFault(RuntimeError):
    """A non-finite loss or gradient: the cell fails with the step and the last finite metrics."""

    def __init__(self, step: int, what: str, last_metrics: dict | None):
        self.step, self.what, self.last_metrics = step, what, last_metrics or {}
        super().__init__(f"non-finite {what} at step {step}; last finite metrics: "
                         f"{json.dumps(self.last_metrics, sort_keys=True)[:500]}")


# ----------------------------------------------------------------------- objectives
class SFTObjective:
    """Negative log-likelihood of the response tokens, averaged over all tokens of the batch."""

    kind = "sft"

    def step(self, model, data: TokenizedData, idx: list[int], ctx: "StepContext") -> tuple[torch.Tensor, dict, int]:
        rows = collate([data.prompts[i] for i in idx], [data.chosen[i] for i in idx], ctx.pad_id).to(ctx.device)
        logps = gather_logps(response_logits(model, rows), rows)
        loss = -logps.sum() / rows.resp_mask.sum()
        return loss, {"loss": loss.item()}, rows.n_tokens


class PreferenceObjective:
    """Builds a ``methods.TokenBatch`` from one policy forward plus the features ``method.needs``."""

    kind = "preference"

    def __init__(self, method, features):
        self.method, self.features = method, features

    def forward(self, model, data: TokenizedData, idx: list[int], ctx: "StepContext"):
        """The method's output on pairs ``idx``: (TokenBatch, LossOutput, tokens processed)."""
        from methods import TokenBatch

        f = self.features
        prompts = f.prompts_of([data.prompts[i] for i in idx])
        chosen = [data.chosen[i] for i in idx]
        rejected = [data.rejected[i] for i in idx]
        anchors = f.anchors(model, prompts, idx) if "anchor" in self.method.needs else None
        in_forward = f.attribution_in_forward(model)
        weights = None if in_forward else f.weights(model, idx, prompts, chosen, rejected)
        B = len(idx)
        all_prompts = prompts + prompts + (prompts if anchors is not None else [])
        all_resp = chosen + rejected + (anchors or [])
        holes = f.anchor_holes(anchors) if anchors is not None else None
        rows = collate(all_prompts, all_resp, ctx.pad_id, None if holes is None else [[]] * (2 * B) + holes)
        rows = rows.to(ctx.device)
        with f.capture_embeddings(model, in_forward) as cap:
            logits = response_logits(model, rows)
        if in_forward:
            weights = f.weights_from_forward(cap, logits, rows, prompts, chosen, rejected)
        logps = gather_logps(logits, rows)
        Tc, Tr = max(map(len, chosen)), max(map(len, rejected))
        kw: dict[str, Any] = dict(
            chosen_logps=logps[:B, :Tc], rejected_logps=logps[B:2 * B, :Tr],
            chosen_mask=rows.resp_mask[:B, :Tc], rejected_mask=rows.resp_mask[B:2 * B, :Tr],
        )
        if anchors is not None:  # scored anchor tokens to the front (holes: see anchors.py)
            kw["anchor_logps"], kw["anchor_mask"] = compact(logps[2 * B:], rows.resp_mask[2 * B:])
        f.fill(kw, logits, rows, idx, prompts, anchors, weights)
        batch = TokenBatch(**kw)
        return batch, self.method(batch), rows.n_tokens

    def step(self, model, data: TokenizedData, idx: list[int], ctx: "StepContext"):
        from methods.dpo import masked_sum

        before = dict(self.features.counters)
        batch, out, n_tokens = self.forward(model, data, idx, ctx)
        for k, v in self.features.counters.items():  # what this micro-batch's features did
            if isinstance(v, int) and v != before.get(k, 0):
                ctx.counters[k] = ctx.counters.get(k, 0) + v - before.get(k, 0)
        loss = out.losses.mean()
        m = {
            "loss": loss.item(),
            "rewards/chosen": out.chosen_rewards.mean().item(),
            "rewards/rejected": out.rejected_rewards.mean().item(),
            "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean().item(),
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean().item(),
            # where, not a product with the mask: a non-finite padded slot cannot leak (dpo.py)
            "logps/chosen": masked_sum(batch.chosen_logps.detach(), batch.chosen_mask).mean().item(),
            "logps/rejected": masked_sum(batch.rejected_logps.detach(), batch.rejected_mask).mean().item(),
        }
        m.update({k: float(v) for k, v in out.metrics.items()})
        return loss, m, n_tokens


# ------------------------------------------------------------------------- the loop
@dataclass
class StepContext:
    """One optimizer step's settings; ``counters`` collects what the step's features did
    (reference forwards, attribution passes, sampled anchor tokens), logged as ``count/*``."""

    seed: int
    step: int
    pad_id: int
    device: torch.device
    tokenizer: Any = None
    counters: dict = field(default_factory=dict)


def resolve_schedule(cfg: TrainSpec, n_examples: int) -> TrainSpec:
    """``cfg`` with its length in steps and its warmup in steps, as the loop runs them:
    ``epochs`` -> ``steps = ceil(epochs x n_examples / (batch_size x grad_accum))``, and
    ``warmup_ratio`` -> ``warmup_steps = ceil(warmup_ratio x steps)`` (transformers'
    ``TrainingArguments.get_warmup_steps``). A copy; ``cfg`` is left as written."""
    from dataclasses import replace

    steps = cfg.steps
    if cfg.epochs is not None:
        steps = max(1, math.ceil(round(cfg.epochs * n_examples / (cfg.batch_size * cfg.grad_accum), 9)))
    if steps is None:
        raise ValueError("train settings give neither steps nor epochs")
    warm = math.ceil(round(cfg.warmup_ratio * steps, 9)) if cfg.warmup_ratio is not None else cfg.warmup_steps
    return replace(cfg, steps=steps, epochs=None, warmup_steps=warm, warmup_ratio=None)


def lr_at(step: int, cfg: TrainSpec) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.schedule == "linear":
        return cfg.lr * (1.0 - frac)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def step_indices(n: int, step: int, eff_batch: int, seed: int) -> list[int]:
    """The examples of optimizer step ``step``: consecutive slices of seeded per-epoch
    permutations (an epoch boundary may fall inside a step)."""
    out: list[int] = []
    pos = step * eff_batch
    while len(out) < eff_batch:
        epoch, off = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(eff_batch - len(out), n - off)
        out.extend(int(i) for i in perm[off: off + take])
        pos += take
    return out


def used_indices(n: int, steps: int, eff_batch: int, seed: int) -> list[int]:
    """Every example ``steps`` optimizer steps of ``step_indices`` read, sorted: the first
    ``steps * eff_batch`` of epoch 0's permutation, or all ``n`` once a run reaches epoch 1."""
    total = steps * eff_batch
    if total >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng([seed, 0]).permutation(n)[:total])


def make_optimizer(model, cfg: TrainSpec):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
    """``train`` itself (see there); one function, as the loop reads best whole."""
    from ..results import JsonlWriter, read_jsonl, rotate_checkpoints, truncate_jsonl
    from accelerate import Accelerator

    if len(data) == 0:
        raise ValueError("no training examples left after tokenization")
    cfg = resolve_schedule(cfg, len(data))
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_precision(cfg))
    if not acc.is_main_process:
        trackers = evaluator = None
    device = acc.device
    sharded.check(acc)
    fsdp = sharded.active(acc)
    model.to(device)
    model.train()
    opt = make_optimizer(model, cfg)
    ckpt_root = run_dir / "checkpoints"
    # under FSDP the optimizer state is loaded after prepare, into the shards (core/sharded.py)
    resumed, damaged = resume(ckpt_root, model, None if fsdp else opt, device)
    start = resumed or 0
    skel = sharded.skeleton(model) if fsdp and acc.is_main_process else None
    model, opt = acc.prepare(model, opt)
    if fsdp and resumed is not None:
        sharded.load_full(model, opt, ckpt_root / f"step-{resumed:08d}", device)
    full_state = None
    log_path = run_dir / log_name
    writer = None
    if acc.is_main_process:  # one writer per file: other ranks never touch the log
        if resumed is not None and log_path.exists():
            truncate_jsonl(log_path, keep_while=lambda r: r.get("step", 0) <= start)
        elif resumed is None and log_path.exists():
            log_path.unlink()
        writer = JsonlWriter(log_path)
    evals = _EvalLog(run_dir / "eval_log.jsonl", evaluator, cfg.eval_every, start, resumed, trackers)
    evals.at(model, 0, acc)
    previous = read_jsonl(log_path) if (writer is not None and resumed is not None and log_path.exists()) else []
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0
    eff = cfg.batch_size * cfg.grad_accum
    world, rank = acc.num_processes, acc.process_index
    # A resumed run carries on from what the log already holds: the last finite metrics (for
    # a fault right after the resume) and the cost of the steps done before the interruption.
    last_metrics: dict = previous[-1] if previous else {}
    total_tokens = sum(int(r.get("tokens", 0)) for r in previous)
    step_time = sum(float(r.get("step_s", 0.0)) for r in previous)
    bar = _progress(cfg.steps, start, desc)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = step_indices(len(data), step, eff, seed)
        # Every process takes its share of each micro-batch of the effective batch.
        micro = [idx[m * cfg.batch_size:(m + 1) * cfg.batch_size] for m in range(cfg.grad_accum)]
        _reseed(seed, step)
        ctx = StepContext(seed, step, pad_id, device, tokenizer)
        sums: dict[str, float] = {}
        n_tok = 0
        for m, mb in enumerate(micro):
            mine = mb[rank::world] if world > 1 else mb
            sync = acc.no_sync(model) if (world > 1 and m < len(micro) - 1) else _null()
            with sync, acc.autocast():
                loss, metrics, ntk = objective.step(model, data, mine, ctx)
            if not torch.isfinite(loss):
                raise NumericalFault(step + 1, "loss", last_metrics)
            bad = sorted(k for k, v in metrics.items() if k.startswith("rewards/") and not math.isfinite(v))
            if bad:  # a method's implicit reward is part of its result: NaN is a fault, finite loss or not
                raise NumericalFault(step + 1, f"{bad[0]} (the loss was finite)", last_metrics)
            acc.backward(loss / cfg.grad_accum)
            n_tok += ntk
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v / len(micro)
        if cfg.max_grad_norm is not None:
            gn = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        else:
            gn = torch.norm(torch.stack([p.grad.detach().norm() for p in model.parameters() if p.grad is not None]))
        gn = float(gn)
        if not math.isfinite(gn):
            raise NumericalFault(step + 1, "gradient norm", last_metrics)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        total_tokens += n_tok * world
        step_time += dt
        rec = {"step": step + 1, **{k: round(v, 8) for k, v in sums.items()}, "grad_norm": round(gn, 8),
               "lr": lr, "tokens": n_tok * world, "tokens_per_s": round(n_tok * world / dt, 2), "step_s": round(dt, 5),
               "peak_mem_mb": round(peak_memory_mb(device), 1)}
        for k, v in ctx.counters.items():
            rec[f"count/{k}"] = v
        last_metrics = rec
        if writer is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            writer.write(rec)
            if trackers is not None:
                trackers.log(rec, step + 1)
        evals.at(model, step + 1, acc, last=step + 1 == cfg.steps)
        if on_step is not None:
            on_step(step + 1, rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}")
        done = step + 1 == cfg.steps
        if done or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
            # under FSDP every process takes part in gathering the full states
            full_state, full_opt = sharded.gather(acc, model, opt) if fsdp else (None, None)
            if acc.is_main_process:
                save_checkpoint(ckpt_root, step + 1, acc.unwrap_model(model), opt, full_state, full_opt)
                rotate_checkpoints(ckpt_root, cfg.keep_checkpoints)
    if writer is not None:
        writer.close()
    evals.close()
    if bar is not None:
        bar.close()
    if fsdp:
        if start >= cfg.steps:  # resumed from the final checkpoint (else the last step gathered the weights)
            full_state, _ = sharded.gather(acc, model)
    trained = sharded.unsharded(acc, skel, full_state, device) if fsdp else acc.unwrap_model(model)
    return TrainResult(cfg.steps, step_time, total_tokens, last_metrics, resumed, damaged, trained)


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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _EvalLog:
    """The evaluations during training (``train.eval_every``): before the first step, every
    ``every`` steps and after the last, into ``eval_log.jsonl`` (cut back to the checkpoint on
    resume, like the training log) and the trackers."""

    def __init__(self, path: Path, evaluator, every: int, start: int, resumed, trackers):
        from ..results import JsonlWriter, truncate_jsonl

        self.evaluator, self.every, self.trackers = (evaluator, every, trackers) if every else (None, 0, None)
        self.start, self.writer = start, None
        if self.evaluator is None:
            return
        if resumed is not None and path.exists():
            truncate_jsonl(path, keep_while=lambda r: r.get("step", 0) <= start)
        elif resumed is None and path.exists():
            path.unlink()
        self.writer = JsonlWriter(path)

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


def _reseed(seed: int, step: int) -> None:
    s = (seed * 1_000_003 + step) % (2**63)
    torch.manual_seed(s)
    random.seed(s)


def _progress(total: int, start: int, desc: str):
    if not sys.stderr.isatty() or os.environ.get("HARNESS_NO_PROGRESS"):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc or "train", leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------- checkpoints
class CheckpointDamaged(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file and why."""


def save_checkpoint(root: Path, step: int, model, opt, model_state: dict | None = None,
                    opt_state: dict | None = None) -> Path:
    """``root/step-XXXXXXXX/``: weights (safetensors), optimizer state, then ``meta.json``
    last, so a checkpoint without meta.json is incomplete and ignored. Each file is fsynced
    before meta.json is written and the folder renamed into place (then the rename is fsynced
    too), so after a power loss a checkpoint with meta.json has all its bytes; weight files get
    the mode of every other result file (0666 less the umask). ``model_state``/``opt_state``:
    states gathered already (FSDP, ``sharded.gather``), written instead of the objects' own."""
    from safetensors.torch import save_file

    from ..results import atomic_write_json
    from ..results.atomic import fsync_dir, fsync_file
    from ..results.layout import share_like_other_files

    d = Path(root) / f"step-{step:08d}"
    tmp = Path(root) / f".step-{step:08d}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (model_state or model.state_dict()).items()}
    # tied weights share storage; safetensors refuses shared tensors, so clone them
    save_file({k: v.clone() for k, v in state.items()}, str(tmp / "model.safetensors"))
    torch.save(opt_state if opt_state is not None else opt.state_dict(), tmp / "optimizer.pt")
    share_like_other_files([tmp / "model.safetensors", tmp / "optimizer.pt"])
    for name in ("model.safetensors", "optimizer.pt"):
        fsync_file(tmp / name)
    atomic_write_json(tmp / "meta.json", {"step": step})
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)
    fsync_dir(Path(root))
    return d


def checkpoints_newest_first(root: Path) -> list[Path]:
    """The complete checkpoints (those with meta.json) under ``root``, newest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / "meta.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(root: Path) -> Path | None:
    done = checkpoints_newest_first(root)
    return done[0] if done else None


def load_checkpoint(d: Path, model, opt, device) -> int:
    """Resume ``model`` and ``opt`` from checkpoint ``d``; returns its step. Every file is
    read and checked before anything is applied, so a damaged checkpoint (truncated, garbled,
    an optimizer file that is not plain tensors) raises :class:`CheckpointDamaged` naming the
    file and leaves the model and optimizer as they were."""
    from safetensors.torch import load_file

    from ..results.layout import safetensors_problem

    d = Path(d)
    weights, optim, meta = d / "model.safetensors", d / "optimizer.pt", d / "meta.json"
    # safetensors and torch.load take "cpu" but not "cpu:0", the device accelerate gives each CPU
    # process of a distributed run; loading to "cpu" and copying into the model is the same
    where = "cpu" if torch.device(device).type == "cpu" else str(device)
    problem = safetensors_problem(weights)
    if problem:
        raise CheckpointDamaged(problem)
    try:
        step = int(json.loads(meta.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointDamaged(f"{meta}: unreadable ({type(e).__name__}: {e})") from e
    try:
        state = load_file(str(weights), device=where)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointDamaged(f"{weights}: cannot be loaded ({type(e).__name__}: {e})") from e
    own = model.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise CheckpointDamaged(f"{weights}: holds other tensors than this model's (a checkpoint of another run?)")
    opt_state = None
    if opt is not None:
        try:
            opt_state = torch.load(optim, map_location=where, weights_only=True)
        except Exception as e:  # noqa: BLE001 - zip, pickle and weights-only errors alike
            raise CheckpointDamaged(f"{optim}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    model.load_state_dict(state)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    return step


def resume(ckpt_root: Path, model, opt, device) -> tuple[int | None, list[str]]:
    """Load the newest intact checkpoint under ``ckpt_root``: (its step or None when there is
    none, and one line per damaged checkpoint skipped on the way, naming its file). A damaged
    one is never fatal: training resumes from an older one, or from the start."""
    damaged = []
    for d in checkpoints_newest_first(ckpt_root):
        try:
            step = load_checkpoint(d, model, opt, device)
        except CheckpointDamaged as e:
            damaged.append(str(e))
            print(f"warning: checkpoint {d.name} is damaged and skipped: {e}", file=sys.stderr, flush=True)
            continue
        return step, damaged
    return None, damaged
