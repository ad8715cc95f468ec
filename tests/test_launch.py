"""Launchers without a cluster: inline and local (submitit subprocesses) for real; the SLURM
launcher's profile validation and generated sbatch/accelerate parameters. The real-SLURM tests
are in test_launch_slurm.py."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import submitit

import launch_helpers as h
from harness.errors import UserError
from harness.launch import Job, JobOutcome, format_summary, launch
from harness.launch.base import Progress, snapshot_code
from harness.launch.profile import StageResources, load_profile
from harness.launch.slurm import (
    AccelerateSpec,
    JobCall,
    accelerate_command,
    executor_parameters,
    make_call,
    snapshot_setup,
)
from harness.paths import slurm_profile
from harness.schema import LauncherSpec

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent


@pytest.fixture
def job_env(monkeypatch):
    """Job processes unpickle the helpers by reference: put tests/ on their PYTHONPATH."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR) + (os.pathsep + old if old else ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def read_records(path: Path) -> dict:
    return {r["name"]: r for r in map(json.loads, path.read_text().splitlines())}


# ----------------------------------------------------------------------------- inline
def test_inline_runs_sft_first_catches_failures_and_reports_progress(tmp_path):
    rec = tmp_path / "order.jsonl"
    jobs = [
        Job("c1", h.record, (str(rec), "c1", 0.0, 10)),
        Job("bad", h.fail, ("broken on purpose",), log_hint="/cells/bad/train.log"),
        Job("c2", h.double, (21,)),
        Job("sft", h.record, (str(rec), "sft", 0.0, "ckpt"), stage="sft", resources="sft"),
    ]
    seen = []
    out = launch(jobs, LauncherSpec(type="inline"), tmp_path, progress=seen.append)

    assert [o.name for o in out] == ["c1", "bad", "c2", "sft"]          # the given order
    assert [o.ok for o in out] == [True, False, True, True]
    assert [o.result for o in out] == [10, None, 42, "ckpt"]
    assert "ValueError: broken on purpose" in out[1].error
    assert out[1].error.startswith("Traceback")
    assert out[1].log_paths == ["/cells/bad/train.log"]
    r = read_records(rec)
    assert r["sft"]["end"] <= r["c1"]["start"]                            # sft ran first
    assert seen[0] == {"pending": 4, "running": 0, "done": 0, "failed": 0}
    assert seen[-1] == {"pending": 0, "running": 0, "done": 3, "failed": 1}
    # one "running" then one "done/failed" report per job, each a change
    assert len(seen) == 1 + 2 * len(jobs)


# ----------------------------------------------------------------------------- local
def test_local_matches_inline_survives_raise_and_sigkill_and_bounds_workers(tmp_path, job_env):
    rec = tmp_path / "times.jsonl"
    value_jobs = [Job(f"v{i}", h.record, (str(rec), f"v{i}", 0.8, i * i)) for i in range(3)]
    jobs = [
        *value_jobs,
        Job("raises", h.fail, ("broken on purpose",)),
        Job("killed", h.kill_self, log_hint=str(tmp_path / "killed.log")),
        Job("sft", h.record, (str(rec), "sft", 0.3, "ckpt"), stage="sft", resources="sft"),
    ]
    inline = launch([*value_jobs, jobs[-1]], LauncherSpec(type="inline"), tmp_path / "inline")
    rec.unlink()
    seen = []
    out = {o.name: o for o in launch(jobs, LauncherSpec(type="local", workers=2), tmp_path / "w",
                                     progress=seen.append)}

    assert [out[o.name].result for o in inline] == [o.result for o in inline] == [0, 1, 4, "ckpt"]
    assert all(out[o.name].ok for o in inline)
    assert not out["raises"].ok and "ValueError: broken on purpose" in out["raises"].error
    assert out["raises"].error.startswith("Traceback")   # the job's own traceback, not submitit's
    k = out["killed"]
    assert not k.ok and k.result is None
    assert "ended without a result" in k.error
    assert "kill_self: sending SIGKILL" in k.error        # the stdout tail is quoted
    stdout, stderr, hint = k.log_paths
    assert Path(stdout).is_file() and Path(stderr).is_file() and hint == str(tmp_path / "killed.log")
    assert "kill_self: sending SIGKILL" in Path(stdout).read_text()

    r = read_records(rec)
    cells = [r[f"v{i}"] for i in range(3)]
    assert all(c["start"] >= r["sft"]["end"] for c in cells)   # the cell stage waited for sft
    # at most 2 at once: with three 0.8 s jobs submitted together, an unbounded pool runs all 3
    # at the moment the last one starts (counting overlapping pairs instead would also count a
    # job that overlaps the one before it and the one after it, which 2 workers allow)
    for c in cells:
        running = sum(o["start"] <= c["start"] < o["end"] for o in cells)
        assert running <= 2
    assert seen[-1] == {"pending": 0, "running": 0, "done": 4, "failed": 2}
    assert max(s["running"] for s in seen) <= 2

    summary = format_summary(list(out.values()))
    assert summary.splitlines()[0] == "6 jobs: 4 done, 2 failed"
    assert "FAILED raises" in summary and "ValueError: broken on purpose" in summary
    assert f"FAILED killed (job {k.job_id}): job {k.job_id} ended without a result" in summary
    assert f"logs: {stdout}, {stderr}, {hint}" in summary


@pytest.mark.slow
def test_jobcall_under_accelerate_runs_one_process_per_rank(tmp_path, job_env):
    """The multi-GPU path for real, on CPU: accelerate launch (torchrun) starts 2 processes,
    each runs the function; rank 0's value is the job's result. --multi_gpu needs no GPU here
    because the function touches no CUDA. Run through the local launcher, which gives the
    submitit job environment JobCall needs. ~20 s on 2 cores (three interpreters import torch)."""
    call = JobCall(h.rank_report, (str(tmp_path),), accelerate=AccelerateSpec(gpus_per_node=2))
    [o] = launch([Job("acc", call)], LauncherSpec(type="local", workers=1), tmp_path / "w")
    assert o.ok, o.error
    assert o.result == (0, 2)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"rank": rank, "world": 2, "local_rank": rank}


# ----------------------------------------------------------------------------- summary, progress
def test_format_summary_headlines():
    outs = [
        JobOutcome("a", True, result=1),
        JobOutcome("b", False, "Traceback (most recent call last):\n  File x\nKeyError: 'beta'",
                   ["/s/1.out", "/s/1.err", "/r/b/log"], job_id="7_1"),
        JobOutcome("c", False, "job 7_2 ended without a result (state: OUT_OF_MEMORY): killed\n--- tail\nx"),
    ]
    assert format_summary(outs) == (
        "3 jobs: 1 done, 2 failed\n"
        "  FAILED b (job 7_1): KeyError: 'beta'\n"
        "    logs: /s/1.out, /s/1.err, /r/b/log\n"
        "  FAILED c: job 7_2 ended without a result (state: OUT_OF_MEMORY): killed"
    )


def test_progress_reports_only_changes():
    seen = []
    p = Progress(["a", "b"], seen.append)
    p.emit()                       # unchanged: no second report
    p.set("a", "running")
    p.emit()
    p.set("a", "running")
    p.emit()
    assert seen == [{"pending": 2, "running": 0, "done": 0, "failed": 0},
                    {"pending": 1, "running": 1, "done": 0, "failed": 0}]


def test_job_checks():
    with pytest.raises(ValueError, match="duplicate job name 'x'"):
        launch([Job("x", h.double, (1,)), Job("x", h.double, (2,))], LauncherSpec(type="inline"), ".")
    with pytest.raises(ValueError, match="stage 'eval'"):
        launch([Job("x", h.double, (1,), stage="eval")], LauncherSpec(type="inline"), ".")


# ----------------------------------------------------------------------------- profiles
def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(path) -> list[str]:
    with pytest.raises(UserError) as e:
        load_profile(path)
    return e.value.problems


def test_profile_defaults_merge_into_stages(tmp_path):
    p = load_profile(write(tmp_path, """
defaults: {partition: gpu, account: lab, cpus_per_task: 4, setup: "module load cuda"}
sft: {time: 30}
cell: {time: 90, gpus_per_node: 4, cpus_per_task: 16, mem_gb: 120.5,
       additional: {constraint: h100, exclusive: true}, accelerate_args: [--mixed_precision, bf16]}
"""))
    assert p.sft == StageResources(partition="gpu", account="lab", cpus_per_task=4, time=30,
                                   setup=("module load cuda",))
    assert p.cell.partition == "gpu" and p.cell.cpus_per_task == 16 and p.cell.time == 90
    assert p.cell.additional == {"constraint": "h100", "exclusive": True}
    assert p.cell.uses_accelerate and not p.sft.uses_accelerate
    assert (p.result_wait_s, p.max_requeues, p.snapshot) == (15.0, 3, True)


def test_profile_errors_name_file_key_and_fix(tmp_path):
    path = write(tmp_path, """
max_requeues: -1
time: 30
cell:
  gpus_pre_node: 2
  time: "2h"
  cpus_per_task: 0
  mem_gb: -4
  additional: {dependency: "afterok:1", mail_user: x@y}
  setup: [1, 2]
sft:
  nodes: 2
""")
    ps = problems(path)
    assert all(p.startswith(f"{path}: ") for p in ps)
    text = "\n".join(ps)
    # the one typed checker's wording (methods.settings), as for suites and hyperparameters
    assert "max_requeues: must be >= 0, got -1" in text
    assert "time: unknown key 'time'." in text and "Resource keys go under 'defaults', 'sft' or 'cell'." in text
    assert "cell.gpus_pre_node: unknown key 'gpus_pre_node'. Did you mean 'gpus_per_node'" in text
    assert "cell.time: must be an integer, got '2h'" in text
    assert "cell.cpus_per_task: must be >= 1, got 0" in text
    assert "cell.mem_gb: must be > 0, got -4.0" in text
    assert "cell.additional.dependency: set by the launcher itself" in text
    assert "mail_user" not in text                                  # an allowed option
    assert "cell.setup[0]: must be a string, got 1" in text and "cell.setup[1]: must be a string, got 2" in text
    assert "sft.nodes: 2 nodes need gpus_per_node >= 1" in text
    assert len(ps) == 10


def test_profile_file_level_errors(tmp_path):
    [msg] = problems(tmp_path / "nope.yaml")
    assert "nope.yaml: SLURM profile not found" in msg
    [msg] = problems(write(tmp_path, "cell:\n  time: [1\n"))
    assert "p.yaml (line 3): not valid YAML" in msg
    [msg] = problems(write(tmp_path, "cell: {accelerate_args: [--mixed_precision, bf16]}"))
    assert "cell.accelerate_args: only used when gpus_per_node > 1" in msg
    with pytest.raises(UserError, match=r"launcher.slurm_profile: SLURM profile 'slurm/none.yaml' not found \(looked in "):
        slurm_profile("slurm/none.yaml", tmp_path)
    assert slurm_profile("slurm/default.yaml", tmp_path) == ROOT / "slurm/default.yaml"


def test_shipped_profiles_load():
    d = load_profile(ROOT / "slurm/default.yaml")
    assert d.cell.gpus_per_node == 0 and d.cell.cpus_per_task == 1 and not d.cell.uses_accelerate
    g = load_profile(ROOT / "slurm/gpu-8b.yaml")
    assert (g.sft.gpus_per_node, g.cell.gpus_per_node) == (8, 4)
    assert g.cell.nodes == 1 and g.cell.uses_accelerate and g.cell.mem_gb == 240


def test_slurm_launcher_needs_sbatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="sbatch is not on PATH"):
        launch([Job("x", h.double, (1,))], LauncherSpec(type="slurm"), tmp_path)


# ----------------------------------------------------------------------------- generated parameters
def test_executor_parameters_for_a_gpu_stage():
    res = StageResources(partition="gpu", account="lab", qos="high", time=240, gpus_per_node=4,
                         cpus_per_task=32, mem_gb=240, setup=("module load cuda",),
                         additional={"constraint": "h100", "exclusive": True, "requeue": False})
    got = executor_parameters(res, name="harness-cell", parallelism=8,
                              setup=["export PYTHONPATH=/snap"], dependency="afterany:11:12")
    assert got == {
        "name": "harness-cell", "timeout_min": 240, "nodes": 1, "tasks_per_node": 1,
        "cpus_per_task": 32, "gpus_per_node": 4, "mem_gb": 240,
        "slurm_partition": "gpu", "slurm_account": "lab", "slurm_qos": "high",
        "slurm_array_parallelism": 8, "slurm_signal_delay_s": 90,
        "slurm_setup": ["module load cuda", "export PYTHONPATH=/snap"],
        "slurm_additional_parameters": {"constraint": "h100", "exclusive": True},  # False: dropped
        "slurm_dependency": "afterany:11:12",
    }
    cpu = executor_parameters(StageResources(), name="harness-sft", parallelism=16)
    assert "gpus_per_node" not in cpu and "mem_gb" not in cpu and "slurm_dependency" not in cpu


def test_generated_sbatch_script(tmp_path, monkeypatch):
    """submitit turns those parameters into the sbatch script we expect (checked on the text
    submitit would submit; srun need not exist)."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    res = StageResources(partition="gpu", time=240, gpus_per_node=4, cpus_per_task=32, mem_gb=240,
                         setup=("module load cuda",), additional={"constraint": "h100"})
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    ex.update_parameters(**executor_parameters(
        res, name="harness-cell", parallelism=3, setup=snapshot_setup(Path("/snap shot/1"), Path("/w")),
        dependency="afterany:11"))
    script = ex._executor._make_submission_file_text("python -m submitit.core._submit X", "uid")
    for line in ["#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=32", "#SBATCH --mem=240GB", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --dependency=afterany:11", "#SBATCH --constraint=h100",
                 "#SBATCH --job-name=harness-cell", "#SBATCH --signal=USR2@90", "module load cuda",
                 "export PYTHONPATH='/snap shot/1':/w${PYTHONPATH:+:$PYTHONPATH}",
                 "export PYTHONSAFEPATH=1"]:
        assert line in script.splitlines(), line
    # the array bound: --array=0-(n-1)%min(n, parallelism)
    ex._executor.parameters["map_count"] = 5
    script = ex._executor._make_submission_file_text("cmd", "uid")
    assert "#SBATCH --array=0-4%3" in script.splitlines()


def test_accelerate_command_single_and_multi_node():
    one = accelerate_command("/w/7_accelerate.call.pkl", AccelerateSpec(gpus_per_node=4),
                             main_process_port=29123, python="/venv/bin/python")
    assert one == ["/venv/bin/python", "-m", "accelerate.commands.launch",
                   "--num_processes", "4", "--num_machines", "1", "--machine_rank", "0",
                   "--main_process_port", "29123", "--multi_gpu",
                   "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--module", "harness.launch.slurm", "/w/7_accelerate.call.pkl"]
    fsdp = ("--use_fsdp", "--mixed_precision", "bf16", "--fsdp_sharding_strategy", "FULL_SHARD")
    two = accelerate_command("c.pkl", AccelerateSpec(gpus_per_node=8, nodes=2, extra_args=fsdp),
                             machine_rank=1, main_process_ip="gpu017", main_process_port=30000,
                             python="py")
    assert two == ["py", "-m", "accelerate.commands.launch",
                   "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
                   "--main_process_port", "30000", "--main_process_ip", "gpu017",
                   # FSDP picked: no --multi_gpu; bf16 given: only the dynamo default added
                   "--dynamo_backend", "no", *fsdp,
                   "--module", "harness.launch.slurm", "c.pkl"]
    with pytest.raises(ValueError, match="main_process_ip"):
        accelerate_command("c.pkl", AccelerateSpec(8, nodes=2), main_process_port=1)


def test_make_call_uses_accelerate_only_for_several_gpus():
    job = Job("c", h.double, (3,))
    assert make_call(job, StageResources(gpus_per_node=1)).accelerate is None
    call = make_call(job, StageResources(gpus_per_node=4, accelerate_args=("--mixed_precision", "bf16")))
    assert call.accelerate == AccelerateSpec(4, 1, ("--mixed_precision", "bf16"))
    assert make_call(job, StageResources())() == 6                     # runs fn directly
    assert isinstance(call, submitit.helpers.Checkpointable)
    resubmit = call.checkpoint()                                       # requeue = the same call
    assert resubmit.function is call and resubmit.args == () and resubmit.kwargs == {}


def test_snapshot_copies_packages_without_caches(tmp_path):
    snap = snapshot_code(tmp_path)
    assert snap.parent == tmp_path / "snapshot"
    assert (snap / "harness/launch/slurm.py").read_text() == (ROOT / "harness/launch/slurm.py").read_text()
    assert (snap / "methods/__init__.py").is_file()
    assert not list(snap.rglob("__pycache__"))
    # a job started in the project root (sbatch's default: the submission directory) with the
    # setup lines imports the snapshot, not the working tree or the editable install, and can
    # still import modules from the submission directory
    (tmp_path / "mine.py").write_text("X = 1\n")
    lines = snapshot_setup(snap, tmp_path)
    code = "import harness, mine; print(harness.__file__)"
    import subprocess

    where = subprocess.run(["bash", "-c", "; ".join([*lines, f"{sys.executable} -c '{code}'"])],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(snap / "harness/__init__.py")
