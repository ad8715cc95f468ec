"""Cells run as two processes under `accelerate launch`, the way a multi-GPU SLURM cell runs.

* DDP on CPU (--multi_gpu starts the ranks, accelerate falls back to gloo): both ranks train,
  rank 0 alone locks, evaluates and writes, and the result is one done cell with each step
  logged once.
* FSDP2 (--use_fsdp --fsdp_version 2): accelerate 1.15 shards only across GPUs and quietly
  trains replicas on CPU, which the training core refuses (test below). ``tests/fsdp_cpu.py``
  lifts that gate, so the sharded path (DTensor parameters, gathered checkpoints, resume into
  the shards, the gathered model that rank 0 evaluates) runs for real with gloo: the cell gives
  the same losses, gradient norms and evaluation as DDP, and an interrupted sharded run resumes
  to the same weights as an uninterrupted one and as one process. What only a GPU can check:
  NCCL, bf16 mixed precision under FSDP (fp32 master weights), memory and speed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


HERE = Path(__file__).resolve().parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
# what slurm/README.md tells a profile to pass for sharded cells
FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"]


def _env() -> dict:
    path = os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_NO_PROGRESS": "1", "PYTHONPATH": path}


def _launch(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LAUNCH + args, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)


def _suite_with_sft(tmp_path: Path, name: str, methods: list | None = None) -> tuple[Path, str]:
    plan = config.expand(config.load_suite_dict({**SUITE, "methods": methods or SUITE["methods"]}))
    suite_dir = tmp_path / name
    materialize(plan, suite_dir)
    run_job(str(suite_dir), "sft", plan.sft_stages[0].stage_id)
    return suite_dir, plan.cells[0].cell_id


def _check_done(r, suite_dir: Path, cell: str) -> list[dict]:
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"rank": 1' in r.stdout and '"state": "done"' in r.stdout
    assert read_status(suite_dir / cell)["state"] == "done"
    log = read_jsonl(suite_dir / cell / "train_log.jsonl")
    assert [rec["step"] for rec in log] == [1, 2, 3, 4]
    return log


@pytest.mark.slow
def test_two_process_cell_under_accelerate_launch(tmp_path):
    suite_dir, cell = _suite_with_sft(tmp_path, "ddp")
    r = _launch(["--multi_gpu", "-m", "harness.runner", str(suite_dir), "cell", cell], tmp_path)
    _check_done(r, suite_dir, cell)
    m = json.loads((suite_dir / cell / "metrics.json").read_text())
    assert 0.0 <= m["pref/accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    {"name": "dpo"},
    # TI-DPO: anchors sampled from the sharded policy (generate syncs the ranks: transformers sees
    # torch's FSDP-managed modules) and token weights from a backward to the input embeddings
    {"name": "tidpo", "hparams": {"importance_source": "policy", "anchor_max_new_tokens": 4}},
], ids=["dpo", "tidpo"])
def test_fsdp_cell_matches_ddp_cell(tmp_path, method):
    """The same cell trained sharded (FSDP2) and data-parallel (DDP), two processes each: the
    model is really sharded (DTensor parameters on both ranks), every logged step and the
    evaluation agree, and rank 0 evaluates a plain, gathered model."""
    ddp_dir, cell = _suite_with_sft(tmp_path, "ddp", [method])
    fsdp_dir, _ = _suite_with_sft(tmp_path, "fsdp", [method])
    ddp = _check_done(_launch(["--multi_gpu", "-m", "harness.runner", str(ddp_dir), "cell", cell], tmp_path),
                      ddp_dir, cell)
    r = _launch(FSDP + [str(HERE / "fsdp_cpu.py"), "-m", "harness.runner", str(fsdp_dir), "cell", cell], tmp_path)
    fsdp = _check_done(r, fsdp_dir, cell)
    for rank in (0, 1):
        assert f"fsdp-cpu: rank {rank} DistributedType.FSDP FSDPLlamaForCausalLM DTensor (Shard(dim=0),)" in r.stdout
    for a, b in zip(ddp, fsdp):
        for k in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "tokens"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (a["step"], k)
    assert fsdp[-1]["loss"] != fsdp[0]["loss"]  # it trained
    m_ddp = json.loads((ddp_dir / cell / "metrics.json").read_text())
    m_fsdp = json.loads((fsdp_dir / cell / "metrics.json").read_text())
    for k in ("pref/accuracy", "pref/reward_accuracy", "kl/policy_ref", "cost/params"):
        assert m_fsdp[k] == pytest.approx(m_ddp[k], rel=1e-4, abs=1e-6), k
    assert not (fsdp_dir / cell / "checkpoints").exists()


@pytest.mark.slow
def test_fsdp_resume_matches_uninterrupted_and_one_process(tmp_path):
    """Under FSDP2 a run stopped after step 4 resumes from its step-3 checkpoint (gathered into
    the plain layout, loaded back into the shards with its optimizer moments) and ends with
    the weights of the uninterrupted sharded run, and of the same run in one process."""
    from core_helpers import run_dpo
    from safetensors.torch import load_file

    r = _launch(FSDP + [str(HERE / "fsdp_cpu.py"), "-m", "fsdp_worker", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res == {"resumed_from": [None, 3], "model_type": "LlamaForCausalLM", "parameter_types": ["Parameter"]}
    assert "damaged" not in r.stderr
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"step_s", "tokens_per_s", "peak_mem_mb"}

    def log(run):
        return [{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(tmp_path / run / "train_log.jsonl")]

    assert [r["step"] for r in log("b")] == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint, once each
    assert log("a") == log("b")
    # the checkpoint has the plain layout: full tensors, optimizer state keyed by parameter index
    ckpt = tmp_path / "b" / "checkpoints" / "step-00000006"
    assert load_file(str(ckpt / "model.safetensors")).keys() == a.keys()
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.set_num_threads(1)
    one, _, _ = run_dpo(tmp_path / "one", steps=6, checkpoint_every=3)
    plain = torch.load(tmp_path / "one" / "checkpoints" / "step-00000006" / "optimizer.pt", weights_only=True)
    assert sorted(opt["state"]) == sorted(plain["state"]) == list(range(len(plain["state"])))
    for i, st in plain["state"].items():
        assert opt["state"][i]["exp_avg"].shape == st["exp_avg"].shape
    # two processes with half a batch each and one process with the whole batch: same weights
    w1 = one.state_dict()
    assert all(torch.allclose(a[k], w1[k], rtol=1e-4, atol=1e-6) for k in a)


def test_fsdp_requested_without_sharding_is_refused(monkeypatch):
    """What accelerate 1.15 does with --use_fsdp on CPU processes: it sets up MULTI_CPU data
    parallelism (full replicas). The core says so instead of training unsharded."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from harness.core import sharded
    from harness.errors import UserError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    acc = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, device=torch.device("cpu", 0), is_fsdp2=False)
    with pytest.raises(UserError, match="accelerate shards only across GPUs.*remove --use_fsdp"):
        sharded.check(acc)
    v1 = SimpleNamespace(distributed_type=DistributedType.FSDP, device=torch.device("cuda", 0), is_fsdp2=False)
    with pytest.raises(UserError, match="--fsdp_version 2"):
        sharded.check(v1)
    sharded.check(SimpleNamespace(distributed_type=DistributedType.FSDP, device=None, is_fsdp2=True))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    sharded.check(acc)  # plain DDP on CPU is fine when nobody asked for FSDP


def test_checkpoint_loads_on_the_device_of_a_distributed_cpu_process(tmp_path):
    """accelerate gives each CPU process of a distributed run the device ``cpu:0``, which
    safetensors refused ("device cpu:0 is invalid"): every checkpoint looked damaged and a
    resumed multi-process CPU run silently started over."""
    from core_helpers import run_dpo, tiny

    from harness.core.train import load_checkpoint, make_optimizer
    from harness.schema import TrainSpec

    torch.set_num_threads(1)
    trained, _, _ = run_dpo(tmp_path, steps=2, checkpoint_every=2)
    model, _ = tiny(0)
    opt = make_optimizer(model, TrainSpec())
    step = load_checkpoint(tmp_path / "checkpoints" / "step-00000002", model, opt, torch.device("cpu", 0))
    assert step == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert len(opt.state) == len(list(model.parameters()))


def test_optimizer_state_layout_round_trips():
    """The gathered optimizer state (keyed by parameter name) and the plain checkpoint layout
    (keyed by index, as ``optimizer.state_dict()``) convert into each other losslessly."""
    from harness.core.sharded import _indexed, _named

    names = ["a.weight", "b.weight", "c.bias"]
    named = {"state": {"a.weight": {"step": 1}, "c.bias": {"step": 2}},
             "param_groups": [{"lr": 0.1, "params": ["a.weight", "b.weight"]}, {"lr": 0.2, "params": ["c.bias"]}]}
    plain = _indexed(named, names)
    assert plain == {"state": {0: {"step": 1}, 2: {"step": 2}},
                     "param_groups": [{"lr": 0.1, "params": [0, 1]}, {"lr": 0.2, "params": [2]}]}
    assert _named(plain, names) == named
