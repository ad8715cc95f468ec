"""Preference-optimization methods: a registry of pure loss functions.

>>> import methods
>>> methods.available()                 # sorted registered names
>>> m = methods.get("dpo", beta=0.1)    # validated instance
>>> out = m.loss(batch)                 # batch: methods.TokenBatch

A method is registered with ``@methods.register("name")`` on a ``PreferenceMethod``
subclass, in a module of this package, in a plugin module named on the command line or in
a suite (``load_plugin``), or in an installed package declaring an entry point in the group
``harness.methods``. Formulas and sources: each module's docstring and REFERENCE.md.

``import methods`` loads no torch: the method modules import it through ``methods._torch``
on their first tensor operation, so listing and checking methods stays fast.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any

from .base import (
    FEATURES,
    BatchError,
    HParam,
    LossOutput,
    MethodConfigError,
    PreferenceMethod,
    TokenBatch,
)
from .registry import Registry, RegistryError
from .settings import Range, SettingError, did_you_mean

__all__ = [
    "FEATURES", "BatchError", "HParam", "LossOutput", "MethodConfigError", "PreferenceMethod",
    "Range", "Registry", "RegistryError", "SettingError", "TokenBatch", "available", "get",
    "get_class", "load_plugin", "register", "did_you_mean",
]

ENTRY_POINT_GROUP = "harness.methods"
REGISTRY: Registry[type[PreferenceMethod]] = Registry("method")
_discovered = False


def register(name: str):
    """Class decorator: ``@methods.register("cdpo")`` on a ``PreferenceMethod`` subclass."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, PreferenceMethod)):
            raise TypeError(f"@methods.register({name!r}) must decorate a PreferenceMethod subclass")
        REGISTRY.register(name, cls)
        if cls.__dict__.get("name") in (None, "?"):
            cls.name = name
        return cls

    return deco


def _discover() -> None:
    """Import the built-in method modules and installed entry points, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "registry", "settings") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken third-party package must not hide the built-ins
            print(f"warning: entry point {ep.name!r} ({ep.value}) in group "
                  f"{ENTRY_POINT_GROUP!r} failed to load: {e}", file=sys.stderr)


def available() -> list[str]:
    _discover()
    return REGISTRY.names()


def get_class(name: str) -> type[PreferenceMethod]:
    _discover()
    try:
        return REGISTRY.get(name)
    except RegistryError as e:
        raise MethodConfigError(str(e)) from None


def get(name: str, **hparams: Any) -> PreferenceMethod:
    """A configured method instance; unknown names and bad hyperparameters raise
    ``MethodConfigError`` with the fix in the message."""
    return get_class(name)(**hparams)


def load_plugin(spec: str, base_dir: str | Path | None = None) -> None:
    """Import a plugin that registers methods: a ``.py`` file path (relative paths resolve
    against ``base_dir``, then the working directory) or a dotted module name."""
    _discover()
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
            path = Path(base_dir) / path
        path = path.resolve()
        if not path.is_file():
            raise MethodConfigError(f"plugin file {spec!r} not found (looked for {path})")
        # Executed on every call: loading a plugin twice re-registers the same qualified
        # names, which the registry accepts, and a registry reset (tests) is refilled.
        modname = "harness_plugin_" + path.stem.replace("-", "_")
        mspec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[modname] = module
        try:
            mspec.loader.exec_module(module)
        except Exception:
            del sys.modules[modname]
            raise
    else:
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as e:
            raise MethodConfigError(
                f"plugin module {spec!r} could not be imported ({e}); give a .py path or an "
                f"importable module name"
            ) from None
