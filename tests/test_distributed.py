"""A cell run as two processes under `accelerate launch` (DDP on CPU: --multi_gpu starts the ranks, accelerate falls back to gloo), the way a
multi-GPU SLURM cell runs: both ranks train, rank 0 alone locks, evaluates and writes, and
the result is one done cell with each step logged once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import config
from harness.results import read_jsonl, read_status
from harness.runner import materialize, run_job

SUITE = {
    "name": "ddp",
    "models": [{"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                         "max_position_embeddings": 64}}],
    "datasets": [{"name": "add", "task": "addition", "heldout_size": 10,
                  "task_args": {"digits": 1, "n_sft": 20, "n_pairs": 32, "n_heldout": 10}}],
    "methods": [{"name": "dpo"}],
    "seeds": [0],
    "sft": {"steps": 4, "batch_size": 4, "lr": 1e-3, "max_length": 32, "max_prompt_length": 16},
    "train": {"steps": 4, "batch_size": 4, "lr": 1e-3, "max_length": 32, "max_prompt_length": 16},
    "eval": {"generation_prompts": 4, "diversity_prompts": 2, "samples_per_prompt": 2, "kl_samples": 2,
             "max_new_tokens": 4, "semantic_diversity": "off", "winrate": False},
}


@pytest.mark.slow
def test_two_process_cell_under_accelerate_launch(tmp_path):
    plan = config.expand(config.load_suite_dict(SUITE))
    suite_dir = tmp_path / "ddp"
    materialize(plan, suite_dir)
    run_job(str(suite_dir), "sft", plan.sft_stages[0].stage_id)
    cell = plan.cells[0].cell_id
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                        "-m", "harness.runner", str(suite_dir), "cell", cell],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"rank": 1' in r.stdout and '"state": "done"' in r.stdout
    assert read_status(suite_dir / cell)["state"] == "done"
    assert [rec["step"] for rec in read_jsonl(suite_dir / cell / "train_log.jsonl")] == [1, 2, 3, 4]
    m = json.loads((suite_dir / cell / "metrics.json").read_text())
    assert 0.0 <= m["pref/accuracy"] <= 1.0
