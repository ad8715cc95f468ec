"""The committed results regenerate: `python -m harness report results/<suite>` rebuilds the
committed tables, figures and report byte for byte from the committed cell folders."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _manifest(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[name.strip()] = digest
    return out


# every committed suite with a report: the README's main job, the real-model run, the smoke run of
# the paper's Table 1, the protocol at full size and the embedded studies
COMMITTED = [
    "quickstart", "smollm2_real", "paper_table1-smoke", "study_protocol",
    "study_ablations", "study_alpha", "study_anchor_source", "study_diversity",
    "study_label_noise", "study_lambda",
]


@pytest.mark.parametrize("suite", COMMITTED)
def test_committed_report_regenerates_byte_for_byte(suite, tmp_path):
    from harness.report import build_report

    src = ROOT / "results" / suite
    committed = src / "report" / "MANIFEST"
    assert committed.is_file(), f"{committed} is missing: run `python -m harness run suites/{suite}.yaml`"
    dst = tmp_path / suite
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report", "_cache", "_launch", "model", "checkpoints"))
    out = build_report(dst)
    want = _manifest(committed)
    got = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in want}
    assert got == want
    # and the committed files themselves match their manifest
    assert {n: hashlib.sha256((src / "report" / n).read_bytes()).hexdigest() for n in want} == want
