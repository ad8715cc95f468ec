"""A local worker process: started once by the local launcher, it runs jobs it is sent, one at a
time, and reports each result (``python -m harness.launch.worker FD``, FD one end of a socket
pair whose other end the launcher holds).

Why a long-lived worker: a fresh interpreter per job pays Python start-up and the imports of
torch and transformers (about 6 s per job on a 2-core machine, issue 15); a worker pays them
once. What a job could break is kept within the job, as in the inline launcher: an exception
(``sys.exit()`` included) is that job's failure and the worker takes the next one; a job that
kills the process (SIGKILL, the out-of-memory killer, ``os._exit``) loses only itself: the
launcher reports it failed and starts a replacement worker.

The protocol: length-prefixed pickles over the socket. The launcher sends ``{"fn", "args",
"kwargs", "stdout", "stderr"}`` (EOF: exit); the worker runs the call with its file
descriptors 1 and 2 sent to the job's own log files, then answers ``{"ok", "result" | "error",
"rss_mb"}``. Between jobs the worker returns freed memory to the system
(``gc``, glibc's ``malloc_trim``, the CUDA cache) and reports its resident memory, from which
the launcher decides to retire it (:mod:`harness.launch.local`).

Signals: the launcher starts workers with SIGINT blocked (a Ctrl-C at the terminal reaches only
the launcher, which stops the workers itself with SIGTERM). SIGTERM during a job is the job's
(it marks its cell pending and the worker exits 128 + 15); an idle worker just exits. A worker
whose launcher died is sent SIGTERM by the kernel (Linux ``PR_SET_PDEATHSIG``), so it never
runs on unwatched.
"""
from __future__ import annotations

import gc
import os
import pickle
import signal
import struct
import sys
from typing import Any

_HEADER = struct.Struct("!Q")


# ------------------------------------------------------------------------- framing (both sides)
def encode_message(obj: Any) -> bytes:
    """One message: 8-byte length, then the pickle (cloudpickle, so a job may be a closure)."""
    import cloudpickle

    data = cloudpickle.dumps(obj)
    return _HEADER.pack(len(data)) + data


def write_message(fd: int, obj: Any) -> None:
    buf = memoryview(encode_message(obj))
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        try:
            b = os.read(fd, min(left, 1 << 20))
        except InterruptedError:  # pragma: no cover - retried by Python itself since 3.5
            continue
        if not b:
            return None
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def read_message(fd: int) -> Any | None:
    """The next message, or None at EOF (the other side is gone, even half way through one)."""
    head = _read_exactly(fd, _HEADER.size)
    if head is None:
        return None
    body = _read_exactly(fd, _HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)


# ------------------------------------------------------------------------------ the worker
def rss_mb() -> float:
    """Resident memory of this process now (not its peak), MB."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def release_memory() -> None:
    """Give what the last job freed back: collect cycles, trim glibc's heap (freed arenas stay
    mapped otherwise, so resident memory would only grow), empty the CUDA cache."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def preload() -> None:
    """Before the first job: import what every job imports (the harness's runner: torch and
    the harness; transformers' lazy modules) and hide those import-time objects from the
    garbage collector (``gc.freeze``). Modules, classes and functions live as long as the
    worker, and the full collection between jobs then scans only what jobs made (it took about
    0.3 s per job on a 2-core machine scanning torch and transformers). A failing import is
    left for the job to report."""
    try:
        import harness.runner  # noqa: F401
        import transformers  # noqa: F401
    except Exception:  # noqa: BLE001
        return
    gc.collect()
    gc.freeze()


def _die_with_parent() -> None:
    """SIGTERM this process when its launcher dies (Linux); elsewhere, nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _Redirect:
    """File descriptors 1 and 2 (and sys.stdout/err) into the job's log files for a block, so
    every line a job, its libraries or its subprocesses print lands in that job's logs."""

    def __init__(self, stdout: str, stderr: str):
        self.paths = (stdout, stderr)

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        for fd, path in zip((1, 2), self.paths):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            os.dup2(f, fd)
            os.close(f)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        return False


def run_one(msg: dict) -> dict:
    """Run one job message; the reply (KeyboardInterrupt, i.e. a stop signal, propagates)."""
    from harness.launch.base import run_inline_call

    with _Redirect(msg["stdout"], msg["stderr"]):
        ok, value, err = run_inline_call(msg["fn"], tuple(msg.get("args", ())), dict(msg.get("kwargs", {})))
        if not ok:
            print(err, file=sys.stderr, flush=True)  # the job's traceback in its own stderr log
    reply = {"ok": ok, "result": value, "error": err}
    try:
        import cloudpickle

        cloudpickle.dumps(value)
    except Exception as e:  # noqa: BLE001 - the job ran, but its value cannot travel back
        reply = {"ok": False, "result": None,
                 "error": f"the job's return value could not be sent back ({type(e).__name__}: {e})"}
    return reply


def serve(fd: int) -> int:
    jobs = 0
    while True:
        msg = read_message(fd)
        if msg is None:
            return 0   # the launcher closed the pipe: no more jobs
        try:
            reply = run_one(msg)
        except KeyboardInterrupt as e:  # SIGTERM (or SIGINT) during the job: it marked its cell
            return 128 + int(getattr(e, "signum", signal.SIGINT))
        release_memory()
        jobs += 1
        if jobs == 1:
            # what survives the first job's collection is mostly the modules it imported
            # lazily (transformers' model classes, lm-eval, nltk): out of later scans too
            gc.freeze()
        reply["rss_mb"] = round(rss_mb(), 1)
        write_message(fd, reply)


def main(argv: list[str]) -> int:
    _die_with_parent()
    fd = int(argv[0])
    os.set_inheritable(fd, False)       # a job's own subprocesses must not hold the socket
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)                 # nor read what is meant for this process
    os.close(devnull)
    preload()
    try:
        return serve(fd)
    except BrokenPipeError:
        return 0   # the launcher is gone


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
