"""What a name in ``eval.lm_eval_tasks`` stands for: the local tasks written from the embedded
task, the project's aliases for the paper's standard benchmarks (:data:`STANDARD_BENCHMARKS`,
with their few-shot settings, headline metrics and hub data sets), or any task or group of the
installed lm-eval (:mod:`harness.evaluate.lmeval_tasks`); the local stand-in ``run --smoke``
runs in place of each; and the unknown-name message with its did-you-mean.

Torch-free and lm-eval-free at import: ``validate`` reads the table without loading either.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.errors import UserError
from methods.settings import did_you_mean

EMBEDDED_TASKS = ("embedded_gen", "embedded_mc")
# what the benchmarks extra of pyproject.toml installs: the modules the paper suite's
# benchmarks import beyond lm-eval's own dependencies (IFEval's; HumanEval's `evaluate` and
# everyone's `nltk` come with lm-eval and the harness)
BENCHMARK_EXTRA_MODULES = ("langdetect", "immutabledict", "nltk", "evaluate")


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
    native = native_task(task_name)
    if isinstance(native, str):
        raise UserError(native)
    return "embedded_gen" if native.kind == "gen" else "embedded_mc"


def known_task_names(include_path: Path | str | None = None) -> list[str]:
    """The names listed by name: the embedded tasks, the project's aliases and the tasks,
    groups and tags defined under ``include_path`` (any task or group of the installed lm-eval
    is accepted too: :mod:`harness.evaluate.lmeval_tasks`)."""
    names = set(EMBEDDED_TASKS) | set(STANDARD_BENCHMARKS)
    if include_path is not None:
        names |= set(task_manager([Path(include_path)]).all_tasks)
    return sorted(names)


def unknown_message(name: str, known: Sequence[str]) -> str:
    """The error for an unknown task name: a did-you-mean among ``known``, else among every
    name of the installed lm-eval."""
    from . import lmeval_tasks

    hint = did_you_mean(name, list(known)) or did_you_mean(name, lmeval_tasks.all_names())
    return (f"eval.lm_eval_tasks: unknown lm-eval task {name!r}.{hint} Give one of {', '.join(known)}, "
            f"or the name of any task or group of the installed lm-eval (`lm_eval ls tasks` lists them)")


def native_task(name: str):
    """lm-eval's own task ``name`` (a :class:`lmeval_tasks.NativeTask`), or the problem with it."""
    from . import lmeval_tasks

    try:
        found = lmeval_tasks.resolve(name)
    except lmeval_tasks.TagName as e:
        return f"eval.lm_eval_tasks: {e}"
    return found if found is not None else unknown_message(name, known_task_names())


def task_manager(paths: list[Path]):
    """An lm-eval ``TaskManager`` that indexes only ``paths`` (not the ~14.7k built-in tasks)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in paths], include_defaults=False)


def lm_eval_tasks_dir() -> Path:
    """The installed lm-eval's task folder (``lm_eval/tasks``)."""
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"
