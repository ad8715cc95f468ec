"""Typed feature settings (methods/feature_specs.py): checked values, the core reading specs and not
hyperparameter names, cache keys derived from whole specs, and reference-sampled anchors."""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

import methods
from harness.core.batch import sequence_logps
from harness.core.features import Features
from harness.core.train import PreferenceObjective, StepContext
from methods.feature_specs import AnchorSpec, PromptSpec, SpecError, TokenWeightSpec, spec_for

torch.set_num_threads(1)
PAD, EOS = 0, 2
TOK = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)
DATA = SimpleNamespace(prompts=[[1, 5, 6], [1, 7], [1, 8, 9, 10, 11]], chosen=[[3, 4, EOS], [5, 6, 7, EOS], [9, EOS]],
                       rejected=[[14, EOS], [15, 16, 3, EOS], [4, 5, 6, EOS]], fingerprint="settings-test")


def llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=32, vocab_size=20,
                                        eos_token_id=EOS, pad_token_id=PAD))


def feats(method, cache=None, counters=None, ref=None):
    return Features(method, DATA, ref_model=ref if ref is not None else llama(1), cache_dir=cache,
                    device=torch.device("cpu"), pad_id=PAD, tokenizer=TOK, counters={} if counters is None else counters)


# ------------------------------------------------------------------------------- specs
def test_specs_check_their_fields():
    with pytest.raises(SpecError, match="TokenWeightSpec.source: must be one of 'policy', 'reference'"):
        TokenWeightSpec(source="ref")
    with pytest.raises(SpecError, match=r"AnchorSpec.top_p: must be in \(0, 1\]"):
        AnchorSpec(top_p=1.5)
    with pytest.raises(SpecError, match="AnchorSpec.max_new_tokens: must be an integer"):
        AnchorSpec(max_new_tokens=8.0)
    with pytest.raises(SpecError, match="special_tokens"):
        PromptSpec(special_tokens="strip")
    assert "torch" not in sys.modules["methods.feature_specs"].__dict__


def test_tidpo_maps_its_hyperparameters_onto_specs():
    m = methods.get("tidpo", importance_lambda=0.3, anchor_top_k=7, anchor_source="reference")
    s = m.feature_settings()
    assert s["token_weights"] == TokenWeightSpec(mix=0.3)
    assert s["anchor"] == AnchorSpec(top_k=7, source="reference")
    assert s["prompt"] == PromptSpec()
    o = methods.get("tidpo-official").feature_settings()
    assert o["token_weights"] == TokenWeightSpec(convention="released", mix=0.2, prior_sigma_div=8.0)
    assert o["anchor"] == AnchorSpec(convention="released")
    assert o["prompt"] == PromptSpec(special_tokens="drop")
    # a method without specs gets the defaults; a wrong type is refused
    assert spec_for(methods.get("dpo"), "prompt") == PromptSpec()

    class Bad:
        name = "bad"

        def feature_settings(self):
            return {"anchor": TokenWeightSpec()}

    with pytest.raises(SpecError, match="must be a AnchorSpec"):
        spec_for(Bad(), "anchor")


class Renamed(methods.PreferenceMethod):
    """A method whose knob has its own name: the core must follow the spec, not the name."""

    name = "renamed-weights"
    needs = frozenset({"reference", "token_weights"})
    frozen_attribution: bool = True

    def feature_settings(self):
        return {"token_weights": TokenWeightSpec(source="reference" if self.frozen_attribution else "policy")}

    def loss(self, b):
        raise NotImplementedError


def test_the_core_reads_specs_not_hyperparameter_names():
    f = feats(Renamed())
    assert f.ref_weights is not None and len(f.ref_weights["chosen"]) == 3
    assert not feats(Renamed(frozen_attribution=False)).ref_weights


# ---------------------------------------------------------------------------- cache keys
def _other_value(spec, field):
    hints = {"scheme": "random", "source": "reference", "convention": "released", "prior": "none",
             "special_tokens": "drop"}
    v = getattr(spec, field.name)
    if field.name in hints:
        return hints[field.name]
    return v + 1 if isinstance(v, int) else v / 2


@pytest.mark.parametrize("cls", [TokenWeightSpec, AnchorSpec, PromptSpec])
def test_every_field_is_in_the_cache_key(cls):
    base = cls()
    for f in dataclasses.fields(cls):
        other = dataclasses.replace(base, **{f.name: _other_value(base, f)})
        assert other.cache_key() != base.cache_key(), f.name
    assert json.loads(base.cache_key())["spec"] == cls.__name__


@dataclass(frozen=True)
class TokenWeightSpecV2(TokenWeightSpec):
    """A later version with one more setting, left at its default."""

    clip: float = 0.0


class WithNewSetting(Renamed):
    def feature_settings(self):
        return {"token_weights": TokenWeightSpecV2(source="reference")}


def test_a_new_setting_never_reuses_a_stale_cache(tmp_path):
    assert TokenWeightSpecV2(source="reference").cache_key() != TokenWeightSpec(source="reference").cache_key()
    c1, c2, c3, c4 = {}, {}, {}, {}
    feats(Renamed(), tmp_path, c1)
    feats(Renamed(), tmp_path, c2)  # same spec: served from the cache
    feats(WithNewSetting(), tmp_path, c3)  # a new field, even at its default: recomputed
    feats(methods.get("tidpo", importance_source="reference", anchor_source="reference"), tmp_path, c4)
    assert c1["ref_forward"] > 0 and c1["ref_cache_hit"] == 0 and c1["ref_attribution_passes"] == 1
    assert c2.get("ref_forward", 0) == 0 and c2["ref_cache_hit"] == 1 and "ref_attribution_passes" not in c2
    assert c3["ref_attribution_passes"] == 1
    # tidpo with reference weights declares the same spec as Renamed: it shares that entry
    assert "ref_attribution_passes" not in c4
    assert len(list(tmp_path.glob("ref-weights-*.npz"))) == 2


# -------------------------------------------------------------------- reference anchors
def test_reference_anchors_are_sampled_once_and_cached(tmp_path):
    m = methods.get("tidpo", anchor_source="reference", anchor_max_new_tokens=6)
    c1: dict = {}
    ref = llama(1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    f1 = feats(m, tmp_path, c1, ref)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    anchors = f1.ref_anchors["anchor"]
    assert len(anchors) == 3 and all(1 <= len(a) <= 6 for a in anchors)
    # their reference log-probs are the reference's, scored like any response
    ref = llama(1)
    want = sequence_logps(ref, DATA.prompts, anchors, PAD, 8, "cpu")
    for a, b in zip(f1.ref_anchors["ref_logps"], want):
        assert torch.allclose(a, b, atol=1e-6)
    c2: dict = {}
    f2 = feats(m, tmp_path, c2)
    assert f2.ref_anchors["anchor"] == anchors and c2.get("ref_forward", 0) == 0
    # a step neither samples nor runs the reference
    policy = llama(0)
    policy.generate = None  # any sampling would fail
    ctx = StepContext(0, 0, PAD, "cpu", TOK)
    before = dict(c2)
    batch, _, _ = PreferenceObjective(m, f2).forward(policy, DATA, [2, 0], ctx)
    assert c2.get("ref_forward", 0) == before.get("ref_forward", 0) and "anchor_tokens" not in c2
    assert batch.anchor_mask.sum(-1).tolist() == [float(len(anchors[2])), float(len(anchors[0]))]
    assert torch.allclose(batch.ref_anchor_logps[0, : len(anchors[2])], want[2], atol=1e-6)
    # another anchor setting is another cache entry
    c3: dict = {}
    feats(methods.get("tidpo", anchor_source="reference", anchor_max_new_tokens=5), tmp_path, c3)
    assert c3.get("ref_anchor_tokens", 0) > 0


def test_policy_anchors_run_the_reference_over_the_anchor_rows_only():
    m = methods.get("tidpo", anchor_max_new_tokens=4)
    c: dict = {}
    f = feats(m, None, c)
    seen = []
    real = f.anchors
    f.anchors = lambda *a: seen.append(real(*a)) or seen[-1]
    n0 = c["ref_forward"]  # the cached reference pass over chosen and rejected
    torch.manual_seed(0)
    batch, _, _ = PreferenceObjective(m, f).forward(llama(0), DATA, [0, 1, 2], StepContext(0, 0, PAD, "cpu", TOK))
    assert c["ref_forward"] == n0 + 1 and c["anchor_tokens"] == int(batch.anchor_mask.sum())
    want = sequence_logps(llama(1), DATA.prompts, seen[0], PAD, 8, "cpu")
    for i, w in enumerate(want):
        assert torch.allclose(batch.ref_anchor_logps[i, : len(w)], w, atol=1e-6)
    # chosen and rejected reference log-probs come from the cache
    assert torch.allclose(batch.ref_chosen_logps[1, :4], f.ref_logps["chosen"][1])
