"""Cell ids and the bytes of every config.yaml stay exactly as they were.

``tests/fixtures/cell_ids.json`` was recorded from main, with main's own code, before the
config package was split (re-recorded at main 0ae3860, where ``sft.per_seed`` became the
default on purpose, and when the study suites went to 5 seeds with per-seed SFT, issue 11,
which added ids and changed only study_anchor_source's): for every shipped suite, as written and under ``run --smoke`` (marked
``smoke: true`` as ``run`` marks it), each cell's and SFT stage's id, and the first 16 hex
digits of the sha256 of the ``config.yaml`` that ``materialize`` writes for it. The suites
are read from a copy of ``suites/`` with empty stand-ins for the local model and data files
they name, so the record holds in any checkout, with or without the fetched files, and the
copy's folder is replaced by ``<ROOT>``. A changed id would make every rerun retrain finished
cells; a changed config.yaml would make old and new results disagree. Regenerate the fixture
only for a change of ids made on purpose, and say so in the commit.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from harness import config
from harness.results import atomic_write_yaml
from harness.smoke import mark_plan, smoke_suite

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.loads((ROOT / "tests" / "fixtures" / "cell_ids.json").read_text())
SUITES = sorted((ROOT / "suites").glob("*.yaml"))
STANDINS = ["models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", "data/llamafactory/dpo_en_demo.json"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror").resolve() / "project"
    shutil.copytree(ROOT / "suites", root / "suites")
    for f in STANDINS:  # validation only checks that they exist
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"")
    return root


def _digest(cfg: dict, root: Path, tmp: Path) -> str:
    atomic_write_yaml(tmp / "config.yaml", cfg)
    return hashlib.sha256((tmp / "config.yaml").read_text().replace(str(root), "<ROOT>").encode()).hexdigest()[:16]


def test_every_shipped_suite_is_recorded():
    assert {k.split("+")[0] for k in RECORD} == {p.stem for p in SUITES}


@pytest.mark.parametrize("name", [p.stem for p in SUITES])
@pytest.mark.parametrize("smoke", [False, True], ids=["as-written", "smoke"])
def test_cell_ids_and_config_bytes_are_unchanged(name, smoke, mirror, tmp_path, monkeypatch):
    if name == "smollm2_real" and not all(importlib.util.find_spec(m) for m in ("gguf", "peft")):
        pytest.skip("smollm2_real needs the gguf and lora extras to validate")
    monkeypatch.chdir(tmp_path)  # ids must not depend on the working directory
    loaded = config.load_suite(mirror / "suites" / f"{name}.yaml")
    plan = config.expand(smoke_suite(loaded) if smoke else loaded)
    if smoke:
        mark_plan(plan)
    want = RECORD[name + ("+smoke" if smoke else "")]
    got_cells = {c.cell_id: _digest({**c.config, "cell_id": c.cell_id, "sft_stage": c.sft_stage_id}, mirror, tmp_path)
                 for c in plan.cells}
    assert got_cells == want["cells"]
    assert {s.stage_id: _digest(s.config, mirror, tmp_path) for s in plan.sft_stages} == want["sft_stages"]


def _record() -> dict:
    """The record as the current code makes it (``python tests/test_cell_ids.py --record``
    rewrites the fixture: only for a change of ids made on purpose)."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        root = tmp / "project"
        shutil.copytree(ROOT / "suites", root / "suites")
        for f in STANDINS:
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_bytes(b"")
        for p in SUITES:
            for smoke in (False, True):
                loaded = config.load_suite(root / "suites" / p.name)
                plan = config.expand(smoke_suite(loaded) if smoke else loaded)
                if smoke:
                    mark_plan(plan)
                out[p.stem + ("+smoke" if smoke else "")] = {
                    "cells": {c.cell_id: _digest({**c.config, "cell_id": c.cell_id, "sft_stage": c.sft_stage_id},
                                                 root, tmp) for c in plan.cells},
                    "sft_stages": {s.stage_id: _digest(s.config, root, tmp) for s in plan.sft_stages}}
    return out


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--record"]:
        (ROOT / "tests" / "fixtures" / "cell_ids.json").write_text(json.dumps(_record(), indent=1, sort_keys=True) + "\n")
