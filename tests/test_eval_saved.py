"""Trained policies are kept by default, and `python -m harness eval` evaluates saved cells later
(issue 16, items 2 and 6).

Before: ``train.keep_model`` was false by default, so nothing could be evaluated after a run
without retraining every cell, and there was no command to do it. Now a trained cell keeps its
policy in ``model/`` (the full weights, or only the LoRA adapter), ``keep_model: false`` keeps
nothing, the setting changes no cell id, and ``harness eval RESULTS --tasks ...`` runs lm-eval
tasks (by lm-eval's own task names) on the kept policies and adds the columns to the report.
"""
from __future__ import annotations

import json

import pytest
import torch

import reliability_helpers as rh
from harness import cell as steps
from harness import config
from harness.evaluate.lmeval import write_local_tasks
from harness.policy_store import count_params, estimate, kept, load_policy
from harness.results import read_json

pytest.importorskip("peft")

SUITE = {
    "name": "kept",
    "models": [{"name": "t", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                      "max_position_embeddings": 64}},
               {"name": "tl", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                       "max_position_embeddings": 64}, "lora": {"r": 4, "alpha": 8.0}}],
    "datasets": [{"name": "add", "task": "addition", "task_args": {"digits": 1, "n_sft": 40, "n_pairs": 64,
                                                                   "n_heldout": 16}}],
    "methods": [{"name": "dpo"}, {"name": "ipo", "train": {"keep_model": False}}, {"name": "sft"}],
    "sft": {"steps": 2, "batch_size": 4, "lr": 1.0e-3, "max_length": 32, "max_prompt_length": 16},
    "train": {"steps": 3, "batch_size": 4, "lr": 1.0e-3, "max_length": 32, "max_prompt_length": 16,
              "checkpoint_every": 0},
    "eval": {"heldout_pairs": 8, "generation_prompts": 4, "max_new_tokens": 4, "kl_samples": 2,
             "diversity_prompts": 0, "winrate": False, "semantic_diversity": "off", "batch_size": 8},
}


_cli, _cell = rh.cli, rh.cell_of


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    suite = rh.write_suite(root / "kept.yaml", SUITE)
    rc, out, err = _cli("run", suite, "--results", root / "r")
    assert rc == 0, err
    return root / "r" / "kept", suite


def test_keep_model_changes_no_cell_id(tmp_path):
    ids = []
    for keep in (True, False):
        doc = json.loads(json.dumps(SUITE))
        doc["train"]["keep_model"] = keep
        plan = config.expand(config.load_suite(rh.write_suite(tmp_path / f"{keep}.yaml", doc)))
        ids.append([c.cell_id for c in plan.cells])
        kept_flags = {c.method: c.config["train"]["keep_model"] for c in plan.cells}
        assert kept_flags == {"dpo": keep, "ipo": False, "sft": False}  # baselines never keep a copy
    assert ids[0] == ids[1]


def test_trained_cells_keep_their_policy_by_default(run):
    suite_dir, _ = run
    full, lora = _cell(suite_dir, "t", "dpo"), _cell(suite_dir, "tl", "dpo")
    assert kept(full)["kind"] == "full"
    assert (full / "model" / "model.safetensors").is_file() and (full / "model" / "tokenizer.json").is_file()
    assert kept(lora)["kind"] == "lora_adapter"
    files = {p.name for p in (lora / "model").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files  # only the adapter
    assert (lora / "model" / "adapter_model.safetensors").stat().st_size < (full / "model" / "model.safetensors").stat().st_size / 4
    for m in ("t", "tl"):
        assert not (_cell(suite_dir, m, "ipo") / "model").exists()   # keep_model: false
        assert not (_cell(suite_dir, m, "sft") / "model").exists()   # a baseline: its SFT stage's weights
    assert not [p for p in suite_dir.rglob(".model*")]  # no temp folder left


@pytest.mark.parametrize("model", ["t", "tl"])
def test_the_kept_policy_gives_the_trained_policys_logits(run, model):
    suite_dir, _ = run
    folder = _cell(suite_dir, model, "dpo")
    cell = steps.set_up(suite_dir, folder)
    steps.train_policy(cell)
    steps.save(cell, read_json(folder / "metrics.json"))
    trained = cell.policy.eval()
    loaded, tok = load_policy(folder, cell.cfg, cell.data)
    ids = torch.tensor([tok.encode("12+3=15")])
    with torch.no_grad():
        want, got = trained(ids).logits, loaded(ids).logits
    assert torch.equal(want, got)
    before = cell.start  # the start model is not what was saved: training changed the weights
    assert before is not None and (model == "tl") == hasattr(loaded, "peft_config")


def test_the_size_estimate_is_the_saved_size(run):
    suite_dir, suite = run
    plan = config.expand(config.load_suite(suite))
    for m in plan.suite.models:
        folder = _cell(suite_dir, m.name, "dpo")
        man = kept(folder)
        _, tok = load_policy(folder, config.load_cell_config(folder), steps.stage_data(config.load_cell_config(folder)))
        size, how = estimate(m, sft_stage=True, vocab_hint=len(tok))
        assert size == man["params"] * 4, how
        header = 16 * 1024  # the safetensors header (tensor names and offsets)
        assert 0 <= man["bytes"] - size < header
    rc, out, err = _cli("validate", suite)
    assert rc == 0, err
    assert "kept policies" in out and "LoRA adapter r=4" in out and "total:" in out


def test_count_params_matches_a_published_model_size():
    # SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M): 134,515,008 parameters, tied embeddings
    c = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "tie_word_embeddings": True}
    assert count_params(c) == 134_515_008


def test_eval_adds_an_lm_eval_task_by_its_own_name_to_the_report(run, tmp_path):
    suite_dir, _ = run
    tasks = tmp_path / "tasks"
    rows = [{"question": f"{a}+{b}=", "choices": [str(a + b), str(a + b + 1)], "gold": 0}
            for a in range(3) for b in range(3)]
    write_local_tasks(tasks, [], rows, prefix="sums")  # an lm-eval task config named sums_mc
    rc, out, err = _cli("eval", suite_dir, "--tasks", "sums_mc", "--include-path", tasks, "--skip-unsaved")
    assert rc == 0, err
    assert "[1/4]" in out and "[4/4]" in out  # dpo (full, LoRA) and sft rows; ipo kept nothing
    for m in ("t", "tl"):
        for method in ("dpo", "sft"):
            rec = read_json(_cell(suite_dir, m, method) / "eval" / "sums_mc.json")
            assert rec["task"] == "sums_mc" and rec["metrics"]["lm_eval/sums_mc/_n_samples"] == 9.0
            assert 0.0 <= rec["metrics"]["lm_eval/sums_mc/acc"] <= 1.0
    report = (suite_dir / "report" / "report.md").read_text()
    assert "sums_mc" in report
    # resumable: nothing left to do, nothing rewritten
    stamp = (_cell(suite_dir, "t", "dpo") / "eval" / "sums_mc.json").stat().st_mtime_ns
    rc, out, err = _cli("eval", suite_dir, "--tasks", "sums_mc", "--include-path", tasks, "--skip-unsaved",
                        "--no-report")
    assert rc == 0 and "0 cells to evaluate" in out
    assert (_cell(suite_dir, "t", "dpo") / "eval" / "sums_mc.json").stat().st_mtime_ns == stamp


def test_an_unknown_task_is_refused_before_anything_is_written(run):
    suite_dir, _ = run
    before = sorted(p for p in suite_dir.rglob("*"))
    rc, out, err = _cli("eval", suite_dir, "--tasks", "hellaswg,embedded_mc")
    assert rc == 2
    assert "unknown lm-eval task 'hellaswg'" in err and "Did you mean 'hellaswag'" in err
    assert sorted(p for p in suite_dir.rglob("*")) == before


def test_a_cell_that_kept_nothing_is_named_with_the_fix(run):
    suite_dir, _ = run
    before = sorted(p for p in suite_dir.rglob("*"))
    rc, out, err = _cli("eval", suite_dir, "--tasks", "embedded_mc")
    assert rc == 2
    for m in ("t", "tl"):
        assert _cell(suite_dir, m, "ipo").name in err
    assert "keep_model: false" in err and "keep_model: true" in err and "--skip-unsaved" in err
    assert sorted(p for p in suite_dir.rglob("*")) == before
