"""The training core: tokenization boundary and truncation, gradient accumulation,
determinism, kill-and-resume, the reference cache, and the SFT objective."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core_helpers import pairs, run_dpo, tiny
from harness import schema
from harness.core.train import SFTObjective, lr_at, step_indices, train
from harness.data.tokenize import tokenize
from harness.results import read_jsonl

HERE = Path(__file__).parent
TIMING = ("tokens_per_s", "step_s", "peak_mem_mb")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _log(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(Path(run_dir) / "train_log.jsonl")]


# ------------------------------------------------------------------ tokenization
def test_prompt_response_boundary_plain():
    _, tok = tiny()
    data = tokenize(pairs(2), tok, 64, 32)
    p = pairs(2)[0]
    # char tokenizer: one id per character; ids 0-2 are <pad>, <eos>, <unk>, then the alphabet
    ids = lambda s: [3 + "0123456789+=".index(c) for c in s]  # noqa: E731
    assert data.prompts[0] == ids(p.prompt)
    assert data.chosen[0] == ids(p.chosen) + [tok.eos_token_id]
    assert data.rejected[0] == ids(p.rejected) + [tok.eos_token_id]


def test_prompt_response_boundary_chat_template():
    _, tok = tiny()
    # a template whose assistant turn adds text both before and after the content
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}="
                         "{% else %}+{{ m['content'] }}={% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}+{% endif %}")
    from harness.data.pairs import PreferencePair

    d = tokenize([PreferencePair("12", "34", "5")], tok, 64, 32)
    ids = lambda s: [3 + "0123456789+=".index(c) for c in s]  # noqa: E731
    assert d.prompts[0] == ids("12=+")  # generation prompt included in the prompt
    # the template renders "12=+34=" for the full dialogue: the response is what follows the prompt
    assert d.chosen[0] == ids("34=")
    assert d.rejected[0] == ids("5=")


def test_truncation_counts():
    from harness.data.pairs import PreferencePair

    _, tok = tiny()
    ex = [PreferencePair("123456789", "11111", "2"), PreferencePair("1", "2", "3")]
    d = tokenize(ex, tok, max_length=8, max_prompt_length=4)
    # prompt keeps its last 4 tokens; room for 4 response tokens: "11111"+eos (6) -> 4
    assert d.prompts[0] == [3 + int(c) for c in "6789"]
    assert len(d.chosen[0]) == 4 and d.chosen[0] == [4] * 4
    assert d.rejected[0] == [5, tok.eos_token_id]
    assert d.stats == {"input": 2, "prompt_truncated": 1, "response_truncated": 1, "dropped": 0, "kept": 2,
                       "prompt_prefix_shortened": 0, "prompt_truncation": "keep_end"}
    # no room at all for the response: the pair is dropped and counted
    d2 = tokenize(ex, tok, max_length=4, max_prompt_length=4)
    assert d2.stats["dropped"] == 1 and d2.index == [1]


def test_tokenization_cache_is_keyed(tmp_path):
    _, tok = tiny()
    a = tokenize(pairs(4), tok, 64, 32, cache_dir=tmp_path)
    b = tokenize(pairs(4), tok, 64, 32, cache_dir=tmp_path)
    assert a.fingerprint == b.fingerprint and a.chosen == b.chosen
    c = tokenize(pairs(4), tok, 64, 3, cache_dir=tmp_path)  # other lengths: another entry
    assert c.fingerprint != a.fingerprint and c.stats["prompt_truncated"] > 0
    assert len(list(tmp_path.glob("tok-*.npz"))) == 2


# ----------------------------------------------------------------- schedule, order
def test_lr_schedule_written_out():
    cfg = schema.TrainSpec(steps=10, lr=1.0, warmup_steps=2, schedule="linear")
    # warmup 1/2, 2/2; then linear decay over the 8 remaining steps
    assert [lr_at(s, cfg) for s in (0, 1, 2, 6)] == [0.5, 1.0, 1.0, 0.5]
    cfg.schedule = "cosine"
    assert lr_at(6, cfg) == pytest.approx(0.5)  # cos(pi/2) halfway


def test_step_indices_cover_each_epoch_once():
    seen = [i for s in range(5) for i in step_indices(10, s, 4, seed=3)]  # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert step_indices(10, 2, 4, 3) == step_indices(10, 2, 4, 3)
    assert step_indices(10, 0, 4, 3) != step_indices(10, 0, 4, 4)


# ------------------------------------------------------------ equivalence claims
def test_gradient_accumulation_equivalence(tmp_path):
    m1, r1, _ = run_dpo(tmp_path / "a", batch_size=8, grad_accum=1, steps=3)
    m2, r2, _ = run_dpo(tmp_path / "b", batch_size=4, grad_accum=2, steps=3)
    w1, w2 = _weights(m1), _weights(m2)
    for k in w1:
        # Adam amplifies float reordering on near-zero gradients; the update is ~1e-2 per step
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)
    l1, l2 = _log(tmp_path / "a"), _log(tmp_path / "b")
    for a, b in zip(l1, l2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-4, abs=1e-7)


def test_same_seed_is_bit_identical(tmp_path):
    m1, _, _ = run_dpo(tmp_path / "a", steps=4, seed=5)
    m2, _, _ = run_dpo(tmp_path / "b", steps=4, seed=5)
    m3, _, _ = run_dpo(tmp_path / "c", steps=4, seed=6)
    w1, w2, w3 = _weights(m1), _weights(m2), _weights(m3)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)  # the seed matters (data order)
    assert _log(tmp_path / "a") == _log(tmp_path / "b")


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    full, _, _ = run_dpo(tmp_path / "full", steps=8, checkpoint_every=2)
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}"}
    p = subprocess.run([sys.executable, str(HERE / "core_helpers.py"), str(run), "5"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]  # SIGKILL at step 5, after the step-4 checkpoint
    assert [r["step"] for r in read_jsonl(run / "train_log.jsonl")] == [1, 2, 3, 4, 5]
    resumed, res, _ = run_dpo(run, steps=8, checkpoint_every=2)
    assert res.resumed_from == 4
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert _log(run) == _log(tmp_path / "full")  # steps 1..8 once each, same values


def test_checkpoints_are_rotated(tmp_path):
    run_dpo(tmp_path, steps=6, checkpoint_every=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000006"]


# -------------------------------------------------------------- reference cache
def test_reference_cache_second_run_does_no_reference_forward(tmp_path):
    cache = tmp_path / "cache"
    _, _, c1 = run_dpo(tmp_path / "a", steps=2, cache_dir=cache)
    assert c1["ref_cache_hit"] == 0 and c1["ref_forward"] > 0
    _, _, c2 = run_dpo(tmp_path / "b", steps=2, cache_dir=cache, method="ipo")  # another method, same ref
    assert c2["ref_cache_hit"] == 1 and c2.get("ref_forward", 0) == 0
    # the losses with cached reference log-probs equal those computed live
    _, _, _ = run_dpo(tmp_path / "c", steps=2, cache_dir=None)
    assert _log(tmp_path / "a") == _log(tmp_path / "c")


def test_reference_cache_key_changes_never_reuse(tmp_path):
    import methods
    from harness.core.features import Features

    cache = tmp_path / "cache"
    _, tok = tiny()
    d1 = tokenize(pairs(8), tok, 64, 32)

    def feats(data, ref_seed):
        ref, _ = tiny(ref_seed)
        c = {}
        f = Features(methods.get("dpo"), data, ref_model=ref, cache_dir=cache, device=torch.device("cpu"),
                     pad_id=tok.pad_token_id, tokenizer=tok, counters=c)
        return f, c

    f1, c = feats(d1, 0)
    assert c["ref_cache_hit"] == 0
    _, c = feats(d1, 0)
    assert c["ref_cache_hit"] == 1
    _, c = feats(d1, 1)  # other reference weights
    assert c["ref_cache_hit"] == 0
    _, c = feats(tokenize(pairs(8, seed=1), tok, 64, 32), 0)  # other data
    assert c["ref_cache_hit"] == 0
    f5, c = feats(tokenize(pairs(8), tok, 64, 4), 0)  # other length settings (prompt truncated)
    assert c["ref_cache_hit"] == 0
    assert len(list(cache.glob("ref-logps-*.npz"))) == 4
    assert not torch.equal(f5.ref_logps["chosen"][0][:1], torch.tensor([float("nan")]))


# --------------------------------------------------------------------------- SFT
def test_sft_objective_is_token_mean_nll(tmp_path):
    model, tok = tiny()
    data = tokenize([(p.prompt, p.chosen) for p in pairs(4)], tok, 64, 32)
    from harness.core.batch import collate

    # the expected first-step loss, computed with a plain full-sequence log_softmax
    with torch.no_grad():
        tot, n = 0.0, 0
        for pr, r in zip(data.prompts, data.chosen):
            ids = torch.tensor([pr + r])
            lp = torch.log_softmax(model(ids).logits[0].double(), -1)
            for t, tokid in enumerate(r):
                tot -= lp[len(pr) + t - 1, tokid].item()
                n += 1
    cfg = schema.SFTSpec(steps=1, batch_size=4, lr=1e-3, checkpoint_every=0)
    train(model, data, SFTObjective(), cfg, 0, tmp_path, tokenizer=tok)
    assert read_jsonl(tmp_path / "train_log.jsonl")[0]["loss"] == pytest.approx(tot / n, rel=1e-5)
    del collate
