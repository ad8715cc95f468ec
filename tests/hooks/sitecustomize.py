"""Test-only instrumentation for processes the tests cannot patch from inside: the harness run
itself and the worker processes its launchers start (submitit local workers, SLURM jobs).

Python imports ``sitecustomize`` at start-up from the path, so a test puts this folder first on
PYTHONPATH and says what to do in ``HARNESS_TEST_HOOKS`` (comma-separated); nothing happens
without that variable, and production code has no hooks of its own. Each hook acts right after
optimizer step N of a training run of the given kind (``sft``: an SFT stage, ``train``: a
preference cell), through ``train(on_step=...)``:

* ``kill:KIND:N``    SIGKILL this process (what the OOM killer or a node failure does);
* ``pause:KIND:N``   SIGSTOP this process (a holder frozen past its lock's stale timeout);
* ``fill:KIND:N:PATH``  fill the disk holding PATH (a file written there until ENOSPC);
* ``slow:KIND:S``    sleep S seconds after every step (to signal a run in mid-training);
* ``mark:KIND:N:PATH``  create PATH (the test waits for it before signalling).

``harness.core.train`` is patched when it is first imported (an import hook), so processes that
never train (submitit's controllers) never import torch because of this file.
"""
from __future__ import annotations

import importlib.abc
import os
import signal
import sys
import time

HOOKS = [h for h in os.environ.get("HARNESS_TEST_HOOKS", "").split(",") if h]


def _fill(path: str) -> None:
    chunk = b"\0" * (1 << 16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:   # the last partial chunk too
        with open(path, "ab") as f:
            while True:
                f.write(b"\0")
                f.flush()
    except OSError:
        pass


def _act(kind: str, step: int) -> None:
    for hook in HOOKS:
        what, hkind, arg, *rest = hook.split(":", 3)
        if hkind != kind:
            continue
        if what == "slow":
            time.sleep(float(arg))
        elif int(arg) != step:
            continue
        elif what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif what == "pause":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif what == "fill":
            _fill(rest[0])
        elif what == "mark":
            open(rest[0], "w").close()


def _patch(module) -> None:
    real = module.train

    def train(model, data, objective, cfg, seed, run_dir, **kw):
        kind = "train" if getattr(objective, "kind", None) == "preference" else "sft"
        inner = kw.get("on_step")

        def on_step(step, rec):
            _act(kind, step)   # before the harness's own callback (its lock check)
            if inner is not None:
                inner(step, rec)

        kw["on_step"] = on_step
        return real(model, data, objective, cfg, seed, run_dir, **kw)

    module.train = train


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "harness.core.train":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if HOOKS:
    sys.meta_path.insert(0, _PatchOnImport())
