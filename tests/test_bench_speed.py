"""The speed scripts of issue 15 run end to end at a tiny size (not timing tests: the numbers
they print are measurements, documented in benchmarks/README.md).

* ``bench_launcher.py``: every job ran, on as many workers as asked, and the per-job cost comes
  from one gap per job after each worker's first;
* ``time_quickstart.py`` on a one-cell suite: each stage's time is the sum of what the jobs
  recorded (read here from the suite folder it leaves), and the stages add up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results import read_json

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run(script: str, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bench_launcher_reports_per_job_overhead(tmp_path):
    out = tmp_path / "launcher.json"
    _run("bench_launcher.py", "--jobs", 5, "--workers", 1, 2, "--no-baseline", "--out", out)
    res = json.loads(out.read_text())
    assert [r["workers"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert r["jobs"] == 5 and 1 <= r["workers_used"] <= r["workers"]
        assert r["gaps"] == 5 - r["workers_used"]            # one gap per job after each worker's first
        assert 0 <= r["startup_s"] <= r["wall_s"] and 0 <= r["per_job_s"] <= r["wall_s"]
    assert "process_per_job_s" not in res


def test_time_quickstart_sums_the_jobs_records(tmp_path):
    out, results = tmp_path / "times.json", tmp_path / "results"
    proc = _run("time_quickstart.py", "--suite", ROOT / "tests" / "suites" / "crash.yaml", "--launcher", "inline",
                "--results", results, "--out", out)
    t = json.loads(out.read_text())
    suite = results / "crash"
    [cell] = [p for p in suite.iterdir() if (p / "metrics.json").is_file()]
    m = read_json(cell / "metrics.json")
    [stage] = (suite / "_sft").iterdir()
    assert t["cells"] == 1 and t["sft_stages"] == 1 and t["workers"] == 1
    assert t["train"] == pytest.approx(m["cost/train_wall_s"], abs=1e-3)
    assert t["eval"] == pytest.approx(m["cost/eval_wall_s"], abs=1e-3)
    assert t["sft"] == pytest.approx(read_json(stage / "stage.json")["wall_s"], abs=1e-3)
    assert t["cell_jobs"] == pytest.approx(read_json(cell / "status")["wall_s"], abs=1e-3)
    assert t["cell_other"] == pytest.approx(t["cell_jobs"] - t["train"] - t["eval"], abs=2e-3)
    assert t["total"] == pytest.approx(t["sweep"] + t["report"], abs=2e-3)
    assert (suite / "report").is_dir()
    for stage_name in ("sweep", "report", "cell training", "cell evaluation", "launcher"):
        assert stage_name in proc.stdout
