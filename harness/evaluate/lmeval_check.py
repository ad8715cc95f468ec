"""Whether the listed lm-eval tasks can run here, answered before any model work.

:func:`check_available` lists every problem at once: an unknown name (with a did-you-mean),
an embedded task without the folder it was written to, missing Python modules, a task that
executes model-written code without the explicit opt-in, and a standard benchmark whose hub
data are neither reachable (offline flags set, or a ~2 s TCP probe of the hub fails) nor in
the local cache (or gated, with no token). It makes no hub call and loads no model.
"""
from __future__ import annotations

import functools
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Sequence

from harness.errors import UserError
from harness.hub import OFFLINE_FLAGS, endpoint, hub_reachable, offline

from . import lmeval_benchmarks as names
from .lmeval_benchmarks import BENCHMARK_EXTRA_MODULES, EMBEDDED_TASKS, STANDARD_BENCHMARKS, Benchmark

PREFIX = "eval.lm_eval_tasks"


def check_available(tasks: Sequence[str], *, include_path: Path | str | None = None,
                    allow_code_execution: bool = False) -> None:
    """Fail fast, before any model work, when a listed task cannot run here.

    Raises :class:`UserError` listing every problem: unknown names (with a did-you-mean),
    embedded tasks without an ``include_path``, a standard benchmark whose hub data are
    neither reachable (offline flags set, or a ~2 s TCP probe of the hub fails) nor in the
    local cache, missing Python modules, and HumanEval without ``allow_code_execution``.
    """
    problems: list[str] = []
    local = set(names.task_manager([Path(include_path)]).all_tasks) if include_path is not None else set()
    known = sorted(set(EMBEDDED_TASKS) | set(STANDARD_BENCHMARKS) | local)
    hub_up = functools.cache(hub_reachable)  # probed once, only if needed
    for name in tasks:
        if name in local:
            continue
        if name in EMBEDDED_TASKS:
            problems.append(_embedded_problem(name, include_path))
            continue
        b = _benchmark(name, known)
        if isinstance(b, str):
            problems.append(b)
            continue
        problems += _module_problems(name, b)
        if b.unsafe_code and not allow_code_execution:
            problems.append(f"{PREFIX}: benchmark {name!r} runs model-written code on this "
                            f"machine without a sandbox; enable it explicitly (allow_code_execution) "
                            f"and only in a disposable container, or drop {name!r}")
        problems += _data_problems(name, b, hub_up)
    if problems:
        raise UserError(problems=problems)


def _embedded_problem(name: str, include_path) -> str:
    return (f"{PREFIX}: {name!r} is written by the harness from the embedded task "
            f"(write_local_tasks); pass the folder it was written to as include_path"
            + (f" (no {name!r} under {include_path})" if include_path is not None else ""))


def _benchmark(name: str, known: Sequence[str]) -> Benchmark | str:
    """The project's benchmark ``name``, or lm-eval's own task described as one (its own
    defaults, no headline metric); the problem with the name when it is neither."""
    b = STANDARD_BENCHMARKS.get(name)
    if b is not None:
        return b
    native = names.native_task(name)
    if isinstance(native, str):
        return native if "unknown lm-eval task" not in native else names.unknown_message(name, known)
    return Benchmark(task=name, folder=str(native.folder.relative_to(names.lm_eval_tasks_dir())), num_fewshot=None,
                     metric="", kind=native.kind, datasets=native.datasets, note="lm-eval's own task",
                     requires=native.requires, unsafe_code=native.unsafe_code)


def _module_problems(name: str, b: Benchmark) -> list[str]:
    """The Python modules the task imports that are not installed, and how to install them."""
    missing = [m for m in b.requires if find_spec(m) is None]
    if not missing:
        return []
    extra = set(missing) <= set(BENCHMARK_EXTRA_MODULES)
    return [f"{PREFIX}: {'benchmark' if name in STANDARD_BENCHMARKS else 'lm-eval task'} "
            f"{name!r} needs the Python module(s) {', '.join(missing)}; install "
            + ("the benchmarks extra: pip install 'prefopt-harness[benchmarks]'" if extra
               else f"them: pip install {' '.join(missing)}")]


def _data_problems(name: str, b: Benchmark, hub_up: Callable[[], bool]) -> list[str]:
    """Hub data sets the task reads that have no local copy: a problem when the hub cannot be
    reached (offline flags, or ``hub_up()`` false), or when one is gated and there is no token."""
    uncached = [d for d in b.datasets if not _cached(d)]
    if not uncached:
        return []
    if offline():
        why = f"offline mode is on ({' / '.join(OFFLINE_FLAGS)})"
    else:
        why = None if hub_up() else f"the hub ({endpoint()}) is unreachable"
    if why:
        return [f"{PREFIX}: benchmark {name!r} (lm-eval task {b.task!r}) loads "
                f"{', '.join(uncached)} from the Hugging Face hub, but {why} and there is no local copy "
                f"under HF_DATASETS_CACHE ({_cache_dirs()[0]}). Run it on a connected machine, or "
                f"copy the data set into that cache; `run --smoke` swaps in the local stand-in "
                f"{names.smoke_standin(name)!r}"]
    if b.gated and not _has_token():
        return [f"{PREFIX}: benchmark {name!r} reads the gated data set "
                f"{', '.join(uncached)}: accept its terms on the hub and set HF_TOKEN"]
    return []


def _cache_dirs() -> tuple[Path, Path]:
    """(datasets cache, hub cache), read from the environment at call time."""
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    ds = os.environ.get("HF_DATASETS_CACHE") or hf_home / "datasets"
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or hf_home / "hub"
    return Path(ds), Path(hub)


def _cached(dataset: str) -> bool:
    """Whether a local copy of a hub data set exists: the ``datasets`` arrow cache
    (``org___name``) or the hub file cache (``datasets--org--name``). A presence check only:
    a partial copy still fails later, inside lm-eval."""
    ds, hub = _cache_dirs()
    return (ds / dataset.replace("/", "___")).is_dir() or (hub / f"datasets--{dataset.replace('/', '--')}").is_dir()


def _has_token() -> bool:
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token
        return get_token() is not None
    except Exception:  # noqa: BLE001 - an unreadable token file is "no token"
        return False
