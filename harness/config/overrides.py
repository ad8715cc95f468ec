"""``--set KEY.PATH=VALUE``: command-line edits of a suite, checked like the file itself.

An override edits the suite's mapping as read from its file (anchors and merge keys already
resolved) *before* any check, so the same schema checks it, with the same did-you-mean, and
the plan (cell ids included) is exactly the plan of the file edited the same way. Problems
name the ``--set`` option instead of a line of the file::

    --set train.stpes=5: train.stpes: unknown key 'stpes' in train. Did you mean 'steps'? ...

The key path:

* mapping keys joined by dots: ``train.steps``, ``eval.enabled``, ``sft.lr``; a key that is
  not in the file yet is added (``train.eval_every=50``);
* list items by position, ``models[0].path`` (or ``models.0.path``), or by name:
  ``methods[dpo].hparams.beta`` or ``methods.dpo.hparams.beta``; a method entry matches by
  its ``label`` first, then by its ``name`` when only one entry has it; a name with dots
  needs no quoting (``models.qwen2.5-0.5b.path``);
* a whole value: ``seeds=[0,1,2]``, ``methods[dpo].grid={beta: [0.1, 0.5]}``.

The value is read as YAML with the suite file's own rules (YAML 1.2 scalars: ``5e-7`` is a
number, ``on`` a string), so it means what it would mean written in the file. An empty value
is null. Overrides apply in the order given; a later one wins.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from methods.settings import SettingError, did_you_mean, format_path

from ..errors import UserError
from .check import INVALID, FileChecker
from .source import parse_yaml

_SEGMENT = re.compile(r"([^.\[\]]*)((?:\[[^\[\]]*\])*)")


@dataclass(frozen=True)
class Override:
    """One ``--set``: the option as given, its key path (names and ``[item]`` selectors, each
    a ``(kind, text)`` with kind "key", "item" or "dotted") and its value."""

    text: str
    steps: tuple
    value: Any


def parse_overrides(texts: list[str]) -> list[Override]:
    """Every ``--set`` parsed; raises one ``UserError`` naming each malformed option."""
    out, problems = [], []
    for text in texts:
        try:
            out.append(_parse_one(text))
        except ValueError as e:
            problems.append(f"--set {text}: {e}")
    if problems:
        raise UserError(problems=problems)
    return out


def _parse_one(text: str) -> Override:
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ValueError("give KEY.PATH=VALUE, e.g. --set train.steps=5 or --set 'seeds=[0,1]'")
    steps: list[tuple[str, str]] = []
    for seg in key.split("."):
        m = _SEGMENT.fullmatch(seg)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ValueError(f"cannot read the key path {key!r}: an empty or malformed part {seg!r}; "
                             f"write keys joined by dots, list items as [name] or [index]")
        if m.group(1):
            steps.append(("key", m.group(1)))
        steps += [("item", x) for x in re.findall(r"\[([^\[\]]*)\]", m.group(2))]
    if steps[0][0] != "key":
        raise ValueError(f"the key path {key!r} must start with a suite key (e.g. train, methods)")
    ctx = FileChecker(f"--set {text}")
    value = parse_yaml(raw, ctx)
    if value is INVALID or ctx.messages:
        raise ValueError(f"the value {raw!r} is not readable YAML ({'; '.join(m for _, m in ctx.messages)})"
                         f"; quote the option in the shell, e.g. --set '{key}=[0, 1]'")
    return Override(text, tuple(steps), value)


def apply_overrides(data: Any, overrides: list[Override]) -> dict[tuple, str]:
    """Apply ``overrides`` to ``data`` (the suite's top-level mapping) in place, in order.
    Returns the key path each override set (``('methods', 0, 'hparams', 'beta')``) -> its
    option text; raises one ``UserError`` naming each override that points nowhere."""
    done: dict[tuple, str] = {}
    problems = []
    for o in overrides:
        try:
            done[_apply_one(data, o)] = o.text
        except SettingError as e:
            problems.append(f"--set {o.text}: {format_path(e.path) + ': ' if e.path else ''}{e.reason}")
    if problems:
        raise UserError(problems=problems)
    return done


def _apply_one(data: Any, o: Override) -> tuple:
    if not isinstance(data, dict):
        raise SettingError("the suite's top level is not a mapping")
    node, path, steps = data, (), list(o.steps)
    while steps:
        kind, text = steps.pop(0)
        last = not steps
        if isinstance(node, list):
            i = _item_index(node, kind, text, steps, path)
            path += (i,)
            if last:
                node[i] = o.value
            else:
                node = node[i]
            continue
        if kind == "item":
            raise SettingError(f"[{text}] selects a list item, but {format_path(path)} is not a list", path)
        if not isinstance(node, dict):
            raise SettingError(f"is {_what(node)}, not a mapping: cannot set a key inside it", path)
        path += (text,)
        if last:
            node[text] = o.value
        else:
            if text not in node:  # a key the file leaves to its default: start a mapping
                node[text] = [] if steps[0][0] == "item" else {}
            node = node[text]
    return path


def _item_index(node: list, kind: str, text: str, steps: list, path: tuple) -> int:
    """The index of the list item a selector names; consumes the dotted parts of a name that
    contains dots (``models.qwen2.5-0.5b.path``) from ``steps``."""
    if re.fullmatch(r"-?\d+", text):
        i = int(text)
        if not 0 <= i < len(node):
            raise SettingError(f"has {len(node)} items; [{i}] is not one of them (count from 0)", path)
        return i
    if kind == "key":  # a dotted name: the longest run of parts that names an item
        for n in range(len(steps), 0, -1):
            name = ".".join([text] + [t for _, t in steps[:n]])
            if all(k == "key" for k, _ in steps[:n]) and _matches(node, name):
                del steps[:n]
                return _by_name(node, name, path)
    return _by_name(node, text, path)


def _matches(node: list, name: str) -> list[int]:
    by_label = [i for i, x in enumerate(node) if isinstance(x, dict) and x.get("label") == name]
    return by_label or [i for i, x in enumerate(node) if isinstance(x, dict) and x.get("name") == name]


def _by_name(node: list, name: str, path: tuple) -> int:
    found = _matches(node, name)
    if len(found) == 1:
        return found[0]
    if found:
        raise SettingError(f"{len(found)} items are named {name!r} (items {', '.join(map(str, found))}); select "
                           f"one by its label or its index, e.g. {format_path(path)}[{found[0]}]", path)
    names = [str(x[k]) for x in node if isinstance(x, dict) for k in ("label", "name") if isinstance(x.get(k), str)]
    names = list(dict.fromkeys(names))
    raise SettingError(f"no item named {name!r}.{did_you_mean(name, names)} Items: {', '.join(names) or '(none)'}; "
                       f"or select one by index, e.g. {format_path(path)}[0]", path)


def _what(v: Any) -> str:
    return "a list" if isinstance(v, list) else f"{v!r}"


class OverriddenChecker(FileChecker):
    """A ``FileChecker`` that names the ``--set`` option behind a problem: a problem at (or
    under) an overridden key is the option's; one at a key that holds an overridden key says
    which options it follows."""

    def __init__(self, source: str, set_paths: dict[tuple, str] | None = None):
        super().__init__(source)
        self.set_paths = dict(set_paths or {})

    def add(self, path: tuple, reason: str, line: int | None = None) -> None:
        path = tuple(path)
        own = [t for p, t in self.set_paths.items() if path[:len(p)] == p]
        if own:
            self.problems.append(SettingError(reason, path))
            self.messages.append((0, f"--set {own[-1]}: {format_path(path)}: {reason}"))
            return
        inside = [t for p, t in self.set_paths.items() if path and p[:len(path)] == path]
        if inside and path not in self.lines:  # a key only the options wrote (``trian.steps``)
            self.problems.append(SettingError(reason, path))
            self.messages.append((0, f"--set {', --set '.join(inside)}: {format_path(path)}: {reason}"))
            return
        super().add(path, reason + (f" (with --set {', --set '.join(inside)})" if inside else ""), line)


def overridden_hash(text: str, overrides: list[Override]) -> str:
    """The suite's text hash, changed by its overrides."""
    return hashlib.sha256("\n".join([text] + [f"--set {o.text}" for o in overrides]).encode()).hexdigest()


def overridden_text(source: str, data: dict, overrides: list[str]) -> str:
    """The suite as it ran, for the results folder's ``suite.yaml``: the edited mapping, with
    a header naming the file and the options."""
    import yaml

    head = [f"# {source} with --set {t}" for t in overrides]
    return "\n".join(head) + "\n# (written by `harness run`: the file's mapping with these overrides applied)\n" \
        + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
