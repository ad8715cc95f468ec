"""Issue 18: cell locks that never outlive a failed write, tell a dead holder from a live one
(pid reused, host rebooted, garbled file, a requeued SLURM attempt on another node) and let a
holder that lost its lock notice it before it writes. The basic lock behaviour (races, heartbeat,
breaking a dead pid's lock) is in tests/test_results.py."""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

import pytest

import harness.results as R
import harness.results.atomic as R_atomic
import harness.results.locks as R_locks

SLURM_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for k in SLURM_ENV:
        monkeypatch.delenv(k, raising=False)


def _lock_file(d: Path, age_s: float = 0.0, raw: bytes | None = None, **fields) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / "lock"
    path.write_bytes(raw if raw is not None else json.dumps({"time": "x", "token": "theirs", **fields}).encode())
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def _my_start() -> int:
    # field 22 of /proc/self/stat, counted by hand: pid (comm) state ppid ... starttime
    text = Path("/proc/self/stat").read_text()
    return int(text.rsplit(")", 1)[1].split()[19])


def test_a_failed_lock_write_leaves_no_lock_behind(tmp_path, monkeypatch):
    """Disk full while writing the lock's content: the error propagates and the (empty) lock
    file is gone, so the cell is not blocked for the next run (issue 18, item 3)."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R_atomic, "_write_all", full)
    with pytest.raises(OSError) as e:
        R.CellLock(tmp_path).acquire(timeout=0)
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    lock = R.CellLock(tmp_path)
    assert lock.acquire(timeout=0)
    lock.release()


def test_the_lock_records_what_identifies_its_holder(tmp_path):
    lock = R.CellLock(tmp_path)
    assert lock.acquire()
    info = json.loads(lock.path.read_text())
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    assert info["start"] == _my_start()
    assert info["boot"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert "job" not in info     # not under SLURM
    lock.release()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    """The pid in the lock is alive (it is this test's own), but the process that took the lock
    started at another time: that process is gone and its pid was reused (item 4)."""
    _lock_file(tmp_path, host=socket.gethostname(), pid=os.getpid(), start=_my_start() - 1)
    assert "pid now belongs to another process" in R.lock_info(tmp_path)["stale"]
    lock = R.CellLock(tmp_path)
    assert lock.acquire(timeout=0) and "another process" in lock.broke
    lock.release()
    # the same lock with the right start time is a live holder's
    _lock_file(tmp_path, host=socket.gethostname(), pid=os.getpid(), start=_my_start())
    assert R.lock_info(tmp_path)["stale"] is None and not R.CellLock(tmp_path).acquire(timeout=0)


def test_a_lock_from_before_a_reboot_is_stale(tmp_path):
    _lock_file(tmp_path, host=socket.gethostname(), pid=os.getpid(), start=_my_start(), boot="an-earlier-boot")
    assert R.lock_info(tmp_path)["stale"] == "this host has rebooted since the lock was taken"


@pytest.mark.parametrize("raw", [b"", b"\x00\x00garbage{", b"[1, 2]"])
def test_an_unreadable_lock_is_stale_once_it_is_older_than_a_write_takes(tmp_path, raw):
    """An empty or garbled lock file (a writer that died between create and write, or an older
    version's disk-full leftover) blocked a cell for 10 minutes (items 3 and 4)."""
    _lock_file(tmp_path, raw=raw)
    assert R.lock_info(tmp_path)["stale"] is None          # may be being written right now
    assert not R.CellLock(tmp_path).acquire(timeout=0)
    old = time.time() - (R_locks.UNREADABLE_GRACE_S + 5)
    os.utime(tmp_path / "lock", (old, old))
    assert "unreadable lock file" in R.lock_info(tmp_path)["stale"]
    lock = R.CellLock(tmp_path)
    assert lock.acquire(timeout=0)
    lock.release()


def test_a_requeued_slurm_attempt_takes_over_its_own_earlier_attempts_lock(tmp_path, monkeypatch):
    """After a requeue the new attempt may run on another node: the old attempt's lock names
    the old node and looks live for 600 s there. Same job id, lower attempt: it is ours
    (item 12a). Simulated like the issue did: the lock's host renamed."""
    fresh = dict(host="old-node", pid=4242, job="777_3", attempt=0)
    _lock_file(tmp_path, **fresh)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "777")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "781")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = R.CellLock(tmp_path)
    assert lock.acquire(timeout=0)
    assert "attempt 0 of this SLURM job 777_3" in lock.broke
    info = json.loads(lock.path.read_text())
    assert (info["job"], info["attempt"]) == ("777_3", 1)
    lock.release()


@pytest.mark.parametrize("who", ["same attempt (two runs in one allocation)", "another job"])
def test_other_slurm_jobs_locks_are_left_alone(tmp_path, monkeypatch, who):
    job = "777_3" if who.startswith("same") else "900_1"
    _lock_file(tmp_path, host="old-node", pid=4242, job=job, attempt=1)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "777")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert not R.CellLock(tmp_path).acquire(timeout=0)


def test_a_holder_notices_at_once_that_it_lost_its_lock(tmp_path):
    """The heartbeat thread notices a lost lock only every 30 s; verify()/ensure_held() look
    now, and name the new holder (item 11)."""
    lock = R.CellLock(tmp_path)
    assert lock.acquire()
    lock.ensure_held()                      # still ours: no error
    _lock_file(tmp_path, host="node7", pid=99, job="55", attempt=0, token="new-owner")
    assert lock.held                        # the heartbeat has not looked yet ...
    with pytest.raises(R_locks.LockLostError, match="now held by host node7 pid 99, SLURM job 55"):
        lock.ensure_held()                  # ... ensure_held does
    assert lock.lost and not lock.held and not lock.verify()
    assert not lock.release()               # someone else's lock stays
    assert json.loads((tmp_path / "lock").read_text())["token"] == "new-owner"


def test_describe_holder():
    assert R_locks.describe_holder(None) == "nobody"
    assert R_locks.describe_holder({"host": "h", "pid": 3, "token": "t", "age_s": 2.4}) == \
        "host h pid 3, last heartbeat 2 s ago"
    assert R_locks.describe_holder({"path": "/r/c/lock", "age_s": 1.0}) == \
        "an unreadable lock file (/r/c/lock, last heartbeat 1 s ago)"
