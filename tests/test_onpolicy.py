"""On-policy preference data (harness/data/onpolicy.py), the graded oracles, RFT, and the
whole two-phase protocol run end to end on a tiny model.

Records, scores and expected pairs below are made up and worked out by hand.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from harness.data.onpolicy import best_of_k, form_pairs
from harness.data.tasks import levenshtein, make_task, right_aligned_match


# ------------------------------------------------------------------------------ oracles
def test_graded_oracles_give_partial_credit_and_one_only_for_the_exact_answer():
    add, rev = make_task("addition"), make_task("reverse")
    # right-aligned digits over the longer length
    assert add.graded({"answer": "45"}, "45") == 1.0
    assert add.graded({"answer": "45"}, "46") == 0.5          # the tens digit agrees
    assert add.graded({"answer": "45"}, "145") == 2 / 3       # 4 and 5 agree, 3 places
    assert add.graded({"answer": "45"}, "54") == 0.0
    assert add.graded({"answer": "45"}, " 45 ") == 1.0        # stripped, like exact match
    assert add.graded({"answer": "45"}, "") == 0.0
    assert add.graded({"answer": "100"}, "10") == 1 / 3       # place value: "10" is 0 and 1 vs 0 and 0
    # edit distance: one substitution in 8 letters, one deletion in 3
    assert rev.graded({"answer": "abcdefgh"}, "abcdefgx") == 7 / 8
    assert rev.graded({"answer": "abc"}, "ab") == pytest.approx(2 / 3)
    assert rev.graded({"answer": "abc"}, "cba") == pytest.approx(1 / 3)  # two substitutions
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert right_aligned_match("", "") == 1.0
    for t in ("45", "46", "x", ""):
        assert (add.graded({"answer": "45"}, t) == 1.0) == bool(add.score({"answer": "45"}, t))


# -------------------------------------------------------------------------------- views
RECORDS = [
    # prompt 0: scores 0.5, 1.0, 0.0, 1.0 -> best = sample 1 (first of the two 1.0), worst = sample 2
    {"i": 0, "prompt": "p0", "answer": "x", "responses": ["a", "x", "b", "x"], "scores": [0.5, 1.0, 0.0, 1.0],
     "correct": [False, True, False, True]},
    # prompt 1: every sample ties -> no pair; best of k keeps sample 0 only without a minimum
    {"i": 3, "prompt": "p1", "answer": "y", "responses": ["c", "d", "e", "f"], "scores": [0.25] * 4,
     "correct": [False] * 4},
    # prompt 2: 0.75 (twice, same text), 0.5, 0.5 -> best sample 0, worst sample 2
    {"i": 5, "prompt": "p2", "answer": "z", "responses": ["zz", "zz", "q", "r"], "scores": [0.75, 0.75, 0.5, 0.5],
     "correct": [False] * 4},
]


def test_best_vs_worst_pairs_drop_ties_and_record_what_they_are_made_of():
    pairs, st = form_pairs(RECORDS)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("p0", "x", "b"), ("p2", "zz", "q")]
    assert st["prompts"] == 3 and st["examples"] == 2 and st["ties_dropped"] == 1
    assert st["chosen_correct"] == 0.5 and st["rejected_correct"] == 0.0
    assert st["mean_margin"] == pytest.approx((1.0 + 0.25) / 2)
    assert st["sample_score"] == pytest.approx((2.5 + 1.0 + 2.5) / 12)
    assert pairs[0].meta["answer"] == "x" and pairs[0].meta["onpolicy_prompt"] == 0


def test_margin_pairing_takes_every_distinct_pair_above_the_margin():
    pairs, st = form_pairs(RECORDS, "margin", 0.4)
    # prompt 0: (x,a) 0.5, (x,b) 1.0, (a,b) 0.5; the second "x" repeats the same texts -> 3 pairs
    # prompt 2: differences are 0.25 <= 0.4 -> none
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("a", "b"), ("x", "a"), ("x", "b")]
    assert st["ties_dropped"] == 2
    pairs, _ = form_pairs(RECORDS, "margin", 0.0)
    # prompt 2 adds (zz,q), (zz,r); q and r tie
    assert sorted((p.chosen, p.rejected) for p in pairs if p.prompt == "p2") == [("zz", "q"), ("zz", "r")]


def test_best_of_k_keeps_a_prompts_best_sample_when_it_reaches_the_minimum():
    pairs, st = best_of_k(RECORDS, 1.0)
    assert [(p.prompt, p.chosen) for p in pairs] == [("p0", "x")]
    assert st["below_min_dropped"] == 2 and st["chosen_correct"] == 1.0
    pairs, st = best_of_k(RECORDS, None)
    assert [(p.prompt, p.chosen) for p in pairs] == [("p0", "x"), ("p1", "c"), ("p2", "zz")]
    assert st["below_min_dropped"] == 0 and st["chosen_correct"] == pytest.approx(1 / 3)


def test_without_an_oracle_correctness_is_unknown_not_zero():
    recs = [{**r, "correct": None} for r in RECORDS]
    _, st = form_pairs(recs)
    assert math.isnan(st["chosen_correct"]) and math.isnan(st["rejected_correct"])


def test_rft_is_sft_continued_on_the_best_samples():
    import methods

    rft, sftc = methods.get_class("rft"), methods.get_class("sft-continued")
    assert rft.trains_on == "best_of_k" and sftc.trains_on == "offline"
    assert methods.get_class("dpo").trains_on == "pairs"
    assert rft.needs == frozenset() and rft.loss is sftc.loss and not rft.hparams_spec


# ----------------------------------------------------------------------- end to end
TINY = {"arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 32,
        "tokenizer": "char"}


def _suite(tuned: bool) -> dict:
    return {
        "name": "e2e",
        "models": [{"name": "tiny", "tiny": TINY}],
        "datasets": [{"name": "rev", "task": "reverse",
                      "task_args": {"min_len": 3, "max_len": 4, "letters": 4, "n_sft": 16, "n_pairs": 24,
                                    "n_heldout": 12},
                      "heldout_size": 6, "dev_size": 6, "pairs": "onpolicy"}],
        "methods": [{"name": "sft", "label": "SFT"}, {"name": "rft", "label": "RFT"},
                    {"name": "dpo", "label": "DPO", **({"grid": {"beta": [0.1, 1.0]}} if tuned else {})},
                    {"name": "ipo", "label": "IPO"}],
        "seeds": [0, 1] if tuned else [0],
        "sft": {"steps": 6, "batch_size": 8, "lr": 3e-3, "max_length": 20, "max_prompt_length": 10,
                "checkpoint_every": 0},
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-4, "max_length": 20, "max_prompt_length": 10,
                  "checkpoint_every": 0},
        "eval": {"generation_prompts": 6, "max_new_tokens": 4, "diversity_prompts": 2, "samples_per_prompt": 2,
                 "kl_samples": 2, "semantic_diversity": "off", "winrate": False},
        "onpolicy": {"k": 3, "temperature": 2.0},
        "tuning": {"enabled": tuned, "metric": "task/score", "budget": 2, "seeds": [5]},
        "launcher": {"type": "inline"},
        "report": {"baseline": "SFT"},
    }


def _run(tmp_path: Path, d: dict, *extra: str) -> int:
    import yaml

    from harness.cli import main

    f = tmp_path / "suite.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    return main(["run", str(f), "--results", str(tmp_path / "results"), *extra])


def _metrics(suite_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in suite_dir.glob("*/metrics.json")}


def test_on_policy_samples_are_drawn_once_and_shared_by_every_method(tmp_path):
    assert _run(tmp_path, _suite(tuned=False), "--no-report") == 0
    suite_dir = tmp_path / "results" / "e2e"
    stages = list((suite_dir / "_onpolicy").iterdir())
    assert len(stages) == 1  # one SFT stage, one seed: one sample stage for DPO, IPO and RFT
    samples = stages[0] / "samples.jsonl"
    records = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(records) == len({r["prompt"] for r in records}) and all(len(r["responses"]) == 3 for r in records)
    m = _metrics(suite_dir)
    dpo = next(v for k, v in m.items() if k.startswith("dpo-"))
    ipo = next(v for k, v in m.items() if k.startswith("ipo-"))
    rft = next(v for k, v in m.items() if k.startswith("rft-"))
    sft = next(v for k, v in m.items() if k.startswith("sft-"))
    assert dpo["data/onpolicy"]["stage"] == ipo["data/onpolicy"]["stage"] == rft["data/onpolicy"]["stage"] \
        == stages[0].name
    # the pairs, recomputed here from the stored samples by the rule (best vs worst, ties dropped)
    want = sum(max(r["scores"]) > min(r["scores"]) for r in records)
    assert dpo["onpolicy/examples"] == ipo["onpolicy/examples"] == want == dpo["data/train_pairs"]
    assert dpo["onpolicy/ties_dropped"] == len(records) - want
    assert rft["data/onpolicy"]["view"] == "best_of_k" and rft["onpolicy/examples"] == len(records)
    assert "onpolicy/examples" not in sft
    # a rerun, or one more method, reuses the samples: the stage is not run again
    before = (samples.stat().st_mtime_ns, samples.read_bytes())
    d = _suite(tuned=False)
    d["methods"].append({"name": "tdpo2", "label": "TDPO2"})
    assert _run(tmp_path, d, "--no-report") == 0
    assert (samples.stat().st_mtime_ns, samples.read_bytes()) == before
    tdpo = next(v for k, v in _metrics(suite_dir).items() if k.startswith("tdpo2-"))
    assert tdpo["data/onpolicy"]["stage"] == stages[0].name and tdpo["onpolicy/examples"] == want


def test_the_protocol_end_to_end_trials_on_dev_finals_on_test_and_a_rerun_skips_everything(tmp_path, capsys):
    d = _suite(tuned=True)
    assert _run(tmp_path, d) == 0
    suite_dir = tmp_path / "results" / "e2e"
    cfgs = {p.parent.name: __import__("yaml").safe_load(p.read_text()) for p in suite_dir.glob("*/config.yaml")}
    m = _metrics(suite_dir)
    trials = {k for k, c in cfgs.items() if (c.get("tuning") or {}).get("role") == "trial"}
    finals = {k for k, c in cfgs.items() if (c.get("tuning") or {}).get("role") == "final"}
    # RFT: 1 point (nothing searched) -> no trial; DPO: beta x 1 = 2 points; IPO: 1 point
    assert {cfgs[k]["method"]["label"] for k in trials} == {"DPO (beta=0.1)", "DPO (beta=1.0)"}
    assert all(cfgs[k]["seed"] == 5 for k in trials) and {cfgs[k]["seed"] for k in finals} == {0, 1}
    # the chosen setting is the dev optimum of the trials' own metrics
    dev = {cfgs[k]["tuning"]["point"]["beta"]: m[k]["task/score"] for k in trials}
    best = max(dev, key=lambda b: (dev[b], -[0.1, 1.0].index(b)))
    assert {cfgs[k]["method"]["hparams"]["beta"] for k in finals} == {best}
    sel = json.loads((suite_dir / "_tuning" / "selection.json").read_text())
    assert sel["groups"][0]["chosen"] == {"beta": best}
    # trials answered dev prompts, everything else test prompts, and the two never meet
    def prompts(cell):
        return {json.loads(x)["prompt"] for x in (suite_dir / cell / "samples.jsonl").read_text().splitlines()
                if json.loads(x)["kind"] == "greedy"}
    dev_p = set().union(*(prompts(k) for k in trials))
    test_p = set().union(*(prompts(k) for k in cfgs if k not in trials))
    assert dev_p and test_p and not dev_p & test_p
    # the report keeps trials out of the main table and shows the choice and the search
    main_md = next((suite_dir / "report" / "tables").glob("main_tiny_rev.md")).read_text()
    assert "beta=" not in main_md and "| DPO |" in main_md
    choice = (suite_dir / "report" / "tables" / "tuning_choice.csv").read_text()
    assert "DPO" in choice and str(best) in choice
    assert (suite_dir / "report" / "figures" / "reward_kl_frontier_tiny_rev.png").is_file()
    assert (suite_dir / "report" / "figures" / "sensitivity.png").is_file()
    # a rerun finds every trial and final done: nothing trains, the finals' ids are the same
    ids = sorted(p.name for p in suite_dir.iterdir() if (p / "status").is_file())
    stamps = {k: os.stat(suite_dir / k / "metrics.json").st_mtime_ns for k in m}
    capsys.readouterr()
    assert _run(tmp_path, d, "--no-report") == 0
    out = capsys.readouterr().out
    assert "0 cells to run" in out and out.count("0 cells to run") == 2
    assert sorted(p.name for p in suite_dir.iterdir() if (p / "status").is_file()) == ids
    assert {k: os.stat(suite_dir / k / "metrics.json").st_mtime_ns for k in m} == stamps
