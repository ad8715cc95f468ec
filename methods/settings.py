"""Typed settings: the one checker for every value the project reads from a user.

It checks a value against its annotation (and a ``Range``) and says what is wrong and where.
Every typed setting goes through it: a method's hyperparameters (``methods.base``), a suite's
keys and a cell's ``config.yaml`` read back (``harness.config``, which adds file and line),
an embedded task's arguments and a SLURM profile. It lives here, free of torch and of
``harness``, because ``methods/`` may import nothing from ``harness`` and everything else may
import ``methods``.

The rules, the same everywhere:

* ``bool`` accepts only true/false (not 1, not "yes");
* ``int`` only integers: ``10.0`` is refused with the fix "write 10" (in YAML 1.2 ``1e3`` is a
  float, and a float where a count belongs is more often a typo than a rounding);
* ``float`` accepts integers too (converted) and must be finite;
* ``str`` only strings; ``Literal[...]`` one of its choices (with a did-you-mean);
* ``Optional[X]`` also null; ``list[X]``, ``tuple[X, ...]`` and ``dict[str, X]`` check each item;
* a dataclass is a mapping of its fields: unknown keys (with a did-you-mean and the valid
  keys) and missing required keys are problems; a field's ``metadata["range"]`` bounds it. A
  class attribute ``FOREIGN_KEYS`` (key -> (whose name, what it is here)) names the settings
  other tools' users write (TRL's ``learning_rate`` is ``lr`` here), in place of the guess.

A problem is a ``SettingError`` whose ``path`` (the key: a tuple of names and list indexes)
and ``reason`` are data, so a caller places it (file and line, a method's name) without
parsing message text. ``Checker`` collects every problem of one check, so all are reported at
once; ``check_value`` raises the first.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union, get_args, get_origin


# ------------------------------------------------------------------------- small pieces
@dataclass(frozen=True)
class Range:
    """Allowed interval of a number (any bound may be omitted)."""

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

    def text(self) -> str:
        """'> 0', '>= 2', 'in [0, 1)': how the range reads in an error message or a table."""
        lo = ("[", self.ge, ">=") if self.ge is not None else (("(", self.gt, ">") if self.gt is not None else None)
        hi = ("]", self.le, "<=") if self.le is not None else ((")", self.lt, "<") if self.lt is not None else None)
        if lo and hi:
            return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
        if lo:
            return f"{lo[2]} {lo[1]:g}"
        if hi:
            return f"{hi[2]} {hi[1]:g}"
        return "any number"

    def __str__(self) -> str:
        """Interval notation, '(0, inf)', as listings (``harness ls``) show it."""
        lo = f"[{self.ge:g}" if self.ge is not None else (f"({self.gt:g}" if self.gt is not None else "(-inf")
        hi = f"{self.le:g}]" if self.le is not None else (f"{self.lt:g})" if self.lt is not None else "inf)")
        return f"{lo}, {hi}"


def did_you_mean(name: str, choices: "list[str] | Callable[[], list[str]]") -> str:
    """" Did you mean 'x'?" or "": every lookup of a name (keys, methods, tasks) suggests with it."""
    opts = choices() if callable(choices) else choices
    close = difflib.get_close_matches(str(name), list(opts), n=3, cutoff=0.5)
    if close:  # only the names about as close as the closest ('enable': 'enabled', not 'eval_every')
        best = difflib.SequenceMatcher(None, str(name), close[0]).ratio()
        close = [c for c in close if difflib.SequenceMatcher(None, str(name), c).ratio() >= best - 0.15]
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def format_path(path: tuple) -> str:
    """('methods', 2, 'hparams', 'beta') -> 'methods[2].hparams.beta'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def show(v: Any) -> str:
    """A value as a message quotes it: YAML's words for null and booleans."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return repr(v)


def unknown_key(key: Any, valid: list[str], where: str = "", noun: str = "key",
                foreign: str | None = None) -> str:
    """The one message for a name that is not a setting: the name, a did-you-mean (or, for a
    name another tool uses, ``foreign``: whose name it is and what it is called here), the
    valid names."""
    hint = f" ({foreign})." if foreign else f".{did_you_mean(str(key), valid)}"
    return (f"unknown {noun} {str(key)!r}{hint} "
            f"Valid {noun}s{f' {where}' if where else ''}: {', '.join(valid) or '(none)'}")


def foreign_hint(table: dict, key: Any) -> str | None:
    """The entry of ``key`` in a table of other tools' names (``FOREIGN_KEYS`` of a settings
    class: key -> ``(whose name, what it is here)``), rendered for :func:`unknown_key`."""
    entry = table.get(str(key)) if isinstance(table, dict) else None
    return None if entry is None else f"{entry[0]} name; here: {entry[1]}"


class SettingError(ValueError):
    """One problem with one setting. ``path`` locates it (names and list indexes), ``reason``
    says what is wrong and the fix; ``str()`` is ``message`` or "path: reason"."""

    def __init__(self, reason: str, path: tuple = (), message: str | None = None):
        self.reason, self.path = reason, tuple(path)
        super().__init__(message or (f"{format_path(self.path)}: {reason}" if self.path else reason))


class _Invalid:
    """Stands in for a value that failed its check, so later checks neither crash on it nor
    report consequences of a problem already reported (it counts as 'given')."""

    def __repr__(self) -> str:
        return "<invalid>"

    def __copy__(self) -> "_Invalid":  # dataclasses.asdict deep-copies: keep the one marker
        return self

    def __deepcopy__(self, memo: dict) -> "_Invalid":
        return self


INVALID: Any = _Invalid()


def ok(*values: Any) -> bool:
    """Whether none of ``values`` failed its check."""
    return all(v is not INVALID for v in values)


# ---------------------------------------------------------------------- type helpers
@functools.lru_cache(maxsize=None)
def hints(cls: type) -> dict[str, Any]:
    """A dataclass's field annotations, evaluated (cached)."""
    return typing.get_type_hints(cls)


def optional_inner(tp: Any) -> tuple[bool, Any]:
    """(True, X) for ``Optional[X]`` / ``X | None``, else (False, tp)."""
    if get_origin(tp) is Union or type(tp).__name__ == "UnionType":
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != len(get_args(tp)) and len(args) == 1:
            return True, args[0]
    return False, tp


def is_required(fl: dataclasses.Field, tp: Any) -> bool:
    """A field with no default (None is 'no default' unless the type allows null)."""
    return (fl.default is None and fl.default_factory is dataclasses.MISSING
            and not optional_inner(tp)[0])


def expected(tp: Any) -> str:
    """What a value of type ``tp`` looks like, for 'give ...' hints."""
    if dataclasses.is_dataclass(tp) or tp is dict or get_origin(tp) is dict:
        return "a mapping"
    if tp in (list, tuple) or get_origin(tp) in (list, tuple):
        return "a list"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(tp))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a value")


# ------------------------------------------------------------------------- the checker
class Checker:
    """Checks values against annotations and collects every problem (``problems``).

    Subclasses place problems (``harness.config`` adds file and line) by overriding ``add``.
    ``unknown`` records the unknown keys written at each path, so that a later check can
    tell a missing key from a misspelled one. ``complete``: every field of every mapping must
    be given (a file the harness wrote itself has them all), not only the required ones,
    except a field whose ``metadata["omitted_when_default"]`` says it is written only when set."""

    def __init__(self, complete: bool = False) -> None:
        self.problems: list[SettingError] = []
        self.unknown: dict[tuple, list[str]] = {}
        self.complete = complete

    def add(self, path: tuple, reason: str) -> None:
        self.problems.append(SettingError(reason, path))

    def misspelled(self, path: tuple, *keys: str) -> bool:
        """Whether an unknown key written at ``path`` looks like one of ``keys`` (then a
        check that finds ``keys`` missing would only repeat that problem)."""
        return any(difflib.get_close_matches(u, keys, n=1, cutoff=0.5) for u in self.unknown.get(tuple(path), []))

    def raise_first(self) -> None:
        if self.problems:
            raise self.problems[0]

    # -- one value
    def value(self, v: Any, tp: Any, path: tuple = (), rng: Range | None = None) -> Any:
        """``v`` converted to ``tp``, or ``INVALID`` after recording the problem."""
        if v is INVALID:  # already reported
            return INVALID
        if tp is Any:  # anything, null included (a method's hyperparameters: it checks them itself)
            return v
        optional, tp = optional_inner(tp)
        if v is None:
            if optional:
                return None
            return self._bad(path, f"must not be null; give {expected(tp)} or remove the key to use the default")
        origin = get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, v, path)
        if origin is Literal:
            choices = get_args(tp)
            if isinstance(v, bool) or v not in choices:
                return self._bad(path, f"must be one of {', '.join(repr(c) for c in choices)}, got {show(v)}."
                                       f"{did_you_mean(str(v), [str(c) for c in choices])}".rstrip("."))
            return v
        if tp in (list, tuple) or origin in (list, tuple):
            return self._sequence(v, tp, path)
        if tp is dict or origin is dict:
            if not isinstance(v, dict):
                return self._bad(path, f"must be a mapping (key: value lines), got {show(v)}")
            val_tp = get_args(tp)[1] if len(get_args(tp)) == 2 else Any
            return {k: self.value(x, val_tp, path + (k,)) for k, x in v.items()}
        v = self._scalar(v, tp, path)
        if v is not INVALID and rng is not None and not rng.ok(v):
            return self._bad(path, f"must be {rng.text()}, got {v!r}")
        return v

    def _bad(self, path: tuple, reason: str) -> Any:
        self.add(path, reason)
        return INVALID

    def _scalar(self, v: Any, tp: Any, path: tuple) -> Any:
        if tp is bool:
            return v if isinstance(v, bool) else self._bad(path, f"must be true or false, got {show(v)}")
        if tp is int:
            if isinstance(v, bool) or not isinstance(v, int):
                hint = f"; write {int(v)}" if isinstance(v, float) and math.isfinite(v) and v == int(v) else ""
                return self._bad(path, f"must be an integer, got {show(v)}{hint}")
            return v
        if tp is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return self._bad(path, f"must be a number, got {show(v)}")
            v = float(v)
            return v if math.isfinite(v) else self._bad(path, f"must be a finite number, got {v}")
        if tp is str:
            return v if isinstance(v, str) else self._bad(path, f"must be a string, got {show(v)}; quote it")
        raise TypeError(f"methods.settings: unsupported annotation {tp!r} at {format_path(path) or 'the top'}")

    def _sequence(self, v: Any, tp: Any, path: tuple) -> Any:
        if not isinstance(v, list):
            hint = f"; write [{show(v)}]" if not isinstance(v, dict) else ""
            return self._bad(path, f"must be a list, got {show(v)}{hint}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [self.value(x, item_tp, path + (i,)) for i, x in enumerate(v)]
        return tuple(items) if (tp is tuple or get_origin(tp) is tuple) else items

    # -- a mapping of fields
    def dataclass(self, cls: type, v: Any, path: tuple = ()) -> Any:
        """A ``cls`` instance from the mapping ``v``: unknown keys, missing required keys (every
        key when ``complete``) and bad values are recorded; bad values are kept as ``INVALID``."""
        complete = self.complete
        names = [fl.name for fl in dataclasses.fields(cls)]
        if not isinstance(v, dict):
            return self._bad(path, f"must be a mapping with keys {', '.join(names)}; got {show(v)}")
        kwargs = self.fields(cls, v, path)
        for fl in dataclasses.fields(cls):
            if fl.name in v or not (complete or is_required(fl, hints(cls)[fl.name])):
                continue
            if complete and fl.metadata.get("omitted_when_default"):  # written only when set
                continue
            if complete and self.misspelled(path, fl.name):
                kwargs[fl.name] = INVALID  # the unknown key already says it
                continue
            help_text = fl.metadata.get("help", "")
            self.add(path, f"missing required key {fl.name!r}" + (f" ({help_text})" if help_text else ""))
            kwargs[fl.name] = INVALID
        return cls(**kwargs)

    def fields(self, cls: type, v: dict, path: tuple = ()) -> dict:
        """The keys of ``v`` checked as fields of the dataclass ``cls`` (a partial mapping, e.g.
        a method's overrides of the train settings): converted values, ``INVALID`` for bad ones;
        unknown keys are recorded and left out."""
        fields = {fl.name: fl for fl in dataclasses.fields(cls)}
        out = {}
        for key, value in v.items():
            if key not in fields:
                where = f"in {format_path(path)}" if path else "at the top level"
                self.add(path + (key,), unknown_key(key, list(fields), where,
                                                    foreign=foreign_hint(getattr(cls, "FOREIGN_KEYS", {}), key)))
                self.unknown.setdefault(tuple(path), []).append(str(key))
                continue
            out[key] = self.value(value, hints(cls)[key], path + (key,), fields[key].metadata.get("range"))
        return out


def check_value(v: Any, tp: Any, rng: Range | None = None, path: tuple = ()) -> Any:
    """``v`` converted to ``tp``; raises the first ``SettingError``."""
    c = Checker()
    out = c.value(v, tp, path, rng)
    c.raise_first()
    return out
