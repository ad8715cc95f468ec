"""Helpers that tests/test_results.py runs in other processes: a writer slowed down so it can be
SIGKILLed mid-write, and lock-racing workers. Module level so ``multiprocessing`` (spawn) can
import them, and runnable as a script for ``subprocess``."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

CHUNK = 4096


def big_payload(n: int = 400) -> dict:
    """About 1 MB of JSON: 250 chunks of CHUNK bytes when written."""
    return {"rows": [{"i": i, "text": "x" * 2000} for i in range(n)], "done": True}


def slow_atomic_write(path: str, marker: str) -> None:
    """``atomic_write_json(path, big_payload())`` with the byte writer slowed down to one
    CHUNK per 20 ms; ``marker`` is created once the first chunk is on disk, so the parent
    knows the write is under way and can kill this process."""
    import harness.results.atomic as results

    def slow_write_all(fd: int, data: bytes) -> None:
        for start in range(0, len(data), CHUNK):
            os.write(fd, data[start:start + CHUNK])
            os.fsync(fd)
            if start == 0:
                Path(marker).touch()
            time.sleep(0.02)

    results._write_all = slow_write_all
    results.atomic_write_json(path, big_payload())


def lock_race_worker(dirs: list[str], barrier, out_q, stale_after: float) -> None:
    """For each directory: wait for every racer, try ``CellLock.acquire(timeout=0)`` once,
    report (dir, pid, won, token in the lock file == ours), wait for every racer again, then
    release if won."""
    from harness.results import CellLock, lock_info

    for d in dirs:
        lock = CellLock(d, stale_after=stale_after, heartbeat_every=stale_after / 10)
        barrier.wait(timeout=60)
        won = lock.acquire(timeout=0)
        token_ok = None
        if won:
            info = lock_info(d) or {}
            token_ok = info.get("token") == lock.token
        out_q.put((d, os.getpid(), won, token_ok))
        barrier.wait(timeout=60)
        if won:
            lock.release()


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "slow-write":
        slow_atomic_write(*args)
    else:
        raise SystemExit(f"unknown command {cmd}")
