"""lm-eval's own task names: which a suite may list, where they live, and what they need.

A suite's ``eval.lm_eval_tasks`` (and ``python -m harness eval --tasks``) takes three kinds of
name, resolved in this order:

1. the local tasks written from the embedded task (``embedded_gen``, ``embedded_mc``) and any
   task defined under an include folder;
2. the project's aliases for the paper's Table 1 (``mmlu``, ``gsm8k``, ``gpqa``, ``gpqa_diamond``,
   ``humaneval``, ``truthfulqa``, ``ifeval``: :data:`harness.evaluate.lmeval.STANDARD_BENCHMARKS`,
   with the paper's few-shot settings and headline metrics);
3. any task or group that the installed lm-eval defines (``hellaswag``, ``truthfulqa_mc2``,
   ``arc_challenge``, ``mmlu_pro``, ...), run with the task's own defaults.

Finding a name among lm-eval's ~14.7k tasks with its own index takes 7-30 s, so the names are
found by a text scan of the task YAML files (``task:``, ``group:`` and ``tag:`` keys, quoted or
not; ~1 s, once per process), which finds every task and group lm-eval 0.4.13 indexes (checked
against its full index by ``tests/test_lmeval_names.py``); only the folder that holds the name is
then indexed by lm-eval itself, to confirm it and read its config. A *tag* (a label shared by
many tasks, with no aggregated result) is refused with the advice to list the tasks or a group.

For a task found this way :func:`resolve` reports what it needs before anything runs: the hub
data sets its YAML reads (``dataset_path``, for the offline check), the third-party Python
modules its folder's code imports (IFEval's ``langdetect``, ...), and whether it runs
model-written code (``unsafe_code``).
"""
from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

_KEY = re.compile(r"""^["']?(task|group|tag)["']?:[ \t]*(.*)$""", re.M)
_TAG_BLOCK = re.compile(r"""^["']?tag["']?:[ \t]*\n((?:[ \t]*-[ \t]*.+\n?)+)""", re.M)
_IMPORT = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", re.M)


@dataclass(frozen=True)
class NativeTask:
    """A task or group of the installed lm-eval."""

    name: str
    folder: Path
    kind: str  # "gen" (generate_until) or "mc" (anything scored by log-likelihood)
    datasets: tuple[str, ...]
    requires: tuple[str, ...]  # third-party modules its folder's code imports
    unsafe_code: bool


class TagName(ValueError):
    """The name is an lm-eval tag (a label of many tasks), not a task or group."""


def tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _values(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        return [v.strip().strip("'\"") for v in raw.strip("[]").split(",") if v.strip()]
    return [raw.strip("'\"")] if raw and not raw.startswith("!") else []


@functools.lru_cache(maxsize=1)
def native_index() -> dict[str, Path]:
    """Every task, group and tag name in the installed lm-eval's YAML files -> its folder."""
    names: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(tasks_dir()):
        for f in sorted(files):
            if not (f.endswith(".yaml") or f.endswith("_yaml")):
                continue
            try:
                text = Path(dirpath, f).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            found = [v for _, raw in _KEY.findall(text) for v in _values(raw)]
            for block in _TAG_BLOCK.findall(text):
                found += [ln.strip()[1:].strip().strip("'\"") for ln in block.splitlines() if ln.strip()]
            for v in found:
                names.setdefault(v, Path(dirpath))
    return names


def _task_manager(folders: list[Path]):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in folders], include_defaults=False)


def resolve(name: str) -> NativeTask | None:
    """The installed lm-eval's task or group ``name``, or None if lm-eval has no such name.
    Raises :class:`TagName` for a tag."""
    folder = native_index().get(name)
    if folder is None:
        return None
    tm = _task_manager([folder])
    entry = tm.task_index.get(name)
    if entry is None:
        return None
    kind = getattr(entry.kind, "name", str(entry.kind)).upper()
    if kind == "TAG":
        members = sorted(n for n, e in tm.task_index.items() if name in (getattr(e, "tags", None) or ()))
        raise TagName(f"{name!r} is an lm-eval tag of {len(members)} task(s) ({', '.join(members[:5])}"
                      f"{', ...' if len(members) > 5 else ''}), which has no single result: list the tasks, "
                      f"or a group")
    cfgs = _configs(tm, name, kind)
    out_types = {c.get("output_type") for c in cfgs}
    return NativeTask(
        name=name, folder=folder,
        kind="gen" if out_types == {"generate_until"} else "mc",
        datasets=tuple(sorted({str(c["dataset_path"]) for c in cfgs if c.get("dataset_path")
                               and c.get("dataset_path") not in ("json", "csv", "parquet", "text")})),
        requires=module_requirements(cfgs),
        unsafe_code=any(bool(c.get("unsafe_code")) for c in cfgs))


def _configs(tm, name: str, kind: str, depth: int = 0) -> list[dict]:
    """The YAML configs of a task, or of a group's tasks (as far as the folder's index holds them)."""
    entry = tm.task_index.get(name)
    if entry is None or depth > 4:
        return []
    cfg = dict(getattr(entry, "cfg", None) or {})
    if kind == "TAG":
        return [dict(e.cfg or {}) for n, e in sorted(tm.task_index.items())
                if name in (getattr(e, "tags", None) or ()) and getattr(e, "cfg", None)]
    if kind != "GROUP":
        return [cfg]
    subs = cfg.get("task") or []
    out = []
    for s in subs if isinstance(subs, list) else [subs]:
        if isinstance(s, str):
            sub = tm.task_index.get(s)
            sk = getattr(getattr(sub, "kind", None), "name", "TASK").upper() if sub is not None else "TASK"
            out += _configs(tm, s, sk, depth + 1)
        elif isinstance(s, dict):
            out.append(s)
    return out


def _code_files(cfg) -> set[Path]:
    """The Python files a task config calls: lm-eval resolves ``!function utils.f`` to the
    string ``/abs/folder/utils.f``."""
    found: set[Path] = set()
    if isinstance(cfg, dict):
        for v in cfg.values():
            found |= _code_files(v)
    elif isinstance(cfg, list):
        for v in cfg:
            found |= _code_files(v)
    elif isinstance(cfg, str) and cfg.startswith("/") and "." in Path(cfg).name:
        f = Path(cfg).with_name(Path(cfg).name.rsplit(".", 1)[0] + ".py")
        if f.is_file():
            found.add(f)
    return found


def _local_module(mod: str, here: Path) -> Path | None:
    """The file of a module that belongs to lm-eval's tasks (or sits next to ``here``)."""
    parts = mod.split(".")
    if parts[:2] == ["lm_eval", "tasks"]:
        base = tasks_dir().joinpath(*parts[2:])
    elif len(parts) == 1 and (here.parent / f"{mod}.py").is_file():
        base = here.parent / mod
    else:
        return None
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def module_requirements(cfgs: list[dict]) -> tuple[str, ...]:
    """Third-party top-level modules that the code of these task configs imports, following
    imports of other task modules (static, with ``ast``; imports guarded by ``try`` are
    optional and left out, as are the standard library and lm_eval itself)."""
    import ast

    todo = sorted(set().union(*(_code_files(c) for c in cfgs)) if cfgs else set())
    seen: set[Path] = set()
    mods: set[str] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError):
            continue
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [a.name for a in node.names] + ([node.module] if node.module else [])
            for n in names:
                local = _local_module(n, f)
                if local is not None:
                    todo.append(local)
                    continue
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top != "lm_eval" and not (f.parent / f"{top}.py").is_file():
                    mods.add(top)
    return tuple(sorted(mods))


def all_names() -> list[str]:
    """Every name lm-eval's YAML files define (for did-you-mean)."""
    return sorted(native_index())
