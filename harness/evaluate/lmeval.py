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

import json
import logging
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness.errors import UserError
from harness.hub import OFFLINE_FLAGS, endpoint, hub_reachable, offline
from harness.results import atomic_write_text
from methods.settings import did_you_mean

log = logging.getLogger(__name__)

EMBEDDED_TASKS = ("embedded_gen", "embedded_mc")
# what the benchmarks extra of pyproject.toml installs: the modules the paper suite's
# benchmarks import beyond lm-eval's own dependencies (IFEval's; HumanEval's `evaluate` and
# everyone's `nltk` come with lm-eval and the harness)
BENCHMARK_EXTRA_MODULES = ("langdetect", "immutabledict", "nltk", "evaluate")
LOCAL_TASK_VERSION = 1.0


# ------------------------------------------------------------------- standard benchmarks
@dataclass(frozen=True)
class Benchmark:
    """One standard benchmark as lm-eval 0.4.13 defines it.

    ``task``: lm-eval task (or group) name; ``folder``: its folder under ``lm_eval/tasks``
    (indexed instead of all built-in tasks); ``num_fewshot``: the standard setting (passed
    explicitly, MMLU's YAML would default to 0); ``metric``: the flat key reported as the
    headline number; ``datasets``: hub data sets it reads (checked offline);
    ``requires``: extra Python modules; ``kind``: ``gen`` or ``mc``, which picks the smoke
    stand-in; ``gated``: the hub data set needs an accepted licence and a token.
    """

    task: str
    folder: str
    num_fewshot: int | None
    metric: str
    kind: str
    datasets: tuple[str, ...]
    note: str
    requires: tuple[str, ...] = ()
    gated: bool = False
    unsafe_code: bool = False

    def __getitem__(self, key: str) -> Any:  # dict-style access: STANDARD_BENCHMARKS["mmlu"]["task"]
        return getattr(self, key)


STANDARD_BENCHMARKS: dict[str, Benchmark] = {
    "mmlu": Benchmark(
        task="mmlu", folder="mmlu/default", num_fewshot=5, metric="acc", kind="mc",
        datasets=("cais/mmlu",),
        note="57 subjects, 5-shot (first 5 dev examples), acc averaged over subjects weighted by size"),
    "gsm8k": Benchmark(
        task="gsm8k", folder="gsm8k", num_fewshot=5, metric="exact_match_strict_match", kind="gen",
        datasets=("openai/gsm8k",),
        note="5-shot greedy; strict-match ('#### N') and flexible-extract (last number) both reported"),
    "gpqa": Benchmark(
        task="gpqa_main_zeroshot", folder="gpqa/zeroshot", num_fewshot=0, metric="acc_norm", kind="mc",
        datasets=("Idavidrein/gpqa",), gated=True,
        note="GPQA main set (448 questions), zero-shot multiple choice; the paper does not say which "
             "subset or prompt, main/zero-shot is lm-eval's base variant"),
    "gpqa_diamond": Benchmark(
        task="gpqa_diamond_zeroshot", folder="gpqa/zeroshot", num_fewshot=0, metric="acc_norm", kind="mc",
        datasets=("Idavidrein/gpqa",), gated=True,
        note="GPQA diamond subset (198 questions), zero-shot multiple choice"),
    "humaneval": Benchmark(
        task="humaneval", folder="humaneval", num_fewshot=0, metric="pass_at_k", kind="gen",
        datasets=("openai/openai_humaneval",), requires=("evaluate",), unsafe_code=True,
        note="pass@1, greedy; EXECUTES generated code (needs allow_code_execution=True); "
             "evaluate's code_eval metric is fetched from the hub on first use"),
    "truthfulqa": Benchmark(
        task="truthfulqa_mc2", folder="truthfulqa", num_fewshot=0, metric="acc", kind="mc",
        datasets=("truthfulqa/truthful_qa",),
        note="MC2: normalized probability mass on the true answers, zero-shot (6-shot QA preamble in the prompt)"),
    "ifeval": Benchmark(
        task="ifeval", folder="ifeval", num_fewshot=0, metric="prompt_level_strict_acc", kind="gen",
        datasets=("google/IFEval",), requires=("langdetect", "immutabledict", "nltk"),
        note="541 prompts, greedy up to 1280 tokens; prompt- and instruction-level, strict and loose "
             "accuracy all reported; nltk fetches its punkt tokenizer on first use"),
}


def smoke_standin(task_name: str) -> str:
    """The local task that ``run --smoke`` runs in place of ``task_name``: ``embedded_gen`` for
    generative tasks (GSM8K, HumanEval, IFEval, any ``generate_until`` task of lm-eval),
    ``embedded_mc`` for the others (MMLU, GPQA, TruthfulQA, HellaSwag...). Local task names map
    to themselves."""
    if task_name in EMBEDDED_TASKS:
        return task_name
    b = STANDARD_BENCHMARKS.get(task_name)
    if b is not None:
        return "embedded_gen" if b.kind == "gen" else "embedded_mc"
    native = _native(task_name)
    if isinstance(native, str):
        raise UserError(native)
    return "embedded_gen" if native.kind == "gen" else "embedded_mc"


def known_task_names(include_path: Path | str | None = None) -> list[str]:
    """The names listed by name: the embedded tasks, the project's aliases and the tasks,
    groups and tags defined under ``include_path`` (any task or group of the installed lm-eval
    is accepted too: :mod:`harness.evaluate.lmeval_tasks`)."""
    names = set(EMBEDDED_TASKS) | set(STANDARD_BENCHMARKS)
    if include_path is not None:
        names |= set(_task_manager([Path(include_path)]).all_tasks)
    return sorted(names)


def _unknown_message(name: str, known: Sequence[str]) -> str:
    from . import lmeval_tasks

    hint = did_you_mean(name, list(known)) or did_you_mean(name, lmeval_tasks.all_names())
    return (f"eval.lm_eval_tasks: unknown lm-eval task {name!r}.{hint} Give one of {', '.join(known)}, "
            f"or the name of any task or group of the installed lm-eval (`lm_eval ls tasks` lists them)")


def _native(name: str):
    """lm-eval's own task ``name`` (a :class:`lmeval_tasks.NativeTask`), or the problem with it."""
    from . import lmeval_tasks

    try:
        found = lmeval_tasks.resolve(name)
    except lmeval_tasks.TagName as e:
        return f"eval.lm_eval_tasks: {e}"
    return found if found is not None else _unknown_message(name, known_task_names())


# --------------------------------------------------------------------------- availability
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


def check_available(tasks: Sequence[str], *, include_path: Path | str | None = None,
                    allow_code_execution: bool = False) -> None:
    """Fail fast, before any model work, when a listed task cannot run here.

    Raises :class:`UserError` listing every problem: unknown names (with a did-you-mean),
    embedded tasks without an ``include_path``, a standard benchmark whose hub data are
    neither reachable (offline flags set, or a ~2 s TCP probe of the hub fails) nor in the
    local cache, missing Python modules, and HumanEval without ``allow_code_execution``.
    """
    problems: list[str] = []
    local = set(_task_manager([Path(include_path)]).all_tasks) if include_path is not None else set()
    known = sorted(set(EMBEDDED_TASKS) | set(STANDARD_BENCHMARKS) | local)
    hub: bool | None = None  # probed once, only if needed
    for name in tasks:
        if name in local:
            continue
        if name in EMBEDDED_TASKS:
            problems.append(
                f"eval.lm_eval_tasks: {name!r} is written by the harness from the embedded task "
                f"(write_local_tasks); pass the folder it was written to as include_path"
                + (f" (no {name!r} under {include_path})" if include_path is not None else ""))
            continue
        b = STANDARD_BENCHMARKS.get(name)
        if b is None:
            native = _native(name)
            if isinstance(native, str):
                problems.append(native if "unknown lm-eval task" not in native else _unknown_message(name, known))
                continue
            b = Benchmark(task=name, folder=str(native.folder.relative_to(_lm_eval_tasks_dir())), num_fewshot=None,
                          metric="", kind=native.kind, datasets=native.datasets, note="lm-eval's own task",
                          requires=native.requires, unsafe_code=native.unsafe_code)
        missing = [m for m in b.requires if find_spec(m) is None]
        if missing:
            extra = set(missing) <= set(BENCHMARK_EXTRA_MODULES)
            problems.append(f"eval.lm_eval_tasks: {'benchmark' if name in STANDARD_BENCHMARKS else 'lm-eval task'} "
                            f"{name!r} needs the Python module(s) {', '.join(missing)}; install "
                            + ("the benchmarks extra: pip install 'prefopt-harness[benchmarks]'" if extra
                               else f"them: pip install {' '.join(missing)}"))
        if b.unsafe_code and not allow_code_execution:
            problems.append(f"eval.lm_eval_tasks: benchmark {name!r} runs model-written code on this "
                            f"machine without a sandbox; enable it explicitly (allow_code_execution) "
                            f"and only in a disposable container, or drop {name!r}")
        uncached = [d for d in b.datasets if not _cached(d)]
        if not uncached:
            continue
        if offline():
            why = f"offline mode is on ({' / '.join(OFFLINE_FLAGS)})"
        else:
            if hub is None:
                hub = hub_reachable()
            why = None if hub else f"the hub ({endpoint()}) is unreachable"
        if why:
            problems.append(
                f"eval.lm_eval_tasks: benchmark {name!r} (lm-eval task {b.task!r}) loads "
                f"{', '.join(uncached)} from the Hugging Face hub, but {why} and there is no local copy "
                f"under HF_DATASETS_CACHE ({_cache_dirs()[0]}). Run it on a connected machine, or "
                f"copy the data set into that cache; `run --smoke` swaps in the local stand-in "
                f"{smoke_standin(name)!r}")
        elif b.gated and not _has_token():
            problems.append(f"eval.lm_eval_tasks: benchmark {name!r} reads the gated data set "
                            f"{', '.join(uncached)}: accept its terms on the hub and set HF_TOKEN")
    if problems:
        raise UserError(problems=problems)


def _has_token() -> bool:
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token
        return get_token() is not None
    except Exception:  # noqa: BLE001 - an unreadable token file is "no token"
        return False


# --------------------------------------------------------------------------- local tasks
def write_local_tasks(out_dir: Path, gen_examples: Sequence[dict], mc_examples: Sequence[dict],
                      prefix: str = "embedded", *, until: Sequence[str] = ("\n",),
                      max_gen_toks: int = 32, target_delimiter: str = "",
                      strip_whitespace: bool = True) -> list[str]:
    """Write offline lm-eval tasks (JSONL data + YAML config) into ``out_dir``.

    ``gen_examples``: ``{"prompt", "answer"}`` rows -> task ``<prefix>_gen``: greedy
    ``generate_until`` (stops at ``until`` or the tokenizer's EOS, at most ``max_gen_toks``
    tokens), scored by ``exact_match`` of the output against ``answer`` (leading/trailing
    whitespace ignored when ``strip_whitespace``).
    ``mc_examples``: ``{"question", "choices": [str], "gold": int}`` rows -> task
    ``<prefix>_mc``: the log-likelihood of each choice after the question; ``acc`` picks the
    largest, ``acc_norm`` the largest per character of the choice.
    ``target_delimiter`` goes between prompt and answer/choice; "" suits the embedded tasks,
    whose prompts end in "=" and whose answers follow with no space.
    Returns the task names written (a task with no examples is skipped). Raises
    :class:`DataError`-style :class:`UserError` naming the row when a row is malformed.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    if gen_examples:
        rows = [_gen_row(i, r) for i, r in enumerate(gen_examples)]
        name = f"{prefix}_gen"
        ignore = [r"^\s+", r"\s+$"] if strip_whitespace else []
        metric: dict[str, Any] = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
        if ignore:
            metric["regexes_to_ignore"] = ignore
        _write_task(out_dir, name, rows, {
            "output_type": "generate_until",
            "doc_to_text": "prompt",
            "doc_to_target": "answer",
            "target_delimiter": target_delimiter,
            "generation_kwargs": {"until": list(until), "do_sample": False, "max_gen_toks": int(max_gen_toks)},
            "metric_list": [metric],
        })
        names.append(name)
    if mc_examples:
        rows = [_mc_row(i, r) for i, r in enumerate(mc_examples)]
        name = f"{prefix}_mc"
        _write_task(out_dir, name, rows, {
            "output_type": "multiple_choice",
            "doc_to_text": "question",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": target_delimiter,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")],
        })
        names.append(name)
    return names


def _gen_row(i: int, r: dict) -> dict:
    if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("answer"), str):
        raise UserError(f"lm-eval generative example {i}: needs string fields 'prompt' and 'answer', got {r!r}")
    return {"prompt": r["prompt"], "answer": r["answer"]}


def _mc_row(i: int, r: dict) -> dict:
    ch = r.get("choices") if isinstance(r, dict) else None
    ok = (isinstance(r, dict) and isinstance(r.get("question"), str) and isinstance(ch, list) and len(ch) >= 2
          and all(isinstance(c, str) and c for c in ch) and isinstance(r.get("gold"), int)
          and not isinstance(r.get("gold"), bool) and 0 <= r["gold"] < len(ch))
    if not ok:
        raise UserError(f"lm-eval multiple-choice example {i}: needs 'question' (str), 'choices' "
                        f"(>= 2 non-empty str) and 'gold' (int index into choices), got {r!r}")
    return {"question": r["question"], "choices": list(ch), "gold": int(r["gold"])}


def _write_task(out_dir: Path, name: str, rows: list[dict], body: dict) -> None:
    import yaml

    data = out_dir / f"{name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},  # absolute: see module docstring
        "test_split": "test",
        **body,
        "num_fewshot": 0,
        "metadata": {"version": LOCAL_TASK_VERSION},
    }
    atomic_write_text(out_dir / f"{name}.yaml", yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


# ------------------------------------------------------------------------------ running
def _task_manager(paths: list[Path]):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in paths], include_defaults=False)


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


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
    from lm_eval.api.model import LM

    local = set(_task_manager([Path(include_path)]).all_tasks) if include_path is not None else set()
    # Friendly name -> (lm-eval task, default few-shot); local names win over benchmark names,
    # which win over lm-eval's own names (run with the task's own defaults).
    plan: dict[str, tuple[str, int | None]] = {}
    folders: list[Path] = [Path(include_path)] if include_path is not None else []
    for name in tasks:
        if name in local:
            plan[name] = (name, None)
            continue
        b = STANDARD_BENCHMARKS.get(name)
        if b is not None:
            plan[name], folder = (b.task, b.num_fewshot), _lm_eval_tasks_dir() / b.folder
        else:
            plan[name], folder = (name, None), _native(name).folder  # checked above
        if folder not in folders:
            folders.append(folder)
    task_manager = _task_manager(folders)
    if not {t for t, _ in plan.values()} <= set(task_manager.all_tasks):
        from lm_eval.tasks import TaskManager  # a group reaching into other folders: index all

        task_manager = TaskManager(include_path=[str(p) for p in folders[:1] if include_path is not None] or None)

    # simple_evaluate takes one num_fewshot for all its tasks: one call per distinct setting.
    groups: dict[int | None, list[str]] = {}
    for name, (_, shots) in plan.items():
        groups.setdefault(num_fewshot if num_fewshot is not None else shots, []).append(name)

    unsafe = any(n not in local and (STANDARD_BENCHMARKS[n].unsafe_code if n in STANDARD_BENCHMARKS
                                     else _native(n).unsafe_code) for n in tasks)
    out: dict[str, float] = {}
    with _on_device(model, device), _preserved_rng(), \
            _env(**({"HF_ALLOW_CODE_EVAL": "1"} if unsafe and allow_code_execution else {})):
        if isinstance(model, LM):
            lm = model
        else:
            from lm_eval.models.huggingface import HFLM

            # device goes to HFLM only (passing it again via model_args is a TypeError).
            lm = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=batch_size)
        for shots, names in groups.items():
            with torch.no_grad():
                res = simple_evaluate(
                    model=lm, tasks=[plan[n][0] for n in names], num_fewshot=shots,
                    batch_size=batch_size, limit=limit, task_manager=task_manager,
                    log_samples=False, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed,
                    confirm_run_unsafe_code=bool(allow_code_execution and unsafe),
                )
            if res is None:  # non-zero rank under a distributed launcher
                continue
            for n in names:
                out.update(flatten_results(res, plan[n][0], n))
    return out


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
