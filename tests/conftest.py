"""Test-wide settings: offline, one torch thread, headless plotting."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HARNESS_NO_PROGRESS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_method_registry():
    """Methods a test registers (throwaway names, plugins) vanish after it, so no test sees
    another's registrations in `methods.available()` or in error messages."""
    import methods

    methods.available()  # built-ins and entry points first, so they are part of the snapshot
    saved = dict(methods.REGISTRY._entries)
    yield
    methods.REGISTRY._entries.clear()
    methods.REGISTRY._entries.update(saved)
