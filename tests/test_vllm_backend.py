"""eval.backend: vllm, without a GPU or vLLM: the selection, and the request/response plumbing
against a stand-in ``vllm`` module with vLLM's documented offline API (``LLM(model=...)``,
``LLM.generate`` on ``{"prompt_token_ids": ...}`` prompts with one ``SamplingParams`` each,
``RequestOutput.outputs[j].token_ids / finish_reason / stop_reason``). The stand-in decodes
with its own plain loop over the model vLLM would load from the folder the backend wrote, and,
like vLLM, leaves the EOS it stopped at out of ``token_ids``. That real vLLM gives the same
numbers as the hf backend on a GPU has not been checked (docs/metrics.md)."""
from __future__ import annotations

import importlib.machinery
import math
import sys
import types

import pytest
import torch

import methods
from core_helpers import SPEC, pairs
from harness import schema
from harness.data.loading import Dataset
from harness.data.tasks import make_task
from harness.errors import UserError
from harness.evaluate import backends
from harness.evaluate.generation import HFGenerator
from harness.evaluate.policy import evaluate_policy
from harness.models import build_tiny, char_tokenizer
from harness.results import read_jsonl


class _SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None):
        self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed


class _LLM:
    made: list = []

    def __init__(self, model, tokenizer=None, seed=0, **kw):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.eos = AutoTokenizer.from_pretrained(tokenizer).eos_token_id
        self.kw, self.requests = dict(model=model, tokenizer=tokenizer, seed=seed, **kw), []
        _LLM.made.append(self)

    def _one(self, ids: list[int], p: _SamplingParams, gen: torch.Generator):
        out, reason = [], "length"
        with torch.no_grad():
            for _ in range(p.max_tokens):
                logits = self.model(torch.tensor([ids + out])).logits[0, -1]
                if p.temperature == 0:
                    t = int(logits.argmax())
                else:
                    t = int(torch.multinomial(torch.softmax(logits / p.temperature, -1), 1, generator=gen))
                if t == self.eos:
                    reason = "stop"
                    break
                out.append(t)
        return types.SimpleNamespace(token_ids=out, finish_reason=reason, stop_reason=None, text="")

    def generate(self, prompts, sampling_params, use_tqdm=True):
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        results = []
        for prompt, p in zip(prompts, sampling_params):
            self.requests.append((list(prompt["prompt_token_ids"]), p))
            gen = torch.Generator().manual_seed(p.seed if p.seed is not None else 0)
            results.append(types.SimpleNamespace(outputs=[self._one(prompt["prompt_token_ids"], p, gen)
                                                          for _ in range(p.n)]))
        return results


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM, mod.SamplingParams = _LLM, _SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # the backend asks for a GPU
    _LLM.made = []
    return mod


def _setup():
    tok = char_tokenizer("0123456789+=")
    pol, ref = build_tiny(SPEC, tok, 0), build_tiny(SPEC, tok, 1)
    data = Dataset("d", [], [], pairs(8, seed=3), make_task("addition", {"digits": 2}), "0123456789+=")
    return pol, ref, tok, data


def test_the_backend_is_chosen_by_eval_backend(tmp_path, monkeypatch, fake_vllm):
    tok = char_tokenizer("0123")
    assert isinstance(backends.generator_for(schema.EvalSpec(), tok, tmp_path, 0), HFGenerator)
    g = backends.generator_for(schema.EvalSpec(backend="vllm"), tok, tmp_path, 0)
    assert isinstance(g, backends.VLLMGenerator)
    g.close()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        backends.generator_for(schema.EvalSpec(backend="vllm"), tok, tmp_path, 0)
    monkeypatch.delitem(sys.modules, "vllm")
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="vllm package is not installed"):
        backends.generator_for(schema.EvalSpec(backend="vllm"), tok, tmp_path, 0)


def test_greedy_answers_and_samples_through_vllm_match_the_hf_path(tmp_path, fake_vllm):
    pol, ref, tok, data = _setup()
    spec = dict(generation_prompts=5, max_new_tokens=5, diversity_prompts=2, samples_per_prompt=3, kl_samples=2,
                semantic_diversity="off", winrate=False, temperature=0.7, top_p=0.95)
    hf = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), schema.EvalSpec(**spec), tmp_path / "hf", 3,
                         max_length=32, max_prompt_length=16)
    gen = backends.VLLMGenerator(tok, 5, tmp_path, 3)
    vl = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), schema.EvalSpec(backend="vllm", **spec),
                         tmp_path / "vllm", 3, max_length=32, max_prompt_length=16, generator=gen)
    greedy = lambda d: [r for r in read_jsonl(d / "samples.jsonl") if r["kind"] == "greedy"]  # noqa: E731
    assert greedy(tmp_path / "vllm") == greedy(tmp_path / "hf")
    for key in ("task/accuracy", "task/accuracy_sft", "gen/mean_length", "pref/accuracy"):
        assert vl[key] == hf[key], key                          # EOS counted alike in the lengths
    # one engine per model, each started once: the policy (greedy answers, then the sampling
    # pass), then the SFT reference, each from the folder written for it, removed afterwards
    policy_engine, ref_engine = _LLM.made
    assert policy_engine.kw["model"] != ref_engine.kw["model"] and policy_engine.kw["seed"] == 3
    assert not list(tmp_path.glob(".vllm-*"))
    greedy_reqs, sample_reqs = policy_engine.requests[:5], policy_engine.requests[5:]
    assert all(p.temperature == 0 and p.n == 1 and p.seed is None for _, p in greedy_reqs + ref_engine.requests)
    # one sample per KL prompt (top_p 1), then 3 per diversity prompt with the suite's top_p,
    # all at the suite's temperature, a seed of its own per request
    [(_, k0), (_, k1), (_, s0), (_, s1)] = sample_reqs
    assert (k0.n, k0.temperature, k0.top_p, k0.max_tokens) == (1, 0.7, 1.0, 5)
    assert (s0.n, s0.temperature, s0.top_p, s0.max_tokens) == (3, 0.7, 0.95, 5)
    assert len({p.seed for p in (k0, k1, s0, s1)}) == 4
    assert math.isfinite(vl["diversity/distinct_2"]) and math.isfinite(vl["kl/policy_ref"])


def test_lm_eval_goes_through_lm_evals_vllm_model_type(tmp_path, fake_vllm, monkeypatch):
    """lm-eval's registered ``vllm`` model, built on the folder the backend wrote; here a
    stand-in that is lm-eval's HFLM on that folder, so the numbers must equal the hf path's."""
    from lm_eval.api import registry
    from lm_eval.models.huggingface import HFLM

    made = []

    class StandIn(HFLM):
        def __init__(self, pretrained, tokenizer, seed, dtype, batch_size, **kw):
            made.append(dict(pretrained=pretrained, seed=seed, **kw))
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, batch_size=4, device="cpu")

    real = registry.get_model
    monkeypatch.setattr(registry, "get_model", lambda name: StandIn if name == "vllm" else real(name))
    pol, ref, tok, data = _setup()
    spec = dict(generation_prompts=0, kl_samples=0, diversity_prompts=0, semantic_diversity="off", winrate=False,
                lm_eval_tasks=["embedded_gen", "embedded_mc"], lm_eval_limit=4, max_new_tokens=4)
    hf = evaluate_policy(pol, ref, tok, data, None, schema.EvalSpec(**spec), tmp_path / "hf", 0, trained=False)
    gen = backends.VLLMGenerator(tok, 4, tmp_path, 0)
    vl = evaluate_policy(pol, ref, tok, data, None, schema.EvalSpec(backend="vllm", **spec), tmp_path / "vllm", 0,
                         trained=False, generator=gen)
    assert made and made[0]["seed"] == 0 and made[0]["gpu_memory_utilization"] == backends.VLLM_GPU_MEMORY
    keys = [k for k in hf if k.startswith("lm_eval/") and not k.endswith("_stderr")]
    assert keys and all(vl[k] == pytest.approx(hf[k]) for k in keys)


def test_real_vllm_gives_the_hf_paths_greedy_answers(tmp_path):
    """On a machine with vLLM and a GPU: the real engine's greedy answers equal the hf
    backend's on a small model (float rounding in the kernels could flip a near-tie; none at
    this size), and the sampled metrics are finite. Skipped elsewhere (vLLM is optional)."""
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("eval.backend: vllm needs a CUDA GPU")
    pol, ref, tok, data = _setup()
    pol, ref = pol.cuda(), ref.cuda()
    spec = dict(generation_prompts=5, max_new_tokens=5, diversity_prompts=2, samples_per_prompt=3, kl_samples=2,
                semantic_diversity="off", winrate=False)
    hf = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), schema.EvalSpec(**spec), tmp_path / "hf", 3,
                         max_length=32, max_prompt_length=16)
    vl = evaluate_policy(pol, ref, tok, data, methods.get("dpo"), schema.EvalSpec(backend="vllm", **spec),
                         tmp_path / "vllm", 3, max_length=32, max_prompt_length=16,
                         generator=backends.VLLMGenerator(tok, 5, tmp_path, 3))
    greedy = lambda d: [r for r in read_jsonl(d / "samples.jsonl") if r["kind"] == "greedy"]  # noqa: E731
    assert greedy(tmp_path / "vllm") == greedy(tmp_path / "hf")
    assert vl["task/accuracy"] == hf["task/accuracy"]
    assert math.isfinite(vl["diversity/distinct_2"]) and math.isfinite(vl["kl/policy_ref"])
