"""Results-folder primitives: atomic writes survive SIGKILL, JSONL logs survive a crash
mid-append, status files, cross-process locks, env info, checkpoint rotation, listing."""
from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import harness.results as R
import harness.results.env as R_env
import harness.results.locks as R_locks
from harness.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_helpers as helpers  # noqa: E402

HELPERS = Path(helpers.__file__).resolve()
ROOT = Path(__file__).resolve().parent.parent


def _strict_loads(text: str):
    """json.loads that rejects the NaN/Infinity tokens, like jq or JavaScript would."""
    def refuse(tok):
        raise ValueError(f"non-standard JSON token {tok}")
    return json.loads(text, parse_constant=refuse)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_foreign_lock(d: Path, *, host: str, pid: int, token: str = "theirs",
                        age_s: float = 0.0, name: str = "lock") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(json.dumps({"host": host, "pid": pid, "time": "x", "token": token}))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


# --------------------------------------------------------------------------------- atomic writes

def _kill_slow_writer(target: Path) -> Path:
    """Start a subprocess that atomically writes ~1 MB to ``target`` slowly, SIGKILL it after
    its first chunk hit the disk; return the temp file it left."""
    marker = target.parent / "started.marker"
    proc = subprocess.Popen([sys.executable, str(HELPERS), "slow-write", str(target),
                             str(marker)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert proc.poll() is None, "writer exited before it started writing"
            assert time.monotonic() < deadline, "writer never started"
            time.sleep(0.01)
        time.sleep(0.1)   # a few more chunks
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    temps = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1, temps
    return temps[0]


def test_sigkill_mid_write_keeps_old_complete_content(tmp_path):
    cell = tmp_path / "suite" / "cell1"
    target = cell / "metrics.json"
    old = {"accuracy": 0.5, "n": 3}
    R.atomic_write_json(target, old)
    R.write_status(cell, "running", step=7)
    R.atomic_write_yaml(cell / "config.yaml", {"method": "dpo"})

    tmp = _kill_slow_writer(target)

    # the writer really was killed mid-write: its partial data is in the temp file ...
    full_size = len(json.dumps(helpers.big_payload(), sort_keys=True, indent=2)) + 1
    assert 0 < tmp.stat().st_size < full_size
    assert tmp.name.startswith(".metrics.json.") and tmp.name.endswith(".tmp")
    # ... and the target still holds the old, complete content
    assert R.read_json(target) == old
    assert _strict_loads(target.read_text()) == old
    # the leftover temp file is invisible to listing
    (tmp_path / "suite" / ".stray.123.tmp").write_text("{")
    cells = R.list_cells(tmp_path / "suite")
    assert [c["cell_id"] for c in cells] == ["cell1"]
    assert cells[0]["state"] == "running" and cells[0]["config"] == {"method": "dpo"}
    assert cells[0]["error"] is None and cells[0]["has_metrics"] is True


def test_sigkill_mid_first_write_leaves_target_absent(tmp_path):
    target = tmp_path / "cell" / "metrics.json"
    target.parent.mkdir()
    _kill_slow_writer(target)
    assert not target.exists()
    with pytest.raises(FileNotFoundError):
        R.read_json(target)
    assert R.read_json(target, default=None) is None


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "m.json"
    R.atomic_write_json(target, {"old": 1})
    R.atomic_write_json(target, helpers.big_payload(3))
    assert R.read_json(target) == helpers.big_payload(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_json_nonfinite_sorted_indent_numpy(tmp_path):
    p = tmp_path / "sub" / "dir" / "m.json"   # parents are created
    obj = {"b": float("nan"), "a": {"kl": float("inf"), "ok": 1.5},
           "c": [1.0, float("-inf")], "d": np.float32(0.25), "e": np.int64(3),
           "f": np.array([1, 2]), "g": (1, 2)}
    R.atomic_write_json(p, obj)
    text = p.read_text()
    data = _strict_loads(text)          # no NaN/Infinity tokens anywhere
    assert data == {"a": {"kl": None, "ok": 1.5}, "b": None, "c": [1.0, None], "d": 0.25,
                    "e": 3, "f": [1, 2], "g": [1, 2],
                    "_nonfinite": {"b": "nan", "a.kl": "inf", "c[1]": "-inf"}}
    # sorted keys, indent 2
    assert text.startswith('{\n  "_nonfinite": {\n    "a.kl": "inf",')
    assert list(data) == sorted(data)

    R.atomic_write_json(p, {"x": float("nan")}, allow_nan=True)
    assert "NaN" in p.read_text() and math.isnan(R.read_json(p)["x"])

    with pytest.raises(TypeError, match="object at a"):
        R.atomic_write_json(p, {"a": object()})
    assert math.isnan(R.read_json(p)["x"])       # a failed write leaves the old file
    assert sorted(x.name for x in p.parent.iterdir()) == ["m.json"]


def test_read_json_corrupt_is_a_clear_error(tmp_path):
    p = tmp_path / "metrics.json"
    R.atomic_write_json(p, {"accuracy": 0.75, "rows": [1, 2, 3]})
    full = p.read_bytes()
    for cut in (len(full) // 2, len(full) - 3, 0):
        p.write_bytes(full[:cut])
        with pytest.raises(R.CorruptFileError, match="metrics.json: not valid JSON") as ei:
            R.read_json(p)
        assert isinstance(ei.value, UserError) and "rerun" in str(ei.value)


def test_yaml_round_trip_and_corrupt(tmp_path):
    p = tmp_path / "config.yaml"
    R.atomic_write_yaml(p, {"model": "tiny", "seeds": (1, 2), "lr": 1e-5, "path": tmp_path})
    assert R.read_yaml(p) == {"model": "tiny", "seeds": [1, 2], "lr": 1e-5,
                              "path": str(tmp_path)}
    assert p.read_text().splitlines()[0] == "model: tiny"    # insertion order kept
    p.write_text("a: [1, 2\n")
    with pytest.raises(R.CorruptFileError, match="config.yaml: not valid YAML"):
        R.read_yaml(p)
    assert R.read_yaml(tmp_path / "missing.yaml", default={}) == {}


# ----------------------------------------------------------------------------------------- JSONL

def test_jsonl_partial_last_line_ignored_and_repaired(tmp_path):
    p = tmp_path / "train_log.jsonl"
    with R.JsonlWriter(p, fsync_every=2) as w:
        for step in (1, 2, 3):
            w.write({"step": step, "loss": 0.5 / step})
    assert p.read_text().count("\n") == 3
    with open(p, "ab") as f:               # a crash mid-append
        f.write(b'{"step": 4, "lo')
    assert [r["step"] for r in R.read_jsonl(p)] == [1, 2, 3]

    # reopening cuts the partial line off instead of gluing the next record onto it
    with R.JsonlWriter(p) as w:
        w.write({"step": 4, "loss": float("nan")})
    recs = R.read_jsonl(p)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[3] == {"step": 4, "loss": None, "_nonfinite": {"loss": "nan"}}
    assert p.read_bytes().endswith(b"}\n")

    # NUL padding (what NFS can leave after a client crash) is a partial line too
    with open(p, "ab") as f:
        f.write(b"\x00" * 16)
    assert len(R.read_jsonl(p)) == 4

    # a complete record that only lacks its newline is kept, and terminated on reopen
    q = tmp_path / "hand.jsonl"
    q.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert R.read_jsonl(q) == [{"a": 1}, {"a": 2}]
    with R.JsonlWriter(q) as w:
        w.write({"a": 3})
    assert q.read_bytes() == b'{"a": 1}\n{"a": 2}\n{"a": 3}\n'


def test_jsonl_corrupt_middle_line_errors(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_bytes(b'{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(R.CorruptFileError, match=r"log.jsonl, line 2: not valid JSON"):
        R.read_jsonl(p)
    # a terminated last line that does not parse is damage too, not a crash mid-append
    p.write_bytes(b'{"step": 1}\n{"step": 2, "lo\n')
    with pytest.raises(R.CorruptFileError, match="line 2"):
        R.read_jsonl(p)
    w = R.JsonlWriter(tmp_path / "x.jsonl")
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write({"a": 1})


def test_truncate_jsonl_for_resume(tmp_path):
    p = tmp_path / "log.jsonl"
    lines = [b'{"step": 1, "loss": 0.9}', b'{"step": 2, "loss": 0.8}',
             b'{"step": 3,   "loss": 0.7}', b'{"step": 4, "loss": 0.6}',
             b'{"step": 2, "loss": 0.1}']
    p.write_bytes(b"\n".join(lines) + b"\n" + b'{"step": 5, "l')
    n = R.truncate_jsonl(p, keep_while=lambda r: r["step"] <= 3)
    assert n == 3
    # kept lines byte for byte; the later step-2 record and the partial line are gone
    assert p.read_bytes() == b"\n".join(lines[:3]) + b"\n"
    # keep everything: only the partial tail goes
    p.write_bytes(b"\n".join(lines[:2]) + b"\n" + b'{"step": 3')
    assert R.truncate_jsonl(p, lambda r: True) == 2
    assert p.read_bytes() == b"\n".join(lines[:2]) + b"\n"
    # a resumed writer continues after the checkpoint without duplicate steps
    with R.JsonlWriter(p) as w:
        w.write({"step": 3, "loss": 0.5})
    assert [r["step"] for r in R.read_jsonl(p)] == [1, 2, 3]
    assert R.truncate_jsonl(tmp_path / "missing.jsonl", lambda r: True) == 0
    assert not (tmp_path / "missing.jsonl").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["log.jsonl"]


# ---------------------------------------------------------------------------------------- status

def test_status_round_trip(tmp_path):
    cell = tmp_path / "cell"
    assert R.read_status(cell) == {"state": "new"}
    before = dt.datetime.now(dt.timezone.utc)
    R.write_status(cell, "running", step=10, log="/x/job.log",
                   last_metrics={"loss": 0.25, "kl": float("nan")})
    st = R.read_status(cell)
    assert st["state"] == "running" and st["step"] == 10 and st["log"] == "/x/job.log"
    assert st["host"] == socket.gethostname() and st["pid"] == os.getpid()
    assert st["last_metrics"] == {"loss": 0.25, "kl": None}
    assert st["_nonfinite"] == {"last_metrics.kl": "nan"}
    updated = dt.datetime.fromisoformat(st["updated"])
    assert updated.utcoffset() == dt.timedelta(0)
    assert abs((updated - before).total_seconds()) < 5
    R.write_status(cell, "failed", reason="CUDA out of memory")
    assert R.read_status(cell)["reason"] == "CUDA out of memory"
    assert "step" not in R.read_status(cell)

    with pytest.raises(ValueError, match="pending, running, done, failed; got 'finished'"):
        R.write_status(cell, "finished")
    assert R.read_status(cell)["state"] == "failed"
    (cell / "status").write_text('{"state": "weird"}')
    with pytest.raises(R.CorruptFileError, match="not a status record"):
        R.read_status(cell)


# ----------------------------------------------------------------------------------------- locks

def _race(dirs: list[str], racers: int, stale_after: float) -> list[tuple]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(racers)
    q = ctx.Queue()
    procs = [ctx.Process(target=helpers.lock_race_worker, args=(dirs, barrier, q, stale_after))
             for _ in range(racers)]
    for p in procs:
        p.start()
    out = [q.get(timeout=60) for _ in range(racers * len(dirs))]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


def test_lock_race_exactly_one_winner(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    fresh = [tmp_path / f"fresh{i}" for i in range(60)]
    stale = [tmp_path / f"stale{i}" for i in range(60)]
    for d in stale:                       # a lock left by a dead process, breakers race
        _write_foreign_lock(d, host=host, pid=dead)
    dirs = [str(d) for pair in zip(fresh, stale) for d in pair]
    results = _race(dirs, racers=3, stale_after=600.0)
    for d in dirs:
        rows = [r for r in results if r[0] == d]
        assert len(rows) == 3
        winners = [r for r in rows if r[2]]
        assert len(winners) == 1, (d, rows)
        assert winners[0][3] is True          # the lock file holds the winner's token
        # released and cleaned up: no lock, guard or renamed leftovers
        assert os.listdir(d) == [], (d, os.listdir(d))


def test_stale_lock_dead_pid_is_broken(tmp_path):
    _write_foreign_lock(tmp_path, host=socket.gethostname(), pid=_dead_pid())
    info = R.lock_info(tmp_path)
    assert info["token"] == "theirs" and "is gone" in info["stale"]
    lock = R.CellLock(tmp_path)
    assert lock.acquire(timeout=0)
    assert R.lock_info(tmp_path)["token"] == lock.token and lock.held
    assert lock.release()
    assert os.listdir(tmp_path) == []


def test_live_lock_is_not_broken(tmp_path):
    # held by a live process on this host (ours, under another token), heartbeat fresh
    path = _write_foreign_lock(tmp_path, host=socket.gethostname(), pid=os.getpid())
    before = path.read_bytes()
    lock = R.CellLock(tmp_path, poll_interval=0.05)
    t0 = time.monotonic()
    assert not lock.acquire(timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert path.read_bytes() == before and R.lock_info(tmp_path)["stale"] is None
    with pytest.raises(R.LockHeldError, match=f"held by host {socket.gethostname()} "
                                              f"pid {os.getpid()}"):
        with R.CellLock(tmp_path):
            pass
    assert path.read_bytes() == before
    # the same on another host, where the pid cannot be checked: only the heartbeat counts
    other = tmp_path / "other"
    _write_foreign_lock(other, host="some-other-host", pid=_dead_pid(), age_s=300)
    assert not R.CellLock(other).acquire(timeout=0)


def test_heartbeat_stale_timeout(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write_foreign_lock(a, host="some-other-host", pid=1, age_s=700)
    _write_foreign_lock(b, host="some-other-host", pid=1, age_s=700)
    assert not R.CellLock(b, stale_after=1000).acquire(timeout=0)    # 700 s < 1000 s
    assert "no heartbeat for 70" in R.lock_info(a)["stale"]         # default 600 s
    lock = R.CellLock(a)
    assert lock.acquire(timeout=0)
    lock.release()


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    holder = R.CellLock(tmp_path, stale_after=3.0, heartbeat_every=0.05)
    assert holder.acquire()
    old = time.time() - 100                # stale by 97 s unless a heartbeat refreshes it
    os.utime(holder.path, (old, old))
    time.sleep(0.4)
    assert time.time() - holder.path.stat().st_mtime < 3.0
    other = R.CellLock(tmp_path, stale_after=3.0, heartbeat_every=0.05)
    assert not other.acquire(timeout=0)
    assert holder.heartbeat() and not holder.lost
    holder.release()
    assert other.acquire(timeout=0)
    other.release()
    with pytest.raises(ValueError, match="well below"):
        R.CellLock(tmp_path, stale_after=10, heartbeat_every=10)


def test_release_does_not_remove_someone_elses_lock(tmp_path):
    lock = R.CellLock(tmp_path)
    assert lock.acquire()
    with pytest.raises(RuntimeError, match="not reentrant"):
        lock.acquire()
    # our lock was broken as stale and another process took it
    _write_foreign_lock(tmp_path, host="elsewhere", pid=123, token="new-owner")
    assert not lock.heartbeat() and lock.lost and not lock.held
    assert not lock.release()
    assert R.lock_info(tmp_path)["token"] == "new-owner"
    assert sorted(os.listdir(tmp_path)) == ["lock"]


def test_lock_context_manager_and_suite_lock(tmp_path):
    cell = tmp_path / "suite" / "c1"
    with R.CellLock(cell) as lock:
        assert (cell / "lock").exists() and lock.held
        info = R.lock_info(cell)
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        R.write_status(cell, "running")
    assert not (cell / "lock").exists()
    with R.SuiteLock(tmp_path / "suite") as sl:
        assert sl.path.name == "_suite.lock" and sl.path.exists()
        assert [c["cell_id"] for c in R.list_cells(tmp_path / "suite")] == ["c1"]
    assert not sl.path.exists()


def test_crashed_breaker_guard_does_not_block_forever(tmp_path):
    _write_foreign_lock(tmp_path, host=socket.gethostname(), pid=_dead_pid())
    guard = tmp_path / "lock.break"
    guard.touch()
    assert not R.CellLock(tmp_path).acquire(timeout=0)   # a breaker may be at work
    old = time.time() - 120
    os.utime(guard, (old, old))                           # ... no: it crashed long ago
    lock = R.CellLock(tmp_path)
    assert lock.acquire(timeout=0)
    lock.release()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------- env info

def test_env_info_keys_and_json(monkeypatch):
    for k in R_env._SLURM_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("HARNESS_GIT_COMMIT", "abc123")
    monkeypatch.setenv("HARNESS_GIT_DIRTY", "0")
    env = R.env_info()
    json.dumps(env, allow_nan=False)
    for key in ("python_version", "platform", "hostname", "cpu_count", "cpu_model",
                "ram_bytes", "torch_version", "cuda_available", "gpu_names", "packages",
                "git_commit", "git_dirty", "slurm"):
        assert key in env, key
    assert env["python_version"] == "%d.%d.%d" % sys.version_info[:3]
    assert env["hostname"] == socket.gethostname()
    import torch
    assert env["torch_version"] == torch.__version__
    assert env["cuda_available"] == torch.cuda.is_available()
    pk = env["packages"]
    for name in ("transformers", "trl", "accelerate", "datasets", "lm_eval", "alpaca_eval",
                 "pandas", "numpy", "submitit", "peft"):
        assert name in pk
    assert pk["numpy"] == np.__version__
    # transformers states its version in its __init__.py; read it without the slow import
    import importlib.util
    import re
    init = Path(importlib.util.find_spec("transformers").origin).read_text()
    assert pk["transformers"] == re.search(r'__version__ = "([^"]+)"', init).group(1)
    assert env["git_commit"] == "abc123" and env["git_dirty"] is False
    assert env["slurm"] == {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"}


def test_env_info_git_commit_and_dirty(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_GIT_COMMIT", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t",
                               "-c", "user.email=t@example.com", *args],
                              check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "init")
    head = git("log", "-1", "--format=%H").strip()
    monkeypatch.setattr(R_env, "_project_root", lambda: repo)
    env = R.env_info()
    assert env["git_commit"] == head and env["git_dirty"] is False
    (repo / "results" / "s" / "c").mkdir(parents=True)    # results written by a run
    (repo / "results" / "s" / "c" / "metrics.json").write_text("{}")
    assert R.env_info()["git_dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    env = R.env_info()
    assert env["git_dirty"] is True and env["git_dirty_files"] == ["a.py"]
    # no repository (a snapshot copy without .git): None, not an error
    monkeypatch.setattr(R_env, "_project_root", lambda: tmp_path / "nowhere")
    env = R.env_info()
    assert env["git_commit"] is None and env["git_dirty"] is None


# ---------------------------------------------------------------------------- disk and listing

def test_rotate_checkpoints(tmp_path):
    for name in ("step-00000100", "step-00000020", "step-900", "step-1000", "final",
                 "step-abc", ".step-00000005.77.deleting"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"w" * 10)
    (tmp_path / "step-00000001").write_text("a file, not a checkpoint dir")
    removed = R.rotate_checkpoints(tmp_path, keep=2)
    # numeric order: 20 < 100 < 900 < 1000, so 900 and 1000 stay although "step-9" > "step-1"
    assert sorted(p.name for p in removed) == ["step-00000020", "step-00000100"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "final", "step-00000001", "step-1000", "step-900", "step-abc"]
    assert R.rotate_checkpoints(tmp_path, keep=5) == []
    assert [p.name for p in R.rotate_checkpoints(tmp_path, keep=0)] == ["step-900",
                                                                        "step-1000"]
    with pytest.raises(ValueError):
        R.rotate_checkpoints(tmp_path, keep=-1)
    assert R.rotate_checkpoints(tmp_path / "missing", keep=1) == []


def test_dir_size_bytes(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 10)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"2" * 20)
    (tmp_path / "z.bin").write_bytes(b"3" * 300)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"4" * 5000)
    os.symlink(outside, tmp_path / "link")      # not followed: counts the link itself
    assert R.dir_size_bytes(tmp_path) == 10 + 20 + 300 + len(str(outside))
    assert R.dir_size_bytes(tmp_path / "z.bin") == 300
    assert R.dir_size_bytes(tmp_path / "missing") == 0


def test_list_cells(tmp_path):
    suite = tmp_path / "suite"
    R.write_status(suite / "b-cell", "done")
    R.atomic_write_yaml(suite / "b-cell" / "config.yaml", {"method": "ipo", "seed": 1})
    R.atomic_write_json(suite / "b-cell" / "metrics.json", {"accuracy": 0.6})
    R.atomic_write_yaml(suite / "a-cell" / "config.yaml", {"method": "dpo"})   # planned only
    R.write_status(suite / "c-cell", "running", step=5)
    _write_foreign_lock(suite / "c-cell", host=socket.gethostname(), pid=_dead_pid())
    (suite / "d-cell").mkdir()
    (suite / "d-cell" / "status").write_text('{"state": "do')                  # damaged
    R.write_status(suite / "_sft" / "stage1", "done")
    R.write_status(suite / ".hidden", "done")
    (suite / "notes").mkdir()                                                # not a cell
    (suite / ".status.55.abcd1234.tmp").write_text("{")
    (suite / "b-cell" / ".metrics.json.9.abcd.tmp").write_text("{")

    cells = {c["cell_id"]: c for c in R.list_cells(suite)}
    assert list(cells) == ["a-cell", "b-cell", "c-cell", "d-cell"]
    assert cells["a-cell"]["state"] == "new" and cells["a-cell"]["config"] == {"method": "dpo"}
    assert cells["a-cell"]["has_metrics"] is False and cells["a-cell"]["lock"] is None
    b = cells["b-cell"]
    assert b["state"] == "done" and b["config"] == {"method": "ipo", "seed": 1}
    assert b["has_metrics"] and b["error"] is None and b["dir"] == str(suite / "b-cell")
    c = cells["c-cell"]
    assert c["state"] == "running" and c["status"]["step"] == 5
    assert "is gone" in c["lock"]["stale"]       # its runner died: the cell was interrupted
    d = cells["d-cell"]
    assert d["state"] == "unreadable" and "d-cell/status: not valid JSON" in d["error"]
    assert R.list_cells(tmp_path / "nope") == []


def test_breaker_with_outdated_view_does_not_break_a_fresh_lock(tmp_path, monkeypatch):
    """A sees the stale lock; before A breaks it, B breaks it and takes the lock. A must then
    leave B's fresh lock alone (the interleaving a plain unlink-and-retry gets wrong)."""
    _write_foreign_lock(tmp_path, host=socket.gethostname(), pid=_dead_pid())
    a, b = R.CellLock(tmp_path), R.CellLock(tmp_path)
    real_read_lock = R_locks._read_lock
    interleaved = []

    def read_then_let_b_win(path):
        got = real_read_lock(path)
        if not interleaved and path.name == "lock":
            interleaved.append(True)
            assert b.acquire(timeout=0)
        return got

    monkeypatch.setattr(R_locks, "_read_lock", read_then_let_b_win)
    assert not a.acquire(timeout=0)
    assert interleaved and b.held and not a.held
    assert R.lock_info(tmp_path)["token"] == b.token
    assert b.release()
    assert os.listdir(tmp_path) == []
