"""A suite's method entries -> variants: one per grid combination, with its label and its
complete, checked hyperparameters (the method's defaults filled in by ``methods.get``, the
same call training makes).

``check_methods`` checks every entry (each hyperparameter value alone, so that every bad key
is reported, then each combination as a whole for a method's own cross-field checks) and
returns the variants of the valid ones; ``method_variants`` only expands, for a suite already
checked (``expand``), and raises on the first problem of a suite edited since.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import methods
from methods.settings import Checker, SettingError, did_you_mean, format_path

from ..errors import UserError
from ..schema import BASE_METHOD, SFT_METHOD, UNTRAINED, MethodSpec, Suite, TrainSpec
from .check import INVALID, FileChecker, items, ok, show
from .ids import canonical

@dataclass
class Variant:
    """One expanded method entry: a label and its complete hyperparameters."""

    method_index: int
    name: str
    label: str
    hparams: dict
    train: dict  # checked overrides of the suite's train settings


def fmt_value(v: Any) -> str:
    return show(v) if isinstance(v, bool) or v is None else str(v)


def _mapping(v: Any) -> dict:
    return v if isinstance(v, dict) else {}  # a bad one is reported where it was read


def grid_points(m: MethodSpec) -> list[dict]:
    """Every combination of the entry's grid values, in the order written (one empty point
    without a grid). Keys whose values are not a non-empty list are left to the checks."""
    grid = {k: v for k, v in _mapping(m.grid).items() if isinstance(v, list) and v}
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def label_of(m: MethodSpec, point: dict) -> str:
    base = m.label if isinstance(m.label, str) else m.name
    return base if not point else f"{base} ({', '.join(f'{k}={fmt_value(v)}' for k, v in point.items())})"


def train_overrides(m: MethodSpec, path: tuple, checker: Checker) -> dict:
    """``methods[i].train`` checked as a partial TrainSpec; the overrides that passed."""
    if not isinstance(m.train, dict):
        return {}
    good = checker.fields(TrainSpec, m.train, path + ("train",))
    return {k: v for k, v in good.items() if ok(v)}


def make_variant(i: int, m: MethodSpec, point: dict, train: dict) -> Variant:
    """The variant of one grid point; raises ``MethodConfigError`` (or a plugin's own
    ``ValueError``/``TypeError``) when the method refuses the combination."""
    if m.name in UNTRAINED:
        return Variant(i, m.name, m.label if isinstance(m.label, str) else m.name, {}, {})
    inst = methods.get(m.name, **_mapping(m.hparams), **point)
    return Variant(i, m.name, label_of(m, point), dict(inst.hparams), train)


def blame(e: Exception, p: tuple, m: MethodSpec) -> tuple:
    """Where a method's complaint points: the first hyperparameter it concerns that the
    grid sets, else one that ``hparams`` sets, else the entry."""
    keys = getattr(e, "keys", ())
    for k in keys:
        if k in _mapping(m.grid):
            return p + ("grid", k)
    for k in keys:
        if k in _mapping(m.hparams):
            return p + ("hparams", k)
    return p


def reason_of(e: Exception) -> str:
    return e.reason if isinstance(e, SettingError) else str(e)


def method_variants(suite: Suite, source: str) -> list[Variant]:
    """The variants of a checked suite, in entry then grid order."""
    out = []
    for i, m in enumerate(suite.methods):
        c = Checker()
        train = train_overrides(m, ("methods", i), c)
        problems = [(e.path, e.reason) for e in c.problems]
        for point in grid_points(m):
            try:
                out.append(make_variant(i, m, point, train))
            except (ValueError, TypeError) as e:
                problems.append((blame(e, ("methods", i), m), reason_of(e)))
        if problems:
            raise UserError(problems=[f"{source}: {format_path(p)}: {r}" for p, r in problems])
    return out


# ------------------------------------------------------------------------------ checks
def check_methods(suite: Suite, ctx: FileChecker) -> list[Variant]:
    """Check every method entry; return the variants of the entries that are valid."""
    variants: list[Variant] = []
    available = methods.available()
    for i, m in items(suite.methods):
        p = ("methods", i)
        if not isinstance(m.name, str):
            continue
        if ctx.explicit(p + ("grid",)) and m.grid == {}:
            ctx.add(p + ("grid",), "empty grid; give hyperparameter: [values...] or remove grid")
        train = train_overrides(m, p, ctx)
        if m.name in UNTRAINED:
            _check_sft_entry(suite, m, p, ctx)
            variants.append(make_variant(i, m, {}, {}))
        elif m.name not in available:
            ctx.add(p + ("name",), f"unknown method {m.name!r}."
                                   f"{did_you_mean(m.name, available + list(UNTRAINED))} Available: "
                                   f"{', '.join(available) or '(none registered)'}, or the baseline rows "
                                   f"{SFT_METHOD!r} (the SFT checkpoint) and {BASE_METHOD!r} (the model as "
                                   f"loaded); plugins: list files that register more")
        elif _check_values(m, p, ctx):
            variants += _combinations(i, m, train, p, ctx)
    _check_labels(variants, ctx)
    return variants


def _check_sft_entry(suite: Suite, m: MethodSpec, p: tuple, ctx: FileChecker) -> None:
    """The baseline rows ``sft`` and ``base`` train nothing."""
    what = "the SFT checkpoint" if m.name == SFT_METHOD else "the model as loaded"
    for key in ("hparams", "grid", "train"):
        if isinstance(getattr(m, key), dict) and getattr(m, key):
            ctx.add(p + (key,), f"the {m.name!r} method evaluates {what} as it is and takes no {key}; remove it")
    if m.name == SFT_METHOD and suite.sft is not INVALID and suite.sft.enabled is False:
        ctx.add(p + ("name",), f"method {SFT_METHOD!r} evaluates the SFT checkpoint, but sft.enabled is false; "
                               f"use {BASE_METHOD!r} for the starting model as loaded, or enable sft")


def _check_values(m: MethodSpec, p: tuple, ctx: FileChecker) -> bool:
    """Each hyperparameter value alone, so that every bad key is reported, not only the
    first; True when all passed."""
    cls = methods.get_class(m.name)
    grid, hp = _mapping(m.grid), _mapping(m.hparams)
    good = True
    for key, value in hp.items():
        if key in grid:
            ctx.add(p + ("grid", key), f"also set in hparams (line {ctx.line(p + ('hparams', key))}); "
                                       f"set it in one place")
            good = False
        good &= _check_one(cls, key, value, p + ("hparams", key), ctx)
    for key, values in grid.items():
        gp = p + ("grid", key)
        if not isinstance(values, list) or not values:
            got = "an empty list" if values == [] else show(values)
            fix = f"; write [{show(values)}]" if not isinstance(values, (list, dict)) else ""
            ctx.add(gp, f"must be a non-empty list of values, got {got}{fix}")
            good = False
        elif key not in cls.hparams_spec:  # one problem for the key, not one per value
            good &= _check_one(cls, key, values[0], gp, ctx)
        else:
            seen = set()
            for j, value in enumerate(values):
                marker = (type(value).__name__, repr(value))
                if marker in seen:
                    ctx.add(gp + (j,), f"duplicate value {fmt_value(value)}; list each value once")
                    good = False
                seen.add(marker)
                good &= _check_one(cls, key, value, gp + (j,), ctx)
    return good


def _check_one(cls: type, key: str, value: Any, path: tuple, ctx: FileChecker) -> bool:
    """One hyperparameter value against its declaration (a cross-field complaint, which may
    vanish with the other keys set, is left to the whole combination)."""
    spec = cls.hparams_spec.get(key)
    if spec is None:
        ctx.add(path, cls.unknown_hparam(key))
        return False
    try:
        spec.check(value)
    except SettingError as e:
        ctx.add(path, e.reason)
        return False
    return True


def _combinations(i: int, m: MethodSpec, train: dict, p: tuple, ctx: FileChecker) -> list[Variant]:
    """Every grid combination built as a whole: the method's own cross-field checks."""
    out, reported = [], set()
    for point in grid_points(m):
        try:
            out.append(make_variant(i, m, point, train))
        except (ValueError, TypeError) as e:  # MethodConfigError, or a plugin's own check
            reason = reason_of(e)
            if reason not in reported:
                reported.add(reason)
                ctx.add(blame(e, p, m), reason)
    return out


def _check_labels(variants: list[Variant], ctx: FileChecker) -> None:
    by_label: dict[str, Variant] = {}
    by_config: dict[str, Variant] = {}
    for v in variants:
        p = ("methods", v.method_index)
        if v.label in by_label:
            first = by_label[v.label]
            ctx.add(p + ("label",) if ctx.explicit(p + ("label",)) else p,
                    f"duplicate label {v.label!r} (also methods[{first.method_index}]); give each "
                    f"method entry a distinct label:")
            continue
        by_label[v.label] = v
        key = canonical({"name": v.name, "hparams": v.hparams, "train": v.train})
        if key in by_config and by_config[key].method_index != v.method_index:
            ctx.add(p, f"{v.label!r} runs the same configuration as "
                       f"methods[{by_config[key].method_index}] ({by_config[key].label!r}); remove one "
                       f"(repeat runs come from seeds)")
        by_config.setdefault(key, v)
