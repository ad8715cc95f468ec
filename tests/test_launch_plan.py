"""Issue 18, item 12 (c, d): what ``run --dry-run`` says about the launch, and that ``--smoke``
does not send tiny models to the cluster with the paper's 8-GPU resources. Nothing here needs a
cluster: the dry run only reads the profile, and writes nothing."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from harness.cli import main
from harness.launch.profile import load_profile, smoke_profile

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "suites" / "paper_table1.yaml"


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def _launch_part(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Launcher: "))
    return lines[start:]


def test_dry_run_shows_launcher_profile_and_what_each_job_asks_for(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = cli("run", PAPER, "--dry-run", "--results", tmp_path / "r")
    assert rc == 0, err
    head, sft, cell = _launch_part(out)[:3]
    # slurm/gpu-8b.yaml as written there: 8 GPUs, 64 CPUs, 480 GB for SFT; 4, 32, 240 for cells
    assert head.startswith(f"Launcher: slurm, profile {ROOT / 'slurm' / 'gpu-8b.yaml'};") and "5 requeues" in head
    assert sft == ("  3 SFT jobs (one array), each: partition (default), time 360 min, 1 node x 8 GPUs, "
                   "64 CPUs, 480 GB memory, accelerate launch, 8 processes")
    assert cell == ("  21 cell jobs (one array, after the SFT jobs), each: partition (default), time 480 min, "
                    "1 node x 4 GPUs, 32 CPUs, 240 GB memory, accelerate launch, 4 processes")
    assert not (tmp_path / "r").exists()


def test_smoke_on_slurm_asks_for_one_cpu_not_the_papers_gpus(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = cli("run", PAPER, "--smoke", "--launcher", "slurm", "--dry-run", "--results", tmp_path / "r")
    assert rc == 0, err
    head, sft, cell = _launch_part(out)[:3]
    assert "(shrunk for --smoke" in head
    for line in (sft, cell):
        assert line.endswith("each: partition (default), time 30 min, 1 node x no GPU, 1 CPU, default memory"), line
    assert "GPUs" not in out.split("Launcher:")[1] and "GB memory" not in out.split("Launcher:")[1]
    assert not (tmp_path / "r").exists()


def test_smoke_profile_keeps_where_jobs_run_and_drops_their_size(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("max_requeues: 2\ndefaults: {partition: gpu, account: lab, qos: high, setup: [module load x],"
                 " additional: {constraint: a100}}\nsft: {time: 600, gpus_per_node: 8, cpus_per_task: 64, mem_gb: 480,"
                 " accelerate_args: [--mixed_precision, bf16]}\ncell: {time: 20, gpus_per_node: 2}\n")
    s = smoke_profile(load_profile(p))
    assert s.smoke and s.max_requeues == 2
    for res, t in ((s.sft, 30), (s.cell, 20)):
        assert (res.partition, res.account, res.qos, res.setup, res.additional) == \
            ("gpu", "lab", "high", ("module load x",), {"constraint": "a100"})
        assert (res.gpus_per_node, res.nodes, res.cpus_per_task, res.mem_gb, res.accelerate_args, res.time) == \
            (0, 1, 1, None, (), t)
        assert not res.uses_accelerate


def test_dry_run_names_the_local_launcher_and_its_workers(tmp_path):
    rc, out, err = cli("run", ROOT / "tests" / "suites" / "crash.yaml", "--launcher", "local", "--workers", "3",
                       "--dry-run", "--results", tmp_path / "r")
    assert rc == 0, err
    assert _launch_part(out)[0] == "Launcher: local (3 worker processes on this machine): 1 SFT stages and 1 cells to run"
    assert not (tmp_path / "r").exists()


def test_the_last_time_limit_names_time_and_max_requeues_and_leaves_the_cell_resumable(tmp_path):
    """Item 12 (e): a cell whose last attempt hit the time limit is pending (a rerun resumes it
    from its checkpoint), its reason naming the limit, max_requeues and the profile to edit;
    the run's exit status is 3 (not done), not 0 and not 1."""
    from harness.launch import Job
    from harness.launch.base import JobOutcome
    from harness.launch.slurm import ended_why
    from harness.results import read_status, write_status
    from harness.sweep import exit_code, plan_states, record_hard_failures

    p = tmp_path / "p.yaml"
    p.write_text("max_requeues: 3\ncell: {time: 240}\n")
    profile = load_profile(p)
    job = Job("c1", print, resources="cell")
    why, resumable = ended_why("TIMEOUT", job, profile)
    assert resumable
    assert why.startswith("it reached its time limit (cell.time: 240 min) on its last attempt, after "
                          "max_requeues (3) requeues; raise `time` or `max_requeues` in " + str(p))
    assert ended_why("OUT_OF_MEMORY", job, profile)[1] is False and ended_why("FAILED", job, profile) == (None, False)
    cell = tmp_path / "c1"
    write_status(cell, "running", pid=1 << 22)     # its process is gone; no lock
    out = JobOutcome("c1", False, f"job 7_1 ended without a result (state: TIMEOUT): {why}.", [], None,
                     job_id="7_1", resumable=True)
    record_hard_failures([out], {"c1": cell})
    st = read_status(cell)
    assert st["state"] == "pending" and "time limit (cell.time: 240 min)" in st["reason"] and "max_requeues (3)" in st["reason"]
    assert exit_code(plan_states([("cell", "c1", cell)])) == 3
