"""A checked suite -> a plan: one ``Cell`` per model x data set x method variant x seed, each
with its fully resolved config, and the SFT stages the cells start from.

A cell id is a readable prefix plus a hash of the cell's resolved config (``ids``), so a
rerun recognises finished work (DESIGN.md, "Results"). The id hashes paths as written in
the suite and leaves out launcher, report, description and plugins, which do not change
results: a suite moved with its files, or run on another launcher, keeps its ids.

Two more kinds of work come from here: **on-policy sample stages** (one per SFT stage and
seed, for data sets with ``pairs: onpolicy`` and for methods that train on the best of k
samples; ``harness.data.onpolicy`` runs them), and, in a tuned suite (``tuning.enabled``), the
**trials** of each method's search space on the dev split. A tuned plan's ``cells`` are its
first phase (trials, and the rows that need no tuning); the finals' hyperparameters are
known only once the trials are scored, so ``final_cells`` builds them from the chosen points
(``harness.tuning`` chooses; docs/protocol.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..paths import resolve, slug
from ..schema import UNTRAINED, DatasetSpec, Suite, as_config, merge_train
from .ids import config_hash
from .space import Point, SearchSpace, final_variant, search_spaces
from .suite import LoadedSuite
from .variants import Variant, method_variants

CELL_ID_LABEL_LEN = 40  # characters of the method label in a cell id


@dataclass(frozen=True)
class SFTStage:
    """Supervised fine-tuning that produces the reference/initial policy of a cell group."""

    stage_id: str
    model: str
    dataset: str
    seed: int | None
    config: dict


@dataclass(frozen=True)
class OnPolicyStage:
    """k responses per training prompt sampled from an SFT checkpoint (or the model as
    loaded) with one seed, scored by the judge; shared by every cell of that (SFT stage,
    seed) that trains on on-policy data."""

    stage_id: str
    model: str
    dataset: str
    seed: int
    sft_stage_id: str | None
    config: dict


@dataclass(frozen=True)
class Cell:
    """One training + evaluation run. ``config`` is the fully resolved, JSON-able config
    (written to the cell's ``config.yaml``; read back as a ``harness.config.cell.CellConfig``)."""

    cell_id: str
    model: str
    dataset: str
    method: str
    label: str
    seed: int
    sft_stage_id: str | None
    config: dict
    onpolicy_stage_id: str | None = None

    @property
    def role(self) -> str:
        """"trial" (scored on dev), "final" (a tuned row's seed, scored on test) or "cell"."""
        return (self.config.get("tuning") or {}).get("role", "cell")


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    sft_stages: list[SFTStage]
    onpolicy_stages: list[OnPolicyStage] = field(default_factory=list)
    # a tuned suite: each method entry's search space (``cells`` are then the first phase)
    spaces: list[SearchSpace] | None = None
    builder: "_Builder | None" = field(default=None, repr=False)

    def stage(self, stage_id: str) -> SFTStage:
        return next(s for s in self.sft_stages if s.stage_id == stage_id)

    @property
    def tuned(self) -> bool:
        return self.spaces is not None


def _spec_dicts(spec: Any, base_dir: Path) -> tuple[dict, dict]:
    """(resolved, as written): the resolved dict has an absolute ``path``; the id is hashed
    from the paths as written, so a suite moved with its files (laptop -> cluster) keeps its
    cell ids."""
    written_ = as_config(spec)
    if isinstance(spec, DatasetSpec) and spec.task is not None:
        # every task argument, defaults included: a changed default is a changed data set
        from ..data.tasks import TASKS

        written_["task_args"] = as_config(TASKS.get(spec.task).Args(**spec.task_args))
    resolved = dict(written_)
    if written_.get("path"):
        resolved["path"] = str(resolve(base_dir, written_["path"]).resolve())
    return resolved, written_


def _plugin_ref(spec: str, base_dir: Path) -> str:
    """A plugin as a worker process can load it: files absolute (as ``methods.load_plugin``
    finds them: the suite's folder first, then the working directory), modules by name."""
    if not (spec.endswith(".py") or "/" in spec or "\\" in spec):
        return spec
    p = Path(spec).expanduser()
    if not p.is_absolute() and (base_dir / p).exists():
        p = base_dir / p
    return str(p.resolve())


def trains_on(v: Variant, dataset: DatasetSpec) -> str | None:
    """The on-policy view a variant trains on for ``dataset``: "best_of_k" (a method that
    declares it, e.g. ``rft``), "pairs" (a preference method on a data set with
    ``pairs: onpolicy``), or None (the data set's own pairs, or a baseline row: ``sft``, ``base``)."""
    if v.name in UNTRAINED:
        return None
    import methods

    wants = getattr(methods.get_class(v.name), "trains_on", "pairs")
    if wants == "best_of_k":
        return "best_of_k"
    if wants == "pairs" and dataset.pairs == "onpolicy":
        return "pairs"
    return None


class _Builder:
    """Builds the plan's items; stages are made once and shared by every cell that needs them."""

    def __init__(self, loaded: LoadedSuite):
        s, base = loaded.suite, loaded.base_dir
        self.s, self.base = s, base
        self.sft_dict = as_config(s.sft) if s.sft.enabled else None
        self.train, self.evl = as_config(s.train), as_config(s.eval)
        self.plugins = [_plugin_ref(p, base) for p in s.plugins]
        self.models = {m.name: (m, *_spec_dicts(m, base)) for m in s.models}
        self.datasets = {d.name: (d, *_spec_dicts(d, base)) for d in s.datasets}
        self.stages: dict[tuple, SFTStage] = {}
        self.onpolicy: dict[tuple, OnPolicyStage] = {}

    def _resolved_judge(self, judge: str) -> str:
        return judge if judge == "oracle" else str(resolve(self.base, judge).resolve())

    def sft_stage(self, model: str, dataset: str, seed: int) -> SFTStage | None:
        s = self.s
        if not s.sft.enabled:
            return None
        stage_seed = seed if s.sft.per_seed else None
        key = (model, dataset, stage_seed)
        if key not in self.stages:
            _, m_res, m_id = self.models[model]
            _, d_res, d_id = self.datasets[dataset]
            sft = self.sft_dict
            h = config_hash({"model": m_id, "dataset": d_id, "sft": sft, "seed": stage_seed})
            sid = f"sft-{model}-{dataset}" + (f"-s{stage_seed}" if stage_seed is not None else "") + f"-{h}"
            self.stages[key] = SFTStage(sid, model, dataset, stage_seed, {
                "suite": s.name, "model": m_res, "dataset": d_res, "sft": sft, "seed": stage_seed})
        return self.stages[key]

    def sampling(self, resolved: bool) -> dict:
        """The on-policy settings that decide the samples (pairing is a cell's view of them)."""
        op = as_config(self.s.onpolicy)
        out = {k: op[k] for k in ("k", "prompts", "temperature", "top_p", "max_new_tokens", "judge", "batch_size")}
        out["max_new_tokens"] = out["max_new_tokens"] or self.evl["max_new_tokens"]
        out["max_prompt_length"] = self.train["max_prompt_length"]
        if resolved:
            out["judge"] = self._resolved_judge(out["judge"])
        return out

    def onpolicy_stage(self, model: str, dataset: str, seed: int, sft: SFTStage | None) -> OnPolicyStage:
        key = (model, dataset, seed)
        if key not in self.onpolicy:
            _, m_res, m_id = self.models[model]
            _, d_res, d_id = self.datasets[dataset]
            # the samples do not depend on what the preference methods make of them
            d_res = {k: v for k, v in d_res.items() if k != "pairs"}
            d_id = {k: v for k, v in d_id.items() if k != "pairs"}
            h = config_hash({"model": m_id, "dataset": d_id, "sft": self.sft_dict,
                             "sft_seed": sft.seed if sft else None, "seed": seed,
                             "onpolicy": self.sampling(False)})
            sid = f"onpolicy-{model}-{dataset}-s{seed}-{h}"
            self.onpolicy[key] = OnPolicyStage(sid, model, dataset, seed, sft.stage_id if sft else None, {
                "suite": self.s.name, "model": m_res, "dataset": d_res, "sft": self.sft_dict,
                "sft_stage": sft.stage_id if sft else None, "seed": seed, "onpolicy": self.sampling(True)})
        return self.onpolicy[key]

    def cell(self, model: str, dataset: str, v: Variant, seed: int, *, evl: dict | None = None,
             tuning: dict | None = None) -> Cell:
        s = self.s
        _, m_res, m_id = self.models[model]
        d, d_res, d_id = self.datasets[dataset]
        stage = self.sft_stage(model, dataset, seed)
        cell_train = merge_train(self.train, v.train)
        if v.name in UNTRAINED:
            cell_train["steps"] = 0  # a baseline row as it is: nothing to train
            cell_train.pop("epochs", None)
        if v.name in UNTRAINED or (tuning or {}).get("role") == "trial":
            # a baseline row's weights are its SFT stage's or the model's; a trial is scored on dev
            # and replaced by its final: neither keeps a copy of the weights
            cell_train["keep_model"] = False
        evl = evl if evl is not None else self.evl
        config = {
            "suite": s.name,
            "model": m_res,
            "dataset": d_res,
            "method": {"name": v.name, "label": v.label, "hparams": v.hparams},
            "seed": seed,
            "sft": self.sft_dict,
            "train": cell_train,
            "eval": evl,
        }
        view = trains_on(v, d)
        if view is not None:
            config["onpolicy"] = {"view": view, **as_config(s.onpolicy),
                                  "max_new_tokens": self.sampling(False)["max_new_tokens"]}
        if tuning is not None:
            config["tuning"] = tuning
        # keep_model changes what is kept, not what is trained: the id hashes it as false (its
        # value, then the default, when the recorded ids were made), whatever the setting
        id_view = {**config, "model": m_id, "dataset": d_id, "train": {**cell_train, "keep_model": False}}
        cid = f"{slug(v.label, CELL_ID_LABEL_LEN)}-{model}-{dataset}-s{seed}-{config_hash(id_view)}"
        stored = {**config, "plugins": self.plugins}
        if evl.get("judge") not in (None, "oracle"):
            # as with data paths: the id hashes the path as written, the job reads it resolved
            stored["eval"] = {**evl, "judge": self._resolved_judge(evl["judge"])}
        op_id = None
        if view is not None:
            stored["onpolicy"] = {**config["onpolicy"], "judge": self._resolved_judge(config["onpolicy"]["judge"])}
            op_id = self.onpolicy_stage(model, dataset, seed, stage).stage_id
            stored["onpolicy_stage"] = op_id  # like plugins: where to read, not what to run
        return Cell(cid, model, dataset, v.name, v.label, seed, stage.stage_id if stage else None, stored, op_id)

    def trial_eval(self) -> dict:
        """A trial's evaluation: the suite's, without what selection never reads (diversity
        samples, lm-eval benchmarks, which have no dev split here)."""
        return {**self.evl, "diversity_prompts": 0, "lm_eval_tasks": []}


def expand(loaded: LoadedSuite) -> Plan:
    """One cell per model x data set x method variant x seed (in that nesting order), and
    the SFT stages they start from (one per model x data set, or per seed too when
    ``sft.per_seed``). Variants are derived here, not remembered from loading, so that a
    suite edited after loading (``run --smoke`` shrinking it) expands as it now is.

    A tuned suite (``tuning.enabled``) gives its first phase instead: every tuned entry's
    trials (model x data set x point x ``tuning.seeds``, scored on the dev split), then the
    untuned entries' cells (the ``sft`` row, an entry with nothing to search) for every seed."""
    s = loaded.suite
    b = _Builder(loaded)
    variants = method_variants(s, loaded.source)
    if not s.tuning.enabled:
        cells = [b.cell(m.name, d.name, v, seed) for m in s.models for d in s.datasets
                 for v in variants for seed in s.seeds]
        return Plan(s, cells, list(b.stages.values()), list(b.onpolicy.values()))
    spaces = search_spaces(s, variants)
    cells = []
    for m in s.models:
        for d in s.datasets:
            for sp in spaces:
                if sp.tuned:
                    for v, point in zip(sp.trials, sp.points):
                        role = {"role": "trial", "entry": sp.entry_label, "split": "dev", "point": point.values}
                        cells += [b.cell(m.name, d.name, v, seed, evl=b.trial_eval(), tuning=role)
                                  for seed in s.tuning.seeds]
                else:
                    v = next(v for v in variants if v.method_index == sp.method_index)
                    cells += [b.cell(m.name, d.name, v, seed) for seed in s.seeds]
    for m in s.models:  # the finals' stages are known now: list them with the first phase
        for d, _, _ in b.datasets.values():
            for seed in s.seeds:
                stage = b.sft_stage(m.name, d.name, seed)
                if any(sp.tuned and trains_on(sp.trials[0], d) for sp in spaces):
                    b.onpolicy_stage(m.name, d.name, seed, stage)
    return Plan(s, cells, list(b.stages.values()), list(b.onpolicy.values()), spaces, b)


def final_cells(plan: Plan, chosen: dict[tuple[str, str, int], Point]) -> Plan:
    """The second phase of a tuned plan: for each (model, data set, method entry index) in
    ``chosen``, the suite's seeds at the chosen point, under the entry's label, scored on
    test. Their SFT and on-policy stages are those of the first phase when they coincide
    (new ones are listed in the returned plan)."""
    b = plan.builder
    before_sft, before_op = set(b.stages), set(b.onpolicy)
    cells = []
    for m in plan.suite.models:
        for d in plan.suite.datasets:
            for sp in plan.spaces:
                point = chosen.get((m.name, d.name, sp.method_index))
                if point is None or not sp.tuned:
                    continue
                v = final_variant(sp, point)
                role = {"role": "final", "entry": sp.entry_label, "split": "test", "point": point.values}
                cells += [b.cell(m.name, d.name, v, seed, tuning=role) for seed in plan.suite.seeds]
    return Plan(plan.suite, cells, [st for k, st in b.stages.items() if k not in before_sft],
                [st for k, st in b.onpolicy.items() if k not in before_op], plan.spaces, b)
