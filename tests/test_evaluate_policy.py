"""evaluate_policy's metrics against independent computations on tiny models: preference
accuracy and likelihood displacement from plain full-sequence log-softmax scoring, task
accuracy from a hand-written greedy loop, KL zero for a policy equal to its reference."""
from __future__ import annotations

import math

import pytest
import torch

import methods
from core_helpers import SPEC, pairs
from harness import schema
from harness.data.loading import Dataset
from harness.data.tasks import make_task
from harness.evaluate.policy import evaluate_policy
from harness.models import build_tiny, char_tokenizer

SPEC_EVAL = schema.EvalSpec(generation_prompts=6, max_new_tokens=5, diversity_prompts=2, samples_per_prompt=2,
                            kl_samples=4, semantic_diversity="off", winrate=False)


def _models():
    tok = char_tokenizer("0123456789+=")
    return build_tiny(SPEC, tok, 0), build_tiny(SPEC, tok, 1), tok


def _seq_logp(model, tok, prompt: str, resp: str) -> float:
    p = [3 + "0123456789+=".index(c) for c in prompt]
    r = [3 + "0123456789+=".index(c) for c in resp] + [tok.eos_token_id]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), -1)
    return sum(lp[len(p) + t - 1, y].item() for t, y in enumerate(r))


def _greedy(model, tok, prompt: str, n: int) -> str:
    ids = [3 + "0123456789+=".index(c) for c in prompt]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


def test_preference_accuracy_displacement_and_task_accuracy(tmp_path):
    pol, ref, tok = _models()
    held = pairs(6, seed=3)
    task = make_task("addition", {"digits": 2})
    data = Dataset("d", [], [], held, task, "0123456789+=")
    m = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), SPEC_EVAL, tmp_path, 0,
                        max_length=32, max_prompt_length=16)
    lc = [_seq_logp(pol, tok, p.prompt, p.chosen) - _seq_logp(ref, tok, p.prompt, p.chosen) for p in held]
    lr = [_seq_logp(pol, tok, p.prompt, p.rejected) - _seq_logp(ref, tok, p.prompt, p.rejected) for p in held]
    assert m["pref/accuracy"] == pytest.approx(sum(a > b for a, b in zip(lc, lr)) / 6)
    n = lambda s: len(s) + 1  # noqa: E731  (characters + EOS)
    assert m["pref/accuracy_norm"] == pytest.approx(
        sum(a / n(p.chosen) > b / n(p.rejected) for a, b, p in zip(lc, lr, held)) / 6)
    # DPO's own reward is beta * summed log-ratio: same ordering as pref/accuracy
    assert m["pref/reward_accuracy"] == pytest.approx(m["pref/accuracy"])
    ref_c = sum(_seq_logp(ref, tok, p.prompt, p.chosen) for p in held) / 6
    pol_c = sum(_seq_logp(pol, tok, p.prompt, p.chosen) for p in held) / 6
    assert m["displacement/chosen_logp_ref"] == pytest.approx(ref_c, rel=1e-5)
    assert m["displacement/chosen_delta"] == pytest.approx(pol_c - ref_c, rel=1e-4, abs=1e-5)
    answers = [_greedy(pol, tok, p.prompt, 5) for p in held]
    assert m["task/accuracy"] == pytest.approx(sum(a == p.meta["answer"] for a, p in zip(answers, held)) / 6)
    assert m["task/accuracy_sft"] == pytest.approx(
        sum(_greedy(ref, tok, p.prompt, 5) == p.meta["answer"] for p in held) / 6)


def test_kl_is_zero_for_the_reference_itself_and_sft_row_has_no_self_comparison(tmp_path):
    pol, _, tok = _models()
    ref, _, _ = _models()  # same seed: identical weights
    data = Dataset("d", [], [], pairs(6, seed=3), make_task("addition"), "0123456789+=")
    m = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), SPEC_EVAL, tmp_path, 0,
                        max_length=32, max_prompt_length=16)
    assert m["kl/policy_ref"] == pytest.approx(0.0, abs=1e-6)
    m2 = evaluate_policy(pol, ref, tok, data, None, SPEC_EVAL, tmp_path, 0, max_length=32,
                         max_prompt_length=16, trained=False)
    assert "pref/accuracy" not in m2 and "task/accuracy" in m2
    assert math.isfinite(m2["diversity/distinct_2"])


def test_reward_model_judge_scores_and_win_rate(tmp_path):
    """eval.judge: a saved sequence-classification model scores policy and SFT answers; the
    scores equal an independent forward of that model on prompt + answer."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from harness.evaluate.judge import reward_scores

    pol, ref, tok = _models()
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    held = pairs(6, seed=3)
    spec = schema.EvalSpec(generation_prompts=6, max_new_tokens=5, diversity_prompts=0, kl_samples=0,
                           semantic_diversity="off", judge=str(tmp_path / "rm"))
    data = Dataset("d", [], [], held, None, None)
    m = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), spec, tmp_path / "cell", 0,
                        max_length=32, max_prompt_length=16)
    answers = [_greedy(pol, tok, p.prompt, 5) for p in held]
    with torch.no_grad():
        want = [rm(torch.tensor([[3 + "0123456789+=".index(c) for c in p.prompt + a]])).logits[0, 0].item()
                for p, a in zip(held, answers)]
    assert reward_scores(str(tmp_path / "rm"), [p.prompt for p in held], answers) == pytest.approx(want, rel=1e-4)
    assert m["task/reward"] == pytest.approx(sum(want) / 6, rel=1e-4)
    assert "task/accuracy" not in m and 0.0 <= m["winrate/vs_sft"] <= 100.0
