"""Identity of a configuration: canonical JSON and its hash, from which cell and stage ids are
made (DESIGN.md, "Results": a rerun recognises finished work by them)."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal configurations give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(obj: Any, n: int = 10) -> str:
    """First ``n`` hex digits of sha256 over ``canonical(obj)``."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]
