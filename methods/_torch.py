"""``torch`` and ``torch.nn.functional``, imported on first use.

The method modules read like the papers (``torch.where(...)``, ``F.logsigmoid(...)``) but
import torch through these stand-ins, so that ``import methods`` (the registry, the
hyperparameter checks, ``methods.get``) loads no torch: ``harness report`` and ``validate``
of a suite without plugins then start in a fraction of a second instead of several. The first
attribute read imports the module; each attribute is then kept on the stand-in, so later
reads cost what a module attribute costs.
"""
from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str):
        self.__dict__["_name"] = name

    def __getattr__(self, attr: str) -> Any:  # only called for attributes not yet kept
        value = getattr(importlib.import_module(self._name), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch: Any = LazyModule("torch")
F: Any = LazyModule("torch.nn.functional")
