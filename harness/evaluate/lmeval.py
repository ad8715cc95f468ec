"""lm-eval tasks, run in-process on a model already in memory.

Two kinds of task go through the same path (``lm_eval.simple_evaluate`` with an ``HFLM``
wrapped around the in-memory model and tokenizer):

* **local tasks** written by :func:`write_local_tasks` from the embedded tasks' held-out data:
  ``<prefix>_gen`` (``generate_until``, greedy, ``exact_match`` against the answer) and
  ``<prefix>_mc`` (``multiple_choice``, ``acc`` and ``acc_norm``). They need no network.
  Route chosen: one JSONL data file plus one YAML config per task in a folder that is passed
  as ``TaskManager(include_path=DIR, include_defaults=False)``. YAML (rather than in-memory
  dicts) because the folder is then a self-contained, inspectable artifact that the lm-eval
  CLI can rerun (``lm_eval --include_path DIR --tasks embedded_gen``), and because names in
  an include path are what the did-you-mean check lists. ``data_files`` are written as
  ABSOLUTE paths: lm-eval resolves relative ones against the working directory, not the
  YAML's folder.
* **standard benchmarks** (the paper's Table 1: MMLU, GSM8K, GPQA, HumanEval, TruthfulQA,
  IFEval), see :data:`STANDARD_BENCHMARKS`. Their data come from the Hugging Face hub, so
  they run on connected machines (or with a local copy in ``HF_DATASETS_CACHE``).
  :func:`check_available` fails fast (no hub call, at most a ~2 s TCP probe) before any model
  work; ``run --smoke`` swaps each one for a local stand-in (:func:`smoke_standin`). Only the
  benchmark's own task folder inside ``lm_eval/tasks`` is indexed, not all ~14.7k built-in
  tasks (which takes ~7 s).

The parts, one job per module, all importable from here: :mod:`.lmeval_benchmarks` (what a
name stands for: :data:`STANDARD_BENCHMARKS`, :func:`smoke_standin`, :func:`known_task_names`),
:mod:`.lmeval_check` (:func:`check_available`) and :mod:`.lmeval_local`
(:func:`write_local_tasks`); this module runs the tasks and flattens their results.

Results are flattened to ``{"lm_eval/<name>/<metric>": float}`` where ``<name>`` is the name
the suite listed (``gsm8k``, ``gpqa``, ``embedded_gen``...):

* lm-eval keys look like ``"<metric>,<filter>"`` and ``"<metric>_stderr,<filter>"``. When a
  task has a single filter (``none`` for most tasks; HumanEval's ``create_test``) the suffix
  is dropped: ``"exact_match,none" -> "exact_match"``, ``"acc_stderr,none" -> "acc_stderr"``.
  When it has several (GSM8K: ``strict-match`` and ``flexible-extract``) the filter is
  appended in snake case: ``exact_match_strict_match``, ``exact_match_strict_match_stderr``.
* lm-eval's ``"N/A"`` stderr (e.g. a single example) is left out rather than written as NaN.
* Bookkeeping rides along as floats with a leading underscore, so every value stays a float:
  ``_version`` (the task's ``metadata.version``), ``_num_fewshot`` and ``_n_samples`` (the
  examples actually scored, after ``limit``). ``lm_eval/<name>/_task`` is not stored (not a
  float); the lm-eval task behind each friendly name is in :data:`STANDARD_BENCHMARKS`.

Determinism: the four seeds of ``simple_evaluate`` (``random_seed``, ``numpy_random_seed``,
``torch_random_seed``, ``fewshot_random_seed``) are all set from ``seed``. lm-eval seeds the
*global* RNGs; :func:`run_lm_eval` saves and restores them (Python, NumPy, torch CPU and CUDA)
so an evaluation in the middle of a run does not change what the caller draws next.

HumanEval executes model-written Python on this machine (lm-eval's ``unsafe_code`` tasks,
through ``evaluate``'s ``code_eval`` metric, with no sandbox). It runs only with the explicit
opt-in ``allow_code_execution=True``, which sets ``HF_ALLOW_CODE_EVAL=1`` for the call and
passes ``confirm_run_unsafe_code=True``. Use it only in a disposable container or VM.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .lmeval_benchmarks import (BENCHMARK_EXTRA_MODULES, EMBEDDED_TASKS, STANDARD_BENCHMARKS,  # noqa: F401
                                Benchmark, known_task_names, lm_eval_tasks_dir, native_task, smoke_standin,
                                task_manager)
from .lmeval_check import check_available
from .lmeval_local import LOCAL_TASK_VERSION, write_local_tasks  # noqa: F401

TaskPlan = dict[str, tuple[str, "int | None"]]  # friendly name -> (lm-eval task, default few-shot)


@contextmanager
def _preserved_rng() -> Iterator[None]:
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_lm_eval(model, tokenizer, tasks: Sequence[str], include_path: Path | None, limit: int | None,
                batch_size: int, device: str, num_fewshot: int | None = None, seed: int = 0, *,
                allow_code_execution: bool = False) -> dict[str, float]:
    """Evaluate an in-memory ``transformers`` causal LM on lm-eval tasks.

    ``model`` is a ``PreTrainedModel`` (wrapped in ``HFLM``) or an ``lm_eval.api.model.LM``
    (used as is; ``tokenizer``/``device``/``batch_size`` are then ignored). ``tasks``: names
    from :func:`known_task_names`; ``include_path``: the folder of local tasks
    (:func:`write_local_tasks`). ``num_fewshot`` overrides every task's default (tasks whose
    config fixes 0 stay zero-shot, lm-eval's rule); by default each benchmark uses its standard
    setting. ``limit``: examples per task. Returns the flat metrics described in the module
    docstring. The model is evaluated on ``device`` in eval mode and put back where and how it
    was; the global RNG states are restored.
    """
    tasks = list(dict.fromkeys(tasks))  # drop repeats, keep order
    if not tasks:
        return {}
    # Before the heavy imports, so an unusable benchmark fails in well under a second.
    check_available(tasks, include_path=include_path, allow_code_execution=allow_code_execution)

    import torch
    from lm_eval import simple_evaluate

    local = set(task_manager([Path(include_path)]).all_tasks) if include_path is not None else set()
    plan, folders = _plan(tasks, local, include_path)
    manager = _manager(plan, folders, include_path)
    unsafe = any(n not in local and (STANDARD_BENCHMARKS[n].unsafe_code if n in STANDARD_BENCHMARKS
                                     else native_task(n).unsafe_code) for n in tasks)
    out: dict[str, float] = {}
    with _on_device(model, device), _preserved_rng(), \
            _env(**({"HF_ALLOW_CODE_EVAL": "1"} if unsafe and allow_code_execution else {})):
        lm = _as_lm(model, tokenizer, device, batch_size)
        for shots, names in _by_fewshot(plan, num_fewshot).items():
            with torch.no_grad():
                res = simple_evaluate(
                    model=lm, tasks=[plan[n][0] for n in names], num_fewshot=shots,
                    batch_size=batch_size, limit=limit, task_manager=manager,
                    log_samples=False, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed,
                    confirm_run_unsafe_code=bool(allow_code_execution and unsafe),
                )
            if res is None:  # non-zero rank under a distributed launcher
                continue
            for n in names:
                out.update(flatten_results(res, plan[n][0], n))
    return out


def _plan(tasks: list[str], local: set[str], include_path: Path | None) -> tuple[TaskPlan, list[Path]]:
    """Friendly name -> (lm-eval task, default few-shot), and the task folders to index. Local
    names win over benchmark names, which win over lm-eval's own names (run with the task's own
    defaults); every name was checked by :func:`check_available`."""
    plan: TaskPlan = {}
    folders: list[Path] = [Path(include_path)] if include_path is not None else []
    for name in tasks:
        if name in local:
            plan[name] = (name, None)
            continue
        b = STANDARD_BENCHMARKS.get(name)
        if b is not None:
            plan[name], folder = (b.task, b.num_fewshot), lm_eval_tasks_dir() / b.folder
        else:
            plan[name], folder = (name, None), native_task(name).folder
        if folder not in folders:
            folders.append(folder)
    return plan, folders


def _manager(plan: TaskPlan, folders: list[Path], include_path: Path | None):
    """A ``TaskManager`` indexing only ``folders``, or every built-in task when a group reaches
    into other folders."""
    manager = task_manager(folders)
    if not {t for t, _ in plan.values()} <= set(manager.all_tasks):
        from lm_eval.tasks import TaskManager  # a group reaching into other folders: index all

        manager = TaskManager(include_path=[str(p) for p in folders[:1] if include_path is not None] or None)
    return manager


def _by_fewshot(plan: TaskPlan, num_fewshot: int | None) -> dict[int | None, list[str]]:
    """The names grouped by their few-shot setting: ``simple_evaluate`` takes one
    ``num_fewshot`` for all its tasks, so there is one call per distinct setting."""
    groups: dict[int | None, list[str]] = {}
    for name, (_, shots) in plan.items():
        groups.setdefault(num_fewshot if num_fewshot is not None else shots, []).append(name)
    return groups


def _as_lm(model, tokenizer, device: str, batch_size: int):
    """``model`` as lm-eval's ``LM``: as is when it is one, else wrapped in ``HFLM``."""
    from lm_eval.api.model import LM

    if isinstance(model, LM):
        return model
    from lm_eval.models.huggingface import HFLM

    # device goes to HFLM only (passing it again via model_args is a TypeError).
    return HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=batch_size)


@contextmanager
def _on_device(model, device: str) -> Iterator[None]:
    """Evaluate ``model`` on ``device`` in eval mode, then restore its device and mode.
    (HFLM uses a pre-built model where it is and ignores ``device``.)"""
    import torch

    if not isinstance(model, torch.nn.Module):
        yield
        return
    training = model.training
    try:
        before = next(model.parameters()).device
    except StopIteration:
        before = None
    target = torch.device(device)
    moved = before is not None and (before.type != target.type or
                                    (target.index is not None and before.index != target.index))
    if moved:
        model.to(target)
    model.eval()
    try:
        yield
    finally:
        if moved:
            model.to(before)
        model.train(training)


def flatten_results(res: dict, task: str, name: str | None = None) -> dict[str, float]:
    """Flatten one task's entry of ``simple_evaluate``'s output into
    ``{"lm_eval/<name>/<metric>": float}`` (rules in the module docstring)."""
    name = name or task
    entry = (res.get("results") or {}).get(task)
    if entry is None:
        raise KeyError(f"lm-eval returned no results for task {task!r} (got {sorted(res.get('results') or {})})")
    pairs: list[tuple[str, str, Any]] = []
    for key, value in entry.items():
        if "," not in key:
            continue  # "alias", "samples" ...
        metric, filt = key.split(",", 1)
        pairs.append((metric, filt, value))
    filters = {f for _, f, _ in pairs}
    out: dict[str, float] = {}
    for metric, filt, value in pairs:
        flat = metric
        if len(filters) > 1:
            sfx = "_" + filt.replace("-", "_").replace(" ", "_")
            flat = (metric[: -len("_stderr")] + sfx + "_stderr") if metric.endswith("_stderr") else metric + sfx
        num = _as_float(value)
        if num is not None:
            out[f"lm_eval/{name}/{flat}"] = num
    extra = {
        "_version": _as_float((res.get("versions") or {}).get(task)),
        "_num_fewshot": _as_float((res.get("n-shot") or {}).get(task)),
        "_n_samples": _as_float(((res.get("n-samples") or {}).get(task) or {}).get("effective")),
    }
    out.update({f"lm_eval/{name}/{k}": v for k, v in extra.items() if v is not None})
    return out


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
