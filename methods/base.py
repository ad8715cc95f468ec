"""The method contract: ``TokenBatch`` in, ``LossOutput`` out.

A preference method is a pure function of per-token statistics that the training core
computes. Subclasses declare

* ``needs``: the features the core must compute (a subset of ``FEATURES``);
* hyperparameters: annotated class fields with defaults. ``Annotated[float, Range(gt=0)]``
  adds a range, ``Literal[...]`` a set of choices; the base class turns them into validated
  keyword arguments of the constructor;
* ``loss(batch) -> LossOutput``.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import torch

from .registry import did_you_mean

FEATURES = frozenset({"reference", "token_kl", "token_weights", "anchor"})


class MethodConfigError(ValueError):
    """A method name, hyperparameter or value that cannot be used; the message says the fix."""


class BatchError(ValueError):
    """A TokenBatch that lacks a tensor the method needs, or has inconsistent shapes."""


# --------------------------------------------------------------------------- batch
_SIDES = {
    "chosen": ("chosen_logps", "chosen_mask"),
    "rejected": ("rejected_logps", "rejected_mask"),
}
_FEATURE_FIELDS = {
    "reference": ("ref_chosen_logps", "ref_rejected_logps"),
    "token_kl": ("chosen_kl", "rejected_kl"),
    "token_weights": ("chosen_weights", "rejected_weights"),
    "anchor": ("anchor_logps", "ref_anchor_logps", "anchor_mask"),
}
_SIDE_OF = {
    "chosen_logps": "chosen", "chosen_mask": "chosen", "ref_chosen_logps": "chosen",
    "chosen_kl": "chosen", "chosen_weights": "chosen",
    "rejected_logps": "rejected", "rejected_mask": "rejected", "ref_rejected_logps": "rejected",
    "rejected_kl": "rejected", "rejected_weights": "rejected",
    "anchor_logps": "anchor", "ref_anchor_logps": "anchor", "anchor_mask": "anchor",
}


@dataclass
class TokenBatch:
    """Per-token statistics of a batch of B preference pairs, right-padded.

    Position t is the t-th token of the *response* (prompt tokens are excluded). Each side
    (chosen, rejected, anchor) has its own length T; all tensors of one side share [B, T].
    Masks are 1.0 on real response tokens and 0.0 on padding; values at padded positions
    are ignored by every method.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_mask: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    chosen_kl: torch.Tensor | None = None
    rejected_kl: torch.Tensor | None = None
    chosen_weights: torch.Tensor | None = None
    rejected_weights: torch.Tensor | None = None
    anchor_logps: torch.Tensor | None = None
    ref_anchor_logps: torch.Tensor | None = None
    anchor_mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.chosen_logps.shape[0])

    def validate(self, needs: frozenset[str] = frozenset()) -> None:
        """Raise ``BatchError`` unless every needed tensor is present and shapes agree."""
        required = ["chosen_logps", "chosen_mask", "rejected_logps", "rejected_mask"]
        for feat in sorted(needs):
            required += _FEATURE_FIELDS[feat]
        missing = [n for n in required if getattr(self, n) is None]
        if missing:
            raise BatchError(
                f"TokenBatch is missing {', '.join(missing)}, which the method needs "
                f"(needs={sorted(needs)}); the training core must compute these features."
            )
        shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
        B = None
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise BatchError(f"TokenBatch.{f.name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise BatchError(f"TokenBatch.{f.name} must have shape [B, T], got {tuple(t.shape)}")
            if not torch.is_floating_point(t):
                raise BatchError(f"TokenBatch.{f.name} must be a float tensor, got {t.dtype}")
            if B is None:
                B = t.shape[0]
            elif t.shape[0] != B:
                raise BatchError(
                    f"TokenBatch.{f.name} has batch size {t.shape[0]}, others have {B}"
                )
            side = _SIDE_OF[f.name]
            if side in shapes and shapes[side][1] != tuple(t.shape):
                other, shp = shapes[side]
                raise BatchError(
                    f"TokenBatch.{f.name} has shape {tuple(t.shape)} but {other} has {shp}; "
                    f"all {side} tensors must share one [B, T] shape (no broadcasting)."
                )
            shapes.setdefault(side, (f.name, tuple(t.shape)))


@dataclass
class LossOutput:
    """``losses`` [B] (the training loss is their mean), detached implicit rewards [B],
    and extra scalars to log."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------ hyperparameters
@dataclass(frozen=True)
class Range:
    """Allowed interval for a numeric hyperparameter (any bound may be omitted)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def ok(self, v: float) -> bool:
        return not (
            (self.ge is not None and not v >= self.ge)
            or (self.gt is not None and not v > self.gt)
            or (self.le is not None and not v <= self.le)
            or (self.lt is not None and not v < self.lt)
        )

    def __str__(self) -> str:
        lo = f"[{self.ge:g}" if self.ge is not None else (f"({self.gt:g}" if self.gt is not None else "(-inf")
        hi = f"{self.le:g}]" if self.le is not None else (f"{self.lt:g})" if self.lt is not None else "inf)")
        return f"{lo}, {hi}"


@dataclass(frozen=True)
class HParam:
    name: str
    type: Any  # float, int, bool, str
    default: Any
    range: Range | None = None
    choices: tuple | None = None
    optional: bool = False  # None allowed

    def describe(self) -> str:
        extra = ""
        if self.range is not None:
            extra = f" in {self.range}"
        elif self.choices is not None:
            extra = " in {" + ", ".join(repr(c) for c in self.choices) + "}"
        return f"{self.name}={self.default!r}{extra}"


def _parse_annotation(name: str, ann: Any, default: Any) -> HParam:
    rng = None
    optional = False
    if get_origin(ann) is Annotated:
        base, *meta = get_args(ann)
        for m in meta:
            if isinstance(m, Range):
                rng = m
        ann = base
    origin = get_origin(ann)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(ann) if a is not type(None)]
        optional = len(args) != len(get_args(ann))
        ann = args[0] if len(args) == 1 else ann
        if get_origin(ann) is Annotated:
            base, *meta = get_args(ann)
            rng = next((m for m in meta if isinstance(m, Range)), rng)
            ann = base
    if get_origin(ann) is Literal:
        choices = tuple(get_args(ann))
        return HParam(name, type(choices[0]), default, None, choices, optional)
    if ann not in (float, int, bool, str):
        raise TypeError(f"hyperparameter {name!r}: unsupported annotation {ann!r}")
    return HParam(name, ann, default, rng, None, optional)


class PreferenceMethod:
    """Base class of every preference method; see the module docstring."""

    name: ClassVar[str] = "?"
    needs: ClassVar[frozenset[str]] = frozenset()
    hparams_spec: ClassVar[dict[str, HParam]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not isinstance(cls.needs, frozenset) or not cls.needs <= FEATURES:
            raise TypeError(
                f"{cls.__qualname__}.needs must be a frozenset of {sorted(FEATURES)}, got {cls.needs!r}"
            )
        spec: dict[str, HParam] = {}
        for klass in reversed(cls.__mro__):
            if klass is object or not issubclass(klass, PreferenceMethod):
                continue
            hints = typing.get_type_hints(klass, include_extras=True)
            for n, ann in klass.__dict__.get("__annotations__", {}).items():
                if n.startswith("_") or get_origin(hints[n]) is ClassVar or n in ("name", "needs", "hparams_spec"):
                    continue
                if n not in klass.__dict__:
                    raise TypeError(f"{cls.__qualname__}: hyperparameter {n!r} needs a default")
                spec[n] = _parse_annotation(n, hints[n], klass.__dict__[n])
        cls.hparams_spec = spec
        # Every loss() validates its batch first (missing features, shape mismatches), so a
        # plugin calling m.loss(batch) directly gets the same clear errors as the core.
        if "loss" in cls.__dict__ and not getattr(cls.__dict__["loss"], "_validates", False):
            cls.loss = _validating(cls.__dict__["loss"])

    def __init__(self, **hparams: Any):
        spec = type(self).hparams_spec
        for key in hparams:
            if key not in spec:
                valid = ", ".join(spec) or "(none)"
                raise MethodConfigError(
                    f"{self.name}: unknown hyperparameter {key!r}.{did_you_mean(key, list(spec))} "
                    f"Valid hyperparameters: {valid}."
                )
        for n, hp in spec.items():
            v = hparams.get(n, hp.default)
            setattr(self, n, _check_value(self.name, hp, v))
        self._explicit = frozenset(hparams)
        self.validate()

    # Subclasses add cross-field checks here (raise MethodConfigError).
    def validate(self) -> None:
        pass

    @property
    def hparams(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in type(self).hparams_spec}

    def loss(self, batch: TokenBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: TokenBatch) -> LossOutput:
        return self.loss(batch)

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0].strip() if doc else ""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def _validating(fn):
    import functools

    @functools.wraps(fn)
    def loss(self, batch: TokenBatch) -> LossOutput:
        if not isinstance(batch, TokenBatch):
            raise BatchError(f"{self.name}.loss expects a methods.TokenBatch, got {type(batch).__name__}")
        batch.validate(self.needs)
        return fn(self, batch)

    loss._validates = True
    return loss


def _check_value(method: str, hp: HParam, v: Any) -> Any:
    where = f"{method}: hyperparameter {hp.name!r}"
    if v is None:
        if hp.optional:
            return None
        raise MethodConfigError(f"{where} must not be null")
    if hp.type is bool:
        if not isinstance(v, bool):
            raise MethodConfigError(f"{where} must be true or false, got {v!r}")
        return v
    if hp.type is str:
        if not isinstance(v, str):
            raise MethodConfigError(f"{where} must be a string, got {v!r}")
    elif hp.type in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MethodConfigError(f"{where} must be a number, got {v!r}")
        if hp.type is int:
            if float(v) != int(v):
                raise MethodConfigError(f"{where} must be an integer, got {v!r}")
            v = int(v)
        else:
            v = float(v)
            if not math.isfinite(v):
                raise MethodConfigError(f"{where} must be finite, got {v!r}")
    if hp.choices is not None and v not in hp.choices:
        raise MethodConfigError(
            f"{where} must be one of {', '.join(repr(c) for c in hp.choices)}, got {v!r}"
            f".{did_you_mean(str(v), [str(c) for c in hp.choices])}"
        )
    if hp.range is not None and not hp.range.ok(v):
        raise MethodConfigError(f"{where} must be in {hp.range}, got {v!r}")
    return v
