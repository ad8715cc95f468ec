"""Small module-level functions for the launcher tests (they must be importable by the job
processes, which unpickle them by reference)."""
from __future__ import annotations

import json
import os
import signal
import time


def double(x):
    return 2 * x


def fail(message):
    raise ValueError(message)


def kill_self():
    """Dies the way an OOM kill does: SIGKILL, no exception, no result written."""
    print("kill_self: sending SIGKILL to myself", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def record(log_file, name, sleep_s=0.0, value=None):
    """Appends {name, start, end} to a JSON-lines file (one short O_APPEND write per call, safe
    from concurrent processes) and returns ``value``."""
    start = time.time()
    time.sleep(sleep_s)
    line = json.dumps({"name": name, "start": start, "end": time.time(), "pid": os.getpid()}) + "\n"
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return value


def rank_report(out_dir):
    """Run once per accelerate process: writes rank<k>.json and returns (rank, world size)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "world": world, "local_rank": int(os.environ["LOCAL_RANK"])}, fh)
    return (rank, world)


def fail_on_rank(rank_to_fail):
    if int(os.environ["RANK"]) == rank_to_fail:
        raise RuntimeError(f"rank {rank_to_fail} failed on purpose")
    return "ok"


def harness_location():
    """Where the job imported the harness package from (the snapshot, on SLURM)."""
    import harness

    return harness.__file__


def wait_for_requeue(marker, value, wait_s=60.0):
    """First run: create ``marker`` and wait (to be signalled, requeued and restarted); a
    restarted run finds the marker (its on-disk state) and returns ``value`` and the restart
    count SLURM reports."""
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(wait_s)
        return ("not requeued", 0)
    return (value, int(os.environ.get("SLURM_RESTART_COUNT", "0")))


def run_through(marker, seconds, value):
    """Create ``marker``, keep running for ``seconds`` (a job that needs the end of its time
    limit), then return ``value``."""
    with open(marker, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)
    return value


def thread_count():
    """The thread count a job's torch runs with in this process (as ``run_job`` sets it)."""
    import torch

    from harness import threads

    threads.apply()
    return torch.get_num_threads()


_HOARD: list = []


def hoard(mb):
    """Keeps ``mb`` MB alive in this process after the call returns (a job that leaks), and
    returns the pid."""
    _HOARD.append(bytearray(int(mb) << 20))
    for i in range(0, len(_HOARD[-1]), 4096):   # touch every page, so it is resident
        _HOARD[-1][i] = 1
    return os.getpid()


def exit_hard(code):
    """Ends the process at once, no exception and no cleanup (a library calling os._exit)."""
    os._exit(code)


def pid_after(sleep_s=0.0):
    time.sleep(sleep_s)
    return os.getpid()
