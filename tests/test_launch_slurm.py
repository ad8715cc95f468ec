"""The SLURM launcher against a real cluster (slurm/cluster.sh start gives a one-node one here).

Skipped, with the reason, when there is no SLURM client or no idle node. Every launch runs in a
thread with a deadline, so a launcher that would wait forever fails the test instead of hanging.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import launch_helpers as h
from harness.errors import UserError
from harness.launch import Job, launch
from harness.schema import LauncherSpec

TESTS_DIR = Path(__file__).resolve().parent


def _cluster_problem() -> str | None:
    if not all(shutil.which(c) for c in ("sinfo", "sbatch", "scontrol", "sacct")):
        return "no SLURM client (sinfo/sbatch/scontrol/sacct) on PATH; run slurm/cluster.sh install && slurm/cluster.sh start"
    # scontrol ping answers at once; sinfo retries a dead controller for ~10 s
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    if ping.returncode != 0 or "DOWN" in ping.stdout:
        return "SLURM controller not answering (scontrol ping: DOWN); run slurm/cluster.sh start"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering (slurm/cluster.sh start)"
    if out.returncode != 0:
        return f"SLURM cluster not up ({out.stderr.strip() or 'sinfo failed'}); run slurm/cluster.sh start"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()):
        return f"no usable SLURM node (sinfo states: {out.stdout.split()}); run slurm/cluster.sh start"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=10).returncode != 0:
        return "sacct fails: the launcher needs SLURM accounting (slurmdbd); slurm/cluster.sh start sets it up"
    return None


_problem = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_problem is not None, reason=_problem or "")]


@pytest.fixture
def job_env(monkeypatch):
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR) + (os.pathsep + old if old else ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_profile(tmp_path: Path) -> Path:
    p = tmp_path / "profile.yaml"
    # result_wait_s 3: a local disk needs no grace for result files (the default 15 s is for NFS)
    p.write_text("result_wait_s: 3\nmax_requeues: 2\n"
                 "sft: {time: 5, additional: {comment: sft-stage}}\ncell: {time: 4}\n")
    return p


def launch_with_deadline(jobs, work_dir, profile, deadline_s=150, parallelism=4, progress=None):
    box = {}

    def run():
        try:
            box["out"] = launch(jobs, LauncherSpec(type="slurm", parallelism=parallelism), work_dir,
                                profile_path=profile, progress=progress)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        subprocess.run(["scancel", "-n", "harness-sft,harness-cell"], check=False)
        pytest.fail(f"the SLURM launcher did not return within {deadline_s} s")
    if "err" in box:
        raise box["err"]
    return box["out"]


def test_array_matches_inline_and_survives_raise_and_sigkill(tmp_path, job_env):
    rec = tmp_path / "times.jsonl"
    value_jobs = [Job(f"v{i}", h.record, (str(rec), f"v{i}", 0.0, {"i": i, "sq": i * i}))
                  for i in range(4)]
    sfts = [Job(f"sft{k}", h.record, (str(rec), f"sft{k}", 2.0 - k, f"ckpt{k}"), stage="sft",
                resources="sft") for k in range(2)]
    jobs = [
        *value_jobs,
        Job("raises", h.fail, ("broken on purpose",)),
        Job("killed", h.kill_self, log_hint=str(tmp_path / "cells/killed/train.log")),
        Job("where", h.harness_location),
        *sfts,
    ]
    inline = launch(value_jobs, LauncherSpec(type="inline"), tmp_path / "inline")
    rec.unlink()
    seen = []
    t0 = time.monotonic()
    out = {o.name: o for o in launch_with_deadline(jobs, tmp_path / "w", write_profile(tmp_path),
                                                   progress=seen.append)}
    elapsed = time.monotonic() - t0

    assert [out[o.name].result for o in inline] == [o.result for o in inline]
    assert all(out[o.name].ok for o in inline)
    assert (out["sft0"].result, out["sft1"].result) == ("ckpt0", "ckpt1")
    # one array per stage
    cell_ids = {out[n].job_id.split("_")[0] for n in ("v0", "v3", "raises", "killed", "where")}
    sft_ids = {out[n].job_id.split("_")[0] for n in ("sft0", "sft1")}
    assert len(cell_ids) == 1 and len(sft_ids) == 1 and cell_ids != sft_ids
    assert "_" in out["v0"].job_id and "_" in out["sft0"].job_id

    assert not out["raises"].ok and "ValueError: broken on purpose" in out["raises"].error
    k = out["killed"]
    assert not k.ok and "ended without a result (state: FAILED)" in k.error
    stdout, stderr, hint = k.log_paths
    assert Path(stdout).is_file() and "kill_self: sending SIGKILL" in Path(stdout).read_text()
    assert Path(stderr).is_file() and hint == str(tmp_path / "cells/killed/train.log")

    # the job imported the code snapshot taken at submission, not the working tree
    assert out["where"].ok
    assert out["where"].result.startswith(str(tmp_path / "w" / "snapshot"))

    # dependency ordering: no cell started before both sft jobs ended (they slept 2 s and 1 s) ...
    r = {x["name"]: x for x in map(json.loads, rec.read_text().splitlines())}
    sft_end = max(r["sft0"]["end"], r["sft1"]["end"])
    assert all(r[f"v{i}"]["start"] >= sft_end for i in range(4))
    # ... because the cell array was submitted with afterany on the sft array
    sft_id = sft_ids.pop()
    cell_script = (Path(stdout).parent / f"{k.job_id.split('_')[0]}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterany:{sft_id}" in cell_script.splitlines()
    # each array has its own stage's resources, nothing carried over from the other stage
    sft_script = (Path(stdout).parent / f"{sft_id}_submission.sh").read_text()
    assert "#SBATCH --comment=sft-stage" in sft_script.splitlines()
    assert "#SBATCH --time=5" in sft_script.splitlines()
    assert "--comment" not in cell_script and "#SBATCH --time=4" in cell_script.splitlines()

    assert seen[0]["pending"] == len(jobs)
    assert seen[-1] == {"pending": 0, "running": 0, "done": 7, "failed": 2}
    print(f"SLURM array of {len(jobs)} jobs: {elapsed:.1f} s")


def test_timed_out_job_is_requeued_and_resumes(tmp_path, job_env):
    """A time limit / preemption signal makes submitit checkpoint the JobCall and requeue it;
    the restarted job finds its on-disk state and finishes."""
    marker = tmp_path / "state"
    box = {}
    t = threading.Thread(target=lambda: box.update(out=launch_with_deadline(
        [Job("r", h.wait_for_requeue, (str(marker), 42))], tmp_path / "w", write_profile(tmp_path))),
        daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    time.sleep(1.0)   # let submitit install its signal handlers
    jid = marker.parent.joinpath("w/submitit").glob("*_submission.sh").__next__().name.split("_")[0]
    # what SLURM sends signal_delay_s before the time limit (submitit's own test hook does this)
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    # SLURM holds a requeued job ~2 min (BeginTime) before it may start again; once the old run
    # is cleaned up, release it now
    while True:
        assert time.monotonic() < deadline + 60, "the job was not requeued"
        st = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T %r"], capture_output=True,
                            text=True).stdout.strip()
        if st.startswith("PENDING"):
            break
        time.sleep(0.3)
    time.sleep(5.0)   # releasing it sooner made the restart fail while the old step was cleaned up
    subprocess.run(["scontrol", "update", f"jobid={jid}", "StartTime=now"], check=True)
    t.join(120)
    assert not t.is_alive()
    [o] = box["out"]
    assert o.ok, o.error
    assert o.result == (42, 1)       # the restarted run (SLURM_RESTART_COUNT 1) returned
    log = Path(o.log_paths[0]).read_text()
    assert "Calling checkpoint method" in log and "Requeued job" in log


def test_rejected_submission_is_a_user_error_naming_the_profile(tmp_path, job_env):
    profile = tmp_path / "bad.yaml"
    profile.write_text("cell: {partition: no-such-partition}\n")
    with pytest.raises(UserError) as e:
        launch([Job("a", h.double, (1,))], LauncherSpec(type="slurm"), tmp_path / "w",
               profile_path=profile)
    msg = str(e.value)
    assert msg.startswith(f"{profile}: sbatch rejected the cell jobs")
    assert "invalid partition specified: no-such-partition" in msg
    assert "cell.partition" in msg
