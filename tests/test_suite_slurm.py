"""A whole suite through `python -m harness run --launcher slurm` on the real local SLURM
cluster (slurm/cluster.sh start): same metrics as the inline run, a hard-killed cell reported
failed with its log paths while the others finish, and a rerun that runs nothing done again."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

pytestmark = pytest.mark.slurm

SUITE = """
name: slurm-e2e
plugins: [{plugin}]
models:
  - name: tiny
    tiny: {{hidden_size: 32, num_layers: 1, num_heads: 2, max_position_embeddings: 64}}
datasets:
  - name: add
    task: addition
    task_args: {{digits: 1, n_sft: 40, n_pairs: 40, n_heldout: 20}}
    heldout_size: 20
methods:
  - name: sft
  - name: dpo
  - name: tidpo
    hparams: {{anchor_max_new_tokens: 4}}
  - name: {extra}
seeds: [0]
sft: {{steps: 10, batch_size: 8, lr: 1.0e-3, max_length: 32, max_prompt_length: 16}}
train: {{steps: 4, batch_size: 4, lr: 1.0e-3, max_length: 32, max_prompt_length: 16, checkpoint_every: 2}}
eval: {{generation_prompts: 8, diversity_prompts: 2, samples_per_prompt: 2, kl_samples: 2, max_new_tokens: 4,
        semantic_diversity: "off"}}
launcher: {{type: inline, slurm_profile: {profile}}}
"""

TIMING = ("cost/", "wall_s", "tokens_per_s", "peak_mem")


def _cluster_up() -> str | None:
    if not shutil.which("sinfo"):
        return "SLURM is not installed (bash slurm/cluster.sh install)"
    r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in r.stdout:
        return "SLURM controller not answering; run bash slurm/cluster.sh start"
    return None


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _metrics(suite_dir: Path) -> dict:
    out = {}
    for m in sorted(suite_dir.glob("*/metrics.json")):
        d = json.loads(m.read_text())
        out[m.parent.name] = {k: v for k, v in d.items() if not any(t in k for t in TIMING)}
    return out


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    reason = _cluster_up()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm-suite")
    profile = d / "profile.yaml"
    profile.write_text((ROOT / "slurm" / "default.yaml").read_text())
    plugin = HERE / "slurm_plugins" / "die_hard.py"
    good = d / "good.yaml"
    good.write_text(SUITE.format(plugin=plugin, extra="simpo", profile=profile))
    bad = d / "bad.yaml"
    bad.write_text(SUITE.format(plugin=plugin, extra="die-hard", profile=profile))
    return d, good, bad


def test_slurm_matches_inline_and_reports_a_hard_kill(suites):
    d, good, bad = suites
    inline = _run(["run", str(good), "--results", str(d / "inline"), "--no-report"], ROOT)
    assert inline.returncode == 0, inline.stderr[-3000:]
    slurm = _run(["run", str(good), "--launcher", "slurm", "--results", str(d / "slurm"), "--no-report"], ROOT)
    assert slurm.returncode == 0, slurm.stdout[-2000:] + slurm.stderr[-3000:]
    a, b = _metrics(d / "inline" / "slurm-e2e"), _metrics(d / "slurm" / "slurm-e2e")
    assert set(a) == set(b) and len(a) == 4
    assert a == b  # identical numbers on CPU, whichever launcher ran the cells
    # a job snapshot ran, with its SLURM id recorded in the cell's env.json
    env = json.loads(next((d / "slurm" / "slurm-e2e").glob("dpo-*/env.json")).read_text())
    assert env["slurm"] and env["slurm"].get("SLURM_JOB_ID")

    # the same suite with a cell that SIGKILLs itself: reported failed with its logs
    res = d / "slurm-bad"
    r = _run(["run", str(bad), "--launcher", "slurm", "--results", str(res), "--no-report"], ROOT)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    killed = next((res / "slurm-e2e").glob("die-hard-*"))
    assert f"FAILED {killed.name}" in r.stderr
    status = json.loads((killed / "status").read_text())
    assert status["state"] == "failed" and "without a result" in status["reason"]
    assert status["logs"] and all(Path(p).exists() for p in status["logs"] if p.endswith((".out", ".err")))
    done = {p.parent.name for p in (res / "slurm-e2e").glob("*/metrics.json")}
    assert len(done) == 3  # the other cells finished
    mtimes = {p: p.stat().st_mtime_ns for p in (res / "slurm-e2e").glob("*/metrics.json")}

    # rerun: nothing done runs again, the failed cell is left alone without --retry-failed
    r2 = _run(["run", str(bad), "--launcher", "slurm", "--results", str(res), "--no-report"], ROOT)
    assert "0 SFT stages and 0 cells to run" in r2.stdout, r2.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert r2.returncode == 1  # still a failed cell in the suite
