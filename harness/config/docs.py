"""The key tables of ``suites/README.md``, generated from ``harness.schema`` (every key with its
type, default, allowed values and help), so the documentation cannot drift from the checks.

    python -m harness.config docs      # rewrite the tables between the markers
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from methods.settings import hints, is_required, optional_inner

from ..paths import PROJECT_ROOT
from ..schema import Suite, TrainSpec


def _type_text(tp: Any) -> str:
    optional, tp = optional_inner(tp)
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
    if is_required(fl, tp):
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
    _, tp = optional_inner(tp)
    if get_origin(tp) is Literal:
        return ", ".join(f"`{c}`" for c in get_args(tp))
    rng = fl.metadata.get("range")
    return rng.text() if rng is not None else ""


def _sections() -> list[tuple[type, list[str]]]:
    """Each schema dataclass with the key paths where it appears, in schema order."""
    found: dict[type, list[str]] = {Suite: ["(top level)"]}

    def walk(cls: type, prefix: str) -> None:
        for fl in dataclasses.fields(cls):
            _, tp = optional_inner(hints(cls)[fl.name])
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
        inherited: dict[str, dataclasses.Field] = {}
        for base in cls.__mro__[1:]:
            if dataclasses.is_dataclass(base):
                inherited = {fl.name: fl for fl in dataclasses.fields(base)}
                mine = {fl.name: fl for fl in dataclasses.fields(cls)}
                changed = [n for n in inherited if _default_text(mine[n], hints(cls)[n])
                           != _default_text(inherited[n], hints(base)[n])]
                parts.append(f"Every key of `{_sections_name(base)}` (same types and ranges; same defaults"
                             f"{' except ' + ', '.join(f'`{n}`' for n in changed) + ', listed below' if changed else ''}"
                             f"), plus:\n")
                inherited = {n: fl for n, fl in inherited.items() if n not in changed}
                break
        parts.append("| key | type | default | allowed | description |")
        parts.append("|---|---|---|---|---|")
        hints_of = hints(cls)
        for fl in dataclasses.fields(cls):
            if fl.name in inherited:
                continue
            tp = hints_of[fl.name]
            help_text = fl.metadata.get("help", "").replace("|", "\\|")
            parts.append(f"| `{fl.name}` | {_type_text(tp)} | {_default_text(fl, tp)} | "
                         f"{_allowed_text(fl, tp)} | {help_text} |")
        parts.append("")
    parts.append(foreign_markdown())
    return "\n".join(parts).rstrip() + "\n"


def foreign_markdown() -> str:
    """The table of TRL's and LLaMA-Factory's names (the classes' ``FOREIGN_KEYS``): where a
    user of those tools writes them, what they are here. A suite that uses one gets the same
    answer in its error message."""
    fields: dict[str, list[str]] = {}  # their key -> the keys here (paths)
    texts: dict[str, str] = {}  # their key -> where it lives, in words
    whose: dict[str, str] = {}
    for cls, paths in _sections():
        where = "" if paths[0].startswith("(") else paths[0] + "."
        for key, (who, here) in getattr(cls, "FOREIGN_KEYS", {}).items():
            whose.setdefault(key, who)
            if here.startswith("'") and here.endswith("'"):
                fields.setdefault(key, [])
                if f"{where}{here[1:-1]}" not in fields[key]:
                    fields[key].append(f"{where}{here[1:-1]}")
            else:
                texts.setdefault(key, here)
    lines = ["### Coming from TRL or LLaMA-Factory\n",
             "Their names for settings are unknown keys here, and the error says what to write instead:\n",
             "| their key | whose | here |", "|---|---|---|"]
    for key in sorted(whose):
        here = ", ".join(f"`{p}`" for p in fields[key]) if key in fields else texts[key]
        lines.append(f"| `{key}` | {whose[key]} | {here.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


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
