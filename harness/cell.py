"""One cell's life, as small named steps (what ``runner.run_job`` runs for a cell, under its lock)::

    cell = set_up(suite_dir, folder, guard)   # config, plugins, method, data, the start model, pairs
    train_policy(cell)                        # features (reference from the same load) and training
    metrics = {**identity(cell), **evaluate_cell(cell), **cost(cell), **training_summary(cell)}
    save(cell, metrics)                       # metrics.json, the model if kept; checkpoints removed

The model a cell starts from (its SFT stage's checkpoint, or the suite's model without an SFT
stage) is loaded once (:class:`StartingPoint`): the policy trains a copy, and the loaded one is
the frozen reference for the reference pass, per-step features, evaluation and the importance
examples; it waits on the CPU while training does not need it and is freed after evaluation.
Under a distributed launch every rank sets up and trains; rank 0 alone evaluates and saves.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config.cell import CellConfig, build_method, load_cell_config
from .lifecycle import StageDamaged, stage_damaged
from .schema import SFTSpec

# Logged per-step values whose mean over the run goes into metrics.json as train/<key>:
# TI-DPO's mean token weights and the weighted margin's scale against DPO's (methods/tidpo.py).
TRAIN_MEANS = ("weights/chosen_mean", "weights/rejected_mean", "margin/scale")


def rank() -> tuple[int, int]:
    """(rank, world size) when started by a distributed launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stage_data(cfg):
    """The data set of a stage or cell config (its paths are absolute), with the SFT examples
    its SFT settings name (the schema's default source when the suite has no SFT stage)."""
    from .data.loading import load_dataset

    return load_dataset(cfg.dataset, None, (cfg.sft or SFTSpec()).data)


def require_pairs(tdata, data, what: str, spec) -> None:
    """Every example dropped by tokenization: say so with the data set and the lengths to
    change, instead of an error from deep inside training."""
    if len(tdata):
        return
    from .errors import DataError

    raise DataError(f"data set {data.name!r} ({data.stats.get('source', 'embedded task')}): all "
                    f"{tdata.stats.get('input', 0)} {what} were dropped by tokenization (no response "
                    f"token fits in max_length {spec.max_length} after a prompt of up to "
                    f"max_prompt_length {spec.max_prompt_length}); raise max_length or lower "
                    f"max_prompt_length")


def report_drops(tdata, data, what: str, spec) -> None:
    """One line on stderr when tokenization dropped examples (their prompt fills max_length):
    the counts are in metrics.json / stage.json too, but a drop must not pass unseen."""
    n = tdata.stats.get("dropped", 0)
    if n:
        print(f"data set {data.name!r}: tokenization dropped {n} of {tdata.stats.get('input', 0)} {what} "
              f"(the prompt, cut to max_prompt_length {spec.max_prompt_length}, leaves no response token "
              f"within max_length {spec.max_length})", file=sys.stderr, flush=True)


def tiny_texts(data) -> list[str]:
    """What a tiny model's tokenizer is built from: the rendered text of every prompt, chosen
    and rejected response, train and held-out, and the SFT examples (harness.data.render)."""
    from .data.render import plain_texts

    return plain_texts(data.sft, data.train, data.heldout)


def plain_config(folder: Path) -> dict:
    """A job's config.yaml as plain data (what trackers record as the run's config)."""
    import yaml

    return yaml.safe_load((Path(folder) / "config.yaml").read_text(encoding="utf-8")) or {}


# ------------------------------------------------------------------------ the start model
class StartingPoint:
    """The model a cell starts from, loaded once. ``load`` returns the policy (a copy when a
    reference is kept, else the loaded model itself); ``reference`` the frozen original."""

    def __init__(self, loader: Callable[[], tuple], keep_reference: bool):
        self._loader, self._keep = loader, keep_reference
        self._ref = None

    def load(self, copy_for_policy: bool = True) -> tuple[Any, Any]:
        model, tok = self._loader()
        if not self._keep:
            return model, tok
        policy = copy.deepcopy(model) if copy_for_policy else model
        self._ref = model.eval()
        if copy_for_policy:
            self._ref.requires_grad_(False)
        return policy, tok

    def reference(self):
        if self._ref is None:
            raise RuntimeError("the reference model was not kept for this cell (or already freed)")
        return self._ref

    def park(self) -> None:
        """Training no longer needs the reference: leave it in host memory, not on the GPU."""
        if self._ref is not None:
            self._ref.to("cpu")

    def release(self) -> None:
        self._ref = None


@dataclass
class Cell:
    """A cell being run: its config and what each step adds."""

    suite_dir: Path
    folder: Path
    cfg: CellConfig
    method: Any                      # None: the "sft" row, the SFT checkpoint evaluated as it is
    data: Any
    guard: Callable | None
    stage_info: dict
    start: StartingPoint
    policy: Any = None
    tok: Any = None
    tdata: Any = None
    train_res: Any = None
    counters: dict = field(default_factory=dict)
    data_metrics: dict = field(default_factory=dict)   # what metrics.json says of the training pairs

    trackers: Any = None                               # W&B / TensorBoard runs of this cell (rank 0)

    def check_lock(self) -> None:
        """Before each write: stop (LockLostError) if another process took the cell's lock."""
        if self.guard is not None:
            self.guard()


def open_cell(suite_dir: Path, folder: Path, guard=None, keep_reference: bool | None = None) -> Cell:
    """What a cell is before any model loads: its config (checked), plugins, method, data (scored
    on the cell's split), its SFT stage's record and the start model's loader. ``keep_reference``:
    keep the loaded start model as the frozen reference (default: when evaluation or the method
    needs one). ``set_up`` and ``harness eval --metrics`` (harness.eval_metrics) both start here."""
    import methods

    cfg = load_cell_config(folder)
    for p in cfg.plugins:
        methods.load_plugin(p)
    method = build_method(cfg, folder / "config.yaml")
    data = stage_data(cfg).scored_on(cfg.split)  # a tuning trial is scored on the dev split
    stage_dir = suite_dir / "_sft" / cfg.sft_stage if cfg.sft_stage else None
    stage_info = _stage_info(stage_dir) if stage_dir is not None else {}
    if keep_reference is None:
        keep_reference = cfg.eval.enabled or bool(method is not None and method.needs)
    start = StartingPoint(_loader(cfg, data, stage_dir), keep_reference)
    return Cell(suite_dir, folder, cfg, method, data, guard, stage_info, start)


def set_up(suite_dir: Path, folder: Path, guard=None) -> Cell:
    """:func:`open_cell`, env.json, the start model (the policy trains a copy) and the training
    pairs (the data set's, or a view of its on-policy sample stage)."""
    from .data.onpolicy import training_examples
    from .data.tokenize import tokenize
    from .results import atomic_write_json, env_info

    cell = open_cell(suite_dir, folder, guard)
    cfg, data = cell.cfg, cell.data
    if rank()[0] == 0:
        atomic_write_json(folder / "env.json", env_info())
    train_pairs, cell.data_metrics = training_examples(cfg, data, suite_dir)
    cell.policy, cell.tok = cell.start.load(copy_for_policy=cell.method is not None)
    if cfg.is_base and cfg.sft_stage:
        # the base row: the model before SFT (as its SFT stage started), against the SFT checkpoint
        from .models import load_model

        texts = tiny_texts(data) if cfg.model.tiny else None
        cell.policy, cell.tok = load_model(cfg.model, alphabet=data.alphabet, texts=texts,
                                           seed=cfg.seed if cfg.sft.per_seed else 0)
    elif cfg.sft_stage and cell.method is not None:  # the sft row does not train: its policy is the reference
        cell.policy = _memory_settings(cell.policy, cfg.model)
    t = cfg.train
    cell.tdata = tokenize(train_pairs, cell.tok, t.max_length, t.max_prompt_length, cfg.model.chat_template,
                          cache_dir=suite_dir / "_cache")
    return cell


def _stage_info(stage_dir: Path) -> dict:
    from .results import read_status

    st = read_status(stage_dir)
    if st["state"] != "done" or not (stage_dir / "model").is_dir():
        raise RuntimeError(f"SFT stage {stage_dir.name} is {st['state']}"
                           f"{' (' + str(st.get('reason')) + ')' if st.get('reason') else ''}; "
                           f"see {stage_dir / 'error.txt'}")
    return json.loads((stage_dir / "stage.json").read_text())


def _loader(cfg: CellConfig, data, stage_dir: Path | None) -> Callable[[], tuple]:
    """Loads the start model: the SFT checkpoint (a damaged one sends the stage back to be made
    again), else the suite's model as configured (LoRA and checkpointing applied)."""
    from .models import load_model, load_saved

    if stage_dir is None:
        texts = tiny_texts(data) if cfg.model.tiny else None
        return lambda: load_model(cfg.model, alphabet=data.alphabet, texts=texts, seed=0)

    def load():
        try:
            return load_saved(stage_dir / "model")
        except Exception as e:  # noqa: BLE001 - a damaged file: the stage is made again
            raise StageDamaged(stage_damaged(stage_dir, f"{stage_dir / 'model'} cannot be loaded: "
                                                        f"{type(e).__name__}: {e}")) from e

    return load


def _memory_settings(policy, mspec):
    """The SFT checkpoint is a plain merged model: re-apply this cell's memory settings."""
    from .models import apply_lora, enable_gradient_checkpointing

    if mspec.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if mspec.lora is not None:
        policy = apply_lora(policy, mspec)
    return policy


# --------------------------------------------------------------------------------- train
def train_policy(cell: Cell) -> None:
    """Features from ``method.needs`` (reference log-probs only for the pairs the steps use),
    then the training loop; nothing for the ``sft`` row."""
    from .core.features import Features
    from .core.train import PreferenceObjective, resolve_schedule, train, used_indices
    from .results.progress import steps_stage

    method, t, tok = cell.method, cell.cfg.train, cell.tok
    if method is None:
        return
    require_pairs(cell.tdata, cell.data, "training pairs", t)
    report_drops(cell.tdata, cell.data, "training pairs", t)
    features = Features(method, cell.tdata, ref_loader=cell.start.reference if method.needs else None,
                        cache_dir=(cell.suite_dir / "_cache") if t.reference_cache else None, device=device(),
                        pad_id=tok.pad_token_id, tokenizer=tok, counters=cell.counters,
                        indices=used_indices(len(cell.tdata), t.steps, t.batch_size * t.grad_accum, cell.cfg.seed),
                        ref_id=cell.stage_info.get("weights_fingerprint"))
    if not features.per_step_ref:
        cell.start.park()
    from .evaluate.curves import heldout_curve
    from .trackers import for_run

    cell.trackers = for_run(plain_config(cell.folder), cell.folder, "cell") if rank()[0] == 0 else None
    curve = heldout_curve(cell.start.reference, tok, cell.data, cell.cfg.eval, t, cell.cfg.model.chat_template)
    on_step = steps_stage("training", resolve_schedule(t, len(cell.tdata)).steps, cell.guard)  # progress.json
    cell.train_res = train(cell.policy, cell.tdata, PreferenceObjective(method, features), t, cell.cfg.seed,
                           cell.folder, tokenizer=tok, desc=f"{cell.cfg.method.label} s{cell.cfg.seed}",
                           on_step=on_step, trackers=cell.trackers, evaluator=curve)
    cell.policy = cell.train_res.model  # under FSDP: the gathered, unsharded model (core/sharded.py)


# ------------------------------------------------------------------------------ evaluate
def identity(cell: Cell) -> dict[str, Any]:
    cfg = cell.cfg
    return {"cell_id": cell.folder.name, "suite": cfg.suite, "model": cfg.model.name, "dataset": cell.data.name,
            "method": cfg.method.name, "label": cfg.method.label, "seed": cfg.seed, "hparams": cfg.method.hparams,
            **({"split": cfg.split} if cfg.tuning else {}), **cell.data_metrics}


def evaluate_cell(cell: Cell) -> dict[str, Any]:
    """The evaluation metrics (eval.enabled) and TI-DPO's importance examples; then the
    reference is freed."""
    m: dict[str, Any] = {}
    if cell.cfg.eval.enabled:
        cell.check_lock()  # evaluation writes samples.jsonl: only while the lock is still ours
        t0 = time.time()
        m.update(run_evaluation(cell))
        m["cost/eval_wall_s"] = round(time.time() - t0, 3)
    if cell.method is not None and "token_weights" in cell.method.needs:
        from .results.progress import current

        cfg = cell.cfg
        current().stage("evaluation:token_importance")
        write_importance_examples(cell.policy, cell.start.reference, cell.tok, cell.data, cell.method, cell.folder,
                                  cfg.train, cfg.model.chat_template, check_lock=cell.check_lock)
    cell.start.release()
    return m


def run_evaluation(cell: Cell, out_dir: Path | None = None, families=None, by_family=None) -> dict[str, Any]:
    """The evaluation metric families (all that apply, or those named in ``families``; each
    one's metrics into ``by_family`` when given) of the cell's policy against its reference,
    with the cell's eval settings; samples.jsonl goes to ``out_dir`` (the cell's folder)."""
    from .evaluate.backends import generator_for
    from .evaluate.policy import evaluate_policy

    cfg, out = cell.cfg, Path(out_dir or cell.folder)
    return evaluate_policy(cell.policy, cell.start.reference(), cell.tok, cell.data, cell.method, cfg.eval,
                           out, cfg.seed, families=families, by_family=by_family, chat_template=cfg.model.chat_template,
                           max_length=cfg.train.max_length, max_prompt_length=cfg.train.max_prompt_length,
                           # the base row differs from its reference when there is an SFT stage
                           trained=cell.method is not None or (cfg.is_base and cfg.sft_stage is not None),
                           cache_dir=cell.suite_dir / "_cache", ref_id=cell.stage_info.get("weights_fingerprint"),
                           generator=generator_for(cfg.eval, cell.tok, out, cfg.seed))


def write_importance_examples(policy, reference, tok, data, method, folder: Path, tspec, chat_template: bool,
                              n: int = 4, check_lock: Callable | None = None) -> None:
    """token_importance.json: the weights TI-DPO gives the tokens of a few held-out pairs
    (for the report's figures), from the same source model and settings the training used,
    tokenized as the training was (the model's chat-template setting, the same truncation).
    ``reference``: returns the reference model (called only when the weights come from it)."""
    from methods.feature_specs import spec_for

    from .core.features import prompt_specials, strip_specials
    from .core.importance import token_weights
    from .data.tokenize import tokenize
    from .results import atomic_write_json

    td = tokenize(data.heldout[:n], tok, tspec.max_length, tspec.max_prompt_length, chat_template)
    if not len(td):
        return
    wspec, pspec = spec_for(method, "token_weights"), spec_for(method, "prompt")
    prompts = td.prompts
    if pspec.special_tokens == "drop":
        specials = prompt_specials(tok)
        prompts = [strip_specials(p, specials) for p in prompts]
    src = reference() if wspec.source == "reference" else policy
    dev = next(policy.parameters()).device
    w = token_weights(src.to(dev), prompts + prompts, td.chosen + td.rejected, wspec, tok.pad_token_id, dev)
    ex = []
    for side, off, seqs in (("chosen", 0, td.chosen), ("rejected", len(td), td.rejected)):
        for i, ids in enumerate(seqs):
            ex.append({"pair": i, "side": side, "prompt": tok.decode(prompts[i]),
                       "tokens": [tok.decode([x]) for x in ids],
                       "weights": [round(float(x), 6) for x in w[off + i]]})
    ex.sort(key=lambda e: (e["pair"], e["side"]))
    if check_lock is not None:
        check_lock()
    atomic_write_json(Path(folder) / "token_importance.json", {"examples": ex, "source": wspec.source,
                                                               "convention": wspec.convention})


# ---------------------------------------------------------------------------------- cost
def cost(cell: Cell) -> dict[str, Any]:
    """cost/*: wall time, tokens, memory, parameters, FLOPs, accelerator-hours; data counts."""
    from .core.train import peak_memory_mb
    from .models import param_count

    res, tdata = cell.train_res, cell.tdata
    t_train = res.wall_s if res is not None else 0.0  # summed over every process, resumes included
    n_params = param_count(cell.policy)
    return {
        "cost/train_wall_s": round(t_train, 3),
        "cost/sft_wall_s": cell.stage_info.get("wall_s"),
        "cost/train_tokens": res.tokens if res else 0,
        "cost/tokens_per_s": round(res.tokens / t_train, 1) if res and t_train > 0 else None,
        "cost/peak_mem_mb": round(peak_memory_mb(device()), 1),
        "cost/params": n_params,
        "cost/flops": flops(n_params, res, cell.method, cell.counters),
        "cost/accelerator_hours": round(t_train * max(torch.cuda.device_count(), 0) / 3600, 6),
        "cost/ref_forward_passes": cell.counters.get("ref_forward", 0),
        "cost/ref_cache_hit": cell.counters.get("ref_cache_hit"),
        "data/train_pairs": len(tdata), "data/tokenization": tdata.stats, "data/stats": cell.data.stats,
    }


def flops(n_params: int, res, method, counters: dict) -> float | None:
    """6N per trained token (forward + backward), 2N per token of each extra forward
    (reference passes, importance passes ~ forward + backward to the embeddings), 2N per
    sampled anchor token."""
    from methods.feature_specs import spec_for

    if res is None:
        return 0.0
    f = 6.0 * n_params * res.tokens
    needs = method.needs if method else frozenset()
    policy_anchors = "anchor" in needs and spec_for(method, "anchor").source == "policy"
    if "token_kl" in needs:
        f += 2.0 * n_params * res.tokens
    elif policy_anchors:
        f += 2.0 * n_params * res.tokens / 3  # the reference runs over the anchor rows only
    # the reference pass over the pairs the cache lacked (none when it was warm)
    f += 2.0 * n_params * counters.get("ref_pass_tokens", 0)
    f += 2.0 * n_params * (counters.get("anchor_tokens", 0) + counters.get("ref_anchor_tokens", 0))
    if "token_weights" in needs:
        w = spec_for(method, "token_weights")
        if w.scheme == "importance" and w.source == "policy":
            # a separate pass is a forward + a backward to the embeddings; from the training
            # forward, the backward alone (both over the chosen and rejected rows)
            per = 2.0 if counters.get("importance_from_forward") else 4.0
            f += per * n_params * res.tokens * 2 / 3
    return f


def training_summary(cell: Cell) -> dict[str, Any]:
    """train/*: final loss, resume point, run means of logged diagnostics, damaged checkpoints."""
    from .core.train import log_means

    res = cell.train_res
    if res is None:
        return {}
    # a run resumed from its final checkpoint gets these from the log (train())
    m = {"train/final_loss": res.last_metrics.get("loss"), "train/resumed_from": res.resumed_from}
    m.update(log_means(cell.folder / "train_log.jsonl", TRAIN_MEANS))
    if res.damaged_checkpoints:
        m["train/damaged_checkpoints"] = res.damaged_checkpoints
    return m


# ---------------------------------------------------------------------------------- save
def save(cell: Cell, metrics: dict) -> None:
    """metrics.json (atomically, while the lock is ours), the trained policy when
    ``train.keep_model`` (the full weights, or the LoRA adapter: harness.policy_store), and no
    checkpoints left behind."""
    from .results import atomic_write_json
    from .results.progress import current

    cell.check_lock()
    current().stage("saving")
    atomic_write_json(cell.folder / "metrics.json", metrics)
    if cell.train_res is not None and cell.trackers is not None:
        cell.trackers.finish(metrics)
    if cell.cfg.train.keep_model and cell.method is not None:  # a baseline row's weights are kept elsewhere
        from .policy_store import save_policy

        cell.check_lock()
        save_policy(cell.policy.cpu(), cell.tok, cell.folder, base=cell.cfg.sft_stage)
    shutil.rmtree(cell.folder / "checkpoints", ignore_errors=True)


def run_cell(suite_dir: Path, folder: Path, guard=None) -> dict:
    """The steps above, in order; returns the numeric ``family/name`` metrics."""
    cell = set_up(Path(suite_dir), Path(folder), guard)
    train_policy(cell)
    if rank()[0] != 0:
        return {}  # rank 0 evaluates and writes the results
    metrics = identity(cell)
    metrics.update(evaluate_cell(cell))
    metrics.update(cost(cell))
    metrics.update(training_summary(cell))
    save(cell, metrics)
    return {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "/" in k}}
