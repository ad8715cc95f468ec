"""The method contract: ``TokenBatch`` in, ``LossOutput`` out.

A preference method is a pure function of per-token statistics that the training core
computes. Subclasses declare

* ``needs``: the features the core must compute (a subset of ``FEATURES``);
* hyperparameters: annotated class fields with defaults. ``Annotated[float, Range(gt=0)]``
  adds a range, ``Literal[...]`` a set of choices; the base class turns them into keyword
  arguments of the constructor, checked by ``methods.settings`` (the rules every typed setting
  of the project follows: an ``int`` takes only integers, a ``float`` any finite number);
* ``loss(batch) -> LossOutput``;
* optionally ``trains_on``, the training examples it wants (``TRAINS_ON``): "pairs" (the
  default: the data set's preference pairs, on-policy ones when the data set says
  ``pairs: onpolicy``), "offline" (always the data set's own pairs, e.g. continued SFT on its
  chosen answers) or "best_of_k" (each training prompt's best on-policy sample as chosen, its
  worst as rejected: rejection-sampling fine-tuning).

Importing this module loads no torch (``methods._torch``): the registry and the
hyperparameter checks serve ``harness validate`` and ``report``, which need no tensors.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Optional, get_args, get_origin

from ._torch import torch
from .settings import Range, SettingError, check_value, foreign_hint, unknown_key

FEATURES = frozenset({"reference", "token_kl", "token_weights", "anchor"})
TRAINS_ON = ("pairs", "offline", "best_of_k")


class MethodConfigError(SettingError):
    """A method name, hyperparameter or value that cannot be used; the message says the fix.

    ``keys``: the hyperparameters the problem concerns, the one to change first (empty when it
    concerns the method as a whole); ``reason``: the problem without the method's name, for
    callers that say where it is themselves (a suite's ``methods[i].hparams.KEY``). A method's
    ``validate()`` raises it with ``keys`` and ``reason``; the base class adds the name.
    """

    def __init__(self, reason: str, *, keys: tuple = (), method: str | None = None,
                 message: str | None = None):
        self.keys, self.method = tuple(keys), method
        super().__init__(reason, self.keys[:1], message or (f"{method}: {reason}" if method else reason))


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
# Names TRL and LLaMA-Factory give a hyperparameter -> (whose name, the name here). Suggested
# only to a method that has that hyperparameter.
FOREIGN_HPARAMS = {
    "pref_beta": ("LLaMA-Factory", "beta"),
    "simpo_gamma": ("TRL / LLaMA-Factory", "gamma"),
    "dpo_label_smoothing": ("LLaMA-Factory", "label_smoothing"),
    "pref_ftx": ("LLaMA-Factory", "sft_weight"),
    "cpo_alpha": ("TRL", "sft_weight"),
}

@dataclass(frozen=True)
class HParam:
    name: str
    type: Any  # float, int, bool, str
    default: Any
    range: Range | None = None
    choices: tuple | None = None
    optional: bool = False  # None allowed

    @property
    def annotation(self) -> Any:
        """The type ``methods.settings`` checks a value against."""
        tp = Literal[self.choices] if self.choices is not None else self.type
        return Optional[tp] if self.optional else tp

    def check(self, value: Any) -> Any:
        """``value`` converted to this hyperparameter's type; raises ``SettingError``
        (``path``: the name) when it is not allowed."""
        return check_value(value, self.annotation, self.range, path=(self.name,))

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
    trains_on: ClassVar[str] = "pairs"
    hparams_spec: ClassVar[dict[str, HParam]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not isinstance(cls.needs, frozenset) or not cls.needs <= FEATURES:
            raise TypeError(
                f"{cls.__qualname__}.needs must be a frozenset of {sorted(FEATURES)}, got {cls.needs!r}"
            )
        if cls.trains_on not in TRAINS_ON:
            raise TypeError(f"{cls.__qualname__}.trains_on must be one of {TRAINS_ON}, got {cls.trains_on!r}")
        spec: dict[str, HParam] = {}
        for klass in reversed(cls.__mro__):
            if klass is object or not issubclass(klass, PreferenceMethod):
                continue
            hints = typing.get_type_hints(klass, include_extras=True)
            for n, ann in klass.__dict__.get("__annotations__", {}).items():
                if n.startswith("_") or get_origin(hints[n]) is ClassVar or n in (
                        "name", "needs", "hparams_spec", "trains_on"):
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
                raise MethodConfigError(self.unknown_hparam(key), keys=(key,), method=self.name)
        for n, hp in spec.items():
            try:
                setattr(self, n, hp.check(hparams.get(n, hp.default)))
            except SettingError as e:
                raise MethodConfigError(e.reason, keys=(n,), method=self.name,
                                        message=f"{self.name}: hyperparameter {n!r} {e.reason}") from None
        self._explicit = frozenset(hparams)
        try:
            self.validate()
        except MethodConfigError as e:
            if e.method is not None:
                raise
            raise MethodConfigError(e.reason, keys=e.keys, method=self.name) from None

    @classmethod
    def unknown_hparam(cls, key: str) -> str:
        """The problem with a hyperparameter name this method does not have (a name TRL or
        LLaMA-Factory give one of its hyperparameters says which)."""
        entry = FOREIGN_HPARAMS.get(key)
        foreign = None
        if entry is not None and entry[1] in cls.hparams_spec:
            foreign = foreign_hint({key: (entry[0], repr(entry[1]))}, key)
        return unknown_key(key, list(cls.hparams_spec), noun="hyperparameter", foreign=foreign)

    # Subclasses add cross-field checks here: raise MethodConfigError(reason, keys=(...)).
    def validate(self) -> None:
        pass

    @property
    def hparams(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in type(self).hparams_spec}

    def feature_settings(self) -> dict[str, Any]:
        """How the core should compute this method's features: ``{"token_weights":
        TokenWeightSpec, "anchor": AnchorSpec, "prompt": PromptSpec}`` (``methods.feature_specs``);
        a missing key means that spec's defaults. The core reads these, never hyperparameter
        names."""
        return {}

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
