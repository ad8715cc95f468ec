"""Evaluation as metric families fed by one context (issue 17 item 4) and its work (issue 15):
every family's metric keys are in the metric registry; the sampled metrics are the draws the
evaluation always made (KL samples, then diversity samples, from one seed per cell), so they do
not move against earlier results."""
from __future__ import annotations

import math

import pytest
import torch

import methods
from core_helpers import pairs
from harness import metrics, schema
from harness.data.loading import Dataset
from harness.data.tasks import make_task
from harness.evaluate import generation
from harness.evaluate.context import SAMPLING_SEED_OFFSET
from harness.evaluate.families import FAMILIES
from harness.evaluate.policy import evaluate_policy
from harness.models import build_tiny, char_tokenizer
from core_helpers import SPEC


def test_every_family_writes_registered_metrics():
    assert [f.name for f in FAMILIES] == ["preference", "reward_accuracy", "greedy", "winrate", "kl", "diversity",
                                          "lm_eval"]
    for fam in FAMILIES:
        for key in fam.keys:
            assert metrics.known(key), f"family {fam.name}: {key} is not in harness.metrics"


def _setup():
    tok = char_tokenizer("0123456789+=")
    pol, ref = build_tiny(SPEC, tok, 0), build_tiny(SPEC, tok, 1)
    data = Dataset("d", [], [], pairs(8, seed=3), make_task("addition", {"digits": 2}), "0123456789+=")
    return pol, ref, tok, data


def _counting(monkeypatch):
    calls = []
    real = generation.generate

    def counted(model, prompts, **kw):
        calls.append((len(prompts), kw.get("num_return_sequences", 1), kw.get("top_p", 1.0)))
        return real(model, prompts, **kw)

    monkeypatch.setattr(generation, "generate", counted)
    return calls


def test_sampled_metrics_are_the_draws_evaluation_always_made(tmp_path, monkeypatch):
    """One seed per cell; the KL samples (top_p 1, one per KL prompt, prompts cycling over the
    held-out set), then the diversity samples (with top_p), each pass in input order: KL is
    the mean over exactly those KL samples of the summed full-vocabulary KL at each of their
    positions, redrawn and computed here by hand from the models' logits."""
    pol, ref, tok, data = _setup()
    spec = schema.EvalSpec(generation_prompts=3, max_new_tokens=5, diversity_prompts=4, samples_per_prompt=3,
                           kl_samples=10, top_p=0.9, semantic_diversity="off", winrate=False, batch_size=4)
    calls = _counting(monkeypatch)
    m = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), spec, tmp_path, 5, max_length=32,
                        max_prompt_length=16)
    # policy greedy, SFT greedy, KL samples, diversity samples
    assert calls == [(3, 1, 1.0), (3, 1, 1.0), (10, 1, 1.0), (4, 3, 0.9)]
    torch.manual_seed(5 + SAMPLING_SEED_OFFSET)
    held = data.heldout
    prompts = [tok(held[i % len(held)].prompt)["input_ids"][-16:] for i in range(10)]
    ys = []
    for s in range(0, 10, 4):   # the evaluation's batches, in input order
        ys += generation.generate(pol, prompts[s:s + 4], pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                                  max_new_tokens=5, do_sample=True, batch_size=4)
    keep = [(p, y) for p, y in zip(prompts, ys) if y]
    want = []
    with torch.no_grad():
        for p, y in keep:       # each sample scored alone, no padding: sum over its positions of
            ids = torch.tensor([p + y])   # the full-vocabulary KL(policy || reference)
            lp = torch.log_softmax(pol(ids).logits[0, len(p) - 1:-1].float(), -1)
            lq = torch.log_softmax(ref(ids).logits[0, len(p) - 1:-1].float(), -1)
            want.append((lp.exp() * (lp - lq)).sum().item())
    assert m["kl/policy_ref"] == pytest.approx(sum(want) / len(want), rel=1e-4)
    assert math.isfinite(m["diversity/distinct_2"])
