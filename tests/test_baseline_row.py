"""A baseline row for the starting model: the pseudo-method ``base`` (the model as loaded).

Before: with ``sft.enabled: false`` (an already fine-tuned model) the only baseline row,
``sft``, was refused, so the starting model could not appear in the tables. ``base`` evaluates
the model as loaded; with SFT off it is the methods' starting point and reference, with SFT on
it shows the model before SFT, evaluated against the SFT checkpoint.

The cross-checks use what another cell computed independently: every trained cell also scores
its reference's greedy answers (``task/accuracy_sft``), which must equal the base row's own
accuracy when that reference is the model as loaded.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import expand, load_suite_dict
from harness.errors import UserError

SUITE = {
    "name": "baseline",
    "models": [{"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                         "max_position_embeddings": 64}}],
    "datasets": [{"name": "add", "task": "addition", "task_args": {"n_sft": 40, "n_pairs": 40, "n_heldout": 12},
                  "heldout_size": 12}],
    "methods": [{"name": "base", "label": "Starting model"}, {"name": "dpo", "label": "DPO"}],
    "sft": {"enabled": False},
    "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "max_length": 32, "max_prompt_length": 16,
              "checkpoint_every": 0},
    "eval": {"generation_prompts": 8, "diversity_prompts": 0, "kl_samples": 2, "winrate": False,
             "semantic_diversity": "off"},
}


def _run(tmp_path: Path, suite: dict) -> dict[str, dict]:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(suite, sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["run", str(p), "--results", str(tmp_path / "res"), "--launcher", "inline"])
    assert rc == 0, out.getvalue() + err.getvalue()
    d = tmp_path / "res" / suite["name"]
    return {json.loads((c / "metrics.json").read_text())["label"]: json.loads((c / "metrics.json").read_text())
            for c in d.iterdir() if (c / "metrics.json").is_file()}


def test_sft_row_without_sft_points_to_base():
    s = {**SUITE, "methods": [{"name": "sft"}, {"name": "dpo"}]}
    with pytest.raises(UserError) as e:
        load_suite_dict(s)
    assert "'base'" in e.value.problems[0] and "sft.enabled is false" in e.value.problems[0]


def test_base_takes_no_settings_and_trains_nothing():
    with pytest.raises(UserError, match="takes no hparams"):
        load_suite_dict({**SUITE, "methods": [{"name": "base", "hparams": {"beta": 1}}]})
    base, dpo = expand(load_suite_dict(SUITE)).cells
    assert base.config["train"]["steps"] == 0 and base.sft_stage_id is None
    assert dpo.config["train"]["steps"] == 2


@pytest.mark.slow
def test_the_starting_model_is_a_row_when_sft_is_off(tmp_path):
    m = _run(tmp_path, SUITE)
    base, dpo = m["Starting model"], m["DPO"]
    assert base["method"] == "base"
    # the DPO cell's reference is the model as loaded: its reference answers are the base row's
    assert base["task/accuracy"] == pytest.approx(dpo["task/accuracy_sft"])
    assert "pref/accuracy" not in base  # the base row is its own reference: no log-ratios
    assert base["kl/policy_ref"] == 0.0
    report = (tmp_path / "res" / "baseline" / "report" / "tables" / "main_tiny_add.md").read_text()
    assert "| Starting model |" in report


@pytest.mark.slow
def test_with_sft_on_the_base_row_is_the_model_before_sft(tmp_path):
    s = {**SUITE, "sft": {"steps": 4, "batch_size": 8, "lr": 1e-3, "max_length": 32, "max_prompt_length": 16,
                          "checkpoint_every": 0},
         "methods": [{"name": "base"}, {"name": "sft", "label": "SFT"}]}
    m = _run(tmp_path, s)
    base, sft = m["base"], m["SFT"]
    # the base row is scored against the SFT checkpoint, whose own row it is compared with
    assert base["task/accuracy_sft"] == pytest.approx(sft["task/accuracy"])
    assert 0 <= base["pref/accuracy"] <= 1 and base["kl/policy_ref"] > 0
