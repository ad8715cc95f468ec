"""A small generic name -> object registry (torch-free).

It serves the preference methods (``methods.REGISTRY``) and the embedded tasks
(``harness.data.tasks.TASKS``). It refuses a name that already points at a different object
(re-registering the *same* object, e.g. when a module is imported twice, is allowed), and it
suggests close names when a lookup misses.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .settings import did_you_mean

T = TypeVar("T")


class RegistryError(KeyError):
    """A lookup or registration problem; the message says what to do."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """``reg.register("x", obj)`` or, as a decorator, ``@reg.register("x")``."""
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def _add(o: T) -> T:
            old = self._entries.get(name)
            if old is not None and not _same(old, o):
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered to {_describe(old)}; "
                    f"refusing to re-register it to {_describe(o)}. Pick another name."
                )
            self._entries[name] = o
            return o

        if obj is not None:
            return _add(obj)
        return _add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        hint = did_you_mean(name, self.names())
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}."

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _same(a: object, b: object) -> bool:
    # A class re-executed by a second import of the same module is a new object with the
    # same qualified name; treat it as the same registration, not a clash.
    if a is b:
        return True
    return (
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
        and getattr(a, "__qualname__", None) is not None
    )


def _describe(o: object) -> str:
    mod, qn = getattr(o, "__module__", None), getattr(o, "__qualname__", None)
    return f"{mod}.{qn}" if mod and qn else repr(o)
