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

``harness validate`` and ``run`` check every plugin method this way (the built-in methods are
checked by ``tests/test_methods_conformance.py``). Importing this module loads no torch; the
check does.
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
