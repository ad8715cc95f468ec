"""The method contract's ``needs`` rule, checked on a method before it trains: a feature the
method does not declare must not change what its loss computes.

The training core computes only the features a method declares in ``needs``; the others
reach ``loss()`` as ``None``. A plugin that reads one anyway (``b.chosen_weights`` without
``token_weights`` in its needs) would fail in every cell with a bare ``TypeError`` on a None
tensor, after the reference pass and the SFT stage have run. ``undeclared_reads`` finds it in
milliseconds: it runs the loss on a small random batch with every feature, then on the same
batch with the undeclared features left out while watching which of them the loss reads. A
read that changes the outcome (an error, or other losses or rewards) is a violation; a
generic read that changes nothing (a loop over the batch's fields) is not.

``harness validate`` and ``run`` check every plugin method this way, in a child process
(``needs_problems``: a plugin's loss may exit, hang or kill its process, and the sweep must go
on); the built-in methods are checked by ``tests/test_methods_conformance.py``. Importing this
module loads no torch; the check does.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ._torch import torch
from .base import _FEATURE_FIELDS, FEATURES, PreferenceMethod, TokenBatch

_B = 3
# per pair, per side: response lengths (padding beyond them holds large garbage)
_LENGTHS = {"chosen": [5, 3, 1], "rejected": [2, 7, 4], "anchor": [6, 2, 3]}
_SIDE_FIELDS = {
    "chosen": ("chosen_logps", "ref_chosen_logps", "chosen_kl", "chosen_weights"),
    "rejected": ("rejected_logps", "ref_rejected_logps", "rejected_kl", "rejected_weights"),
    "anchor": ("anchor_logps", "ref_anchor_logps"),
}
_RANGES = {"kl": (0.0, 0.3), "weights": (0.1, 2.0)}


def full_batch(seed: int = 0) -> TokenBatch:
    """A random float32 batch of 3 pairs with every feature: log-probs in (-4, 0), per-token
    KL in (0, 0.3), positive weights; lengths differ per pair and per side."""
    gen = torch.Generator().manual_seed(seed)
    values: dict[str, Any] = {}
    for side, lengths in _LENGTHS.items():
        width = max(lengths)
        mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(width)] for n in lengths])
        values[f"{side}_mask"] = mask
        for name in _SIDE_FIELDS[side]:
            lo, hi = _RANGES.get(name.rsplit("_", 1)[-1], (-4.0, -0.01))
            x = lo + (hi - lo) * torch.rand(_B, width, generator=gen)
            values[name] = torch.where(mask > 0, x, torch.full_like(x, 1e3))
    return TokenBatch(**values)


class _Watched(TokenBatch):
    """A TokenBatch that records which of ``watch`` fields are read outside ``validate()``."""

    def __getattribute__(self, name: str) -> Any:
        state = object.__getattribute__(self, "__dict__").get("_watch")
        if state is not None and name in state["fields"] and not state["validating"]:
            state["read"].add(name)
        return object.__getattribute__(self, name)

    def validate(self, needs: frozenset = frozenset()) -> None:
        state = self.__dict__.get("_watch")
        if state is None:
            return TokenBatch.validate(self, needs)
        state["validating"] = True
        try:
            return TokenBatch.validate(self, needs)
        finally:
            state["validating"] = False


def _run(method: PreferenceMethod, batch: TokenBatch) -> tuple[Any, BaseException | None]:
    try:
        return method.loss(batch), None
    except (Exception, SystemExit) as e:  # a plugin's loss may raise anything, even SystemExit
        return None, e


def _same(a: Any, b: Any) -> bool:
    """Two loss outputs agree (losses and rewards, NaN equal to NaN)."""
    for f in ("losses", "chosen_rewards", "rejected_rewards"):
        x, y = getattr(a, f, None), getattr(b, f, None)
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            if x is not y:
                return False
        elif x.shape != y.shape or not torch.allclose(x.detach().float(), y.detach().float(), equal_nan=True):
            return False
    return True


def undeclared_reads(method: PreferenceMethod) -> dict[str, list[str]]:
    """The undeclared features whose reading changes what ``method.loss`` does (feature ->
    the batch fields read); empty when the method keeps to its ``needs``."""
    undeclared = {f: _FEATURE_FIELDS[f] for f in sorted(FEATURES - method.needs)}
    fields = {x for xs in undeclared.values() for x in xs}
    if not fields:
        return {}
    full = full_batch()
    expected, _ = _run(method, full)
    watched = _Watched(**{f.name: (None if f.name in fields else getattr(full, f.name))
                          for f in dataclasses.fields(TokenBatch)})
    state = {"fields": fields, "read": set(), "validating": False}
    watched.__dict__["_watch"] = state
    got, error = _run(method, watched)
    if error is None and expected is not None and _same(got, expected):
        return {}
    return {feat: [x for x in xs if x in state["read"]] for feat, xs in undeclared.items()
            if any(x in state["read"] for x in xs)}


def needs_problem(method: PreferenceMethod) -> str | None:
    """The message for a method whose loss reads features it does not declare, or None."""
    reads = undeclared_reads(method)
    if not reads:
        return None
    cls = type(method)
    feats = ", ".join(f"{f} ({', '.join(xs)})" for f, xs in reads.items())
    fixed = ", ".join(repr(f) for f in sorted(method.needs | set(reads)))
    return (f"method {method.name!r} ({cls.__module__}.{cls.__qualname__}) reads {feats} in its loss but does "
            f"not declare {'it' if len(reads) == 1 else 'them'} in needs ({sorted(method.needs)}); the training "
            f"core computes only declared features, so every cell would fail on a None tensor. Declare "
            f"{'it' if len(reads) == 1 else 'them'}: needs = frozenset({{{fixed}}})")


# ------------------------------------------------------------------ in a child process
CHILD_TIMEOUT_S = 120.0
_checked: dict[tuple, str | None] = {}  # (class, hparams, plugin file's mtime) -> problem, per process


def _source_of(cls: type) -> str:
    """How a child process loads the module of ``cls``: its file for a plugin file (loaded as
    ``harness_plugin_*``), else its module name (an importable plugin or an entry point)."""
    import sys

    mod = sys.modules.get(cls.__module__)
    path = getattr(mod, "__file__", None)
    return path if cls.__module__.startswith("harness_plugin_") and path else cls.__module__


def needs_problems(entries: list[tuple[type, dict]], timeout: float = CHILD_TIMEOUT_S) -> list[str | None]:
    """``needs_problem`` of each ``(method class, hyperparameters)``, computed in a child
    process: a plugin's loss may do anything (exit, hang, kill its own process; a sweep must
    survive that, and so must ``validate``). A child that dies or runs out of ``timeout``
    reports nothing for the method it was checking (the cells will show what that loss does) and
    the methods after it get a new child. Answers are remembered for the rest of this process."""
    import json
    import os

    def key(cls, hp):
        src = _source_of(cls)
        mtime = os.path.getmtime(src) if os.path.isfile(src) else None
        return (cls.__module__, cls.__qualname__, json.dumps(hp, sort_keys=True, default=str), src, mtime)

    todo = [(cls, hp) for cls, hp in entries if key(cls, hp) not in _checked]
    while todo:  # a child that dies on one method: that one has no answer, the rest get a new child
        answers = _in_child(todo, timeout)
        if answers is None:  # the child could not even load the plugins: no answers at all
            answers = [None] * len(todo)
        for (cls, hp), problem in zip(todo, answers + [None]):
            _checked[key(cls, hp)] = problem
        todo = todo[len(answers) + 1:]
    return [_checked[key(cls, hp)] for cls, hp in entries]


def _in_child(todo: list[tuple[type, dict]], timeout: float) -> list | None:
    """The answers of one child process for ``todo``, in order, as far as it got; None when
    it did not get as far as loading the plugins."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])  # this project's `methods`, whatever the cwd holds
    job = {"sources": sorted({_source_of(c) for c, _ in todo}), "methods": [[c.name, hp] for c, hp in todo]}
    with tempfile.TemporaryDirectory(prefix="needs-check-") as tmp:
        out = Path(tmp) / "answers.jsonl"
        code = (f"import sys; sys.path.insert(0, {root!r}); from methods.conformance import _child; "
                f"_child({json.dumps(job)!r}, {str(out)!r})")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            subprocess.run([sys.executable, "-c", code], env=env, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError):
            pass
        try:
            lines = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines() if ln.strip()] \
                if out.is_file() else []
        except ValueError:
            return None
        return lines[1:len(todo) + 1] if lines[:1] == ["ready"] else None


def _child(job_json: str, out_path: str) -> None:
    """The child's side of ``needs_problems``: load the plugins, check each method and append
    its answer (a JSON line) to ``out_path`` as soon as it is known, so a loss that kills the
    process leaves the answers before it."""
    import json

    import methods

    torch.set_num_threads(1)
    job = json.loads(job_json)
    for src in job["sources"]:
        if src.endswith(".py"):
            methods.load_plugin(src)
        else:
            __import__(src)
    with open(out_path, "a", encoding="utf-8") as f:
        f.write(json.dumps("ready") + "\n")
        f.flush()
        for name, hp in job["methods"]:
            try:
                answer = needs_problem(methods.get(name, **hp))
            except Exception:  # a method that cannot even be built here: not a needs problem
                answer = None
            f.write(json.dumps(answer) + "\n")
            f.flush()
