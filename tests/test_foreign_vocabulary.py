"""TRL and LLaMA-Factory users' vocabulary: their common keys get the harness's name in the
error, and the two things they expect and the harness lacked, epochs and a warmup ratio, work.

The expected step counts are worked out by hand from the documented rules:
``steps = ceil(epochs x pairs / (batch_size x grad_accum))`` and, as transformers'
``TrainingArguments.get_warmup_steps`` does, ``warmup = ceil(warmup_ratio x steps)``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.config import expand, load_suite_dict
from harness.errors import UserError

BASE = {
    "name": "vocab",
    "models": [{"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                         "max_position_embeddings": 64}}],
    "datasets": [{"name": "add", "task": "addition", "task_args": {"n_sft": 40, "n_pairs": 50, "n_heldout": 8},
                  "heldout_size": 8}],
    "methods": [{"name": "dpo"}],
    "train": {"batch_size": 4, "max_length": 32, "max_prompt_length": 16},
    "sft": {"steps": 2, "max_length": 32, "max_prompt_length": 16},
}


def _suite(**over):
    import copy

    s = copy.deepcopy(BASE)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(s.get(k), dict):
            s[k].update(v)
        else:
            s[k] = v
    return s


def _problems(d) -> list[str]:
    with pytest.raises(UserError) as e:
        load_suite_dict(d)
    return e.value.problems


@pytest.mark.parametrize("where, key, value, says", [
    ("train", "learning_rate", 1e-4, "'lr'"),
    ("train", "num_train_epochs", 2, "'epochs'"),
    ("train", "per_device_train_batch_size", 8, "'batch_size'"),
    ("train", "gradient_accumulation_steps", 4, "'grad_accum'"),
    ("train", "max_steps", 100, "'steps'"),
    ("train", "lr_scheduler_type", "cosine", "'schedule'"),
    ("train", "loss_type", "sigmoid", "methods[].name"),
    ("train", "pref_loss", "sigmoid", "methods[].name"),
    ("train", "beta", 0.1, "methods[].hparams.beta"),
    ("train", "report_to", ["wandb"], "'trackers'"),
    ("train", "cutoff_len", 1024, "'max_length'"),
    ("train", "eval_steps", 10, "'eval_every'"),
    ("sft", "learning_rate", 1e-4, "'lr'"),
    (None, "learning_rate", 1e-4, "train.lr"),
    (None, "num_train_epochs", 3, "train.epochs"),
    (None, "model_name_or_path", "meta-llama/Llama-3.2-3B", "models[].hub"),
    (None, "pref_beta", 0.1, "methods[].hparams.beta"),
    (None, "seed", 1, "'seeds'"),
    (None, "output_dir", "out", "--results"),
])
def test_foreign_keys_are_named_in_harness_words(where, key, value, says):
    s = _suite()
    (s.setdefault(where, {}) if where else s)[key] = value
    probs = _problems(s)
    assert len(probs) == 1, probs
    p = probs[0]
    assert f"unknown key {key!r}" in p
    assert says in p, p
    assert "TRL" in p or "LLaMA-Factory" in p  # says whose word it is


def test_lora_keys_of_llama_factory_point_into_the_lora_block():
    s = _suite()
    s["models"][0]["lora_rank"] = 8
    (p,) = _problems(s)
    assert "models[0].lora_rank" in p and "lora.r" in p


@pytest.mark.parametrize("key, target", [("pref_beta", "beta"), ("simpo_gamma", "gamma")])
def test_foreign_hyperparameter_names_suggest_the_methods_own(key, target):
    s = _suite(methods=[{"name": "simpo", "hparams": {key: 0.5}}])
    (p,) = _problems(s)
    assert f"'{target}'" in p and key in p


def test_epochs_resolve_to_steps_at_run_time_by_hand():
    from harness.config.cell import CellConfig
    from harness.core.train import resolve_schedule
    from harness.schema import TrainSpec

    loaded = load_suite_dict(_suite(train={"epochs": 2.5, "warmup_ratio": 0.1}))
    (cell,) = expand(loaded).cells
    t = cell.config["train"]
    assert t["steps"] is None and t["epochs"] == 2.5 and t["warmup_ratio"] == 0.1
    spec = TrainSpec(**{k: v for k, v in t.items()})
    # 50 pairs, 4 per step: 2.5 epochs = 125 pairs = 31.25 steps -> 32; warmup ceil(3.2) = 4
    r = resolve_schedule(spec, 50)
    assert (r.steps, r.warmup_steps) == (32, 4)
    assert (spec.steps, spec.warmup_steps) == (None, 0)  # the config itself is left as written
    assert CellConfig  # (the cell config reads these keys back: test_cell_config)


def test_steps_and_epochs_together_is_one_clear_problem():
    (p,) = _problems(_suite(train={"steps": 10, "epochs": 1}))
    assert "train" in p and "steps" in p and "epochs" in p and "not both" in p


def test_warmup_ratio_and_warmup_steps_together_is_one_clear_problem():
    (p,) = _problems(_suite(train={"warmup_steps": 3, "warmup_ratio": 0.1}))
    assert "warmup_ratio" in p and "warmup_steps" in p and "not both" in p


def test_a_method_may_train_by_epochs_while_the_suite_counts_steps():
    loaded = load_suite_dict(_suite(train={"steps": 7},
                                    methods=[{"name": "dpo"}, {"name": "ipo", "train": {"epochs": 1}}]))
    a, b = expand(loaded).cells
    assert (a.config["train"]["steps"], a.config["train"].get("epochs")) == (7, None)
    assert (b.config["train"]["steps"], b.config["train"]["epochs"]) == (None, 1.0)


def test_new_keys_left_at_their_defaults_change_no_config_and_no_id():
    """Old suites keep their ids: a key added to the schema is written only when set."""
    (cell,) = expand(load_suite_dict(_suite())).cells
    for k in ("epochs", "warmup_ratio", "eval_every"):
        assert k not in cell.config["train"]
    (cell2,) = expand(load_suite_dict(_suite(train={"epochs": 1}))).cells
    assert cell2.cell_id != cell.cell_id


def test_training_by_epochs_runs_the_resolved_number_of_steps(tmp_path):
    from harness.core.train import SFTObjective, train
    from harness.data.tokenize import tokenize
    from harness.results import read_jsonl
    from harness.schema import TrainSpec
    from tests.core_helpers import pairs, tiny

    model, tok = tiny(0)
    data = tokenize([(p.prompt, p.chosen) for p in pairs(10)], tok, 64, 32)
    assert len(data) == 10
    cfg = TrainSpec(steps=None, epochs=1.0, warmup_ratio=0.5, batch_size=3, lr=1e-3, checkpoint_every=0)
    res = train(model, data, SFTObjective(), cfg, 0, tmp_path, tokenizer=tok)
    # 10 examples / 3 per step = 3.33 -> 4 steps; warmup ceil(0.5 x 4) = 2: lr 5e-4, 1e-3, 1e-3, 1e-3
    log = read_jsonl(tmp_path / "train_log.jsonl")
    assert res.steps == 4 and [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["lr"] for r in log] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    assert math.isfinite(log[-1]["loss"])
