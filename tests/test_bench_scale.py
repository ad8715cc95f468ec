"""benchmarks/bench_scale.py in --quick mode: every row is there with a positive time (timings
are not checked), and the helpers that made the report fast read what they read before."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import UserError
from harness.results import atomic_write_yaml, read_yaml, write_status
from harness.results.layout import has_cells, list_cells

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_prints_every_row():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--quick"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "load average" in p.stdout
    rows = {}
    for line in p.stdout.splitlines():
        m = re.match(r"(.+?)\s{2,}(\d+\.\d+)\s{2,}(\d+\.\d+)\s{2,}(\S+(?: \d+)?)\s{2,}(.+)$", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), m.group(4), m.group(5), float(m.group(3)))
    # --quick: 2 data sets x 4 methods x 1 beta x 5 seeds; 2 x 4 x 1 x 2 for the report
    assert set(rows) == {"validate (40 cells, CLI)", "run --dry-run (40 cells, CLI)",
                         "plan in-process (40 cells)", "write 16 synthetic cells",
                         "report (16 cells, CLI)"}
    for step, (wall, goal, result, cpu) in rows.items():
        assert wall > 0 and cpu >= 0, step
        assert (result in ("met", "NOT met")) if goal != "-" else result == "-", step
    assert rows["validate (40 cells, CLI)"][1] == "< 10"
    assert rows["report (16 cells, CLI)"][1] == "< 60"


def test_read_yaml_reads_what_safe_load_reads(tmp_path):
    text = ("a: 1\nb: [1.0e-4, .inf, null, yes, '01', 0x10]\nc: {d: 2026-12-01, e: ~}\n"
            "f: !!str 3\ng: |\n  two\n  lines\n")
    (tmp_path / "x.yaml").write_text(text)
    assert read_yaml(tmp_path / "x.yaml") == yaml.safe_load(text)


def test_read_yaml_refuses_python_tags(tmp_path):
    (tmp_path / "x.yaml").write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_yaml(tmp_path / "x.yaml")


def test_has_cells_agrees_with_list_cells(tmp_path):
    assert not has_cells(tmp_path / "missing") and list_cells(tmp_path / "missing") == []
    (tmp_path / "_sft" / "s").mkdir(parents=True)
    write_status(tmp_path / "_sft" / "s", "done")
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.tmp").mkdir()
    (tmp_path / "x.tmp" / "status").write_text("{}")
    assert not has_cells(tmp_path) and list_cells(tmp_path) == []
    atomic_write_yaml(tmp_path / "dpo-s0" / "config.yaml", {"seed": 0})
    assert has_cells(tmp_path) and [c["cell_id"] for c in list_cells(tmp_path)] == ["dpo-s0"]
