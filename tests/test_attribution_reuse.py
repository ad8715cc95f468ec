"""Policy token weights taken from the training forward (features.attribution_in_forward)
equal the separate eval-mode attribution pass on the same parameters, and leave the loss's
gradient unchanged; with dropout drawn, the core falls back to the separate pass.

Expected values: ``importance.token_weights`` (the separate pass, itself checked against
finite differences in test_importance.py) on the same model, and the gradients of the same
step with the separate pass forced."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import methods
from harness.core.features import Features, dropout_active
from harness.core.importance import token_weights
from harness.core.train import PreferenceObjective, StepContext
from methods.feature_specs import spec_for

torch.set_num_threads(1)
PAD, EOS = 0, 2
PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10, 11], [1, 3]]
CHOSEN = [[3, 4, 12, EOS], [5, 6, 7, 8, EOS], [9, EOS], [13, 14, 15, 16, 17, 18, EOS]]
REJECTED = [[14, EOS], [15, 16, 3, EOS], [4, 4, 5, 6, 7, EOS], [12, EOS]]
TOK = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)


def llama(seed=0, dropout=0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=32, vocab_size=20, eos_token_id=EOS,
                                        pad_token_id=PAD, attention_dropout=dropout))


def qwen2(seed=1):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=32, vocab_size=20,
                                        eos_token_id=EOS, tie_word_embeddings=True))


def run(model, name="tidpo", force_separate=False, **hp):
    """One objective step on all four pairs: (TokenBatch, loss, Features)."""
    m = methods.get(name, **hp)
    data = SimpleNamespace(prompts=PROMPTS, chosen=CHOSEN, rejected=REJECTED, fingerprint="t")
    ref = llama(7)
    f = Features(m, data, ref_model=ref, cache_dir=None, device=torch.device("cpu"), pad_id=PAD, tokenizer=TOK)
    if force_separate:
        f.attribution_in_forward = lambda model: False
    obj = PreferenceObjective(m, f)
    torch.manual_seed(0)
    batch, out, _ = obj.forward(model, data, [0, 1, 2, 3], StepContext(0, 0, PAD, "cpu", TOK))
    return batch, out.losses.mean(), f, m


def separate(model, m):
    spec = spec_for(m, "token_weights")
    w = token_weights(model, PROMPTS + PROMPTS, CHOSEN + REJECTED, spec, PAD, "cpu")
    return w[:4], w[4:]


def assert_rows(t: torch.Tensor, rows: list[torch.Tensor], tol: float):
    for i, r in enumerate(rows):
        assert torch.allclose(t[i, : len(r)], r, rtol=tol, atol=tol), (i, t[i, : len(r)].tolist(), r.tolist())


@pytest.mark.parametrize("make", [llama, qwen2], ids=["llama", "qwen2-tied"])
@pytest.mark.parametrize("variant", [("tidpo", {}), ("tidpo-official", {"prompt_special_tokens": "keep"})],
                         ids=["paper", "released"])
def test_weights_from_the_training_forward_equal_the_separate_pass(make, variant):
    name, hp = variant
    model = make()
    model.train()
    batch, _, f, m = run(model, name, **hp)
    assert f.counters.get("importance_from_forward") == 1 and "importance_passes" not in f.counters
    wc, wr = separate(model, m)
    # the training forward also holds the anchor rows (wider padding): round-off only
    assert_rows(batch.chosen_weights, wc, 1e-6)
    assert_rows(batch.rejected_weights, wr, 1e-6)
    assert not batch.chosen_weights.requires_grad


def test_the_loss_gradient_is_the_same_either_way():
    model = llama()
    model.train()
    grads = []
    for force in (False, True):
        batch, loss, f, _ = run(model, force_separate=force)
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert f.counters.get("importance_passes" if force else "importance_from_forward") == 1
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_lora_model_with_frozen_embeddings():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(llama(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                         lora_dropout=0.0))
    model.train()
    batch, loss, f, m = run(model)
    assert f.counters.get("importance_from_forward") == 1
    wc, _ = separate(model, m)
    assert_rows(batch.chosen_weights, wc, 1e-6)
    loss.backward()  # the retained graph still serves the loss
    assert all(p.grad is None for n, p in model.named_parameters() if "embed_tokens" in n)


def test_dropout_falls_back_to_the_separate_eval_mode_pass():
    model = llama(dropout=0.3)
    model.train()
    assert dropout_active(model)
    model.eval()
    assert not dropout_active(model)  # eval mode draws no dropout
    model.train()
    batch, _, f, m = run(model)
    assert f.counters.get("importance_passes") == 1 and "importance_from_forward" not in f.counters
    model.eval()
    wc, _ = separate(model, m)
    assert_rows(batch.chosen_weights, wc, 1e-6)


def test_reference_source_and_ablations_never_use_the_forward():
    model = llama()
    model.train()
    for hp in ({"importance_source": "reference"}, {"weight_scheme": "uniform"}, {"weight_scheme": "random"}):
        _, _, f, _ = run(model, **hp)
        assert "importance_from_forward" not in f.counters, hp
