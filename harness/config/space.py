"""Search spaces of a tuned suite (``tuning.enabled``; docs/protocol.md).

A method entry's search space is its own ``grid`` (hyperparameters, one variant per
combination as in an untuned suite) crossed with ``tuning.grid`` (train settings such as
``lr``, the same values for every method). Every entry gets the same budget: a space larger
than ``tuning.budget`` is cut down to it by a seeded random subsample (the same suite always
gives the same points, listed in space order); a smaller space runs every point. An entry
whose space has one point (nothing searched) and the ``sft`` row need no trial: they run
directly as finals.

Points are ordered method-grid-major, train-grid-minor; that order breaks ties in selection
(``harness.tuning``). Torch-free: ``validate`` reads it.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from ..schema import BASE_METHOD, SFT_METHOD, UNTRAINED, Suite
from .variants import Variant, fmt_value


@dataclass(frozen=True)
class Point:
    """One setting of a search space: the searched hyperparameters and train settings."""

    hparams: dict
    train: dict

    @property
    def values(self) -> dict:
        """Every searched key with its value (hyperparameters first); the point's name."""
        return {**self.hparams, **self.train}


@dataclass
class SearchSpace:
    """One method entry's space: ``size`` points in all, ``trials`` the variants it runs
    (one per chosen point; a variant's ``train`` holds the entry's overrides and the point's
    train settings, its label names the point)."""

    method_index: int
    entry_label: str
    name: str
    size: int
    points: list[Point] = field(default_factory=list)
    trials: list[Variant] = field(default_factory=list)

    @property
    def subsampled(self) -> bool:
        return len(self.points) < self.size

    @property
    def tuned(self) -> bool:
        """Whether the entry is tuned at all (a space of one point is not)."""
        return self.size > 1


def train_points(suite: Suite) -> list[dict]:
    """Every combination of ``tuning.grid`` (one empty point without one)."""
    grid = {k: v for k, v in suite.tuning.grid.items() if isinstance(v, list) and v}
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def entry_label(v: Variant, suite: Suite) -> str:
    """The row label of a variant's method entry: its ``label``, else the method name."""
    m = suite.methods[v.method_index]
    return m.label if isinstance(m.label, str) else m.name


def _searched(variants: list[Variant], suite: Suite) -> dict:
    """The entry's grid keys and their values, in the order written."""
    grid = suite.methods[variants[0].method_index].grid
    return {k: v for k, v in grid.items() if isinstance(v, list) and v}


def search_spaces(suite: Suite, variants: list[Variant]) -> list[SearchSpace]:
    """One ``SearchSpace`` per method entry, in entry order, from the entry's variants (one per
    grid point, as ``method_variants`` makes them)."""
    by_entry: dict[int, list[Variant]] = {}
    for v in variants:
        by_entry.setdefault(v.method_index, []).append(v)
    tp = train_points(suite)
    budget = suite.tuning.budget
    out = []
    for i, vs in by_entry.items():
        label = entry_label(vs[0], suite)
        if vs[0].name in UNTRAINED:  # a baseline row: nothing to train, nothing to tune
            out.append(SearchSpace(i, label, vs[0].name, 1))
            continue
        keys = _searched(vs, suite)
        pairs = [(v, {k: v.hparams[k] for k in keys}, t) for v in vs for t in tp]
        space = SearchSpace(i, label, vs[0].name, len(pairs))
        chosen = range(len(pairs))
        if budget is not None and len(pairs) > budget:
            rng = random.Random(f"{suite.tuning.sample_seed}:{label}")
            chosen = sorted(rng.sample(range(len(pairs)), budget))
        for j in chosen:
            v, hp, t = pairs[j]
            point = Point(hp, t)
            space.points.append(point)
            space.trials.append(Variant(i, v.name, point_label(label, point), v.hparams, {**v.train, **t}))
        out.append(space)
    return out


def point_label(label: str, point: Point) -> str:
    """``"DPO (beta=0.1, lr=0.0001)"``: the entry label and the point's values."""
    vals = point.values
    return label if not vals else f"{label} ({', '.join(f'{k}={fmt_value(v)}' for k, v in vals.items())})"


def final_variant(space: SearchSpace, point: Point) -> Variant:
    """The variant the final seeds of ``space`` run: the chosen point, under the entry label."""
    j = space.points.index(point)
    t = space.trials[j]
    return Variant(space.method_index, t.name, space.entry_label, t.hparams, t.train)


def largest(spaces: list[SearchSpace]) -> int:
    return max((s.size for s in spaces), default=0)


def describe_spaces(spaces: list[SearchSpace], budget: Any) -> list[str]:
    """One line per entry: its space, and how many trials it runs."""
    out = []
    for s in spaces:
        if not s.tuned:
            why = {SFT_METHOD: "the SFT checkpoint", BASE_METHOD: "the model as loaded"}.get(s.name, "nothing searched")
            out.append(f"  {s.entry_label}: no trials ({why}); runs directly on test")
            continue
        sub = f", subsampled to the budget {budget}" if s.subsampled else ""
        out.append(f"  {s.entry_label}: {len(s.points)} trials of a {s.size}-point space{sub}")
    return out


# ------------------------------------------------------------------------------ checks
def check_protocol(suite: Suite, variants: list[Variant], ctx, base_dir) -> None:
    """The ``tuning`` and ``onpolicy`` sections and the data sets' splits, against each other
    (``ctx``: the suite's ``FileChecker``; paths relative to ``base_dir``)."""
    from .check import items, ok

    datasets = [(i, d) for i, d in items(suite.datasets) if ok(d)]
    _check_splits(datasets, ctx)
    if ok(suite.onpolicy):
        _check_onpolicy(suite, variants, datasets, ctx, base_dir)
    if ok(suite.tuning) and suite.tuning.enabled is True:
        _check_tuning(suite, variants, datasets, ctx)


def _task_args(d):
    from ..data.tasks import TASKS

    if not isinstance(d.task, str) or d.task not in TASKS or not isinstance(d.task_args, dict):
        return None
    try:
        return TASKS.get(d.task).Args(**d.task_args)
    except TypeError:  # reported by the task's own check
        return None


def _check_splits(datasets: list, ctx) -> None:
    for i, d in datasets:
        args = _task_args(d)
        n = getattr(args, "n_heldout", None)
        if isinstance(d.dev_size, int) and d.dev_size and isinstance(d.heldout_size, int) and isinstance(n, int) \
                and d.heldout_size + d.dev_size > n:
            ctx.add(("datasets", i, "dev_size"), f"heldout_size {d.heldout_size} + dev_size {d.dev_size} exceeds the "
                                                 f"task's {n} held-out problems (task_args.n_heldout); raise n_heldout "
                                                 f"or lower them (test and dev are disjoint)")


def _uses_onpolicy(suite: Suite, variants: list[Variant], d) -> bool:
    import methods

    return any(v.name not in UNTRAINED and (getattr(methods.get_class(v.name), "trains_on", "pairs") == "best_of_k"
                                         or d.pairs == "onpolicy") for v in variants)


def _check_onpolicy(suite: Suite, variants: list[Variant], datasets: list, ctx, base_dir) -> None:
    from ..paths import resolve

    judge = suite.onpolicy.judge
    users = [(i, d) for i, d in datasets if _uses_onpolicy(suite, variants, d)]
    if not isinstance(judge, str) or not users:
        return
    if judge == "oracle":
        for i, d in users:
            if d.task is None:
                ctx.add(("datasets", i) + (("pairs",) if d.pairs == "onpolicy" else ()),
                        "on-policy samples are scored by onpolicy.judge, 'oracle', but only embedded tasks "
                        "have an oracle; set onpolicy.judge to the path of a reward model")
    elif not resolve(base_dir, judge).exists():
        ctx.add(("onpolicy", "judge"), f"must be 'oracle' or the path of a reward model; "
                                       f"{resolve(base_dir, judge)} does not exist")


def _check_metric(suite: Suite, datasets: list, ctx) -> None:
    from .. import metrics as M

    key, p = suite.tuning.metric, ("tuning", "metric")
    if not isinstance(key, str):
        return
    if not M.known(key):
        close = [m.key for m in M.all_metrics() if m.direction]
        ctx.add(p, f"unknown metric {key!r}.{_did_you_mean(key, close)} Metrics with a direction: {', '.join(close)}")
        return
    m = M.get(key)
    if key.startswith("lm_eval/") or m.family == "lm_eval":
        ctx.add(p, f"{key!r} is an lm-eval benchmark, which has no dev split here: tuning on it would tune on the "
                   f"test set; choose a metric of the data set's held-out split (task/accuracy, task/score, "
                   f"task/reward, pref/accuracy, winrate/vs_sft)")
    elif not m.direction:
        ctx.add(p, f"{key!r} has no better direction (a cost or diagnostic); choose a metric whose higher or lower "
                   f"values are better")
    elif key.split("/")[0] in ("task", "winrate") and ok_int(suite.eval.generation_prompts) == 0:
        ctx.add(p, f"{key!r} scores generations, but eval.generation_prompts is 0")
    elif key in ("task/accuracy", "task/score") or key.startswith("winrate/"):
        if suite.eval.judge == "oracle":
            for i, d in datasets:
                if d.task is None:
                    ctx.add(p, f"{key!r} needs the oracle of an embedded task, and datasets[{i}] ({d.name!r}) is "
                               f"not one; use pref/accuracy, or task/reward with eval.judge")
    elif key == "task/reward" and suite.eval.judge == "oracle":
        ctx.add(p, "task/reward is the score of eval.judge, which is 'oracle'; give a reward model's path as "
                   "eval.judge, or tune on task/accuracy")


def ok_int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _did_you_mean(key: str, names: list[str]) -> str:
    from methods.settings import did_you_mean

    return did_you_mean(key, names)


def _check_tuning(suite: Suite, variants: list[Variant], datasets: list, ctx) -> None:
    from dataclasses import fields

    from methods.settings import hints, unknown_key

    from ..schema import TrainSpec

    tn = suite.tuning
    _check_metric(suite, datasets, ctx)
    train_fields = {f.name: f for f in fields(TrainSpec)}
    grid = tn.grid if isinstance(tn.grid, dict) else {}
    for key, values in grid.items():
        p = ("tuning", "grid", key)
        if key not in train_fields:
            ctx.add(p, unknown_key(key, list(train_fields), "in tuning.grid (train settings)"))
            continue
        if not isinstance(values, list) or not values:
            ctx.add(p, "must be a non-empty list of values")
            continue
        seen = set()
        for j, v in enumerate(values):
            ctx.value(v, hints(TrainSpec)[key], p + (j,), train_fields[key].metadata.get("range"))
            if repr(v) in seen:
                ctx.add(p + (j,), f"duplicate value {v!r}; list each value once")
            seen.add(repr(v))
        for i, m in enumerate(suite.methods):
            if isinstance(getattr(m, "train", None), dict) and key in m.train and m.name not in UNTRAINED:
                ctx.add(("methods", i, "train", key), f"also searched by tuning.grid.{key}; set it in one place")
    seen_seeds: set = set()
    for i, s in enumerate(tn.seeds if isinstance(tn.seeds, list) else []):
        if isinstance(s, int) and (not 0 <= s < 2**32 or s in seen_seeds):
            ctx.add(("tuning", "seeds", i), f"must be a distinct seed in [0, 4294967295], got {s}")
        seen_seeds.add(s)
    if tn.seeds == []:
        ctx.add(("tuning", "seeds"), "no trial seeds; give at least one")
    for i, d in datasets:
        if d.dev_size == 0:
            ctx.add(("datasets", i, "dev_size"), "tuning needs a dev split to score trials on, disjoint from the "
                                                 "test split; set dev_size (e.g. 100)", line=ctx.line(("datasets", i)))
    labels: dict[str, int] = {}
    for v in variants:
        lab = entry_label(v, suite)
        if labels.setdefault(lab, v.method_index) != v.method_index:
            ctx.add(("methods", v.method_index), f"entry label {lab!r} is also methods[{labels[lab]}]'s: a tuned "
                                                 f"suite reports one row per entry; give each a distinct label")
    if variants and not any(sp.tuned for sp in search_spaces(suite, variants)):
        ctx.add(("tuning", "enabled"), "no method has anything to search: give tuning.grid (e.g. lr: [...]) or a "
                                       "method's grid")
