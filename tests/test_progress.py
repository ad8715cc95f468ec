"""Progress a person can watch (issue 16 item 4): each job's ``progress.json`` (rate-limited
writes, stage/step/total, ETA), the launch monitor's lines under the inline and local
launchers, and ``python -m harness status``.

Expected values are worked out by hand in the comments; the clocks are fake where timing
matters, so nothing here depends on the machine's speed except the two runs of a tiny suite,
which only check that the lines appear.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.launch import Job
from harness.launch import monitor as monitor_mod
from harness.launch.monitor import Monitor
from harness.launch.status import status_table
from harness.results import CellLock, write_status
from harness.results import progress as P
from harness.results.layout import write_plan

TESTS = Path(__file__).resolve().parent


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ ETA
def test_eta_by_hand():
    # 12 steps (10 -> 22) in 60 s: 5 s a step; 18 steps left: 90 s at the write, 80 s ten seconds later
    rec = {"stage": "training", "step": 22, "total": 40, "first_step": 10, "stage_started": 100.0, "updated": 160.0}
    assert P.eta_s(rec, now=160.0) == pytest.approx(90.0)
    assert P.eta_s(rec, now=170.0) == pytest.approx(80.0)
    assert P.describe(rec, now=170.0) == "training 22/40 ETA 1m20s"
    assert P.eta_s(rec, now=500.0) == 0.0                       # overdue: never negative
    assert P.eta_s({**rec, "step": 10}, now=160.0) is None      # no step made by this process yet
    assert P.eta_s({**rec, "total": None}, now=160.0) is None
    assert P.eta_s({**rec, "step": 40}, now=160.0) == 0.0
    assert P.describe({"stage": "evaluation:kl", "step": 0, "total": None}) == "evaluation:kl"
    assert P.describe({"stage": "evaluation:kl", "step": 3, "total": None}) == "evaluation:kl 3"


@pytest.mark.parametrize("s, text", [(None, "?"), (0, "0s"), (59.4, "59s"), (60, "1m00s"), (190, "3m10s"),
                                     (3725, "1h02m")])
def test_duration(s, text):
    assert P.duration(s) == text


def test_short_name_drops_only_the_id_hash():
    assert P.short_name("dpo-tiny-addition-s0-f967a7c093") == "dpo-tiny-addition-s0"
    assert P.short_name("dpo-tiny-addition-s0") == "dpo-tiny-addition-s0"
    assert P.short_name("plain") == "plain"


# ------------------------------------------------------------------------------ writing
def read(folder: Path) -> dict:
    return json.loads((folder / P.PROGRESS_FILE).read_text())


def test_steps_are_written_at_most_every_min_interval_stage_changes_at_once(tmp_path):
    clock = Clock()
    p = P.JobProgress(tmp_path, min_interval=2.0, clock=clock)
    p.stage("training", 24, unit="steps")
    assert p.writes == 1 and read(tmp_path)["step"] == 0
    for step, dt in ((1, 0.5), (2, 0.5), (3, 0.5)):     # 1.5 s after the stage's write: none written
        clock.t += dt
        p.at(step)
    assert p.writes == 1 and read(tmp_path)["step"] == 0
    clock.t += 0.5                                      # 2.0 s: written
    p.at(4)
    assert p.writes == 2 and read(tmp_path)["step"] == 4
    clock.t += 0.1
    p.stage("evaluation:kl")                            # a new stage: at once
    rec = read(tmp_path)
    assert p.writes == 3 and (rec["stage"], rec["step"], rec["total"], rec["unit"]) == ("evaluation:kl", 0, None,
                                                                                        "batches")
    assert not list(tmp_path.glob(".*.tmp"))            # no temp file left behind


def test_a_resumed_training_rates_only_the_steps_this_process_made(tmp_path):
    clock = Clock(100.0)
    p = P.JobProgress(tmp_path, min_interval=0, clock=clock)
    p.stage("training", 40, unit="steps")               # resumed from step 10: the first report is step 11
    clock.t = 105.0
    p.at(11)
    clock.t = 160.0
    p.at(22)
    rec = read(tmp_path)
    assert rec["first_step"] == 10
    assert P.eta_s(rec, now=160.0) == pytest.approx(60 / 12 * 18)


def test_batch_loops_count_into_a_batch_stage_only(tmp_path):
    with P.reporting(tmp_path, min_interval=0) as p:
        assert P.current() is p and read(tmp_path)["stage"] == "set-up"
        p.stage("evaluation:greedy")                    # total unknown: each loop adds its batches
        for _ in P.counted(range(3)):
            pass
        assert (read(tmp_path)["step"], read(tmp_path)["total"]) == (3, 3)
        for _ in P.counted(range(2)):
            pass
        assert (read(tmp_path)["step"], read(tmp_path)["total"]) == (5, 5)
        p.stage("training", 6, unit="steps")            # steps: batch loops inside (held-out curve) ignored
        list(P.counted(range(4)))
        assert (read(tmp_path)["step"], read(tmp_path)["total"]) == (0, 6)
        p.at(2)
        with p.section("reference pass", 4):           # a known total: loops advance, never add
            list(P.counted(range(2)))
            list(P.counted(range(2)))
            rec = read(tmp_path)
            assert (rec["stage"], rec["step"], rec["total"]) == ("reference pass", 4, 4)
        rec = read(tmp_path)                            # back where it was
        assert (rec["stage"], rec["step"], rec["total"], rec["unit"]) == ("training", 2, 6, "steps")
    assert not (tmp_path / P.PROGRESS_FILE).exists()    # finished: removed
    assert P.current() is P._NULL
    list(P.counted(range(2)))                           # outside a job: nothing happens


def test_a_job_that_raises_keeps_where_it_stopped(tmp_path):
    with pytest.raises(ValueError), P.reporting(tmp_path, min_interval=0) as p:
        p.stage("evaluation:kl", 8)
        list(P.counted(range(3)))
        raise ValueError("boom")
    rec = read(tmp_path)
    assert (rec["stage"], rec["step"], rec["total"], rec["active"]) == ("evaluation:kl", 3, 8, False)


def test_progress_never_fails_the_job(tmp_path):
    p = P.JobProgress(tmp_path / "no" / "such" / "folder", min_interval=0)
    p.stage("training", 3, unit="steps")                # the folder is missing: nothing written, no error
    p.at(1)
    assert p.writes == 0


# ------------------------------------------------------------------------------ monitor
def write_rec(folder: Path, **kw) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"stage": "training", "step": 0, "total": 24, "unit": "steps", "first_step": 0, "stage_started": 1000.0,
           "started": 990.0, "updated": 1000.0, "active": True, **kw}
    (folder / P.PROGRESS_FILE).write_text(json.dumps(rec))


def test_monitor_prints_a_line_on_a_stage_change_and_at_most_every_every_s(tmp_path):
    a, b = tmp_path / "dpo-t-add-s0-0123456789", tmp_path / "ipo-t-add-s0-abcdef0123"
    jobs = [Job(d.name, print, log_hint=str(d)) for d in (a, b)]
    clock, out = Clock(1000.0), io.StringIO()
    m = Monitor(jobs, out, every_s=30, tty=False, clock=clock)
    assert m.lines() == []                                         # nothing started
    write_rec(a)
    write_rec(b, started=500.0, updated=500.0)                     # left by an earlier run: ignored
    assert m.lines() == ["dpo-t-add-s0  training 0/24"]
    clock.t = 1010.0
    write_rec(a, step=4, updated=1010.0)                           # 4 steps in 10 s: 2.5 s a step
    assert m.lines() == []                                         # same stage, 10 s < 30 s
    clock.t = 1031.0
    write_rec(a, step=12, updated=1030.0)                          # 12 steps in 30 s; 12 left: 30 s - 1 s
    assert m.lines() == ["dpo-t-add-s0  training 12/24 ETA 29s"]
    assert m.lines() == []                                         # unchanged
    clock.t = 1032.0
    write_rec(a, stage="evaluation:greedy", step=0, total=None, unit="batches", stage_started=1032.0, updated=1032.0)
    assert m.lines() == ["dpo-t-add-s0  evaluation:greedy"]        # a new stage: at once
    write_rec(a, active=False)                                     # stopped: no more lines
    clock.t = 1100.0
    assert m.lines() == []


def test_monitor_on_a_terminal_keeps_the_counts_on_the_last_line(tmp_path):
    a = tmp_path / "dpo-t-add-s0-0123456789"
    out = io.StringIO()
    m = Monitor([Job(a.name, print, log_hint=str(a))], out, tty=True, clock=Clock(1000.0))
    m({"pending": 0, "running": 1, "done": 0, "failed": 0})
    write_rec(a)
    m.poll()
    m({"pending": 0, "running": 0, "done": 1, "failed": 0})
    assert out.getvalue() == ("\r\033[K[1 jobs] pending=0 running=1 done=0 failed=0"
                              "\r\033[Kdpo-t-add-s0  training 0/24\n[1 jobs] pending=0 running=1 done=0 failed=0"
                              "\r\033[K[1 jobs] pending=0 running=0 done=1 failed=0\n")


# ------------------------------------------------------------------------------ status
def test_status_of_finished_failed_running_stale_and_pending_cells(tmp_path):
    suite = tmp_path / "s"
    ids = ["dpo-t-add-s0-0000000001", "dpo-t-add-s1-0000000002", "dpo-t-add-s2-0000000003",
           "dpo-t-add-s3-0000000004", "dpo-t-add-s4-0000000005"]
    write_plan(suite, "s", ids, ["sft-t-add-s0-000000000a"])
    done, failed, running, stale, pending = (suite / i for i in ids)
    write_status(suite / "_sft" / "sft-t-add-s0-000000000a", "done", wall_s=75.2)
    write_status(done, "done", wall_s=190.0)
    write_status(failed, "failed", reason="KeyError: 'beta'\ntraceback...")
    write_rec(failed, stage="evaluation:kl", step=3, total=8, unit="batches", active=False)
    write_status(running, "running", host="node7")
    lock = CellLock(running)
    assert lock.acquire()
    import time
    now = time.time()
    # 12 steps in 60 s; 12 left: 60 s at the write, 50 s ten seconds later
    write_rec(running, step=12, total=24, stage_started=now - 70, started=now - 90, updated=now - 10)
    write_status(stale, "running", host="node7")                   # no lock: its process is gone
    write_rec(stale, step=3, total=24, stage_started=now - 700, updated=now - 650)
    write_status(pending, "pending", reason="interrupted (SIGTERM)")
    try:
        text = status_table(suite, now=now)
        rc, out, err = cli("status", suite)
    finally:
        lock.release()
    rows = {line.split()[0]: line for line in text.splitlines()[1:-1]}
    assert re.match(r"sft-t-add-s0\s+done\s+.*took 1m15s", rows["sft-t-add-s0"])
    assert re.match(r"dpo-t-add-s0\s+done\s+\d+s ago\s+took 3m10s$", rows["dpo-t-add-s0"])
    assert re.match(r"dpo-t-add-s1\s+failed\s+evaluation:kl\s+3/8\s+.*KeyError: 'beta'$", rows["dpo-t-add-s1"])
    assert re.match(r"dpo-t-add-s2\s+running\s+training\s+12/24\s+50s\s+10s ago\s+host node7$", rows["dpo-t-add-s2"])
    assert re.match(r"dpo-t-add-s3\s+stale\s+training\s+3/24\s+10m50s ago\s+no lock: its process is gone",
                    rows["dpo-t-add-s3"])
    assert re.match(r"dpo-t-add-s4\s+pending\s+.*interrupted \(SIGTERM\)$", rows["dpo-t-add-s4"])
    assert text.splitlines()[0].split() == ["JOB", "STATE", "STAGE", "STEP", "ETA", "UPDATED", "NOTE"]
    assert text.splitlines()[-1] == "6 jobs: 2 done, 1 running, 1 stale, 1 pending, 1 failed"
    assert rc == 0 and "6 jobs: 2 done" in out


def test_status_is_a_listed_subcommand_with_help():
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "    status " in out.getvalue()
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as e:
        main(["status", "--help"])
    assert e.value.code == 0 and out.getvalue().startswith("usage: python -m harness status") \
        and "results_dir" in out.getvalue()


def test_status_of_a_folder_that_is_not_a_suites_results_exits_2(tmp_path):
    rc, out, err = cli("status", tmp_path / "missing")
    assert rc == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    rc, out, err = cli("status", tmp_path / "empty")
    assert rc == 2 and "not a suite's results folder (no plan.json and no cell folders)" in err
    write_plan(tmp_path / "root" / "quick", "quick", [], [])        # a results root holding a suite
    rc, out, err = cli("status", tmp_path / "root")
    assert rc == 2 and "holds the results of the suites quick: give one of them" in err


# ------------------------------------------------------------------------------ a tiny suite
SUITE = (TESTS / "suites" / "crash.yaml").read_text().replace("name: crash", "name: prog") \
    .replace("  checkpoint_every: 1\n  keep_checkpoints: 2\n", "").replace("  steps: 6\n", "  steps: 30\n")


@pytest.mark.parametrize("launcher", ["inline", "local"])
def test_a_tiny_suite_shows_each_jobs_stage_and_steps(launcher, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(monitor_mod, "POLL_S", 0.02)
    monkeypatch.setattr(monitor_mod, "EVERY_S", 0.0)
    monkeypatch.setattr(P, "MIN_INTERVAL_S", 0.0)      # this process's writes (inline); workers keep 2 s
    suite = tmp_path / "prog.yaml"
    suite.write_text(SUITE)
    env_before = os.environ.get("HARNESS_NO_PROGRESS")
    args = ["run", suite, "--results", tmp_path / "r", "--no-report", "--launcher", launcher]
    rc, out, err = cli(*args, *(["--workers", "1"] if launcher == "local" else []))
    assert rc == 0, err
    lines = err.splitlines()
    assert any(re.fullmatch(r"sft-t-add-s0\s+sft \d+/3( ETA \S+)?", ln) for ln in lines), err
    assert any(re.fullmatch(r"dpo-t-add-s0\s+training \d+/30( ETA \S+)?", ln) for ln in lines), err
    if launcher == "inline":  # every write is seen here: the reference pass, steps past 0 and evaluation
        assert any(re.fullmatch(r"dpo-t-add-s0\s+reference pass \d+/\d+( ETA \S+)?", ln) for ln in lines), err
        assert any(re.fullmatch(r"dpo-t-add-s0\s+training ([1-9]\d*)/30 ETA \S+", ln) for ln in lines), err
        assert any(re.match(r"dpo-t-add-s0\s+evaluation:\w+", ln) for ln in lines), err
    assert os.environ.get("HARNESS_NO_PROGRESS") == env_before   # the monitor put the environment back
    assert not list((tmp_path / "r" / "prog").rglob(P.PROGRESS_FILE))  # done jobs leave no progress file
    rc, out, err = cli("status", tmp_path / "r" / "prog")
    assert rc == 0 and out.splitlines()[-1] == "2 jobs: 2 done", out


def test_a_job_that_may_no_longer_write_writes_and_removes_nothing(tmp_path):
    """A process that lost its job's lock must not touch the folder: once ``may_write`` says no,
    no step, stage or final write happens and the file is not removed (the recovery test checks
    the same end to end with a real stolen lock)."""
    allowed = [True]
    clock = [0.0]
    prog = P.JobProgress(tmp_path, min_interval=0.0, clock=lambda: clock[0], may_write=lambda: allowed[0])
    prog.stage("training", 10, unit="steps")
    first = (tmp_path / "progress.json").read_text()
    allowed[0] = False
    clock[0] = 5.0
    prog.at(3)
    prog.stage("evaluation:accuracy", 4)
    prog.finish(keep=True)
    assert (tmp_path / "progress.json").read_text() == first
    prog.finish(keep=False)
    assert (tmp_path / "progress.json").read_text() == first
