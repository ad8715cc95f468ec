"""A tuned suite with on-policy pairs through `harness run --launcher slurm` on the real local
SLURM cluster (slurm/cluster.sh start): the driver submits the stages and trials, waits,
selects, submits the finals; the choice and every number equal the inline run's, and a rerun
submits nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_suite_slurm import _cluster_up

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
pytestmark = pytest.mark.slurm

SUITE = """
name: slurm-protocol
models:
  - name: tiny
    tiny: {{hidden_size: 32, num_layers: 1, num_heads: 2, max_position_embeddings: 32}}
datasets:
  - name: rev
    task: reverse
    task_args: {{min_len: 3, max_len: 4, letters: 4, n_sft: 16, n_pairs: 24, n_heldout: 12}}
    heldout_size: 6
    dev_size: 6
    pairs: onpolicy
methods:
  - {{name: sft, label: SFT}}
  - {{name: rft, label: RFT}}
  - {{name: dpo, label: DPO, grid: {{beta: [0.1, 1.0]}}}}
seeds: [0, 1]
sft: {{steps: 6, batch_size: 8, lr: 3.0e-3, max_length: 20, max_prompt_length: 10, checkpoint_every: 0}}
train: {{steps: 2, batch_size: 4, lr: 1.0e-4, max_length: 20, max_prompt_length: 10, checkpoint_every: 0}}
eval: {{generation_prompts: 6, max_new_tokens: 4, diversity_prompts: 2, samples_per_prompt: 2, kl_samples: 2,
        semantic_diversity: "off", winrate: false}}
onpolicy: {{k: 3, temperature: 2.0}}
tuning: {{enabled: true, metric: task/score, budget: 2, seeds: [5]}}
launcher: {{type: inline, slurm_profile: {profile}}}
"""
TIMING = ("cost/", "wall_s", "tokens_per_s", "peak_mem")


def _run(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def _metrics(suite_dir: Path) -> dict:
    return {m.parent.name: {k: v for k, v in json.loads(m.read_text()).items() if not any(t in k for t in TIMING)}
            for m in sorted(suite_dir.glob("*/metrics.json"))}


def test_a_tuned_suite_runs_both_phases_on_slurm_as_inline(tmp_path):
    reason = _cluster_up()
    if reason:
        pytest.skip(reason)
    profile = tmp_path / "profile.yaml"
    profile.write_text((ROOT / "slurm" / "default.yaml").read_text())
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(profile=profile))
    inline = _run(["run", str(suite), "--results", str(tmp_path / "inline"), "--no-report"])
    assert inline.returncode == 0, inline.stderr[-3000:]
    slurm = _run(["run", str(suite), "--launcher", "slurm", "--results", str(tmp_path / "slurm"), "--no-report"])
    assert slurm.returncode == 0, slurm.stdout[-2000:] + slurm.stderr[-3000:]
    a, b = _metrics(tmp_path / "inline" / "slurm-protocol"), _metrics(tmp_path / "slurm" / "slurm-protocol")
    # trials (2 DPO points x seed 5), DPO finals (2 seeds), RFT and SFT rows (nothing to tune: 2 seeds each)
    assert set(a) == set(b) and len(a) == 2 + 2 + 2 + 2
    assert a == b
    sel = [json.loads((tmp_path / r / "slurm-protocol" / "_tuning" / "selection.json").read_text())
           for r in ("inline", "slurm")]
    assert sel[0] == sel[1]
    # the finals went in after the trials: a second submission, once selection was possible
    assert "finals: 2 cells (0 done" in slurm.stdout
    again = _run(["run", str(suite), "--launcher", "slurm", "--results", str(tmp_path / "slurm"), "--no-report"])
    assert again.returncode == 0 and again.stdout.count("0 SFT stages and 0 cells to run") == 2, again.stdout
