"""The local launcher's worker pool (issue 15): workers start once and take jobs from a queue,
keeping the isolation a process per job gave. What a user relies on: a job that kills its
worker or calls os._exit fails alone and the queue goes on in a replacement worker; workers are
retired after a number of jobs or when their memory grows; a worker whose launcher dies does
not run on. Signals (SIGTERM, Ctrl-C) are covered end to end in test_signals.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import launch_helpers as h
from harness.launch import Job, launch
from harness.launch.local import launch_local
from harness.schema import LauncherSpec

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent


@pytest.fixture(autouse=True)
def job_env(monkeypatch):
    """Workers unpickle the helpers by reference: put tests/ on their PYTHONPATH."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), str(ROOT)] + ([old] if old else [])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_one_worker_runs_every_job_and_a_dead_one_is_replaced(tmp_path):
    """With one worker, the jobs share its process (imports paid once); a job that SIGKILLs
    it, or leaves through os._exit, fails alone, and the next job runs in a new worker."""
    jobs = [Job("a", h.pid_after), Job("b", h.pid_after), Job("killed", h.kill_self),
            Job("c", h.pid_after), Job("exits", h.exit_hard, (3,)), Job("d", h.pid_after),
            Job("closure", lambda: ("closures travel", os.getpid()))]
    out = {o.name: o for o in launch(jobs, LauncherSpec(type="local", workers=1), tmp_path)}
    assert out["a"].result == out["b"].result                     # one process for both
    k = out["killed"]
    assert not k.ok and f"job {out['a'].result} ended without a result (worker signal SIGKILL)" in k.error
    assert "kill_self: sending SIGKILL" in k.error                # its own stdout, quoted
    e = out["exits"]
    assert not e.ok and "(worker exit code 3)" in e.error
    pids = [out[n].result for n in ("a", "c", "d")]
    assert len(set(pids)) == 3                                    # a replacement after each death
    assert out["closure"].ok and out["closure"].result == ("closures travel", out["d"].result)
    # the logs of the jobs that succeeded are gone, those of the failed ones kept
    left = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert left == ["exits.err", "exits.out", "killed.err", "killed.out"]


def test_workers_retire_after_max_jobs_and_when_their_memory_grows(tmp_path):
    jobs = [Job(f"j{i}", h.pid_after) for i in range(5)]
    out = launch_local(jobs, tmp_path / "n", workers=1, max_jobs=2)
    pids = [o.result for o in out]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    # each job leaves 200 MB behind; a worker may grow 150 MB past its first job: every job
    # after the first of a worker pushes it over, so each worker runs two jobs
    jobs = [Job(f"m{i}", h.hoard, (200,)) for i in range(4)]
    out = launch_local(jobs, tmp_path / "m", workers=1, max_growth_mb=150)
    pids = [o.result for o in out]
    assert all(o.ok for o in out) and pids[0] == pids[1] != pids[2] == pids[3]


def test_a_worker_whose_launcher_dies_does_not_run_on(tmp_path):
    """The launcher SIGKILLed (no cleanup at all): the kernel sends its workers SIGTERM."""
    marker = tmp_path / "pid"
    script = textwrap.dedent(f"""
        import launch_helpers as h
        from harness.launch import Job
        from harness.launch.local import launch_local
        launch_local([Job("long", h.run_through, ({str(marker)!r}, 120, 0))], {str(tmp_path / 'w')!r}, workers=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        worker = int(marker.read_text())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(worker), "the worker outlived its launcher"
    finally:
        if proc.poll() is None:
            proc.kill()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_hides_its_imports_from_the_collector_but_still_collects_what_jobs_leave():
    """preload: the harness imported and frozen out of the collector's scans (issue 15: a full
    collection over torch and transformers cost ~0.3 s per job); cyclic garbage a job leaves
    afterwards is still collected."""
    code = textwrap.dedent("""
        import gc, sys, weakref
        from harness.launch import worker
        worker.preload()
        assert "harness.runner" in sys.modules and "torch" in sys.modules
        assert gc.get_freeze_count() > 10000, gc.get_freeze_count()
        class Node: pass
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        worker.release_memory()
        assert ref() is None
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
