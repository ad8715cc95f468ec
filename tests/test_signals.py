"""Issue 18, item 8 (and 13's Ctrl-C under the local launcher): SIGTERM and SIGINT stop a run
cleanly, under the inline and the local launcher, children included.

Each test starts a real ``python -m harness run`` in a session of its own, waits until a cell
is training (tests/hooks/sitecustomize.py creates a marker file at step 2, in whichever process
trains it), sends the signal, and then checks what a user would: the exit status (128 + the
signal), one message and no traceback on the terminal, no process of the run left behind, the
cell marked pending with the reason and its lock released, and (once) that the same command
resumes it. Written against the command line, not a launcher's internals, so they keep guarding
whatever launcher implementation follows.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reliability_helpers as rh
from harness.results import read_json, read_jsonl, read_status

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _env(hooks: tuple[str, ...]) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HARNESS_NO_PROGRESS="1", PYTHONPATH=os.pathsep.join([str(TESTS / "hooks"), str(ROOT), str(TESTS)]),
               HARNESS_TEST_HOOKS=",".join(hooks))
    return env


def _session_members(sid: int) -> list[str]:
    """Processes still in session ``sid`` (the run and everything it started)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[3] == str(sid) and fields[0] != "Z":   # field 6 of stat: the session id
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{d.name} {cmd[:120]}")
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """crash.yaml with enough steps (a checkpoint after each) that a signal finds it training."""
    d = tmp_path_factory.mktemp("signals")
    return rh.write_suite(d / "long.yaml", "crash", name="long", train={"steps": 120, "checkpoint_every": 1})


def _interrupt(suite: Path, results: Path, launcher: str, sig: int, group: bool) -> tuple[int, str, str]:
    marker = results.parent / f"{results.name}.training"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(suite), "--results", str(results), "--no-report",
         "--launcher", launcher], cwd=ROOT, env=_env((f"mark:train:2:{marker}", "slow:train:0.05")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the cell never started training"
            time.sleep(0.05)
        if group:
            os.killpg(proc.pid, sig)      # a terminal's Ctrl-C, or `kill -TERM -PGID`
        else:
            os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(0.5)   # let the kernel reap what the run's last act was to end
    left = _session_members(proc.pid)
    assert left == [], f"processes of the run outlived it: {left}"
    return proc.returncode, out, err


CASES = [("inline", signal.SIGTERM, False), ("local", signal.SIGTERM, False),
         ("local", signal.SIGTERM, True), ("local", signal.SIGINT, True)]


@pytest.mark.parametrize("launcher, sig, group", CASES,
                         ids=["inline-TERM", "local-TERM", "local-TERM-group", "local-ctrl-c"])
def test_a_signal_stops_the_run_cleanly_and_leaves_it_resumable(suite, tmp_path, launcher, sig, group):
    results = tmp_path / "results"
    rc, out, err = _interrupt(suite, results, launcher, sig, group)
    name = signal.Signals(sig).name
    assert rc == 128 + sig, err
    assert "Traceback" not in err, err
    said = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert said == [f"interrupted ({name}): stopped; what was running is marked pending. "
                    f"Rerun the same command to resume."], err
    [cell] = rh.cell_dirs(results / "long")
    st = read_status(cell)
    # the worker of the local launcher is always stopped by its parent with SIGTERM
    assert st["state"] == "pending" and st["reason"] == f"interrupted ({name if launcher == 'inline' else 'SIGTERM'})"
    assert not (cell / "lock").exists()
    steps = [r["step"] for r in read_jsonl(cell / "train_log.jsonl")]
    assert steps[0] == 1 and 2 <= steps[-1] < 120 and steps == list(range(1, steps[-1] + 1))
    if (launcher, group) == ("local", True) and sig == signal.SIGTERM:
        # the same command resumes it from its last checkpoint and finishes
        r = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--results", str(results),
                            "--no-report"], cwd=ROOT, env=_env(()), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        m = read_json(cell / "metrics.json")
        assert read_status(cell)["state"] == "done" and 1 <= m["train/resumed_from"] <= steps[-1]
        assert [r["step"] for r in read_jsonl(cell / "train_log.jsonl")] == list(range(1, 121))


def test_signal_handling_in_one_process():
    """The pieces the run relies on: SIGTERM becomes Interrupted (exit code 143); a repeat
    during the cleanup is ignored; inside ``deferred()`` it waits for the block to end."""
    from harness.signals import Interrupted, deferred, reset, stop_on_signals

    reset()
    reached = []
    with pytest.raises(Interrupted) as e:
        with stop_on_signals():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached.append("end of the deferred block")
    assert reached and e.value.exit_code == 143 and e.value.signame == "SIGTERM"
    with stop_on_signals():      # the process was interrupted once: a repeat is ignored
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    reset()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
