"""The Hugging Face hub from this machine: one answer to "offline?" and "reachable?".

Every part of the harness that could download (models, data sets, lm-eval benchmarks, the
``run`` pre-flight check) asks here, so they all agree:

* ``offline()``: the user asked for offline mode: any of ``HF_HUB_OFFLINE``,
  ``TRANSFORMERS_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is true as Hugging Face's libraries
  read it (``1``, ``ON``, ``YES``, ``TRUE``, any case). ``HF_HUB_OFFLINE=false`` (or ``0``,
  or empty) means online, as it does for ``huggingface_hub`` itself. One flag is enough:
  datasets, transformers and huggingface_hub each read only their own, and a machine that
  is offline for one is offline for all.
* ``hub_reachable()``: a bounded TCP probe of the hub endpoint (``HF_ENDPOINT``), for failing
  in seconds where the libraries would retry for tens of seconds.
"""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants.ENV_VARS_TRUE_VALUES


def flag_on(name: str) -> bool:
    """An environment flag as Hugging Face's libraries read it."""
    return os.environ.get(name, "").strip().upper() in _TRUE


def offline() -> bool:
    """Whether the user asked for offline mode (see the module docstring)."""
    return any(flag_on(v) for v in OFFLINE_FLAGS)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = 2.0) -> bool:
    """A TCP connect to the hub endpoint, bounded by ``timeout`` seconds including DNS (run
    in a daemon thread: ``getaddrinfo`` ignores socket timeouts)."""
    url = urlparse(endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


SMOLLM2_FETCH = "scripts/fetch_smollm2.sh"  # a real model that works offline (ENVIRONMENT.md)


def in_cache(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether ``filename`` of the hub repository ``repo_id`` is in the local hub cache (what
    an offline load can use)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
    except Exception:  # a malformed id, an unreadable cache: not cached
        return False


def model_problem(name: str, repo_id: str, gguf_file: str | None = None, revision: str | None = None,
                  probe: bool = True) -> str | None:
    """Why the hub model ``repo_id`` (the suite's model ``name``) cannot be loaded on this
    machine, or None: offline (or, with ``probe``, the hub unreachable) and not in the local
    hub cache. The one answer for ``validate``, ``run``'s pre-flight check and model loading."""
    if in_cache(repo_id, gguf_file or "config.json", revision):
        return None
    if offline():
        why = f"cannot be downloaded here (offline: {' / '.join(OFFLINE_FLAGS)} is set)"
    elif probe and not hub_reachable():
        why = f"cannot be downloaded here (the hub, {endpoint()}, is unreachable)"
    else:
        return None
    return (f"model {name!r}: hub id {repo_id!r} {why} and is not in the local hub cache. Use a local "
            f"`path:` to the model files (e.g. a save_pretrained folder, or `{SMOLLM2_FETCH}` for a GGUF "
            f"model that works offline), run on a connected machine, or use `run --smoke` to swap in a "
            f"tiny stand-in.")
