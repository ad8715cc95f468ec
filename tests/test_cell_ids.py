"""Cell ids and the bytes of every config.yaml stay exactly as they were.

``tests/fixtures/cell_ids.json`` was recorded from main before the config package was split
(commit 26194dd): for every shipped suite, as written and under ``run --smoke``, each cell's
and SFT stage's id, and the first 16 hex digits of the sha256 of the ``config.yaml`` that
``materialize`` writes for it (the project root, and the targets of links in it, replaced by
``<ROOT>`` so that the record holds in any checkout). A changed id would make every rerun
retrain finished cells; a changed config.yaml would make old and new results disagree.
Regenerate the fixture only for a change of ids made on purpose, and say so in the commit.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness import config
from harness.results import atomic_write_yaml
from harness.smoke import smoke_suite

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.loads((ROOT / "tests" / "fixtures" / "cell_ids.json").read_text())
SUITES = sorted((ROOT / "suites").glob("*.yaml"))
LINKS = [p for p in list(ROOT.glob("*")) + list(ROOT.glob("*/*")) if p.is_symlink() and p.name != ".venv"]


def _digest(cfg: dict, tmp: Path) -> str:
    atomic_write_yaml(tmp / "config.yaml", cfg)
    text = (tmp / "config.yaml").read_text()
    for link in LINKS:
        text = text.replace(str(link.resolve()), f"<ROOT>/{link.relative_to(ROOT)}")
    return hashlib.sha256(text.replace(str(ROOT), "<ROOT>").encode()).hexdigest()[:16]


def test_every_shipped_suite_is_recorded():
    assert {k.split("+")[0] for k in RECORD} == {p.stem for p in SUITES}


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
@pytest.mark.parametrize("smoke", [False, True], ids=["as-written", "smoke"])
def test_cell_ids_and_config_bytes_are_unchanged(path, smoke, tmp_path, monkeypatch):
    if path.stem == "smollm2_real" and not (ROOT / "models" / "smollm2-135m-instruct").is_dir():
        pytest.skip("needs scripts/fetch_smollm2.sh and scripts/fetch_llamafactory_demo.sh first")
    monkeypatch.chdir(tmp_path)  # ids must not depend on the working directory
    loaded = config.load_suite(path)
    plan = config.expand(smoke_suite(loaded) if smoke else loaded)
    want = RECORD[path.stem + ("+smoke" if smoke else "")]
    got_cells = {c.cell_id: _digest({**c.config, "cell_id": c.cell_id, "sft_stage": c.sft_stage_id}, tmp_path)
                 for c in plan.cells}
    got_stages = {s.stage_id: _digest(s.config, tmp_path) for s in plan.sft_stages}
    assert got_cells == want["cells"]
    assert got_stages == want["sft_stages"]
