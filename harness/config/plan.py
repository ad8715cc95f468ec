"""A checked suite -> a plan: one ``Cell`` per model x data set x method variant x seed, each
with its fully resolved config, and the SFT stages the cells start from.

A cell id is a readable prefix plus a hash of the cell's resolved config (``ids``), so a
rerun recognises finished work (DESIGN.md, "Results"). The id hashes paths as written in
the suite and leaves out launcher, report, description and plugins, which do not change
results: a suite moved with its files, or run on another launcher, keeps its ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import resolve, slug
from ..schema import UNTRAINED, DatasetSpec, Suite, as_config, merge_train
from .ids import config_hash
from .suite import LoadedSuite
from .variants import method_variants

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


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    sft_stages: list[SFTStage]

    def stage(self, stage_id: str) -> SFTStage:
        return next(s for s in self.sft_stages if s.stage_id == stage_id)


def _spec_dicts(spec: Any, base_dir: Path) -> tuple[dict, dict]:
    """(resolved, as written): the resolved dict has an absolute ``path``; the id is hashed
    from the paths as written, so a suite moved with its files (laptop -> cluster) keeps its
    cell ids."""
    written = as_config(spec)
    if isinstance(spec, DatasetSpec) and spec.task is not None:
        # every task argument, defaults included: a changed default is a changed data set
        from ..data.tasks import TASKS

        written["task_args"] = as_config(TASKS.get(spec.task).Args(**spec.task_args))
    resolved = dict(written)
    if written.get("path"):
        resolved["path"] = str(resolve(base_dir, written["path"]).resolve())
    return resolved, written


def _plugin_ref(spec: str, base_dir: Path) -> str:
    """A plugin as a worker process can load it: files absolute (as ``methods.load_plugin``
    finds them: the suite's folder first, then the working directory), modules by name."""
    if not (spec.endswith(".py") or "/" in spec or "\\" in spec):
        return spec
    p = Path(spec).expanduser()
    if not p.is_absolute() and (base_dir / p).exists():
        p = base_dir / p
    return str(p.resolve())


def _stage(s: Suite, m_res: dict, m_id: dict, d_res: dict, d_id: dict, seed: int | None,
           model: str, dataset: str) -> SFTStage:
    sft = as_config(s.sft)
    h = config_hash({"model": m_id, "dataset": d_id, "sft": sft, "seed": seed})
    sid = f"sft-{model}-{dataset}" + (f"-s{seed}" if seed is not None else "") + f"-{h}"
    return SFTStage(sid, model, dataset, seed, {"suite": s.name, "model": m_res, "dataset": d_res,
                                                "sft": sft, "seed": seed})


def expand(loaded: LoadedSuite) -> Plan:
    """One cell per model x data set x method variant x seed (in that nesting order), and
    the SFT stages they start from (one per model x data set, or per seed too when
    ``sft.per_seed``). Variants are derived here, not remembered from loading, so that a
    suite edited after loading (``run --smoke`` shrinking it) expands as it now is."""
    s, base = loaded.suite, loaded.base_dir
    variants = method_variants(s, loaded.source)
    sft_dict = as_config(s.sft) if s.sft.enabled else None
    train, evl = as_config(s.train), as_config(s.eval)
    plugins = [_plugin_ref(p, base) for p in s.plugins]
    stages: dict[tuple, SFTStage] = {}
    cells: list[Cell] = []
    for m in s.models:
        m_res, m_id = _spec_dicts(m, base)
        for d in s.datasets:
            d_res, d_id = _spec_dicts(d, base)
            for v in variants:
                for seed in s.seeds:
                    stage_id = None
                    if s.sft.enabled:
                        stage_seed = seed if s.sft.per_seed else None
                        key = (m.name, d.name, stage_seed)
                        if key not in stages:
                            stages[key] = _stage(s, m_res, m_id, d_res, d_id, stage_seed, m.name, d.name)
                        stage_id = stages[key].stage_id
                    cell_train = merge_train(train, v.train)
                    if v.name in UNTRAINED:
                        cell_train["steps"] = 0  # a baseline row as it is: nothing to train
                        cell_train.pop("epochs", None)
                    config = {
                        "suite": s.name,
                        "model": m_res,
                        "dataset": d_res,
                        "method": {"name": v.name, "label": v.label, "hparams": v.hparams},
                        "seed": seed,
                        "sft": sft_dict,
                        "train": cell_train,
                        "eval": evl,
                    }
                    id_view = {**config, "model": m_id, "dataset": d_id}
                    cid = f"{slug(v.label, CELL_ID_LABEL_LEN)}-{m.name}-{d.name}-s{seed}-{config_hash(id_view)}"
                    stored = {**config, "plugins": plugins}
                    if evl.get("judge") not in (None, "oracle"):
                        # as with data paths: the id hashes the path as written, the job reads it resolved
                        stored["eval"] = {**evl, "judge": str(resolve(base, evl["judge"]).resolve())}
                    cells.append(Cell(cid, m.name, d.name, v.name, v.label, seed, stage_id, stored))
    return Plan(suite=s, cells=cells, sft_stages=list(stages.values()))
