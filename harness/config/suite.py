"""Load a suite and check all of it before anything runs.

Every problem is collected and reported at once (``UserError.problems``), one line each::

    suites/x.yaml:14: train.lr: must be > 0, got -0.001
    suites/x.yaml:31: methods[2].name: unknown method 'dpoo'. Did you mean 'dpo'? Available: ...

The checks run in three layers:

1. YAML, read safely with the line of every key (``source``).
2. Structure, generically from the dataclasses of ``harness.schema`` (``methods.settings``):
   unknown keys at every level (with a did-you-mean and the valid keys), types, ``Literal``
   choices and ``metadata["range"]``.
3. Meaning (here): names and counts, exactly-one-of sources, files that must exist, tasks
   and their arguments, methods and each hyperparameter combination (``variants``), and
   options that contradict each other.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import methods
from methods.settings import did_you_mean

from ..errors import UserError
from ..paths import find_slurm_profile, resolve, slurm_profile_problem
from ..schema import (UNTRAINED, DatasetSpec, EvalSpec, LauncherSpec, SFTSpec, Suite, TinyModelSpec, TrainSpec,
                      merge_train)
from .check import INVALID, FileChecker, items, ok, show
from .source import parse_yaml
from .space import check_protocol
from .variants import Variant, check_methods

SUITE_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# model and data set names become parts of folder names and cell ids
ITEM_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class LoadedSuite:
    """A checked suite. ``path`` is None for a suite given as a dict; relative paths in the
    suite resolve against ``base_dir`` (the suite file's folder)."""

    suite: Suite
    path: Path | None
    base_dir: Path
    text_hash: str
    source: str = "<dict>"
    # ``--set`` options applied (``overrides``), and the edited mapping they gave (``data``)
    overrides: tuple = ()
    data: Any = None


def load_suite(path: str | os.PathLike, overrides: list[str] | tuple = ()) -> LoadedSuite:
    """Read, check and return the suite at ``path``; raise ``UserError`` listing every
    problem (file:line: key: what is wrong; the fix). ``overrides``: ``--set KEY.PATH=VALUE``
    options, applied to the file's mapping before any check (``harness.config.overrides``)."""
    from .overrides import OverriddenChecker, apply_overrides, overridden_hash, parse_overrides

    parsed = parse_overrides(list(overrides))
    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise UserError(f"{source}: suite file not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not UTF-8 text ({e})") from None
    ctx = OverriddenChecker(source)
    data = parse_yaml(text, ctx)
    if data is INVALID:  # unreadable; otherwise keep going and report everything at once
        ctx.raise_if_any()
    if data is None and not parsed:
        raise UserError(f"{source}:1: the suite is empty; it needs at least name, models, datasets "
                        f"and methods (see suites/README.md)")
    if parsed:
        data = {} if data is None else data
        ctx.set_paths = apply_overrides(data, parsed)
    loaded = _check(data, ctx, p, p.resolve().parent, overridden_hash(text, parsed) if parsed
                    else hashlib.sha256(text.encode()).hexdigest())
    if parsed:
        loaded.overrides, loaded.data = tuple(o.text for o in parsed), data
    return loaded


def load_suite_dict(d: dict, source: str = "<dict>", base_dir: str | os.PathLike | None = None) -> LoadedSuite:
    """Check a suite given as a plain dict (tests, programmatic use). Problems carry no
    line numbers; relative paths resolve against ``base_dir`` (default: the working dir)."""
    ctx = FileChecker(source)
    text = json.dumps(d, default=str)  # key order as given; keys may be of mixed types
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    return _check(d, ctx, None, base, hashlib.sha256(text.encode()).hexdigest())


def launcher_overrides(launcher: LauncherSpec, **given: Any) -> LauncherSpec:
    """``launcher`` with the command line's overrides (``run --launcher/--workers``; None: not
    given), checked like the suite's own keys: ``--workers 0`` is an error, not ignored."""
    ctx = FileChecker("command line")
    good = ctx.fields(LauncherSpec, {k: v for k, v in given.items() if v is not None}, ("launcher",))
    ctx.raise_if_any()
    return replace(launcher, **good)


def _check(data: Any, ctx: FileChecker, path: Path | None, base_dir: Path, text_hash: str) -> LoadedSuite:
    ctx.raw = data
    if not isinstance(data, dict):
        ctx.add((), f"the top level must be a mapping of suite keys, got {show(data)}", line=ctx.line(()) or 1)
        ctx.raise_if_any()
    # Top-level keys starting with "x-" hold YAML anchors for reuse and are otherwise ignored
    # (as in docker compose); every other unknown key is an error.
    suite = ctx.dataclass(Suite, {k: v for k, v in data.items() if not str(k).startswith("x-")})
    _check_plugins(suite, ctx, base_dir)
    _check_suite_level(suite, ctx)
    _check_models(suite, ctx, base_dir)
    _check_datasets(suite, ctx, base_dir)
    variants = check_methods(suite, ctx)
    _check_plugin_needs(variants, ctx)
    _check_training(suite, variants, ctx)
    _check_eval_launcher_report(suite, variants, ctx, base_dir)
    check_protocol(suite, variants, ctx, base_dir)
    ctx.raise_if_any()
    return LoadedSuite(suite=suite, path=path, base_dir=base_dir, text_hash=text_hash, source=ctx.source)


def _check_plugins(suite: Suite, ctx: FileChecker, base_dir: Path) -> None:
    for i, spec in items(suite.plugins):
        try:
            methods.load_plugin(spec, base_dir=base_dir)
        except methods.MethodConfigError as e:
            ctx.add(("plugins", i), f"{e}; paths are relative to the suite file's folder")
        except Exception as e:  # the plugin's own code failed; name it and the error
            ctx.add(("plugins", i), f"plugin {spec!r} failed to import: {type(e).__name__}: {e}")


def _check_plugin_needs(variants: list[Variant], ctx: FileChecker) -> None:
    """A plugin method's loss reads only the features it declares (``methods.conformance``:
    the core computes no others, so each cell would fail later on a None tensor). Built-in
    methods are checked by the tests; plugins are run in a child process, which loads torch."""
    todo: dict[str, tuple[type, dict, list[int]]] = {}
    for v in variants:
        if v.name in UNTRAINED:
            continue
        cls = methods.get_class(v.name)
        if cls.__module__ == "methods" or cls.__module__.startswith("methods."):
            continue
        key = json.dumps([v.name, v.hparams], sort_keys=True, default=str)
        todo.setdefault(key, (cls, v.hparams, []))[2].append(v.method_index)
    if not todo:
        return
    from methods.conformance import needs_problems

    for (cls, _, where), problem in zip(todo.values(), needs_problems([(c, hp) for c, hp, _ in todo.values()])):
        for i in dict.fromkeys(where):
            if problem:
                ctx.add(("methods", i, "name"), problem)


def _check_suite_level(suite: Suite, ctx: FileChecker) -> None:
    if isinstance(suite.name, str) and not SUITE_NAME_RE.fullmatch(suite.name):
        ctx.add(("name",), f"{suite.name!r} is not a valid suite name; use letters, digits, - and _ "
                           f"(it names the results folder)")
    for key, what in (("models", "model"), ("datasets", "data set"), ("methods", "method"), ("seeds", "seed")):
        value = getattr(suite, key)
        if value == [] and not ctx.misspelled((), key):
            ctx.add((key,), f"no {what}s; give at least one (see suites/README.md)")
    seen: dict[int, int] = {}
    for i, s in items(suite.seeds):
        if not 0 <= s < 2**32:
            ctx.add(("seeds", i), f"must be in [0, 4294967295], got {s}")
        elif s in seen:
            ctx.add(("seeds", i), f"duplicate seed {s} (also seeds[{seen[s]}]); list each seed once")
        else:
            seen[s] = i


def _check_unique_names(entries: list, key: str, what: str, ctx: FileChecker) -> None:
    seen: dict[str, int] = {}
    for i, item in items(entries):
        name = item.name
        if not isinstance(name, str):
            continue
        if not ITEM_NAME_RE.fullmatch(name):
            ctx.add((key, i, "name"), f"{name!r} is not a valid {what} name; use letters, digits, "
                                      f"., - and _ (it is part of cell ids and folder names)")
        if name in seen:
            ctx.add((key, i, "name"), f"duplicate {what} name {name!r} (also {key}[{seen[name]}]); "
                                      f"names must be unique")
        else:
            seen[name] = i


def _one_source(spec: Any, keys: tuple[str, ...], p: tuple, ctx: FileChecker) -> None:
    given = [k for k in keys if getattr(spec, k) is not None]
    if len(given) != 1 and not (not given and ctx.misspelled(p, *keys)):
        what = "none" if not given else " and ".join(given)
        ctx.add(p, f"give exactly one of {', '.join(keys[:-1])} or {keys[-1]} (got {what})",
                line=ctx.line(p + (given[1],)) if len(given) > 1 else None)


def _check_tiny(tiny: Any, path: tuple, ctx: FileChecker) -> None:
    if not isinstance(tiny, TinyModelSpec):
        return
    h, n = tiny.hidden_size, tiny.num_heads
    if ok(h, n) and h % n:
        ctx.add(path + ("num_heads",), f"{n} does not divide hidden_size {h}; pick a divisor "
                                       f"(e.g. {_divisor_near(h, n)})")
    elif ok(h, n, tiny.arch) and tiny.arch in ("llama", "qwen2") and (h // n) % 2:
        ctx.add(path + ("num_heads",), f"head size hidden_size/num_heads = {h // n} is odd; rotary "
                                       f"embeddings ({tiny.arch}) need an even head size")


def _divisor_near(h: int, n: int) -> int:
    return min((d for d in range(1, h + 1) if h % d == 0), key=lambda d: (abs(d - n), d))


def _check_models(suite: Suite, ctx: FileChecker, base_dir: Path) -> None:
    _check_unique_names(suite.models, "models", "model", ctx)
    for i, m in items(suite.models):
        p = ("models", i)
        _one_source(m, ("tiny", "path", "hub"), p, ctx)
        _check_tiny(m.tiny, p + ("tiny",), ctx)
        _check_tiny(m.smoke, p + ("smoke",), ctx)
        if m.gguf_file is not None and m.path is None:
            ctx.add(p + ("gguf_file",), "needs path (the folder that holds the GGUF file)")
        if m.revision is not None and m.hub is None:
            ctx.add(p + ("revision",), "only applies to hub models; remove it or use hub")
        if isinstance(m.path, str):
            full = resolve(base_dir, m.path)
            if not full.exists():
                ctx.add(p + ("path",), f"not found: {full} (relative paths start at the suite file's folder)")
            elif not full.is_dir():
                ctx.add(p + ("path",), f"{full} is a file; give its folder as path"
                                       + (" and the file name as gguf_file" if full.suffix == ".gguf" else ""))
            elif isinstance(m.gguf_file, str) and not (full / m.gguf_file).is_file():
                ctx.add(p + ("gguf_file",), f"not found: {full / m.gguf_file}")
        if isinstance(m.gguf_file, str) and importlib.util.find_spec("gguf") is None:
            ctx.add(p + ("gguf_file",), "needs the gguf package: pip install 'prefopt-harness[gguf]'")
        if m.lora is not None and importlib.util.find_spec("peft") is None:
            ctx.add(p + ("lora",), "needs the peft package: pip install 'prefopt-harness[lora]'")


def _check_datasets(suite: Suite, ctx: FileChecker, base_dir: Path) -> None:
    _check_unique_names(suite.datasets, "datasets", "data set", ctx)
    for i, d in items(suite.datasets):
        p = ("datasets", i)
        _one_source(d, ("task", "path", "hub"), p, ctx)
        if isinstance(d.task, str):
            _check_task(d, p, ctx)
        elif d.task is None and isinstance(d.task_args, dict) and d.task_args:
            ctx.add(p + ("task_args",), "only applies to embedded tasks (task:); remove it")
        if d.task is not None and d.format not in ("auto", INVALID):
            ctx.add(p + ("format",), "only applies to path and hub data; embedded tasks have their own format")
        if isinstance(d.path, str):
            full = resolve(base_dir, d.path)
            if not full.is_file():
                ctx.add(p + ("path",), f"file not found: {full} (relative paths start at the suite "
                                       f"file's folder)")


def _check_task(d: DatasetSpec, p: tuple, ctx: FileChecker) -> None:
    from ..data.tasks import TASKS  # lazily: the data code is only needed for embedded tasks

    if d.task not in TASKS:
        ctx.add(p + ("task",), f"{TASKS.unknown_message(d.task)} See `python -m harness ls tasks`.")
    elif isinstance(d.task_args, dict):
        TASKS.get(d.task).checked_args(d.task_args, ctx, p + ("task_args",))


# ----------------------------------------------------------------- training, eval, rest
def _one_length(spec: Any, path: tuple, ctx: FileChecker) -> None:
    """``steps`` or ``epochs``, ``warmup_steps`` or ``warmup_ratio``: one of each pair. Epochs
    given alone set ``steps`` to null (the length is resolved when the data are loaded)."""
    if not isinstance(spec, TrainSpec):
        return
    if ok(spec.epochs) and spec.epochs is not None:
        if ctx.explicit(path + ("steps",)) and spec.steps is not None:
            ctx.add(path + ("steps",), f"give steps or epochs, not both (steps {show(spec.steps)}, epochs "
                                       f"{spec.epochs:g}); remove one")
        else:
            spec.steps = None
    elif spec.steps is None:
        ctx.add(path + ("steps",), "is null but epochs is not given; give steps (a count of optimizer "
                                   "steps) or epochs (passes over the training pairs)")
    if ok(spec.warmup_ratio) and spec.warmup_ratio is not None and ctx.explicit(path + ("warmup_steps",)):
        ctx.add(path + ("warmup_ratio",), "give warmup_steps or warmup_ratio, not both; remove one")


def _check_override_lengths(v: Variant, ctx: FileChecker) -> None:
    p = ("methods", v.method_index, "train")
    for a, b in (("steps", "epochs"), ("warmup_steps", "warmup_ratio")):
        if v.train.get(a) is not None and v.train.get(b) is not None:
            ctx.add(p + (a,), f"give {a} or {b}, not both; remove one")


def _check_train_values(t: dict, path: tuple, ctx: FileChecker, suite: Suite) -> None:
    """Consistency of one effective set of train settings (suite train, sft, or a method's
    merged overrides). ``path`` is where the message points."""
    if t.get("steps") is None and t.get("epochs") is None:
        ctx.add(path + ("steps",), "no length: give steps or epochs")
    ml, mpl = t.get("max_length"), t.get("max_prompt_length")
    if isinstance(ml, int) and isinstance(mpl, int) and mpl >= ml:
        # point at the key the user wrote (the other one is a default)
        blame = "max_prompt_length" if ctx.explicit(path + ("max_prompt_length",)) else "max_length"
        ctx.add(path + (blame,), f"max_prompt_length {mpl} leaves no room for the response within "
                                 f"max_length {ml}; make max_prompt_length smaller than max_length")
    steps, warm = t.get("steps"), t.get("warmup_steps")
    if isinstance(steps, int) and isinstance(warm, int) and warm > steps:
        ctx.add(path + ("warmup_steps",), f"{warm} exceeds steps {steps}; the learning rate would never "
                                          f"reach its peak")
    if isinstance(ml, int):
        for i, m in items(suite.models):
            tiny = m.tiny
            if isinstance(tiny, TinyModelSpec) and isinstance(tiny.max_position_embeddings, int) \
                    and ml > tiny.max_position_embeddings:
                ctx.add(path + ("max_length",),
                        f"{ml} exceeds models[{i}] ({m.name!r}) max_position_embeddings "
                        f"{tiny.max_position_embeddings}; lower max_length or raise max_position_embeddings")


def _check_trackers(trackers: Any, path: tuple, ctx: FileChecker) -> None:
    """Each tracker's package is installed (run would stop at the first cell otherwise)."""
    from ..trackers import INSTALL_HINT, PACKAGES, missing_package

    for i, t in items(trackers):
        if isinstance(t, str) and t in PACKAGES and missing_package(PACKAGES[t]):
            ctx.add(path + (i,), f"tracker {t!r} needs the {PACKAGES[t]} package: {INSTALL_HINT}, "
                                 f"or remove it")


def _check_training(suite: Suite, variants: list[Variant], ctx: FileChecker) -> None:
    for spec, p in ((suite.train, ("train",)), (suite.sft, ("sft",))):
        if isinstance(spec, TrainSpec):
            _check_trackers(spec.trackers, p + ("trackers",), ctx)
    for v in variants:
        if "trackers" in v.train:
            _check_trackers(v.train["trackers"], ("methods", v.method_index, "train", "trackers"), ctx)
    if isinstance(suite.train, TrainSpec):
        _one_length(suite.train, ("train",), ctx)
        if suite.train.eval_every and ok(suite.train.eval_every) and isinstance(suite.eval, EvalSpec) \
                and suite.eval.enabled is False:
            ctx.add(("train", "eval_every"), "evaluates during training, but eval.enabled is false; "
                                             "turn evaluation on or remove eval_every")
        train = asdict(suite.train)
        _check_train_values(train, ("train",), ctx, suite)
        for v in variants:
            if v.train:
                _check_override_lengths(v, ctx)
                _check_train_values(merge_train(train, v.train), ("methods", v.method_index, "train"), ctx, suite)
    if isinstance(suite.sft, SFTSpec) and suite.sft.enabled is True:
        _one_length(suite.sft, ("sft",), ctx)
        if ok(suite.sft.eval_every) and suite.sft.eval_every:
            ctx.add(("sft", "eval_every"), "held-out preference accuracy during training applies to the "
                                           "preference methods; set it under train, not sft")
        _check_train_values(asdict(suite.sft), ("sft",), ctx, suite)


def _check_lm_eval_names(ev: EvalSpec, ctx: FileChecker) -> None:
    """Each ``eval.lm_eval_tasks`` name is an embedded task, an alias or a task or group of the
    installed lm-eval (what its data and modules need is checked by ``validate`` and ``run``,
    after ``--smoke`` has swapped benchmarks for local stand-ins)."""
    from ..evaluate import lmeval_tasks
    from ..evaluate.lmeval import EMBEDDED_TASKS as EMBEDDED, STANDARD_BENCHMARKS as ALIASES

    for i, name in items(ev.lm_eval_tasks):
        if not isinstance(name, str) or name in EMBEDDED or name in ALIASES:
            continue
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            ctx.add(("eval", "lm_eval_tasks", i), "needs the lm-eval package (pip install lm-eval)")
            return
        try:
            found = lmeval_tasks.resolve(name)
        except lmeval_tasks.TagName as e:
            ctx.add(("eval", "lm_eval_tasks", i), str(e))
            continue
        if found is None:
            hint = did_you_mean(name, list(EMBEDDED) + list(ALIASES)) or did_you_mean(name, lmeval_tasks.all_names())
            ctx.add(("eval", "lm_eval_tasks", i),
                    f"unknown lm-eval task {name!r}.{hint} Give {', '.join(EMBEDDED + tuple(ALIASES))}, or any "
                    f"task or group of the installed lm-eval (`lm_eval ls tasks`)")


def _check_eval_launcher_report(suite: Suite, variants: list[Variant], ctx: FileChecker, base_dir: Path) -> None:
    ev = suite.eval
    if ok(ev) and isinstance(ev, EvalSpec):
        _check_lm_eval_names(ev, ctx)
    if ok(ev) and isinstance(ev.judge, str) and ev.judge != "oracle":
        if not resolve(base_dir, ev.judge).exists():
            ctx.add(("eval", "judge"), f"must be 'oracle' or the path of a reward model; "
                                       f"{resolve(base_dir, ev.judge)} does not exist")
    ln = suite.launcher
    if ok(ln) and ln.type == "slurm" and isinstance(ln.slurm_profile, str):
        if find_slurm_profile(ln.slurm_profile, base_dir) is None:
            where = ctx.line(("launcher", "slurm_profile")) or ctx.line(("launcher", "type"))
            ctx.add(("launcher", "slurm_profile"), slurm_profile_problem(ln.slurm_profile, base_dir), line=where)
    rp = suite.report
    # only when every method entry expanded: a broken entry's labels are unknown
    complete = {v.method_index for v in variants} == {i for i, _ in items(suite.methods)} \
        and INVALID not in (suite.methods if isinstance(suite.methods, list) else [INVALID])
    if ok(rp) and isinstance(rp.baseline, str) and ctx.explicit(("report", "baseline")) and variants and complete:
        names = list(dict.fromkeys([v.label for v in variants] + [v.name for v in variants]))
        if rp.baseline not in names:
            ctx.add(("report", "baseline"), f"{rp.baseline!r} is not a method label or name of this "
                                            f"suite.{did_you_mean(rp.baseline, names)} Choose one of: "
                                            f"{', '.join(names)}")
