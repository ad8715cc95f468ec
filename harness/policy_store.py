"""The trained policy kept in a cell's ``model/`` folder (``train.keep_model``, on by default),
how it is loaded back, and how much disk it takes.

``<cell>/model/`` holds one of two things (``kept.json`` says which):

* ``"kind": "full"``: what ``save_pretrained`` writes, in safetensors (``model.safetensors`` or
  its shards and index, ``config.json``, ``generation_config.json``) plus the tokenizer's
  files: any transformers user loads it with ``AutoModelForCausalLM.from_pretrained``.
* ``"kind": "lora_adapter"`` (a LoRA cell): only peft's ``adapter_model.safetensors`` and
  ``adapter_config.json``, plus the tokenizer. The adapter applies to the cell's start model,
  which the harness keeps already: its SFT stage's ``model/`` (``"base"`` names the stage), or
  the suite's model as configured when there is no SFT stage. :func:`load_policy` loads that
  base as the cell did and puts the adapter on it.

Baseline rows (``sft``, ``base``) and tuning trials keep nothing: a baseline's weights are its
SFT stage's or the configured model's (``harness eval`` loads them from there), and a trial is
replaced by its final.

The folder is written whole or not at all: into a hidden ``.model.<pid>.<hex>.tmp`` folder
next to it (every file fsynced), then renamed onto ``model/`` (a model/ already there is moved
aside first and removed after), then the rename is fsynced. A crash leaves at most a hidden
temp folder, which nothing reads (it is removed by the next save); ``kept.json`` is written last
inside the temp folder, so a ``model/`` without it was not written by this module.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

MODEL_DIR = "model"
MANIFEST = "kept.json"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_TINY_VOCAB = {"char": 64, "byte": 260, "gpt2": 50257}  # about: a char vocabulary is the data's alphabet


# ---------------------------------------------------------------------------------- save
def save_policy(policy, tokenizer, cell_dir: Path, *, base: str | None) -> dict[str, Any]:
    """Write ``policy`` (full weights, or only its LoRA adapter when it is a peft model) and
    ``tokenizer`` into ``cell_dir/model`` atomically; returns the manifest written.
    ``base``: the SFT stage id the adapter applies to (None: the suite's model)."""
    from .results import atomic_write_json
    from .results.atomic import fsync_dir, fsync_file
    from .results.layout import share_like_other_files

    cell_dir = Path(cell_dir)
    target = cell_dir / MODEL_DIR
    _remove_leftovers(cell_dir)
    tmp = cell_dir / f".{MODEL_DIR}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    lora = hasattr(policy, "peft_config")
    try:
        tmp.mkdir(parents=True)
        policy.save_pretrained(tmp, safe_serialization=True)  # peft: the adapter alone
        tokenizer.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        share_like_other_files(weights)
        manifest = {"kind": "lora_adapter" if lora else "full",
                    "dtype": str(next(policy.parameters()).dtype).replace("torch.", ""),
                    "bytes": sum(p.stat().st_size for p in weights),
                    "params": sum(p.numel() for p in policy.parameters() if p.requires_grad) if lora
                    else sum(p.numel() for p in policy.parameters())}
        if lora:
            manifest["base"] = f"_sft/{base}/model" if base else "the suite's model (config.yaml: model)"
        for f in tmp.iterdir():
            if f.is_file():
                fsync_file(f)
        atomic_write_json(tmp / MANIFEST, manifest)  # last: a model/ without it is incomplete
        old = None
        if target.exists():
            old = cell_dir / f".{MODEL_DIR}-old.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(cell_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return manifest


def _remove_leftovers(cell_dir: Path) -> None:
    """Temp folders of a save killed mid-write (the caller holds the cell's lock)."""
    for p in cell_dir.glob(f".{MODEL_DIR}*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def kept(cell_dir: Path) -> dict | None:
    """The manifest of the policy kept in ``cell_dir``, or None when none is (complete)."""
    from .results import read_json

    try:
        m = read_json(Path(cell_dir) / MODEL_DIR / MANIFEST)
    except (FileNotFoundError, ValueError, OSError):
        return None
    return m if isinstance(m, dict) and m.get("kind") in ("full", "lora_adapter") else None


# ---------------------------------------------------------------------------------- load
def load_policy(cell_dir: Path, cfg, data=None):
    """(model, tokenizer) of a finished cell, in eval mode: its kept policy (``model/``), or,
    for a baseline row, the weights it evaluated (its SFT stage's, or the suite's model).
    ``cfg``: the cell's :class:`~harness.config.cell.CellConfig`; ``data``: its data set (only
    tiny models need it, to rebuild their tokenizer). Raises :class:`NoSavedModel` when a
    trained cell kept nothing."""
    from .models import load_saved

    cell_dir = Path(cell_dir)
    stage = cell_dir.parent / "_sft" / cfg.sft_stage if cfg.sft_stage else None
    man = kept(cell_dir)
    if man is None and cfg.method.name not in ("sft", "base"):
        raise NoSavedModel(cell_dir, cfg)
    if man is not None and man["kind"] == "full":  # in the dtype it was trained in
        import torch

        model, tok = load_saved(cell_dir / MODEL_DIR, dtype=getattr(torch, man.get("dtype", "float32")))
        return model.eval(), tok
    # a baseline row, or a LoRA adapter on its start model, loaded as the cell loaded it
    if cfg.method.name == "sft" or (stage is not None and cfg.method.name != "base"):
        model, tok = load_saved(stage / MODEL_DIR)
    else:
        model, tok = _configured_model(cfg, data)
    if man is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cell_dir / MODEL_DIR)
    return model.eval(), tok


def _configured_model(cfg, data):
    """The suite's model as the cell loaded it, without LoRA or checkpointing."""
    import dataclasses

    from .cell import tiny_texts
    from .models import load_model

    spec = dataclasses.replace(cfg.model, lora=None, gradient_checkpointing=False)
    if spec.tiny is not None and data is None:
        raise ValueError("a tiny model's tokenizer is rebuilt from its data set: pass data")
    texts = tiny_texts(data) if spec.tiny is not None else None
    # as harness.cell.set_up: the base row next to per-seed SFT stages starts from its seed
    seed = cfg.seed if (cfg.is_base and cfg.sft_stage and cfg.sft.per_seed) else 0
    return load_model(spec, alphabet=data.alphabet if data is not None else None, texts=texts, seed=seed)


class NoSavedModel(Exception):
    """A trained cell that kept no policy (run with ``keep_model: false``, or before it existed)."""

    def __init__(self, cell_dir: Path, cfg):
        self.cell_dir = Path(cell_dir)
        super().__init__(
            f"{cell_dir}: this cell kept no trained policy (no {MODEL_DIR}/{MANIFEST}; it ran with "
            f"train.keep_model: {str(bool(cfg.train.keep_model)).lower()}"
            f"{', or before policies were kept' if cfg.train.keep_model else ''}). To evaluate it later, "
            f"set train.keep_model: true (the default) and train it again: remove this folder, then "
            f"rerun `python -m harness run` on the suite")


# ------------------------------------------------------------------------------ disk cost
# Counted from the model's shape without torch (validate loads no torch): a tiny model's spec, a
# local model's config.json, a GGUF file's tensor table; peft keeps adapters in float32.
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _shape(mspec, vocab_hint: int | None) -> dict:
    """The sizes that decide the parameter count, as a config.json names them."""
    import json

    if mspec.tiny is not None:
        t = mspec.tiny
        vocab = vocab_hint or _TINY_VOCAB.get(t.tokenizer) or t.bpe_vocab_size
        return {"model_type": t.arch, "vocab_size": vocab, "hidden_size": t.hidden_size, "n_embd": t.hidden_size,
                "num_hidden_layers": t.num_layers, "n_layer": t.num_layers, "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_heads, "intermediate_size": t.intermediate_size or 2 * t.hidden_size,
                "n_inner": t.intermediate_size or 2 * t.hidden_size,
                "n_positions": t.max_position_embeddings, "tie_word_embeddings": t.arch == "gpt2"}
    if mspec.path and not mspec.gguf_file and (Path(mspec.path) / "config.json").is_file():
        return json.loads((Path(mspec.path) / "config.json").read_text())
    raise LookupError("no config.json readable here" + (" (a hub model: its size is known after the first "
                                                        "cell, in model/kept.json)" if mspec.hub else ""))


def _linears(c: dict) -> dict[str, tuple[int, int, int]]:
    """Per layer: leaf module name -> (in, out, bias) of its linear layers."""
    h = c.get("hidden_size") or c["n_embd"]
    if c.get("model_type") == "gpt2":
        inner = c.get("n_inner") or 4 * h
        return {"attn.c_attn": (h, 3 * h, 1), "attn.c_proj": (h, h, 1), "mlp.c_fc": (h, inner, 1),
                "mlp.c_proj": (inner, h, 1)}
    nh = c["num_attention_heads"]
    hd = c.get("head_dim") or h // nh
    kv = c.get("num_key_value_heads") or nh
    qkv_bias = int(c.get("model_type") == "qwen2" or bool(c.get("attention_bias")))
    i = c["intermediate_size"]
    return {"q_proj": (h, nh * hd, qkv_bias), "k_proj": (h, kv * hd, qkv_bias), "v_proj": (h, kv * hd, qkv_bias),
            "o_proj": (nh * hd, h, int(bool(c.get("attention_bias")))), "gate_proj": (h, i, 0), "up_proj": (h, i, 0),
            "down_proj": (i, h, 0)}


def count_params(c: dict) -> int:
    """Parameters of a decoder-only model of config ``c`` (Llama-family or GPT-2)."""
    h, layers, vocab = c.get("hidden_size") or c["n_embd"], c.get("num_hidden_layers") or c["n_layer"], c["vocab_size"]
    per = sum(i * o + b * o for i, o, b in _linears(c).values())
    if c.get("model_type") == "gpt2":  # two LayerNorms (weight, bias) a layer, one at the end, positions
        return vocab * h + c.get("n_positions", 1024) * h + layers * (per + 4 * h) + 2 * h
    tied = c.get("tie_word_embeddings", False)
    return vocab * h * (1 if tied else 2) + layers * (per + 2 * h) + h


def _gguf_params(mspec) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(str(Path(mspec.path) / mspec.gguf_file))
    return sum(int(t.n_elements) for t in reader.tensors)


def estimate(mspec, *, sft_stage: bool, vocab_hint: int | None = None) -> tuple[int | None, str]:
    """(bytes, how) that one trained cell of model ``mspec`` keeps: its parameters x the bytes of
    the dtype it trains in (float32 from an SFT checkpoint, which cells load in float32; else
    the model's dtype, bfloat16 on a GPU for ``auto``), or the LoRA adapter's parameters x 4.
    None when the model's shape cannot be read here (a hub model)."""
    try:
        c = _shape(mspec, vocab_hint) if not mspec.gguf_file else None
        if mspec.lora is not None:
            c = c or _gguf_as_config(mspec)
            n = _lora_params(c, mspec)
            return n * 4, f"LoRA adapter r={mspec.lora.r}: {n:,} parameters x 4 bytes"
        n = count_params(c) if c is not None else _gguf_params(mspec)
    except Exception as e:  # noqa: BLE001 - an estimate: say why there is none
        return None, f"size unknown: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
    if sft_stage or mspec.tiny is not None or mspec.dtype == "float32":
        dt, per = "float32", 4
    elif mspec.dtype == "auto":
        return n * 2, f"{n:,} parameters x 2 bytes (bfloat16 on a GPU; float32 on CPU: twice that)"
    else:
        dt, per = mspec.dtype, _DTYPE_BYTES[mspec.dtype]
    return n * per, f"{n:,} parameters x {per} bytes ({dt})"


def _gguf_as_config(mspec) -> dict:
    """The shape a GGUF file's metadata gives (Llama-family), for the LoRA estimate."""
    from gguf import GGUFReader

    r = GGUFReader(str(Path(mspec.path) / mspec.gguf_file))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def val(key):
        f = r.fields.get(f"{arch}.{key}")
        return int(f.parts[-1][0]) if f is not None else None

    h, nh = val("embedding_length"), val("attention.head_count")
    return {"model_type": arch, "hidden_size": h, "num_attention_heads": nh,
            "num_key_value_heads": val("attention.head_count_kv") or nh, "intermediate_size": val("feed_forward_length"),
            "num_hidden_layers": val("block_count"), "vocab_size": 0}


def _lora_params(c: dict, mspec) -> int:
    """r x (in + out) for every linear layer LoRA targets: ``target_modules``, or the attention
    projections (:func:`harness.models.default_lora_targets`)."""
    lin = _linears(c)
    default = [n for n in lin if n in _ATTN] or [n for n in lin if n.startswith("attn.")]
    targets = list(mspec.lora.target_modules or default)
    hit = [n for n in lin if any(n == t or n.endswith("." + t) or t.endswith("." + n) for t in targets)]
    if not hit:
        raise LookupError(f"lora.target_modules {targets} name none of {', '.join(lin)}")
    layers = c.get("num_hidden_layers") or c["n_layer"]
    return layers * sum(mspec.lora.r * (lin[n][0] + lin[n][1]) for n in hit)


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"


def describe_disk(plan) -> list[str]:
    """validate's lines on what the kept policies will take: per model, the size of one trained
    cell and how many cells keep one; then the total."""
    import dataclasses

    keeping: dict[str, int] = {}
    for c in plan.cells:
        if (c.config.get("train") or {}).get("keep_model"):
            keeping[c.model] = keeping.get(c.model, 0) + 1
    if not keeping:
        return ["kept policies: none (train.keep_model: false, or no trained cell)"]
    lines, total, unknown = ["kept policies (train.keep_model; false keeps none), in each trained cell's model/:"], 0, False
    for m in plan.suite.models:
        if m.name not in keeping:
            continue
        where = next((c.config.get("model") or {}).get("path") for c in plan.cells if c.model == m.name)
        spec = dataclasses.replace(m, path=where) if m.path and where else m  # resolved against the suite file
        size, how = estimate(spec, sft_stage=plan.suite.sft.enabled)
        n = keeping[m.name]
        lines.append(f"  {m.name}: {human(size)} per cell ({how}) x {n} cells = "
                     f"{human(size * n) if size is not None else '?'}")
        total += (size or 0) * n
        unknown |= size is None
    if unknown and not total:
        lines.append("  total: unknown here (each cell's model/kept.json records its size)")
    else:
        lines.append(f"  total: {'at least ' if unknown else ''}{human(total)} (plus a few MB of tokenizer files "
                     f"per cell)")
    return lines
