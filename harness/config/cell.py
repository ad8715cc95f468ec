"""The typed config of one cell or SFT stage, read back from the ``config.yaml`` in its folder.

``expand`` writes each cell's resolved config as plain data (its bytes and the cell ids must
not change); a job reads it back here, through the same checker as a suite, into a
``CellConfig`` (or ``StageConfig``) of the schema's dataclasses. A file edited by hand, or
written by another version of the harness, is reported with its file, line and key: a typo
such as ``stpes`` is an unknown key (not silently dropped), ``steps: '8'`` is not an integer,
and every key the harness writes must be there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import methods
from methods.settings import format_path

from ..errors import UserError
from ..schema import BASE_METHOD, UNTRAINED, DatasetSpec, EvalSpec, ModelSpec, OnPolicySpec, SFTSpec, TrainSpec
from .check import INVALID, FileChecker
from .source import WrittenLoader, parse_yaml

CONFIG_FILE = "config.yaml"
# `run --smoke` adds smoke: true after the ids are hashed; a real run's config has no such key
_SMOKE = field(default=False, metadata={"omitted_when_default": True})


def _none_unless_set():
    """A key a cell has only when it uses what it describes (a tuned suite, on-policy data)."""
    return field(default=None, metadata={"omitted_when_default": True})


@dataclass
class MethodEntry:
    """The method of a cell: registered name (or ``sft``), table label, complete hyperparameters."""

    name: str = None
    label: str = None
    hparams: dict = field(default_factory=dict)


@dataclass
class TuningRole:
    """A cell of a tuned suite: a trial of one point of its entry's search space (scored on
    dev) or a final seed at the chosen point (scored on test). ``point``: the searched keys."""

    role: Literal["trial", "final"] = None
    entry: str = None
    split: Literal["dev", "test"] = None
    point: dict = field(default_factory=dict)


@dataclass
class OnPolicyCell(OnPolicySpec):
    """A cell's on-policy data: the suite's ``onpolicy`` settings (``max_new_tokens`` resolved)
    and the view it trains on: ``pairs`` (formed by ``pairing``) or ``best_of_k`` (rft)."""

    view: Literal["pairs", "best_of_k"] = None


@dataclass
class Sampling:
    """What an on-policy sample stage draws (the settings of ``onpolicy`` that decide the samples)."""

    k: int = None
    prompts: Optional[int] = None
    temperature: float = None
    top_p: float = None
    max_new_tokens: int = None
    max_prompt_length: int = None  # train.max_prompt_length: prompts cut as the cells cut them
    judge: str = None
    batch_size: int = None


@dataclass
class OnPolicyStageConfig:
    """One on-policy sample stage's resolved config (``_onpolicy/<stage id>/config.yaml``)."""

    suite: str = None
    model: ModelSpec = None
    dataset: DatasetSpec = None
    sft: Optional[SFTSpec] = None
    sft_stage: Optional[str] = None  # the checkpoint sampled from; null: the model as loaded
    seed: int = None
    onpolicy: Sampling = None
    smoke: bool = _SMOKE


@dataclass
class CellConfig:
    """One cell's resolved config, as ``harness.config.expand`` wrote it."""

    suite: str = None
    model: ModelSpec = None
    dataset: DatasetSpec = None
    method: MethodEntry = None
    seed: int = None
    sft: Optional[SFTSpec] = None  # null when the suite has no SFT stage
    train: TrainSpec = None
    eval: EvalSpec = None
    plugins: list[str] = field(default_factory=list)
    cell_id: str = None
    sft_stage: Optional[str] = None  # the stage the cell starts from, or null
    smoke: bool = _SMOKE  # true under `run --smoke` (harness.smoke.mark_plan)
    tuning: Optional[TuningRole] = _none_unless_set()  # a tuned suite's trial or final
    onpolicy: Optional[OnPolicyCell] = _none_unless_set()  # trains on on-policy samples
    onpolicy_stage: Optional[str] = _none_unless_set()  # the sample stage it reads

    @property
    def split(self) -> str:
        """The held-out split the cell is scored on: "dev" for a trial, else "test"."""
        return self.tuning.split if self.tuning is not None else "test"

    @property
    def trains(self) -> bool:
        """False for the baseline rows: ``sft`` evaluates the SFT checkpoint as it is, ``base``
        the model as loaded."""
        return self.method.name not in UNTRAINED

    @property
    def is_base(self) -> bool:
        """The ``base`` row: the model as loaded, before any SFT."""
        return self.method.name == BASE_METHOD


@dataclass
class StageConfig:
    """One SFT stage's resolved config."""

    suite: str = None
    model: ModelSpec = None
    dataset: DatasetSpec = None
    sft: SFTSpec = None
    seed: Optional[int] = None  # null: one stage shared by every seed
    smoke: bool = _SMOKE


def load_cell_config(folder: str | Path) -> CellConfig:
    """The cell's ``config.yaml``, checked; ``UserError`` naming file, line and key."""
    return _load(Path(folder) / CONFIG_FILE, CellConfig)


def load_stage_config(folder: str | Path) -> StageConfig:
    """The SFT stage's ``config.yaml``, checked; ``UserError`` naming file, line and key."""
    return _load(Path(folder) / CONFIG_FILE, StageConfig)


def load_onpolicy_config(folder: str | Path) -> OnPolicyStageConfig:
    """An on-policy sample stage's ``config.yaml``, checked."""
    return _load(Path(folder) / CONFIG_FILE, OnPolicyStageConfig)


def _load(path: Path, cls: type):
    ctx, cfg = _read(path, cls)
    ctx.raise_if_any()
    return cfg


def _read(path: Path, cls: type) -> tuple[FileChecker, Any]:
    """Read and check one written config: (the checker with its problems, the config)."""
    ctx = FileChecker(str(path), complete=True)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        ctx.note(None, "missing; rerun the suite to write it")
        return ctx, None
    except (OSError, UnicodeDecodeError) as e:
        ctx.note(None, f"unreadable ({type(e).__name__}: {e}); delete the folder and rerun the suite")
        return ctx, None
    data = parse_yaml(text, ctx, WrittenLoader)
    if data is INVALID:
        return ctx, None
    ctx.raw = data
    untrained = _sft_cell(data)
    if untrained:  # the one value outside TrainSpec's ranges that expand writes (see _sft_cell)
        data = {**data, "train": {**data["train"], "steps": 1}}
    cfg = ctx.dataclass(cls, data)
    if untrained and cfg is not INVALID:
        cfg.train.steps = 0
    if cfg is not INVALID and isinstance(cfg.dataset, DatasetSpec) and isinstance(cfg.dataset.task, str):
        from ..data.tasks import TASKS

        if cfg.dataset.task not in TASKS:
            ctx.add(("dataset", "task"), TASKS.unknown_message(cfg.dataset.task))
        elif isinstance(cfg.dataset.task_args, dict):
            TASKS.get(cfg.dataset.task).checked_args(cfg.dataset.task_args, ctx, ("dataset", "task_args"))
    return ctx, cfg


def _sft_cell(data: Any) -> bool:
    """Whether ``data`` is the config of a baseline row (``sft``, ``base``) with ``train.steps: 0``:
    it evaluates a model as it is, so ``expand`` writes zero steps, which a suite may not ask
    for (``steps`` must be > 0)."""
    try:
        return data["method"]["name"] in UNTRAINED and data["train"]["steps"] == 0
    except (KeyError, TypeError):
        return False


def check_written_configs(folders: list[tuple[Path, type]]) -> None:
    """Every ``config.yaml`` already in ``folders`` (pairs of folder and ``CellConfig`` or
    ``StageConfig``) read back before a run starts: one ``UserError`` with every problem of
    every file, so a hand-edited or version-skewed results folder stops the run with exit 2
    instead of failing its cells one by one."""
    problems: list[str] = []
    for folder, cls in folders:
        path = Path(folder) / CONFIG_FILE
        if path.exists():
            ctx, _ = _read(path, cls)
            problems += [msg for _, msg in sorted(ctx.messages, key=lambda lm: lm[0])]
    if problems:
        raise UserError(problems=problems + ["a results folder's config.yaml is written by `harness run`; "
                                             "restore it, or delete that cell's folder and rerun"])


def build_method(cfg: CellConfig, source: str | Path):
    """The configured method of a cell (None for ``sft``), with a problem in its name or
    hyperparameters reported as ``source: method...: reason`` (plugins must be loaded first)."""
    if not cfg.trains:
        return None
    try:
        return methods.get(cfg.method.name, **cfg.method.hparams)
    except methods.MethodConfigError as e:
        where = ("method", "hparams", *e.keys[:1]) if e.keys else ("method", "name")
        raise UserError(f"{source}: {format_path(where)}: {e.reason}") from None
