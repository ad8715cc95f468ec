"""The typed checker of a file: ``methods.settings``' rules, each problem placed at file:line.

``methods.settings.Checker`` holds the rules (types, ranges, choices, unknown and missing
keys) and records each problem as a key path; ``FileChecker`` adds where that key was
written (the YAML reader fills ``lines``) and renders every problem as one line::

    suites/x.yaml:14: train.lr: must be > 0, got -0.001

It also remembers the mapping as written (``raw``), so a check can tell a key the user set
from a default (``explicit``). ``raise_if_any`` raises one ``UserError`` with every problem,
sorted by line.
"""
from __future__ import annotations

from typing import Any

from methods.settings import INVALID, Checker, SettingError, format_path, ok, show

from ..errors import UserError

__all__ = ["FileChecker", "INVALID", "ok", "show", "format_path", "items"]


class FileChecker(Checker):
    """A ``Checker`` whose problems name ``source`` and the line of their key."""

    def __init__(self, source: str, raw: Any = None, complete: bool = False):
        super().__init__(complete)
        self.source = source
        self.raw = raw
        self.lines: dict[tuple, int] = {}
        self.messages: list[tuple[int, str]] = []  # (line, rendered problem)

    def add(self, path: tuple, reason: str, line: int | None = None) -> None:
        """Record a problem at ``path``; ``line`` overrides the line of the key."""
        line = line if line is not None else self.line(path)
        self.problems.append(SettingError(reason, path))
        key = f"{format_path(path)}: " if path else ""
        self.messages.append((line or 0, f"{self.where(line)}{key}{reason}"))

    def note(self, line: int | None, text: str) -> None:
        """A problem with the file itself rather than a key (unreadable YAML, say)."""
        self.messages.append((line or 0, f"{self.where(line)}{text}"))

    def line(self, path: tuple) -> int | None:
        """The line of ``path``, or of its nearest written parent."""
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def where(self, line: int | None) -> str:
        return f"{self.source}:{line}: " if line else f"{self.source}: "

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
        if self.messages:
            ordered = sorted(self.messages, key=lambda lm: lm[0])
            raise UserError(problems=list(dict.fromkeys(msg for _, msg in ordered)))


def items(lst: Any) -> list[tuple[int, Any]]:
    """(index, item) for the items of a checked list that themselves passed."""
    if not isinstance(lst, list):
        return []
    return [(i, x) for i, x in enumerate(lst) if x is not INVALID]
