"""The shipped suites validate offline, and the paper's reported numbers are self-consistent."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from harness import config

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_validates_and_expands(path):
    if path.stem == "smollm2_real" and not (ROOT / "models" / "smollm2-135m-instruct").is_dir():
        pytest.skip("needs scripts/fetch_smollm2.sh and scripts/fetch_llamafactory_demo.sh first")
    plan = config.expand(config.load_suite(path))
    assert plan.cells, path


def test_paper_table1_smoke_keeps_the_plan_and_swaps_what_needs_the_hub():
    from harness.smoke import smoke_suite

    loaded = config.load_suite(ROOT / "suites" / "paper_table1.yaml")
    real = config.expand(loaded)
    smoke = config.expand(smoke_suite(loaded))
    assert len(smoke.cells) == len(real.cells) == 21
    assert [c.label for c in smoke.cells] == [c.label for c in real.cells]
    for c in smoke.cells:
        assert c.config["model"]["tiny"] and not c.config["model"]["hub"]
        assert c.config["dataset"]["task"] and not c.config["dataset"]["hub"]
        assert set(c.config["eval"]["lm_eval_tasks"]) <= {"embedded_gen", "embedded_mc"}
    assert smoke.suite.name == "paper_table1-smoke"


def test_reported_table1_matches_the_per_model_tables():
    """Table 1 (average) equals the mean of Tables B5-B7 for every method except TI-DPO, whose
    MMLU, GSM8K and GPQA are each 0.67 above that mean (REFERENCE.md)."""
    rows = list(csv.DictReader(open(ROOT / "results" / "paper_table1" / "reported.csv")))
    cols = ["MMLU", "GSM8K", "GPQA", "HumanEval", "TruthfulQA", "IFEval"]
    for method in ("SFT", "DPO", "IPO", "SimPO", "TDPO", "TI-DPO"):
        avg = next(r for r in rows if r["method"] == method and r["model"] == "average")
        per = [r for r in rows if r["method"] == method and r["model"] != "average"]
        assert len(per) == 3
        for c in cols:
            mean = sum(float(r[c]) for r in per) / 3
            gap = float(avg[c]) - mean
            if method == "TI-DPO" and c in ("MMLU", "GSM8K", "GPQA"):
                assert gap == pytest.approx(0.67, abs=0.01), (method, c)
            else:
                assert abs(gap) <= 0.05, (method, c, gap)
    assert "0.67" in next(r for r in rows if r["method"] == "TI-DPO" and r["model"] == "average")["note"]
