"""`run --smoke` writes `smoke: true` into every cell's and stage's config.yaml, without
touching the ids: a real suite's plan has no `smoke` key and the same ids as before."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from harness import config
from harness.cli import _load_plans

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("suite", ["quickstart", "paper_table1"])
def test_smoke_plan_is_marked_and_real_plan_is_not(suite):
    path = str(ROOT / "suites" / f"{suite}.yaml")
    # check_hub=False: paper_table1's hub data set is not reachable offline (`validate` and
    # `run` stop on it; the plan and its ids are what this test is about)
    _, real, _ = _load_plans(argparse.Namespace(suite=path, plugin=[], smoke=False), check_hub=False)
    assert not any("smoke" in c.config for c in real.cells)
    assert not any("smoke" in s.config for s in real.sft_stages)
    # the real ids are the ids config.expand gives the suite as loaded (no smoke side effect)
    assert [c.cell_id for c in real.cells] == \
        [c.cell_id for c in config.expand(config.load_suite(Path(path))).cells]
    loaded, smoke, _ = _load_plans(argparse.Namespace(suite=path, plugin=[], smoke=True))
    assert all(c.config["smoke"] is True for c in smoke.cells)
    assert all(s.config["smoke"] is True for s in smoke.sft_stages)
    # marking happens after hashing: the ids are those of the shrunk suite's own plan
    assert [c.cell_id for c in smoke.cells] == [c.cell_id for c in config.expand(loaded).cells]
    assert all(c.config["suite"] == f"{suite}-smoke" for c in smoke.cells)
