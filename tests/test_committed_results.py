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


@pytest.mark.parametrize("suite", ["quickstart", "smollm2_real"])
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
