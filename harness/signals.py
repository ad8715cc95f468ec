"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM (``kill``, a scheduler, a closing session).

Python turns SIGINT into ``KeyboardInterrupt`` and leaves SIGTERM to kill the process on the
spot: no status is written, no lock released, no child stopped. Here both become
:class:`Interrupted` (a ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` path
treats them alike): the job marks its cell ``pending`` (reason ``interrupted (SIGTERM)``),
releases its lock, the launchers stop their workers, and the CLI prints one line and exits
with 128 + the signal number (130, 143). A repeated signal during that cleanup is ignored, so
the cleanup finishes instead of dying half way with a second traceback; it is bounded in time.
A process is interrupted once: after the first :class:`Interrupted`, every later SIGINT or
SIGTERM it receives (in any ``stop_on_signals`` block) is ignored.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_fired: list[int] = []    # the signal that interrupted this process, once one has
_deferring: list[bool] = []
_pending: list[int] = []


def reset() -> None:
    """Forget an earlier interruption (a new command in the same process, as in tests)."""
    _fired.clear()
    _pending.clear()


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupted_reason(e: BaseException) -> str:
    """The status reason of a job stopped by ``e`` (a KeyboardInterrupt)."""
    name = e.signame if isinstance(e, Interrupted) else "SIGINT"
    return f"interrupted ({name})"


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """While active (main thread only; elsewhere a no-op), the first of ``signums`` raises
    :class:`Interrupted`; later ones are ignored. A signal that was
    ignored when the block started (SIG_IGN, inherited from a parent that wants to stop this
    process itself) stays ignored. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _fired:
            return
        _fired.append(signum)
        if _deferring:
            _pending.append(signum)   # raised when the deferring block ends
            return
        raise Interrupted(signum)

    previous = {}
    for s in signums:
        old = signal.getsignal(s)
        if old is signal.SIG_IGN:
            continue
        previous[s] = old
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def sheltered_children(signums: tuple[int, ...] = (signal.SIGINT,)) -> Iterator[None]:
    """Block ``signums`` while the block runs (typically: while starting worker processes).
    A blocked signal stays pending here and is delivered when the block ends, but a process
    started inside the block inherits the mask and never receives it: a Ctrl-C at the terminal
    (SIGINT to the whole process group) then reaches only this process, which stops its
    workers itself with SIGTERM (one message, no tracebacks from the workers)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back :class:`Interrupted` until the block ends (a signal that arrives inside it is
    raised on the way out), for steps that must not be cut in half, such as starting a worker
    process and recording its handle: cut there, the worker would run on unrecorded."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
    if _pending and not _deferring:
        raise Interrupted(_pending.pop())
