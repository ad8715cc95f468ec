"""Issue 18, item 12, on the real single-node SLURM cluster (slurm/cluster.sh start): a requeued
attempt meets its own earlier attempt's lock, the SFT job is cancelled, ``--smoke`` with a GPU
profile, the last time-limit attempt, and a rerun right after the driver was killed.

Runs go through ``python -m harness run --launcher slurm``; tests/hooks/sitecustomize.py (on the
PYTHONPATH that sbatch passes to the jobs) slows training down and marks when it is under way,
so the test can act while a job runs. Skipped with the reason when the cluster is not up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import launch_helpers as h
import reliability_helpers as rh
from harness.launch import Job, launch
from harness.results import read_json, read_status
from harness.schema import LauncherSpec

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _cluster_problem() -> str | None:
    import shutil

    if not all(shutil.which(c) for c in ("sinfo", "sbatch", "scontrol", "sacct", "squeue")):
        return "no SLURM client on PATH; run slurm/cluster.sh install && slurm/cluster.sh start"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "SLURM controller not answering; run slurm/cluster.sh start"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=10).returncode != 0:
        return "sacct fails: the launcher needs SLURM accounting (slurm/cluster.sh start sets it up)"
    return None


_problem = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_problem is not None, reason=_problem or "")]


def env(hooks: tuple[str, ...] = ()) -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             HARNESS_NO_PROGRESS="1", HARNESS_TEST_HOOKS=",".join(hooks),
             PYTHONPATH=os.pathsep.join([str(TESTS / "hooks"), str(ROOT), str(TESTS)]))
    return e


def suite_file(tmp_path: Path, **changes) -> Path:
    profile = tmp_path / "profile.yaml"
    profile.write_text("result_wait_s: 3\nmax_requeues: 2\nsft: {time: 10}\ncell: {time: 10}\n")
    changes.setdefault("launcher", {"type": "slurm", "slurm_profile": str(profile)})
    return rh.write_suite(tmp_path / "suite.yaml", "crash", **changes)


def start(suite: Path, results: Path, hooks=(), *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--results", str(results),
                             "--no-report", "--launcher", "slurm", *extra], cwd=ROOT, env=env(hooks),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(suite: Path, results: Path, *extra, hooks=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--results", str(results),
                           "--no-report", "--launcher", "slurm", *extra], cwd=ROOT, env=env(hooks),
                          capture_output=True, text=True, timeout=600)


def wait_for(path: Path, proc: subprocess.Popen | None = None, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended first: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def record(results: Path, suite: str) -> dict:
    return json.loads((results / suite / "_launch" / "slurm_jobs.json").read_text())


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def stage_of(results: Path, suite: str) -> Path:
    [stage] = [p for p in (results / suite / "_sft").iterdir() if p.is_dir()]
    return stage


# ------------------------------------------------------------------------------------------ (a)
def test_a_requeued_attempt_takes_over_its_own_lock_from_another_node(tmp_path):
    """The lock of the running attempt is made to name another node (as after a requeue on a
    multi-node cluster); `scontrol requeue`; the new attempt must recognise its own earlier
    attempt by job id, take over, resume and finish: exit 0, nothing stuck `running`."""
    suite = suite_file(tmp_path, train={"steps": 30, "checkpoint_every": 1})
    results, marker = tmp_path / "r", tmp_path / "training"
    proc = start(suite, results, (f"mark:train:3:{marker}", "slow:train:0.3"))
    try:
        wait_for(marker, proc)
        [cell] = rh.cell_dirs(results / "crash")
        jid = record(results, "crash")[cell.name]
        lock = json.loads((cell / "lock").read_text())
        assert lock["job"] == jid and lock["attempt"] == 0
        (cell / "lock").write_text(json.dumps({**lock, "host": "node-that-ran-attempt-0", "pid": 4242}))
        subprocess.run(["scontrol", "requeue", jid], check=True)
        deadline = time.monotonic() + 120
        while not squeue_state(jid).startswith("PENDING"):
            assert time.monotonic() < deadline, "not requeued"
            time.sleep(0.3)
        time.sleep(5.0)   # let SLURM clean up the old attempt, then release the requeued one now
        subprocess.run(["scontrol", "update", f"jobid={jid}", "StartTime=now"], check=True)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    st = read_status(cell)
    assert st["state"] == "done"
    assert read_json(cell / "metrics.json")["train/resumed_from"] >= 2


# ------------------------------------------------------------------------------------------ (b)
def test_a_cancelled_sft_job_is_reported_truly_and_a_plain_rerun_recovers(tmp_path):
    suite = suite_file(tmp_path, sft={"steps": 30})
    results, marker = tmp_path / "r", tmp_path / "sft-training"
    proc = start(suite, results, (f"mark:sft:2:{marker}", "slow:sft:0.3"))
    try:
        wait_for(marker, proc)
        stage = stage_of(results, "crash")
        subprocess.run(["scancel", record(results, "crash")[stage.name]], check=True)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out + err           # not done; nothing failed
    st = read_status(stage)
    assert st["state"] == "pending" and "cancelled" in st["reason"], st
    [cell] = rh.cell_dirs(results / "crash")
    cst = read_status(cell)
    assert cst["state"] == "pending" and cst["reason"].startswith(f"waiting for SFT stage {stage.name}")
    assert "error.txt" not in cst["reason"] and "FAILED" not in err
    r = run(suite, results)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_status(cell)["state"] == "done"


# ------------------------------------------------------------------------------------------ (c)
def test_smoke_on_slurm_runs_a_gpu_profiles_suite_on_cpus(tmp_path):
    """A suite whose profile asks for 8 GPUs and 480 GB: `--smoke --launcher slurm` must run its
    tiny stand-ins on one CPU each (this cluster has no GPU: sbatch would refuse the profile)."""
    suite = suite_file(tmp_path, launcher={"type": "slurm", "slurm_profile": str(ROOT / "slurm" / "gpu-8b.yaml")})
    r = run(suite, tmp_path / "r", "--smoke")
    assert r.returncode == 0, r.stdout + r.stderr
    [cell] = rh.cell_dirs(tmp_path / "r" / "crash-smoke")
    assert read_status(cell)["state"] == "done"
    scripts = list((tmp_path / "r" / "crash-smoke" / "_launch" / "submitit").glob("*_submission.sh"))
    assert scripts and not any("gpus" in s.read_text() or "--mem" in s.read_text() for s in scripts)


# ------------------------------------------------------------------------------------------ (e)
def test_the_last_attempt_runs_on_to_its_time_limit(tmp_path, monkeypatch):
    """With no requeue left, the signal SLURM sends signal_delay_s before the limit must not
    stop the job: it may still finish (submitit alone stops it at once, "Job not requeued")."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    profile = tmp_path / "p.yaml"
    profile.write_text("result_wait_s: 3\nmax_requeues: 0\ncell: {time: 4}\n")
    marker, box = tmp_path / "started", {}
    job = Job("last", h.run_through, (str(marker), 6.0, 42))
    t = threading.Thread(target=lambda: box.update(out=launch([job], LauncherSpec(type="slurm"), tmp_path / "w",
                                                              profile_path=profile)), daemon=True)
    t.start()
    wait_for(marker)
    time.sleep(1.0)   # submitit's handlers are installed before the function starts; be safe
    jid = next((tmp_path / "w" / "submitit").glob("*_submission.sh")).name.split("_")[0]
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)   # what SLURM sends near the limit
    t.join(120)
    assert not t.is_alive()
    [o] = box["out"]
    assert o.ok and o.result == 42, o.error
    assert "no requeue is left" in Path(o.log_paths[1]).read_text()


# ------------------------------------------------------------------------------------------ (f)
def test_a_rerun_after_the_driver_died_watches_the_running_jobs_instead_of_resubmitting(tmp_path):
    suite = suite_file(tmp_path, seeds=[0, 1], train={"steps": 20, "checkpoint_every": 5})
    results, marker = tmp_path / "r", tmp_path / "training"
    # slow enough (20 steps x 1 s) that the jobs are still running when the second driver has
    # started and looked, even on a loaded machine (at 0.3 s they could all end first)
    proc = start(suite, results, (f"mark:train:2:{marker}", "slow:train:1.0"))
    try:
        wait_for(marker, proc)
        os.kill(proc.pid, signal.SIGKILL)      # the driver dies; its jobs go on
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = record(results, "crash")
    cells = rh.cell_dirs(results / "crash")
    assert all(c.name in before for c in cells)
    scripts = sorted(p.name for p in (results / "crash" / "_launch" / "submitit").glob("*_submission.sh"))
    r = run(suite, results, hooks=("slow:train:0.3",))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "jobs of an earlier run are still queued or running on SLURM" in r.stderr
    assert record(results, "crash") == before                      # nothing submitted twice
    assert sorted(p.name for p in (results / "crash" / "_launch" / "submitit").glob("*_submission.sh")) == scripts
    for c in cells:
        assert read_status(c)["state"] == "done"
