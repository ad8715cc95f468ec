"""`python -m harness eval RESULTS --metrics [families]`: the project's own evaluation metrics made
again on finished cells from their kept policies (issue 16, item 2).

Before: `harness eval` ran lm-eval tasks only; a new metric or a family's fixed code needed every
cell trained again. Now the cell's evaluation is rebuilt through the cell's own code (reference,
tokenizer, data split, eval settings, seed) on the kept policy, and each family's metrics go to
``<cell>/eval/metrics/<family>.json``, which the report reads. The expected values are the run's
own ``metrics.json``: greedy answers and seeded samples are drawn as the run drew them, so every
family made again on an unchanged cell must give the run's numbers.
"""
from __future__ import annotations

import json
import math

import pytest

import reliability_helpers as rh
from harness.results import read_json

pytest.importorskip("peft")

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 64}
SUITE = {
    "name": "later",
    "models": [{"name": "t", "tiny": TINY}, {"name": "tl", "tiny": TINY, "lora": {"r": 4, "alpha": 8.0}}],
    "datasets": [{"name": "add", "task": "addition", "task_args": {"digits": 1, "n_sft": 40, "n_pairs": 64,
                                                                   "n_heldout": 16}}],
    "methods": [{"name": "dpo"}, {"name": "tidpo"}, {"name": "ipo", "train": {"keep_model": False}},
                {"name": "sft"}, {"name": "base"}],
    "sft": {"steps": 2, "batch_size": 4, "lr": 1.0e-3, "max_length": 32, "max_prompt_length": 16},
    "train": {"steps": 3, "batch_size": 4, "lr": 1.0e-3, "max_length": 32, "max_prompt_length": 16,
              "checkpoint_every": 0},
    "eval": {"heldout_pairs": 8, "generation_prompts": 4, "max_new_tokens": 4, "kl_samples": 3,
             "diversity_prompts": 2, "samples_per_prompt": 2, "winrate": True, "semantic_diversity": "off",
             "batch_size": 8},
}
# what the families write into metrics.json (cost/eval_wall_s is the step's, not a family's)
FAMILY_PREFIXES = ("pref/", "displacement/", "task/", "gen/", "winrate/", "kl/", "diversity/")


_cli, _cell = rh.cli, rh.cell_of


def _family_records(folder) -> dict[str, dict]:
    d = folder / "eval" / "metrics"
    return {p.stem: read_json(p) for p in sorted(d.glob("*.json")) if not p.name.startswith("_")}


def _snapshot(root):
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("later")
    suite = rh.write_suite(root / "later.yaml", SUITE)
    rc, out, err = _cli("run", suite, "--results", root / "r")
    assert rc == 0, err
    return root / "r" / "later"


def test_an_unknown_family_is_refused_before_anything_is_written(run):
    before = _snapshot(run)
    rc, out, err = _cli("eval", run, "--metrics", "kl,diversty", "--skip-unsaved")
    assert rc == 2
    assert "unknown metric family 'diversty'" in err and "Did you mean 'diversity'" in err
    # with --tasks too: the task is not evaluated either
    rc, out, err = _cli("eval", run, "--tasks", "embedded_mc", "--metrics", "klx", "--skip-unsaved")
    assert rc == 2 and "unknown metric family 'klx'" in err and "Did you mean 'kl'" in err
    assert _snapshot(run) == before


def test_neither_tasks_nor_metrics_is_refused(run):
    rc, out, err = _cli("eval", run)
    assert rc == 2 and "--tasks" in err and "--metrics" in err


def test_a_cell_that_kept_nothing_is_named_with_the_fix(run):
    before = _snapshot(run)
    rc, out, err = _cli("eval", run, "--metrics")
    assert rc == 2
    for m in ("t", "tl"):
        assert _cell(run, m, "ipo").name in err
    assert "keep_model: false" in err and "--skip-unsaved" in err
    assert _snapshot(run) == before


def test_metrics_made_again_are_the_runs_own(run):
    rc, out, err = _cli("eval", run, "--metrics", "--skip-unsaved")
    assert rc == 0, err
    assert "[1/8]" in out and "[8/8]" in out  # dpo, tidpo (full, LoRA), sft and base rows; ipo kept nothing
    for folder in rh.cell_dirs(run):
        if folder.name.startswith("ipo-"):
            assert not (folder / "eval").exists()
            continue
        ran = read_json(folder / "metrics.json")
        recs = _family_records(folder)
        later = {k: v for r in recs.values() for k, v in r["metrics"].items()}
        want = {k: v for k, v in ran.items() if k.startswith(FAMILY_PREFIXES)}
        assert set(later) == set(want), folder.name
        for k, v in want.items():
            if isinstance(v, float):
                assert later[k] == pytest.approx(v, rel=1e-6, abs=1e-9, nan_ok=True), (folder.name, k)
            else:  # counts, flags and notes (winrate/lc_note when the length-controlled fit is not made)
                assert later[k] == v, (folder.name, k)
        trained = not folder.name.startswith("sft-")
        assert ("preference" in recs) == trained and ("reward_accuracy" in recs) == (trained and
                                                                                     not folder.name.startswith("base-"))
        assert {"greedy", "winrate", "kl", "diversity"} <= set(recs), folder.name
        assert recs["kl"]["seed"] == ran["seed"]
        assert (folder / "eval" / "samples.jsonl").is_file()
    # the run's own files are untouched; its samples are not replaced
    dpo = _cell(run, "t", "dpo")
    assert read_json(dpo / "eval" / "metrics" / "kl.json")["weights"] == "model/ (full)"
    assert read_json(_cell(run, "tl", "dpo") / "eval" / "metrics" / "kl.json")["weights"] == "model/ (lora_adapter)"


def test_the_report_shows_the_later_values_without_retraining(run):
    from harness.report.cells import _read_metrics

    dpo = _cell(run, "t", "dpo")
    path = dpo / "eval" / "metrics" / "kl.json"
    rec = read_json(path)
    assert rec["metrics"]["kl/policy_ref"] >= 0.0
    # a later value takes the place of the run's in what the report reads
    edited = dict(rec, metrics=dict(rec["metrics"], **{"kl/policy_ref": 123.25}))
    path.write_text(json.dumps(edited))
    try:
        metrics, _ = _read_metrics({"dir": str(dpo), "state": "done", "has_metrics": True}, [])
        assert metrics["kl/policy_ref"] == 123.25
        assert metrics["pref/accuracy"] == read_json(dpo / "metrics.json")["pref/accuracy"]
    finally:
        path.write_text(json.dumps(rec))
    rc, out, err = _cli("report", run)
    assert rc == 0, err
    assert (run / "report" / "report.md").is_file()


def test_resumable_and_force(run):
    dpo = _cell(run, "t", "dpo")
    stamp = (dpo / "eval" / "metrics" / "kl.json").stat().st_mtime_ns
    rc, out, err = _cli("eval", run, "--metrics", "--skip-unsaved", "--no-report")
    assert rc == 0 and "0 cells to evaluate" in out, out + err
    rc, out, err = _cli("eval", run, "--metrics", "kl,diversity", "--skip-unsaved", "--no-report")
    assert rc == 0 and "0 cells to evaluate" in out, out + err
    assert (dpo / "eval" / "metrics" / "kl.json").stat().st_mtime_ns == stamp
    # --force on one named family: evaluated again, the same value
    before = read_json(dpo / "eval" / "metrics" / "kl.json")["metrics"]
    pref = (dpo / "eval" / "metrics" / "preference.json").stat().st_mtime_ns
    rc, out, err = _cli("eval", run, "--metrics", "kl", "--force", "--skip-unsaved", "--no-report")
    assert rc == 0, err
    assert "kl (" in out
    after = read_json(dpo / "eval" / "metrics" / "kl.json")["metrics"]
    assert after == pytest.approx(before) and not math.isnan(after["kl/policy_ref"])
    assert (dpo / "eval" / "metrics" / "kl.json").stat().st_mtime_ns != stamp
    assert (dpo / "eval" / "metrics" / "preference.json").stat().st_mtime_ns == pref  # only what was named


def test_a_named_family_that_does_not_apply_is_said(run):
    sft = _cell(run, "t", "sft")
    rc, out, err = _cli("eval", run, "--metrics", "preference", "--skip-unsaved", "--no-report")
    assert rc == 0, err
    assert sft.name in err and "not applicable" in err and "preference" in err
    assert not (sft / "eval" / "metrics" / "preference.json").exists()
