"""Load a suite YAML onto the schema, validate all of it, and expand it into a plan of cells.

A suite is checked completely before anything runs: every problem is collected and reported
at once (``UserError.problems``), one line each, in the form::

    suites/x.yaml:14: train.lr: must be > 0, got -0.001
    suites/x.yaml:31: methods[2].name: unknown method 'dpoo'. Did you mean 'dpo'? Available: ...

The checks run in three layers:

1. YAML, read safely (a ``SafeLoader`` subclass) node by node, so every key and list item
   keeps its line. Scalars follow YAML 1.2: only ``true``/``false`` are booleans (``on``,
   ``off``, ``yes``, ``no`` stay strings), ``5e-7`` is a float, ``010`` is ten, there are no
   base-60 numbers or timestamps. Duplicate keys are errors (plain PyYAML keeps the last).
2. Structure, generically from the dataclasses of ``harness.schema``: unknown keys at every
   level (with a did-you-mean and the valid keys), types (``bool`` accepts only true/false,
   ``int`` only integers, ``float`` integers too), ``Literal`` choices and
   ``metadata["range"]``.
3. Meaning: names and counts, exactly-one-of sources, files that must exist, tasks and their
   arguments, methods and each hyperparameter combination (built with ``methods.get``, the
   same call training makes), and options that contradict each other.

``expand`` turns a valid suite into a ``Plan``: one ``Cell`` per model x data set x method
(x grid combination) x seed, each carrying its fully resolved config, and the SFT stages the
cells start from. A cell id is a hash of its resolved config, so a rerun recognises finished
work (DESIGN.md, "Results").
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

import methods
from harness.errors import UserError
from harness.schema import (
    DatasetSpec,
    LauncherSpec,
    MethodSpec,
    SFTSpec,
    Suite,
    TinyModelSpec,
    TrainSpec,
)
from methods.base import Range
from methods.registry import did_you_mean

SFT_METHOD = "sft"  # the special method name: evaluate the SFT checkpoint itself
SUITE_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# model and data set names become parts of folder names and cell ids
ITEM_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# =================================================================== YAML with line numbers
_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class SuiteLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 core scalars.

    Why: under PyYAML's YAML 1.1 rules ``lr: 5e-7`` is the *string* '5e-7', ``on``/``off``
    are booleans (so ``semantic_diversity: on`` would fail as a bool), ``1:30`` is 5400 and
    ``010`` is eight. Suites are written by people who expect none of that.
    """


SuiteLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SuiteLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
SuiteLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789"))
SuiteLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _construct_int(loader: SuiteLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith("0x"):
        return sign * int(text[2:], 16)
    if text.startswith("0o"):
        return sign * int(text[2:], 8)
    return sign * int(text, 10)  # YAML 1.2: a leading zero is still decimal


SuiteLoader.add_constructor(_INT, _construct_int)


class _Recursive(Exception):
    def __init__(self, line: int):
        self.line = line


def _parse_yaml(text: str, ctx: "_Ctx") -> Any:
    """Parse ``text`` into plain Python values, recording the line of every key and item
    in ``ctx.lines``. Returns ``_INVALID`` after a syntax error (already reported)."""
    loader = SuiteLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        ctx.lines[()] = root.start_mark.line + 1
        return _node_to_value(root, (), loader, ctx, set())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        what = e.problem or e.context or "unreadable YAML"
        if e.context and e.problem:
            cm = e.context_mark
            what += f" ({e.context}{f' that starts at line {cm.line + 1}' if cm else ''})"
        ctx.problems.append((line or 0, f"{ctx.where(line)}YAML syntax error: {what}"))
        return _INVALID
    except yaml.YAMLError as e:  # reader errors (bad bytes) carry no line
        ctx.problems.append((0, f"{ctx.source}: YAML error: {e}"))
        return _INVALID
    except _Recursive as e:
        ctx.problems.append((e.line, f"{ctx.where(e.line)}YAML error: a recursive alias; suites must be trees"))
        return _INVALID
    finally:
        loader.dispose()


_PLAIN_TAGS = {yaml.SequenceNode: "tag:yaml.org,2002:seq", yaml.MappingNode: "tag:yaml.org,2002:map"}


def _node_to_value(node: yaml.Node, path: tuple, loader: SuiteLoader, ctx: "_Ctx", active: set) -> Any:
    plain = _PLAIN_TAGS.get(type(node))
    if (plain and node.tag != plain) or (not plain and node.tag not in SuiteLoader.yaml_constructors):
        # e.g. !!python/object/apply: SafeLoader would refuse it; say where and why
        ctx.add(path, f"YAML tag {node.tag!r} is not allowed in a suite; remove it", line=node.start_mark.line + 1)
        return _INVALID
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node, deep=True)
    if id(node) in active:
        raise _Recursive(node.start_mark.line + 1)
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        out = []
        for i, item in enumerate(node.value):
            ctx.lines.setdefault(path + (i,), item.start_mark.line + 1)
            out.append(_node_to_value(item, path + (i,), loader, ctx, active))
        return out
    # A mapping. Duplicates among the keys written here are mistakes; keys that override a
    # merged (``<<: *anchor``) mapping are the point of merging, so check before flattening.
    first_line: dict[Any, int] = {}
    for knode, _ in node.value:
        if knode.tag == "tag:yaml.org,2002:merge" or not isinstance(knode, yaml.ScalarNode):
            continue
        key = loader.construct_object(knode, deep=True)
        line = knode.start_mark.line + 1
        if key in first_line:
            ctx.add(path + (key,), f"duplicate key (first set at line {first_line[key]}); keep one",
                    line=line)
        else:
            first_line[key] = line
    loader.flatten_mapping(node)
    out = {}
    for knode, vnode in node.value:
        line = knode.start_mark.line + 1
        if not isinstance(knode, yaml.ScalarNode):
            ctx.add(path, "keys must be plain names, not lists or mappings", line=line)
            continue
        key = loader.construct_object(knode, deep=True)
        if not isinstance(key, str):
            ctx.add(path + (str(key),), f"keys must be strings, got {_show(key)}; quote it", line=line)
            continue
        ctx.lines[path + (key,)] = line  # the last occurrence wins, like the value
        out[key] = _node_to_value(vnode, path + (key,), loader, ctx, active)
    return out


# ====================================================================== problem collection
class _Invalid:
    """Stands in for a value that failed validation, so later checks neither crash on it
    nor report consequences of a problem already reported (it counts as 'given')."""

    def __repr__(self) -> str:
        return "<invalid>"

    # dataclasses.asdict deep-copies values; the marker must survive as itself
    def __copy__(self) -> "_Invalid":
        return self

    def __deepcopy__(self, memo: dict) -> "_Invalid":
        return self


_INVALID: Any = _Invalid()


def format_path(path: tuple) -> str:
    """('methods', 2, 'hparams', 'beta') -> 'methods[2].hparams.beta'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Ctx:
    def __init__(self, source: str, raw: Any = None):
        self.source = source
        self.lines: dict[tuple, int] = {}
        self.problems: list[tuple[int, str]] = []
        self.raw = raw
        self.unknown: dict[tuple, list[str]] = {}  # path -> unknown keys written there

    def misspelled(self, path: tuple, *keys: str) -> bool:
        """Whether an unknown key at ``path`` looks like one of ``keys`` (then a check that
        finds ``keys`` missing would only repeat that problem)."""
        import difflib

        return any(difflib.get_close_matches(u, keys, n=1, cutoff=0.5) for u in self.unknown.get(tuple(path), []))

    def line(self, path: tuple) -> int | None:
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def where(self, line: int | None) -> str:
        return f"{self.source}:{line}: " if line else f"{self.source}: "

    def add(self, path: tuple, msg: str, line: int | None = None) -> None:
        line = line if line is not None else self.line(path)
        key = f"{format_path(path)}: " if path else ""
        self.problems.append((line or 0, f"{self.where(line)}{key}{msg}"))

    def explicit(self, path: tuple) -> bool:
        """Whether the user wrote this key (rather than relying on its default)."""
        node = self.raw
        for p in path:
            if isinstance(p, int):
                if not isinstance(node, list) or p >= len(node):
                    return False
            elif not isinstance(node, dict) or p not in node:
                return False
            node = node[p]
        return True

    def raise_if_any(self) -> None:
        if self.problems:
            ordered = sorted(self.problems, key=lambda lp: lp[0])
            unique = list(dict.fromkeys(msg for _, msg in ordered))
            raise UserError(problems=unique)


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return repr(v)


def range_text(r: Range) -> str:
    """'> 0', '>= 2', 'in [0, 1)': how a range reads in an error message."""
    lo = hi = None
    if r.ge is not None:
        lo = ("[", r.ge, ">=")
    elif r.gt is not None:
        lo = ("(", r.gt, ">")
    if r.le is not None:
        hi = ("]", r.le, "<=")
    elif r.lt is not None:
        hi = (")", r.lt, "<")
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{lo[2]} {lo[1]:g}"
    if hi:
        return f"{hi[2]} {hi[1]:g}"
    return "any number"


# ===================================================================== generic conversion
@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) is Union or type(tp).__name__ == "UnionType":
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != len(get_args(tp)) and len(args) == 1:
            return True, args[0]
    return False, tp


def _is_required(fl: dataclasses.Field, tp: Any) -> bool:
    return (fl.default is None and fl.default_factory is dataclasses.MISSING
            and not _optional_inner(tp)[0])


def _convert(v: Any, tp: Any, path: tuple, ctx: _Ctx, rng: Range | None = None) -> Any:
    """Check ``v`` against the annotation ``tp``; return the converted value or ``_INVALID``
    (after recording the problem)."""
    if v is _INVALID:  # already reported while reading the YAML
        return _INVALID
    optional, inner = _optional_inner(tp)
    if v is None:
        if optional:
            return None
        ctx.add(path, f"must not be null; give {_expected(inner)} or remove the key to use the default")
        return _INVALID
    tp = inner
    origin = get_origin(tp)
    if tp is Any:
        return v
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, path, ctx)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(v, bool) or v not in choices:
            ctx.add(path, f"must be one of {', '.join(repr(c) for c in choices)}, got {_show(v)}."
                          f"{did_you_mean(str(v), [str(c) for c in choices])}".rstrip("."))
            return _INVALID
        return v
    if tp is bool:
        if not isinstance(v, bool):
            ctx.add(path, f"must be true or false, got {_show(v)}")
            return _INVALID
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            hint = f"; write {int(v)}" if isinstance(v, float) and math.isfinite(v) and v == int(v) else ""
            ctx.add(path, f"must be an integer, got {_show(v)}{hint}")
            return _INVALID
    elif tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            ctx.add(path, f"must be a number, got {_show(v)}")
            return _INVALID
        v = float(v)
        if not math.isfinite(v):
            ctx.add(path, f"must be a finite number, got {v}")
            return _INVALID
    elif tp is str:
        if not isinstance(v, str):
            ctx.add(path, f"must be a string, got {_show(v)}; quote it")
            return _INVALID
        return v
    elif tp is list or origin is list:
        if not isinstance(v, list):
            hint = f"; write [{_show(v)}]" if not isinstance(v, dict) else ""
            ctx.add(path, f"must be a list, got {_show(v)}{hint}")
            return _INVALID
        item_tp = get_args(tp)[0] if get_args(tp) else Any
        return [_convert(x, item_tp, path + (i,), ctx) for i, x in enumerate(v)]
    elif tp is dict or origin is dict:
        if not isinstance(v, dict):
            ctx.add(path, f"must be a mapping (key: value lines), got {_show(v)}")
            return _INVALID
        val_tp = get_args(tp)[1] if len(get_args(tp)) == 2 else Any
        return {k: _convert(x, val_tp, path + (k,), ctx) for k, x in v.items()}
    else:  # pragma: no cover - a schema annotation this loader does not know
        raise TypeError(f"harness.config: unsupported schema annotation {tp!r} at {format_path(path)}")
    if rng is not None and not rng.ok(v):
        ctx.add(path, f"must be {range_text(rng)}, got {v!r}")
        return _INVALID
    return v


def _expected(tp: Any) -> str:
    if dataclasses.is_dataclass(tp) or tp is dict or get_origin(tp) is dict:
        return "a mapping"
    if tp is list or get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(tp))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a value")


def _build(cls: type, v: Any, path: tuple, ctx: _Ctx) -> Any:
    """A ``cls`` instance from the mapping ``v``; unknown keys, missing required keys and
    bad values are recorded. Bad values are kept as ``_INVALID``."""
    fields = {fl.name: fl for fl in dataclasses.fields(cls)}
    if not isinstance(v, dict):
        ctx.add(path, f"must be a mapping with keys {', '.join(fields)}; got {_show(v)}")
        return _INVALID
    hints = _hints(cls)
    kwargs = {}
    for key, value in v.items():
        if key not in fields:
            ctx.add(path + (key,), _unknown_key(key, list(fields), path))
            ctx.unknown.setdefault(path, []).append(key)
            continue
        kwargs[key] = _convert(value, hints[key], path + (key,), ctx, fields[key].metadata.get("range"))
    for name, fl in fields.items():
        if name not in v and _is_required(fl, hints[name]):
            ctx.add(path, f"missing required key {name!r} ({fl.metadata.get('help', '')})")
            kwargs[name] = _INVALID
    return cls(**kwargs)


def _unknown_key(key: str, valid: list[str], path: tuple) -> str:
    where = f"in {format_path(path)}" if path else "at the top level"
    return f"unknown key {key!r}.{did_you_mean(key, valid)} Valid keys {where}: {', '.join(valid)}"


def _ok(*values: Any) -> bool:
    return all(v is not _INVALID for v in values)


# ============================================================================ loading
@dataclass
class Variant:
    """One expanded method entry: a label and its complete hyperparameters."""

    method_index: int
    name: str
    label: str
    hparams: dict
    train: dict  # validated overrides of the suite's train settings


@dataclass
class LoadedSuite:
    """A validated suite. ``path`` is None for a suite given as a dict; relative paths in the
    suite resolve against ``base_dir`` (the suite file's folder)."""

    suite: Suite
    path: Path | None
    base_dir: Path
    text_hash: str
    source: str = "<dict>"


def load_suite(path: str | os.PathLike) -> LoadedSuite:
    """Read, validate and return the suite at ``path``; raise ``UserError`` listing every
    problem (file:line: key: what is wrong; the fix)."""
    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise UserError(f"{source}: suite file not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not UTF-8 text ({e})") from None
    ctx = _Ctx(source)
    data = _parse_yaml(text, ctx)
    if data is _INVALID:  # unreadable; otherwise keep going and report everything at once
        ctx.raise_if_any()
    if data is None:
        raise UserError(f"{source}:1: the suite is empty; it needs at least name, models, datasets "
                        f"and methods (see suites/README.md)")
    return _validate(data, ctx, p, p.resolve().parent, hashlib.sha256(text.encode()).hexdigest())


def load_suite_dict(d: dict, source: str = "<dict>", base_dir: str | os.PathLike | None = None) -> LoadedSuite:
    """Validate a suite given as a plain dict (tests, programmatic use). Problems carry no
    line numbers; relative paths resolve against ``base_dir`` (default: the working dir)."""
    ctx = _Ctx(source)
    text = json.dumps(d, default=str)  # key order as given; keys may be of mixed types
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    return _validate(d, ctx, None, base, hashlib.sha256(text.encode()).hexdigest())


def _validate(data: Any, ctx: _Ctx, path: Path | None, base_dir: Path, text_hash: str) -> LoadedSuite:
    ctx.raw = data
    if not isinstance(data, dict):
        ctx.add((), f"the top level must be a mapping of suite keys, got {_show(data)}", line=ctx.line(()) or 1)
        ctx.raise_if_any()
    # Top-level keys starting with "x-" hold YAML anchors for reuse and are otherwise ignored
    # (as in docker compose); every other unknown key is an error.
    suite = _build(Suite, {k: v for k, v in data.items() if not str(k).startswith("x-")}, (), ctx)
    _check_plugins(suite, ctx, base_dir)
    _check_suite_level(suite, ctx)
    _check_models(suite, ctx, base_dir)
    _check_datasets(suite, ctx, base_dir)
    variants = _check_methods(suite, ctx)
    _check_training(suite, variants, ctx)
    _check_eval_launcher_report(suite, variants, ctx, base_dir)
    ctx.raise_if_any()
    return LoadedSuite(suite=suite, path=path, base_dir=base_dir, text_hash=text_hash, source=ctx.source)


def _items(lst: Any) -> list[tuple[int, Any]]:
    """(index, item) for the items of a validated list that themselves validated."""
    if not isinstance(lst, list):
        return []
    return [(i, x) for i, x in enumerate(lst) if x is not _INVALID]


def _check_plugins(suite: Suite, ctx: _Ctx, base_dir: Path) -> None:
    for i, spec in _items(suite.plugins):
        try:
            methods.load_plugin(spec, base_dir=base_dir)
        except methods.MethodConfigError as e:
            ctx.add(("plugins", i), f"{e}; paths are relative to the suite file's folder")
        except Exception as e:  # the plugin's own code failed; name it and the error
            ctx.add(("plugins", i), f"plugin {spec!r} failed to import: {type(e).__name__}: {e}")


def _check_suite_level(suite: Suite, ctx: _Ctx) -> None:
    if isinstance(suite.name, str) and not SUITE_NAME_RE.fullmatch(suite.name):
        ctx.add(("name",), f"{suite.name!r} is not a valid suite name; use letters, digits, - and _ "
                           f"(it names the results folder)")
    for key, what in (("models", "model"), ("datasets", "data set"), ("methods", "method"), ("seeds", "seed")):
        value = getattr(suite, key)
        if value == [] and not ctx.misspelled((), key):
            ctx.add((key,), f"no {what}s; give at least one (see suites/README.md)")
    seen: dict[int, int] = {}
    for i, s in _items(suite.seeds):
        if not 0 <= s < 2**32:
            ctx.add(("seeds", i), f"must be in [0, 4294967295], got {s}")
        elif s in seen:
            ctx.add(("seeds", i), f"duplicate seed {s} (also seeds[{seen[s]}]); list each seed once")
        else:
            seen[s] = i


def _check_unique_names(items: list, key: str, what: str, ctx: _Ctx) -> None:
    seen: dict[str, int] = {}
    for i, item in _items(items):
        name = item.name
        if not isinstance(name, str):
            continue
        if not ITEM_NAME_RE.fullmatch(name):
            ctx.add((key, i, "name"), f"{name!r} is not a valid {what} name; use letters, digits, "
                                      f"., - and _ (it is part of cell ids and folder names)")
        if name in seen:
            ctx.add((key, i, "name"), f"duplicate {what} name {name!r} (also {key}[{seen[name]}]); "
                                      f"names must be unique")
        else:
            seen[name] = i


def _resolve(base_dir: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base_dir / q)


def _check_tiny(tiny: Any, path: tuple, ctx: _Ctx) -> None:
    if not isinstance(tiny, TinyModelSpec):
        return
    h, n = tiny.hidden_size, tiny.num_heads
    if _ok(h, n) and h % n:
        ctx.add(path + ("num_heads",), f"{n} does not divide hidden_size {h}; pick a divisor "
                                       f"(e.g. {_divisor_near(h, n)})")
    elif _ok(h, n, tiny.arch) and tiny.arch in ("llama", "qwen2") and (h // n) % 2:
        ctx.add(path + ("num_heads",), f"head size hidden_size/num_heads = {h // n} is odd; rotary "
                                       f"embeddings ({tiny.arch}) need an even head size")


def _divisor_near(h: int, n: int) -> int:
    return min((d for d in range(1, h + 1) if h % d == 0), key=lambda d: (abs(d - n), d))


def _check_models(suite: Suite, ctx: _Ctx, base_dir: Path) -> None:
    _check_unique_names(suite.models, "models", "model", ctx)
    for i, m in _items(suite.models):
        p = ("models", i)
        given = [k for k in ("tiny", "path", "hub") if getattr(m, k) is not None]
        if len(given) != 1 and not (not given and ctx.misspelled(p, "tiny", "path", "hub")):
            what = "none" if not given else " and ".join(given)
            ctx.add(p, f"give exactly one of tiny, path or hub (got {what})",
                    line=ctx.line(p + (given[1],)) if len(given) > 1 else None)
        _check_tiny(m.tiny, p + ("tiny",), ctx)
        _check_tiny(m.smoke, p + ("smoke",), ctx)
        if m.gguf_file is not None and m.path is None:
            ctx.add(p + ("gguf_file",), "needs path (the folder that holds the GGUF file)")
        if m.revision is not None and m.hub is None:
            ctx.add(p + ("revision",), "only applies to hub models; remove it or use hub")
        if isinstance(m.path, str):
            full = _resolve(base_dir, m.path)
            if not full.exists():
                ctx.add(p + ("path",), f"not found: {full} (relative paths start at the suite file's folder)")
            elif not full.is_dir():
                ctx.add(p + ("path",), f"{full} is a file; give its folder as path"
                                       + (" and the file name as gguf_file" if full.suffix == ".gguf" else ""))
            elif isinstance(m.gguf_file, str) and not (full / m.gguf_file).is_file():
                ctx.add(p + ("gguf_file",), f"not found: {full / m.gguf_file}")
        if isinstance(m.gguf_file, str) and importlib.util.find_spec("gguf") is None:
            ctx.add(p + ("gguf_file",), "needs the gguf package: pip install 'prefopt-harness[gguf]'")
        if m.lora is not None and importlib.util.find_spec("peft") is None:
            ctx.add(p + ("lora",), "needs the peft package: pip install 'prefopt-harness[lora]'")


def _check_datasets(suite: Suite, ctx: _Ctx, base_dir: Path) -> None:
    _check_unique_names(suite.datasets, "datasets", "data set", ctx)
    for i, d in _items(suite.datasets):
        p = ("datasets", i)
        given = [k for k in ("task", "path", "hub") if getattr(d, k) is not None]
        if len(given) != 1 and not (not given and ctx.misspelled(p, "task", "path", "hub")):
            what = "none" if not given else " and ".join(given)
            ctx.add(p, f"give exactly one of task, path or hub (got {what})",
                    line=ctx.line(p + (given[1],)) if len(given) > 1 else None)
        if isinstance(d.task, str):
            _check_task(d, p, ctx)
        elif d.task is None and isinstance(d.task_args, dict) and d.task_args:
            ctx.add(p + ("task_args",), "only applies to embedded tasks (task:); remove it")
        if d.task is not None and d.format not in ("auto", _INVALID):
            ctx.add(p + ("format",), "only applies to path and hub data; embedded tasks have their own format")
        if isinstance(d.path, str):
            full = _resolve(base_dir, d.path)
            if not full.is_file():
                ctx.add(p + ("path",), f"file not found: {full} (relative paths start at the suite "
                                       f"file's folder)")


def _check_task(d: DatasetSpec, p: tuple, ctx: _Ctx) -> None:
    from harness.data.tasks import TASKS, validate_task_args  # lazily: it imports the data code

    if d.task not in TASKS:
        ctx.add(p + ("task",), f"{TASKS.unknown_message(d.task)} See `python -m harness ls tasks`.")
        return
    if not isinstance(d.task_args, dict):
        return
    for problem in validate_task_args(d.task, d.task_args):
        key, _, rest = problem.partition(":")
        if key in d.task_args and rest:
            ctx.add(p + ("task_args", key), rest.strip())
        else:
            ctx.add(p + ("task_args",), problem)


# ---------------------------------------------------------------------------- methods
def _fmt_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return _show(v)
    return str(v)


def _method_error(e: Exception, name: str) -> str:
    msg = str(e)
    return msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg


def _check_methods(suite: Suite, ctx: _Ctx) -> list[Variant]:
    """Check every method entry; return the variants of the entries that are valid."""
    variants: list[Variant] = []
    available = methods.available()
    for i, m in _items(suite.methods):
        p = ("methods", i)
        if not isinstance(m.name, str):
            continue
        grid = m.grid if isinstance(m.grid, dict) else {}
        hp = m.hparams if isinstance(m.hparams, dict) else {}
        if ctx.explicit(p + ("grid",)) and m.grid == {}:
            ctx.add(p + ("grid",), "empty grid; give hyperparameter: [values...] or remove grid")
        train = _check_method_train(m, p, ctx)
        if m.name == SFT_METHOD:
            for key in ("hparams", "grid", "train"):
                if isinstance(getattr(m, key), dict) and getattr(m, key):
                    ctx.add(p + (key,), f"the {SFT_METHOD!r} method evaluates the SFT checkpoint as it is "
                                        f"and takes no {key}; remove it")
            if suite.sft is not _INVALID and suite.sft.enabled is False:
                ctx.add(p + ("name",), f"method {SFT_METHOD!r} evaluates the SFT checkpoint, but "
                                       f"sft.enabled is false; enable sft or remove this method")
            label = m.label if isinstance(m.label, str) else SFT_METHOD
            variants.append(Variant(i, SFT_METHOD, label, {}, {}))
            continue
        if m.name not in available:
            ctx.add(p + ("name",), f"unknown method {m.name!r}."
                                   f"{did_you_mean(m.name, available + [SFT_METHOD])} Available: "
                                   f"{', '.join(available) or '(none registered)'}, or {SFT_METHOD!r} for "
                                   f"the SFT checkpoint itself; plugins: list files that register more")
            continue
        cls = methods.get_class(m.name)
        bad = False
        # Each value alone first, so that every bad key is reported, not only the first.
        for key, value in hp.items():
            if key in grid:
                ctx.add(p + ("grid", key), f"also set in hparams (line {ctx.line(p + ('hparams', key))}); "
                                           f"set it in one place")
                bad = True
            bad |= not _check_one_hparam(cls, m.name, key, value, p + ("hparams", key), ctx)
        grid_values: dict[str, list] = {}
        for key, values in grid.items():
            gp = p + ("grid", key)
            if not isinstance(values, list) or not values:
                got = "an empty list" if values == [] else _show(values)
                fix = f"; write [{_show(values)}]" if not isinstance(values, (list, dict)) else ""
                ctx.add(gp, f"must be a non-empty list of values, got {got}{fix}")
                bad = True
                continue
            if key not in cls.hparams_spec:  # one problem for the key, not one per value
                bad |= not _check_one_hparam(cls, m.name, key, values[0], gp, ctx)
                continue
            seen = set()
            for j, value in enumerate(values):
                marker = (type(value).__name__, repr(value))
                if marker in seen:
                    ctx.add(gp + (j,), f"duplicate value {_fmt_value(value)}; list each value once")
                    bad = True
                seen.add(marker)
                bad |= not _check_one_hparam(cls, m.name, key, value, gp + (j,), ctx)
            grid_values[key] = values
        if bad:
            continue
        # Then every combination as a whole: methods' own cross-field checks (validate()).
        reported = set()
        keys = list(grid_values)
        for combo in itertools.product(*(grid_values[k] for k in keys)):
            point = dict(zip(keys, combo))
            try:
                inst = methods.get(m.name, **hp, **point)
            except (ValueError, TypeError) as e:  # MethodConfigError, or a plugin's own check
                msg = _method_error(e, m.name)
                if msg not in reported:
                    reported.add(msg)
                    ctx.add(_blame(msg, p, keys, list(hp)), msg)
                continue
            base = m.label if isinstance(m.label, str) else m.name
            label = base if not point else f"{base} ({', '.join(f'{k}={_fmt_value(v)}' for k, v in point.items())})"
            variants.append(Variant(i, m.name, label, dict(inst.hparams), train))
    _check_labels(variants, ctx)
    return variants


def _check_one_hparam(cls: type, name: str, key: str, value: Any, path: tuple, ctx: _Ctx) -> bool:
    """Construct the method with this one value; report problems that concern this key.
    A cross-field complaint (which may vanish with the other keys set) is left to the
    whole-combination check."""
    try:
        cls(**{key: value})
    except (ValueError, TypeError) as e:
        if f"hyperparameter {key!r}" in str(e):
            ctx.add(path, _method_error(e, name))
            return False
    return True


def _blame(msg: str, p: tuple, grid_keys: list, hp_keys: list) -> tuple:
    """The path of the first hyperparameter a method's error message names."""
    named = re.findall(r"'([^']+)'", msg)
    for k in named:
        if k in grid_keys:
            return p + ("grid", k)
    for k in named:
        if k in hp_keys:
            return p + ("hparams", k)
    return p


def _check_method_train(m: MethodSpec, p: tuple, ctx: _Ctx) -> dict:
    """Validate ``methods[i].train`` as a partial TrainSpec; return the good overrides."""
    if not isinstance(m.train, dict):
        return {}
    fields = {fl.name: fl for fl in dataclasses.fields(TrainSpec)}
    hints = _hints(TrainSpec)
    out = {}
    for key, value in m.train.items():
        tp = p + ("train", key)
        if key not in fields:
            ctx.add(tp, _unknown_key(key, list(fields), p + ("train",)))
            continue
        v = _convert(value, hints[key], tp, ctx, fields[key].metadata.get("range"))
        if _ok(v):
            out[key] = v
    return out


def _check_labels(variants: list[Variant], ctx: _Ctx) -> None:
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
        key = _canonical({"name": v.name, "hparams": v.hparams, "train": v.train})
        if key in by_config and by_config[key].method_index != v.method_index:
            ctx.add(p, f"{v.label!r} runs the same configuration as "
                       f"methods[{by_config[key].method_index}] ({by_config[key].label!r}); remove one "
                       f"(repeat runs come from seeds)")
        by_config.setdefault(key, v)


# ----------------------------------------------------------------- training, eval, rest
def _check_train_values(t: dict, path: tuple, ctx: _Ctx, suite: Suite) -> None:
    """Consistency of one effective set of train settings (suite train, sft, or a method's
    merged overrides). ``path`` is where the message points."""
    ml, mpl = t.get("max_length"), t.get("max_prompt_length")
    if isinstance(ml, int) and isinstance(mpl, int) and mpl >= ml:
        # point at the key the user wrote (the other one is a default)
        blame = "max_prompt_length" if ctx.explicit(path + ("max_prompt_length",)) else "max_length"
        ctx.add(path + (blame,), f"max_prompt_length {mpl} leaves no room for the response within "
                                 f"max_length {ml}; make max_prompt_length smaller than max_length")
    steps, warm = t.get("steps"), t.get("warmup_steps")
    if isinstance(steps, int) and isinstance(warm, int) and warm > steps:
        ctx.add(path + ("warmup_steps",), f"{warm} exceeds steps {steps}; the learning rate would never "
                                          f"reach its peak")
    if isinstance(ml, int):
        for i, m in _items(suite.models):
            tiny = m.tiny
            if isinstance(tiny, TinyModelSpec) and isinstance(tiny.max_position_embeddings, int) \
                    and ml > tiny.max_position_embeddings:
                ctx.add(path + ("max_length",),
                        f"{ml} exceeds models[{i}] ({m.name!r}) max_position_embeddings "
                        f"{tiny.max_position_embeddings}; lower max_length or raise max_position_embeddings")


def _check_training(suite: Suite, variants: list[Variant], ctx: _Ctx) -> None:
    if isinstance(suite.train, TrainSpec):
        train = asdict(suite.train)
        _check_train_values(train, ("train",), ctx, suite)
        for v in variants:
            if v.train:
                merged = {**train, **v.train}
                overridden = ("methods", v.method_index, "train")
                _check_train_values(merged, overridden, ctx, suite)
    if isinstance(suite.sft, SFTSpec) and suite.sft.enabled is True:
        _check_train_values(asdict(suite.sft), ("sft",), ctx, suite)


def find_slurm_profile(launcher: LauncherSpec, base_dir: Path) -> Path | None:
    """The SLURM profile file: relative to the suite's folder, the working directory, or
    the project root, in that order; None if none exists."""
    p = Path(launcher.slurm_profile).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for root in (base_dir, Path.cwd(), PROJECT_ROOT):
        if (root / p).is_file():
            return (root / p).resolve()
    return None


def _check_eval_launcher_report(suite: Suite, variants: list[Variant], ctx: _Ctx, base_dir: Path) -> None:
    ev = suite.eval
    if _ok(ev) and isinstance(ev.judge, str) and ev.judge != "oracle":
        if not _resolve(base_dir, ev.judge).exists():
            ctx.add(("eval", "judge"), f"must be 'oracle' or the path of a reward model; "
                                       f"{_resolve(base_dir, ev.judge)} does not exist")
    ln = suite.launcher
    if _ok(ln) and ln.type == "slurm" and isinstance(ln.slurm_profile, str):
        if find_slurm_profile(ln, base_dir) is None:
            where = ctx.line(("launcher", "slurm_profile")) or ctx.line(("launcher", "type"))
            ctx.add(("launcher", "slurm_profile"),
                    f"SLURM profile {ln.slurm_profile!r} not found (looked in {base_dir}, {Path.cwd()} "
                    f"and {PROJECT_ROOT}); create it (see slurm/) or point slurm_profile at one", line=where)
    rp = suite.report
    # only when every method entry expanded: a broken entry's labels are unknown
    complete = {v.method_index for v in variants} == {i for i, _ in _items(suite.methods)} \
        and _INVALID not in (suite.methods if isinstance(suite.methods, list) else [_INVALID])
    if _ok(rp) and isinstance(rp.baseline, str) and ctx.explicit(("report", "baseline")) and variants and complete:
        names = list(dict.fromkeys([v.label for v in variants] + [v.name for v in variants]))
        if rp.baseline not in names:
            ctx.add(("report", "baseline"), f"{rp.baseline!r} is not a method label or name of this "
                                            f"suite.{did_you_mean(rp.baseline, names)} Choose one of: "
                                            f"{', '.join(names)}")


# ============================================================================ the plan
@dataclass(frozen=True)
class SFTStage:
    """Supervised fine-tuning that produces the reference/initial policy of a cell group."""

    stage_id: str
    model: str
    dataset: str
    seed: int | None
    config: dict


@dataclass(frozen=True)
class Cell:
    """One training + evaluation run. ``config`` is the fully resolved, JSON-able config."""

    cell_id: str
    model: str
    dataset: str
    method: str
    label: str
    seed: int
    sft_stage_id: str | None
    config: dict


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    sft_stages: list[SFTStage]

    def stage(self, stage_id: str) -> SFTStage:
        return next(s for s in self.sft_stages if s.stage_id == stage_id)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(obj: Any, n: int = 10) -> str:
    """First ``n`` hex digits of sha256 over canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:n]


def slug(text: str, max_len: int = 40) -> str:
    """'DPO (beta=0.1)' -> 'dpo-beta-0.1': a label as it may appear in a folder name."""
    s = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    return s[:max_len].rstrip("-.") or "x"


def _spec_dicts(spec: Any, base_dir: Path) -> tuple[dict, dict]:
    """(resolved, as written): the resolved dict has an absolute ``path``; the id is hashed
    from the paths as written, so a suite moved with its files (laptop -> cluster) keeps its
    cell ids."""
    written = asdict(spec)
    if isinstance(spec, DatasetSpec) and spec.task is not None:
        # every task argument, defaults included: a changed default is a changed data set
        from harness.data.tasks import TASKS

        written["task_args"] = asdict(TASKS.get(spec.task).Args(**spec.task_args))
    resolved = dict(written)
    if written.get("path"):
        resolved["path"] = str(_resolve(base_dir, written["path"]).resolve())
    return resolved, written


def _plugin_ref(spec: str, base_dir: Path) -> str:
    """A plugin as a worker process can load it: files absolute (as ``methods.load_plugin``
    finds them: the suite's folder first, then the working directory), modules by name."""
    if not (spec.endswith(".py") or "/" in spec or "\\" in spec):
        return spec
    p = Path(spec).expanduser()
    if not p.is_absolute() and (base_dir / p).exists():
        p = base_dir / p
    return str(p.resolve())


def expand(loaded: LoadedSuite) -> Plan:
    """One cell per model x data set x method variant x seed (in that nesting order), and
    the SFT stages they start from (one per model x data set, or per seed too when
    ``sft.per_seed``). The cell id hashes the resolved config without launcher, report,
    description and plugins, which do not change results."""
    s, base = loaded.suite, loaded.base_dir
    # Variants are derived here, not remembered from loading, so that a suite edited after
    # loading (e.g. `run --smoke` shrinking it) expands as it now is.
    ctx = _Ctx(loaded.source)
    variants = _check_methods(s, ctx)
    ctx.raise_if_any()
    sft_on = s.sft.enabled
    sft_dict = asdict(s.sft) if sft_on else None
    train = asdict(s.train)
    evl = asdict(s.eval)
    plugins = [_plugin_ref(p, base) for p in s.plugins]
    stages: dict[tuple, SFTStage] = {}
    cells: list[Cell] = []
    for m in s.models:
        m_res, m_id = _spec_dicts(m, base)
        for d in s.datasets:
            d_res, d_id = _spec_dicts(d, base)
            for v in variants:
                for seed in s.seeds:
                    stage_id = None
                    if sft_on:
                        stage_seed = seed if s.sft.per_seed else None
                        key = (m.name, d.name, stage_seed)
                        if key not in stages:
                            h = config_hash({"model": m_id, "dataset": d_id, "sft": sft_dict, "seed": stage_seed})
                            sid = f"sft-{m.name}-{d.name}" + (f"-s{stage_seed}" if stage_seed is not None else "") + f"-{h}"
                            stages[key] = SFTStage(sid, m.name, d.name, stage_seed, {
                                "suite": s.name, "model": m_res, "dataset": d_res, "sft": sft_dict,
                                "seed": stage_seed})
                        stage_id = stages[key].stage_id
                    cell_train = {**train, **v.train}
                    if v.name == SFT_METHOD:
                        cell_train["steps"] = 0  # the SFT checkpoint as it is: nothing to train
                    config = {
                        "suite": s.name,
                        "model": m_res,
                        "dataset": d_res,
                        "method": {"name": v.name, "label": v.label, "hparams": v.hparams},
                        "seed": seed,
                        "sft": sft_dict,
                        "train": cell_train,
                        "eval": evl,
                    }
                    id_view = {**config, "model": m_id, "dataset": d_id}
                    cid = f"{slug(v.label)}-{m.name}-{d.name}-s{seed}-{config_hash(id_view)}"
                    stored = {**config, "plugins": plugins}
                    if evl.get("judge") not in (None, "oracle"):
                        # as with data paths: the id hashes the path as written, the job reads it resolved
                        stored["eval"] = {**evl, "judge": str(_resolve(base, evl["judge"]).resolve())}
                    cells.append(Cell(cid, m.name, d.name, v.name, v.label, seed, stage_id, stored))
    return Plan(suite=s, cells=cells, sft_stages=list(stages.values()))


# ======================================================================= describe a plan
def _read_state(folder: Path) -> str:
    f = folder / "status"
    if not f.exists():
        return "new"
    try:
        return str(json.loads(f.read_text()).get("state", "?"))
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*header).rstrip()] + ["  " + fmt.format(*map(str, r)).rstrip() for r in rows]


# Rough vocabulary sizes of the tiny-model tokenizers, for the estimate only.
_VOCAB_ESTIMATE = {"char": 64, "byte": 384, "gpt2": 50257}


def tiny_param_estimate(tiny: dict) -> int:
    """Parameters that cost matmul FLOPs in a tiny model: per layer 4 h^2 (q, k, v, o) plus
    the MLP (3 h i gated for llama/qwen2, 2 h i for gpt2), plus the LM head h V. Embedding
    lookups cost no FLOPs and are left out, as in Kaplan et al. (2020)'s C = 6 N D."""
    h, layers = tiny["hidden_size"], tiny["num_layers"]
    inter = tiny.get("intermediate_size") or 2 * h
    mlp = (2 if tiny["arch"] == "gpt2" else 3) * h * inter
    vocab = tiny["bpe_vocab_size"] if tiny["tokenizer"] == "bpe" else _VOCAB_ESTIMATE[tiny["tokenizer"]]
    return layers * (4 * h * h + mlp) + h * vocab


def _human(n: float) -> str:
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_plan(plan: Plan, results_dir: str | os.PathLike) -> str:
    """A readable plan: counts, the cells with their status, SFT stages, and a rough compute
    estimate."""
    s = plan.suite
    root = Path(results_dir) / s.name
    n_var = len({c.label for c in plan.cells})
    out = [f"Suite {s.name!r}: {_n(len(plan.cells), 'cell')} = {_n(len(s.models), 'model')} x "
           f"{_n(len(s.datasets), 'data set')} x {_n(n_var, 'method variant')} x {_n(len(s.seeds), 'seed')}; "
           f"{_n(len(plan.sft_stages), 'SFT stage')}"]
    if s.description:
        out.append(f"  {s.description.strip()}")
    states = {c.cell_id: _read_state(root / c.cell_id) for c in plan.cells}
    counts: dict[str, int] = {}
    for st in states.values():
        counts[st] = counts.get(st, 0) + 1
    out.append("Status: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items())))
    out += ["", "Cells:"]
    out += _table([[c.label, c.model, c.dataset, c.seed, states[c.cell_id], c.cell_id] for c in plan.cells],
                  ["label", "model", "dataset", "seed", "status", "cell id"])
    if plan.sft_stages:
        out += ["", "SFT stages:"]
        out += _table([[st.model, st.dataset, "-" if st.seed is None else st.seed, st.config["sft"]["steps"],
                        _read_state(root / "_sft" / st.stage_id), st.stage_id] for st in plan.sft_stages],
                      ["model", "dataset", "seed", "steps", "status", "stage id"])
    # Compute estimate: every sequence counted at max_length (an upper bound).
    pref_tokens: dict[str, int] = {}
    for c in plan.cells:
        t = c.config["train"]
        pref_tokens[c.model] = pref_tokens.get(c.model, 0) + \
            t["steps"] * t["batch_size"] * t["grad_accum"] * t["max_length"] * 2
    sft_tokens: dict[str, int] = {}
    for st in plan.sft_stages:
        t = st.config["sft"]
        sft_tokens[st.model] = sft_tokens.get(st.model, 0) + \
            t["steps"] * t["batch_size"] * t["grad_accum"] * t["max_length"]
    total = sum(pref_tokens.values()) + sum(sft_tokens.values())
    out += ["", "Compute estimate (rough: tokens = steps x batch_size x grad_accum x max_length, x2 for "
                "chosen+rejected; sequences counted at full length, reference and evaluation passes left out):",
            f"  training tokens: {_human(sum(pref_tokens.values()))} preference + "
            f"{_human(sum(sft_tokens.values()))} SFT = {_human(total)}"]
    for m in s.models:
        if m.tiny is not None:
            n = tiny_param_estimate(asdict(m.tiny))
            toks = pref_tokens.get(m.name, 0) + sft_tokens.get(m.name, 0)
            out.append(f"  {m.name}: ~{_human(n)} parameters (tiny model), ~{_human(6 * n * toks)} FLOPs "
                       f"(6 x N x tokens)")
    return "\n".join(out)


# ====================================================================== schema as docs
def _type_text(tp: Any) -> str:
    optional, tp = _optional_inner(tp)
    if dataclasses.is_dataclass(tp):
        text = "mapping"
    elif get_origin(tp) is Literal:
        text = "choice"
    elif tp is list or get_origin(tp) is list:
        inner = get_args(tp)[0] if get_args(tp) else Any
        text = "list of mappings" if dataclasses.is_dataclass(inner) else f"list of {_type_text(inner)}s"
    else:
        text = {bool: "bool", int: "int", float: "float", str: "string", dict: "mapping"}.get(tp, str(tp))
    return text + (" or null" if optional else "")


def _default_text(fl: dataclasses.Field, tp: Any) -> str:
    if _is_required(fl, tp):
        return "**required**"
    v = fl.default_factory() if fl.default_factory is not dataclasses.MISSING else fl.default
    if dataclasses.is_dataclass(v):
        return "(section)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, (list, dict)) or v == "":
        return f"`{json.dumps(v)}`"
    return f"`{v}`"


def _allowed_text(fl: dataclasses.Field, tp: Any) -> str:
    _, tp = _optional_inner(tp)
    if get_origin(tp) is Literal:
        return ", ".join(f"`{c}`" for c in get_args(tp))
    rng = fl.metadata.get("range")
    return range_text(rng) if rng is not None else ""


def _sections() -> list[tuple[type, list[str]]]:
    """Each schema dataclass with the key paths where it appears, in schema order."""
    found: dict[type, list[str]] = {Suite: ["(top level)"]}

    def walk(cls: type, prefix: str) -> None:
        for fl in dataclasses.fields(cls):
            _, tp = _optional_inner(_hints(cls)[fl.name])
            suffix = ""
            if tp is list or get_origin(tp) is list:
                tp, suffix = (get_args(tp) or (Any,))[0], "[]"
            if dataclasses.is_dataclass(tp):
                p = f"{prefix}{fl.name}{suffix}"
                found.setdefault(tp, []).append(p)
                walk(tp, p + ".")

    walk(Suite, "")
    found.setdefault(TrainSpec, []).append("methods[].train")
    return list(found.items())


def schema_markdown() -> str:
    """Markdown tables of every suite key, generated from ``harness.schema``."""
    parts = []
    for cls, paths in _sections():
        title = ", ".join(f"`{p}`" if not p.startswith("(") else p for p in paths)
        parts.append(f"### {title}\n")
        if cls is TrainSpec:
            parts.append("`methods[].train` takes any subset of these keys, for that method only.\n")
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature
            parts.append(" ".join(doc.split()) + "\n")
        inherited: set[str] = set()
        for base in cls.__mro__[1:]:
            if dataclasses.is_dataclass(base):
                inherited |= {fl.name for fl in dataclasses.fields(base)}
                parts.append(f"Every key of `{_sections_name(base)}` (same types, ranges and defaults), plus:\n")
                break
        parts.append("| key | type | default | allowed | description |")
        parts.append("|---|---|---|---|---|")
        hints = _hints(cls)
        for fl in dataclasses.fields(cls):
            if fl.name in inherited:
                continue
            tp = hints[fl.name]
            help_text = fl.metadata.get("help", "").replace("|", "\\|")
            parts.append(f"| `{fl.name}` | {_type_text(tp)} | {_default_text(fl, tp)} | "
                         f"{_allowed_text(fl, tp)} | {help_text} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _sections_name(cls: type) -> str:
    for c, paths in _sections():
        if c is cls:
            return paths[0]
    return cls.__name__


README_BEGIN = "<!-- schema:begin (generated by `python -m harness.config docs`; do not edit) -->"
README_END = "<!-- schema:end -->"


def update_readme(path: str | os.PathLike = PROJECT_ROOT / "suites" / "README.md") -> bool:
    """Rewrite the generated key tables in ``suites/README.md``; True if it changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    new = text[:start] + "\n" + schema_markdown() + text[end:]
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m harness.config docs
    import sys

    if sys.argv[1:] != ["docs"]:
        sys.exit("usage: python -m harness.config docs   (regenerate the tables in suites/README.md)")
    print("updated" if update_readme() else "up to date")
