"""TI-DPO anchors (harness/core/anchors.py): sampling from the current policy, cut after EOS,
and scored by the core's batched path exactly as a plain full forward scores them."""
from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import pytest
import torch

from harness.core.anchors import cut_at_eos, holes, sample_anchors
from harness.core.batch import collate, compact, gather_logps, response_logits
from methods.feature_specs import AnchorSpec

torch.set_num_threads(1)

EOS, PAD = 2, 0
TOK = SimpleNamespace(eos_token_id=EOS)
PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10, 11, 12], [1, 3]]


def tiny_llama(dtype=torch.float32, seed=0, uniform=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=32, vocab_size=20, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
                      attention_dropout=0.3)
    model = LlamaForCausalLM(cfg).to(dtype)
    if uniform:  # every next token equally likely: EOS has 1/20 per step
        with torch.no_grad():
            model.lm_head.weight.zero_()
    return model


def sample(model, prompts=PROMPTS, n=12, tokenizer=TOK, pad_id=PAD, **kw):
    spec = AnchorSpec(**{"max_new_tokens": n, "temperature": 0.8, "top_k": 50, "top_p": 0.95, **kw})
    return sample_anchors(model, prompts, spec, tokenizer=tokenizer, pad_id=pad_id, device="cpu")


def test_core_logps_of_anchors_match_a_plain_forward():
    model = tiny_llama(torch.float64)
    torch.manual_seed(0)
    anchors = sample(model)
    assert len(anchors) == len(PROMPTS)
    model.eval()  # no dropout while comparing the two scoring paths
    rows = collate(PROMPTS, anchors, PAD)
    with torch.no_grad():
        core = gather_logps(response_logits(model, rows), rows)
        for i, (p, a) in enumerate(zip(PROMPTS, anchors)):
            logits = model(input_ids=torch.tensor([p + a])).logits[0]
            lp = torch.log_softmax(logits, dim=-1)
            expected = torch.stack([lp[len(p) + t - 1, a[t]] for t in range(len(a))])
            assert torch.allclose(core[i, : len(a)].double(), expected, atol=1e-6), i
            assert torch.all(core[i, len(a):] == 0)


def test_nonempty_bounded_and_cut_after_eos():
    model = tiny_llama(uniform=True)
    torch.manual_seed(1)
    n = 30
    anchors = sample(model, PROMPTS * 4, n=n)
    assert all(1 <= len(a) <= n for a in anchors)
    for a in anchors:
        assert EOS not in a[:-1]  # nothing after the first EOS
        if len(a) < n:
            assert a[-1] == EOS  # a sample stops early only at EOS
    # with P(EOS) = 1/20 per step, some of the 16 samples stop early (P(none) ~ 0.2^16)
    assert any(len(a) < n for a in anchors)


def test_deterministic_under_manual_seed():
    model = tiny_llama()
    torch.manual_seed(5)
    a = sample(model)
    torch.manual_seed(5)
    b = sample(model)
    torch.manual_seed(6)
    c = sample(model)
    assert a == b
    assert a != c
    # sampling runs without dropout (attention_dropout=0.3 would also draw from the RNG):
    # the model in train mode samples exactly what it samples in eval mode
    model.train()
    torch.manual_seed(5)
    t = sample(model)
    model.eval()
    torch.manual_seed(5)
    assert sample(model) == t == a


def test_modes_and_generation_config_restored_and_quiet():
    model = tiny_llama()
    model.train()
    model.model.layers[0].mlp.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    gc = model.generation_config
    gc.max_length = 77  # a checkpoint's defaults must neither leak in nor warn
    gc.repetition_penalty = 1.3
    before = gc.to_dict()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("transformers")
    log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            torch.manual_seed(0)
            anchors = sample(model, n=9)
    finally:
        log.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in ws] == []
    assert model.generation_config is gc and gc.to_dict() == before
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(len(a) <= 9 for a in anchors)  # max_new_tokens wins over the model's max_length


class _Scripted(torch.nn.Module):
    """Stands in for a model: ``generate`` returns prompt + a scripted continuation."""

    def __init__(self, continuations):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.continuations = continuations
        self.generation_config = SimpleNamespace(eos_token_id=None, bos_token_id=None)
        self.seen = None

    def get_input_embeddings(self):
        return self.lin

    def generate(self, input_ids, attention_mask, generation_config):
        self.seen = (input_ids.clone(), attention_mask.clone(), generation_config)
        new = torch.tensor(self.continuations, dtype=torch.long).view(len(self.continuations), -1)
        return torch.cat([input_ids, new], dim=1)


def test_cut_semantics_and_left_padding():
    cont = [[4, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    m = _Scripted(cont)
    out = sample(m, prompts=[[1, 5, 6], [1, 7], [9]], n=4, top_k=0)
    assert out == [[4, 2], [5, 6, 7, 8], [2]]
    ids, att, cfg = m.seen
    assert ids.tolist() == [[1, 5, 6], [0, 1, 7], [0, 0, 9]]  # left padding
    assert att.tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert cfg.do_sample and cfg.max_new_tokens == 4 and cfg.top_k == 0 and cfg.pad_token_id == PAD
    assert cfg.temperature == 0.8 and cfg.top_p == 0.95 and EOS in list(cfg.eos_token_id)
    # a sample with no token at all becomes [eos]
    m0 = _Scripted([[], []])
    assert sample(m0, prompts=[[1], [1, 2]], n=4) == [[EOS], [EOS]]
    assert cut_at_eos([], [7, 2]) == [7]
    assert cut_at_eos([3, 7, 2, 7], [2, 7]) == [3, 7]


def test_anchors_from_a_peft_model():
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.train()
    torch.manual_seed(3)
    a = sample(model, n=8)
    torch.manual_seed(3)
    b = sample(base, n=8)  # LoRA B starts at 0: the same policy, the same draws
    assert a == b
    assert model.training


# ------------------------------------------------------------------ released convention
def _modes_during_generate(model, **kw):
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    try:
        torch.manual_seed(4)
        out = sample(model, n=6, **kw)
    finally:
        hook.remove()
    return out, set(seen)


def test_released_samples_in_the_models_own_mode():
    """The released code calls generate() on the training policy: dropout is on. The paper
    convention samples in eval mode. Either way the modes are left as they were."""
    model = tiny_llama()  # attention_dropout = 0.3
    model.train()
    rel, modes = _modes_during_generate(model, convention="released")
    assert modes == {True} and model.training
    pap, modes = _modes_during_generate(model, convention="paper")
    assert modes == {False} and model.training
    # dropout draws from the same generator, so the two samples differ from the first draw on
    torch.manual_seed(4)
    assert rel != sample(model, n=6, convention="paper")
    # a model in eval mode samples the same in both conventions (up to how tokens are cut)
    model.eval()
    a, modes = _modes_during_generate(model, convention="released")
    assert modes == {False}
    b, _ = _modes_during_generate(model, convention="paper")
    assert [x[:len(y)] for x, y in zip(b, a)] == a


def test_released_stops_at_the_tokenizer_eos_only():
    m = _Scripted([[4, 7, 5, 2], [7, 2, 0, 0]])
    m.generation_config = SimpleNamespace(eos_token_id=[EOS, 7], bos_token_id=None)
    assert sample(m, prompts=[[1, 5], [1]], n=4, top_k=0, convention="released") == [[4, 7, 5, 2], [7, 2]]
    assert list(m.seen[2].eos_token_id) == [EOS]
    assert sample(m, prompts=[[1, 5], [1]], n=4, top_k=0) == [[4, 7], [7]]  # paper: every EOS id
    assert sorted(m.seen[2].eos_token_id) == [EOS, 7]


def test_released_scoring_with_pad_equal_to_eos_drops_the_eos():
    """mask != pad: with pad == eos the anchor's EOS is not scored; an anchor that starts with
    EOS has no scored token. The paper convention scores the EOS."""
    m = _Scripted([[4, 2, 2, 2], [2, 2, 2, 2], [5, 6, 7, 8]])
    kw = dict(prompts=[[1, 5], [1], [3]], n=4, top_k=0, pad_id=EOS)
    assert sample(m, convention="released", **kw) == [[4], [], [5, 6, 7, 8]]
    assert sample(m, **kw) == [[4, 2], [2], [5, 6, 7, 8]]
    # pad != eos: the EOS is scored; a pad-id token inside the anchor becomes a hole
    m = _Scripted([[4, 0, 5, 2, 0], [3, 2, 0, 0, 0]])
    out = sample(m, prompts=[[1, 5], [1]], n=5, top_k=0, convention="released")
    assert out == [[4, 0, 5, 2], [3, 2]]
    assert holes(out, PAD, AnchorSpec(convention="released")) == [[False, True, False, False], [False, False]]
    assert holes(out, PAD, AnchorSpec()) is None


def test_a_hole_is_unattended_and_unscored_as_in_the_released_forward():
    """Expected: the released anchor forward, written out: one row with attention mask
    ``token != pad`` and log-probs of the non-pad tokens only, packed."""
    model = tiny_llama(torch.float64)
    model.eval()
    prompts, anchors = [[1, 5, 6], [1, 7]], [[4, PAD, 5, EOS], [3, 9]]
    h = holes(anchors, PAD, AnchorSpec(convention="released"))
    rows = collate(prompts, anchors, PAD, h)
    with torch.no_grad():
        got, mask = compact(gather_logps(response_logits(model, rows), rows), rows.resp_mask)
        assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
        for i, (p, a) in enumerate(zip(prompts, anchors)):
            ids = p + a
            att = [1] * len(p) + [int(t != PAD) for t in a]
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([att])).logits[0], -1)
            exp = [lp[len(p) + t - 1, a[t]] for t in range(len(a)) if a[t] != PAD]
            assert torch.allclose(got[i, : len(exp)].double(), torch.stack(exp), atol=1e-6), i
