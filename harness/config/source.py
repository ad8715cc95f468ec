"""YAML read safely into plain values, with the line of every key and list item.

Two loaders, both ``yaml.SafeLoader`` subclasses (no Python tags, ever):

* ``SuiteLoader`` for files people write: YAML 1.2 core scalars. Why: under PyYAML's YAML 1.1
  rules ``lr: 5e-7`` is the *string* '5e-7', ``on``/``off`` are booleans (so
  ``semantic_diversity: on`` would fail as a bool), ``1:30`` is 5400 and ``010`` is eight.
  Suites are written by people who expect none of that.
* ``WrittenLoader`` for files the harness wrote with ``yaml.safe_dump`` (a cell's
  ``config.yaml``): PyYAML's own YAML 1.1 rules, so every value reads back as it was written.

Duplicate keys are problems (plain PyYAML keeps the last); merge keys (``<<: *anchor``) work as
in PyYAML (its ``flatten_mapping``, which merges each key node once, so merges stay small).
Every node is converted afresh at each alias, so a document of nested aliases (a
"billion laughs": 1.4 KB that would expand to gigabytes) is stopped once it has produced
``MAX_VALUES`` values, with its file and line, in bounded memory and time; nesting deeper than
``MAX_DEPTH`` is refused the same way.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from .check import INVALID, FileChecker, show

MAX_VALUES = 100_000  # a large suite has a few thousand; a grid of 1,000 values is 1,000
MAX_DEPTH = 64

_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class SuiteLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 core scalars (see the module docstring)."""


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


class WrittenLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` as is: reads back what ``yaml.safe_dump`` wrote."""


class _Stop(Exception):
    """The document is not a small tree (recursive, too large once expanded, too deep)."""

    def __init__(self, line: int, what: str):
        self.line, self.what = line, what


def parse_yaml(text: str, ctx: FileChecker, loader_cls: type = SuiteLoader) -> Any:
    """``text`` as plain Python values, recording the line of every key and item in
    ``ctx.lines`` and every problem in ``ctx``. Returns ``INVALID`` when the file cannot be
    read at all (the problem is recorded)."""
    loader = loader_cls(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        ctx.lines[()] = root.start_mark.line + 1
        return _Converter(loader, ctx).value(root, (), frozenset(), 0)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        what = e.problem or e.context or "unreadable YAML"
        if e.context and e.problem:
            cm = e.context_mark
            what += f" ({e.context}{f' that starts at line {cm.line + 1}' if cm else ''})"
        ctx.note(line, f"YAML syntax error: {what}")
    except yaml.YAMLError as e:  # reader errors (bad bytes) carry no line
        ctx.note(None, f"YAML error: {e}")
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        ctx.note(None, f"YAML error: nested more than {MAX_DEPTH} levels deep; a suite is a small tree")
    except _Stop as e:
        ctx.note(e.line, f"YAML error: {e.what}")
    finally:
        loader.dispose()
    return INVALID


class _Converter:
    """Nodes -> values, counting every value made (aliases included) against ``MAX_VALUES``."""

    def __init__(self, loader: yaml.SafeLoader, ctx: FileChecker):
        self.loader, self.ctx = loader, ctx
        self.made = 0
        self.key_line = 1  # the line of the last key read: where an expansion is reported
        self.flattened: set[int] = set()  # mapping nodes whose merge keys are applied

    def _count(self, node: yaml.Node, depth: int) -> None:
        self.made += 1
        if self.made > MAX_VALUES:
            raise _Stop(self.key_line, f"its aliases (*name) expand to more than {MAX_VALUES:,} values "
                                       f"(nested aliases, a 'billion laughs' document?); a suite is a "
                                       f"small tree: write the values out or nest fewer aliases")
        if depth > MAX_DEPTH:
            raise _Stop(node.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep; a suite is a small tree")

    def value(self, node: yaml.Node, path: tuple, active: frozenset, depth: int) -> Any:
        self._count(node, depth)
        plain = {yaml.SequenceNode: "tag:yaml.org,2002:seq", yaml.MappingNode: "tag:yaml.org,2002:map"}.get(type(node))
        if (plain and node.tag != plain) or (not plain and node.tag not in type(self.loader).yaml_constructors):
            # e.g. !!python/object/apply: SafeLoader would refuse it; say where and why
            self.ctx.add(path, f"YAML tag {node.tag!r} is not allowed in a suite; remove it", line=node.start_mark.line + 1)
            return INVALID
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node, deep=True)
        if id(node) in active:
            raise _Stop(node.start_mark.line + 1, "a recursive alias; suites must be trees")
        active = active | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                self.ctx.lines.setdefault(path + (i,), item.start_mark.line + 1)
                out.append(self.value(item, path + (i,), active, depth + 1))
            return out
        return self._mapping(node, path, active, depth)

    def _mapping(self, node: yaml.MappingNode, path: tuple, active: frozenset, depth: int) -> dict:
        if id(node) not in self.flattened:  # once per node, however many aliases point at it
            self.flattened.add(id(node))
            self._check_duplicates(node, path)
            self.loader.flatten_mapping(node)  # PyYAML's merge semantics (6.0.4 merges each key node once)
        out = {}
        for knode, vnode in node.value:
            line = knode.start_mark.line + 1
            if not isinstance(knode, yaml.ScalarNode):
                self.ctx.add(path, "keys must be plain names, not lists or mappings", line=line)
                continue
            key = self.loader.construct_object(knode, deep=True)
            if not isinstance(key, str):
                self.ctx.add(path + (str(key),), f"keys must be strings, got {show(key)}; quote it", line=line)
                continue
            self.key_line = line
            self.ctx.lines[path + (key,)] = line  # the last occurrence wins, like the value
            out[key] = self.value(vnode, path + (key,), active, depth + 1)
        return out

    def _check_duplicates(self, node: yaml.MappingNode, path: tuple) -> None:
        """Duplicates among the keys written here are mistakes; keys that override a merged
        (``<<: *anchor``) mapping are the point of merging, so this runs before merging."""
        first_line: dict[Any, int] = {}
        for knode, _ in node.value:
            if knode.tag == _MERGE or not isinstance(knode, yaml.ScalarNode):
                continue
            key = self.loader.construct_object(knode, deep=True)
            line = knode.start_mark.line + 1
            if key in first_line:
                self.ctx.add(path + (key,), f"duplicate key (first set at line {first_line[key]}); keep one", line=line)
            else:
                first_line[key] = line
