"""Trackers as their users expect them (``train.trackers``), and evaluation during training
(``train.eval_every``).

Before: W&B got one *project* per cell (``init_trackers(project_name=run_dir.name)``), with no
config, group, tags or evaluation metrics; TensorBoard got the per-step training scalars only.

W&B is checked twice: with a fake ``wandb`` module at its API boundary (``init``, ``log``,
``summary``, ``finish``), which records exactly what the harness asks for, and with the real
package in its offline mode (``WANDB_MODE=offline``), which must accept those same arguments
and write the run under the cell. TensorBoard is the real package; its event files are read
back with TensorBoard's own reader.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import types
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.results import read_jsonl

SUITE = {
    "name": "track",
    "models": [{"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                         "max_position_embeddings": 64}}],
    "datasets": [{"name": "add", "task": "addition", "task_args": {"n_sft": 40, "n_pairs": 40, "n_heldout": 12},
                  "heldout_size": 12}],
    "methods": [{"name": "dpo", "label": "DPO", "hparams": {"beta": 0.2}}, {"name": "sft", "label": "SFT"}],
    "seeds": [0, 1],
    "sft": {"steps": 3, "batch_size": 8, "lr": 1e-3, "max_length": 32, "max_prompt_length": 16,
            "checkpoint_every": 0, "per_seed": False, "trackers": ["wandb"]},
    "train": {"steps": 4, "batch_size": 4, "lr": 1e-3, "max_length": 32, "max_prompt_length": 16,
              "checkpoint_every": 0, "eval_every": 2, "trackers": ["wandb", "tensorboard"]},
    "eval": {"generation_prompts": 4, "diversity_prompts": 0, "kl_samples": 2, "winrate": False,
             "semantic_diversity": "off"},
}


class FakeRun:
    def __init__(self, calls: list, kw: dict):
        self.kw, self.logs, self.summary, self.finished = kw, [], {}, None
        calls.append(self)

    def log(self, values, step=None):
        self.logs.append((step, dict(values)))

    def finish(self, exit_code=0):
        self.finished = exit_code


def fake_wandb(calls: list) -> types.ModuleType:
    import importlib.machinery

    mod = types.ModuleType("wandb")
    mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # other packages probe find_spec
    mod.init = lambda **kw: FakeRun(calls, kw)
    return mod


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def suite_file(tmp_path) -> Path:
    p = tmp_path / "track.yaml"
    p.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    return p


@pytest.mark.slow
def test_wandb_one_project_per_suite_one_run_per_cell_with_config_metrics_and_tags(
        tmp_path, suite_file, monkeypatch):
    calls: list[FakeRun] = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    rc, out, err = run_cli("run", suite_file, "--results", tmp_path / "res", "--launcher", "inline", "--no-report")
    assert rc == 0, out + err
    suite_dir = tmp_path / "res" / "track"
    cells = {c.name: c for c in suite_dir.iterdir() if c.name.startswith("dpo-")}
    runs = {r.kw["name"]: r for r in calls if r.kw["job_type"] == "cell"}
    assert set(runs) == set(cells)  # one run per trained cell (the SFT row trains nothing)
    assert {r.kw["project"] for r in calls} == {"track"}  # one project: the suite
    stages = [r for r in calls if r.kw["job_type"] == "sft"]
    assert len(stages) == 1 and stages[0].kw["group"] == "tiny/add"
    for name, r in runs.items():
        kw = r.kw
        assert kw["group"] == "tiny/add"
        seed = json.loads((cells[name] / "metrics.json").read_text())["seed"]
        assert set(kw["tags"]) >= {"dpo", "DPO", "model:tiny", "dataset:add", f"seed:{seed}"}
        assert kw["config"]["method"]["hparams"]["beta"] == 0.2  # the resolved config
        assert kw["config"]["train"]["lr"] == 1e-3
        assert kw["config"]["hparams"]["hp/beta"] == 0.2 and kw["config"]["hparams"]["train/steps"] == 4
        assert kw["id"] == name and kw["resume"] == "allow"  # a resumed cell continues its run
        assert Path(kw["dir"]) == cells[name] / "trackers" / "wandb"
        steps_train = [s for s, v in r.logs if "train/loss" in v]
        steps_eval = [s for s, v in r.logs if "eval/pref/accuracy" in v]
        assert steps_train == [1, 2, 3, 4] and steps_eval == [0, 2, 4]
        metrics = json.loads((cells[name] / "metrics.json").read_text())
        assert r.summary["pref/accuracy"] == pytest.approx(metrics["pref/accuracy"])
        assert r.summary["kl/policy_ref"] == pytest.approx(metrics["kl/policy_ref"])
        assert r.finished == 0


@pytest.mark.slow
def test_eval_every_writes_heldout_curves_that_end_at_the_final_evaluation(tmp_path, suite_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb([]))
    rc, out, err = run_cli("run", suite_file, "--results", tmp_path / "res", "--launcher", "inline", "--no-report")
    assert rc == 0, out + err
    for cell in (tmp_path / "res" / "track").glob("dpo-*"):
        log = read_jsonl(cell / "eval_log.jsonl")
        assert [r["step"] for r in log] == [0, 2, 4]
        # step 0: the policy is its reference (the SFT checkpoint), every log-ratio is 0: each
        # pair is a tie, worth one half, and the margin is 0
        assert log[0]["pref/accuracy"] == 0.5 and log[0]["pref/logratio_margin"] == 0.0
        assert log[0]["pref/n"] == 12
        final = json.loads((cell / "metrics.json").read_text())
        for k in ("pref/accuracy", "pref/accuracy_norm", "pref/logratio_margin"):
            assert log[-1][k] == pytest.approx(final[k], abs=1e-6), k  # the same definition and model


@pytest.mark.slow
def test_tensorboard_gets_hparams_eval_and_final_scalars(tmp_path, suite_file, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = yaml.safe_load(suite_file.read_text())
    s["train"]["trackers"] = ["tensorboard"]
    s["sft"]["trackers"] = []
    s["seeds"] = [0]
    suite_file.write_text(yaml.safe_dump(s))
    rc, out, err = run_cli("run", suite_file, "--results", tmp_path / "res", "--launcher", "inline", "--no-report")
    assert rc == 0, out + err
    (cell,) = (tmp_path / "res" / "track").glob("dpo-*")
    acc = EventAccumulator(str(cell / "trackers" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/rewards/margins", "eval/pref/accuracy", "eval/pref/logratio_margin",
            "final/pref/accuracy", "final/kl/policy_ref"} <= tags
    assert [e.step for e in acc.Scalars("eval/pref/accuracy")] == [0, 2, 4]
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"])
    hp = info.session_start_info.hparams
    assert hp["hp/beta"].number_value == pytest.approx(0.2) and hp["method"].string_value == "dpo"


@pytest.mark.slow
def test_real_wandb_offline_accepts_the_run(tmp_path, suite_file, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    s = yaml.safe_load(suite_file.read_text())
    s["train"]["trackers"] = ["wandb"]
    s["sft"]["trackers"] = []
    s["seeds"] = [0]
    s["methods"] = s["methods"][:1]
    suite_file.write_text(yaml.safe_dump(s))
    rc, out, err = run_cli("run", suite_file, "--results", tmp_path / "res", "--launcher", "inline", "--no-report")
    assert rc == 0, out + err
    (cell,) = (tmp_path / "res" / "track").glob("dpo-*")
    runs = list((cell / "trackers" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(cell.name)
    assert list(runs[0].glob("run-*.wandb"))


def test_validate_names_a_tracker_whose_package_is_missing(tmp_path, suite_file, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    rc, out, err = run_cli("validate", suite_file)
    assert rc == 2
    assert "train.trackers[0]: tracker 'wandb' needs the wandb package" in err
    assert "prefopt-harness[trackers]" in err


def test_eval_log_resumes_without_duplicates(tmp_path):
    """A run resumed from the checkpoint of step 2 cuts eval_log.jsonl back to step 2 and
    carries on; the records equal an uninterrupted run's."""
    import methods
    import torch

    from harness import schema
    from harness.core.features import Features
    from harness.core.train import PreferenceObjective, train
    from harness.data.tokenize import tokenize
    from tests.core_helpers import pairs, tiny

    def run(folder: Path, steps_to_drop: bool) -> list:
        model, tok = tiny(0)
        ref, _ = tiny(0)
        data = tokenize(pairs(), tok, 64, 32)
        m = methods.get("dpo")
        feats = Features(m, data, ref_model=ref, cache_dir=None, device=torch.device("cpu"),
                         pad_id=tok.pad_token_id, tokenizer=tok)
        cfg = schema.TrainSpec(steps=4, batch_size=4, lr=1e-2, checkpoint_every=2, keep_checkpoints=2, eval_every=2)

        def evaluator(model, step):
            with torch.no_grad():
                return {"probe": float(sum(p.double().sum() for p in model.parameters()))}

        train(model, data, PreferenceObjective(m, feats), cfg, 0, folder, tokenizer=tok, evaluator=evaluator)
        return read_jsonl(folder / "eval_log.jsonl")

    full = run(tmp_path / "a", False)
    assert [r["step"] for r in full] == [0, 2, 4]
    import shutil

    run(tmp_path / "b", False)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000004")  # as if killed after step 3
    with open(tmp_path / "b" / "eval_log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "probe": -1}) + "\n")  # a record past the checkpoint
    resumed = run(tmp_path / "b", False)
    assert [r["step"] for r in resumed] == [0, 2, 4]
    assert [r["probe"] for r in resumed] == pytest.approx([r["probe"] for r in full], rel=1e-9)
