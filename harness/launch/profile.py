"""SLURM resource profiles: a YAML file saying what each stage ("sft", "cell") asks the cluster for.

A profile is kept apart from the suite because the same suite runs on different clusters
(partition and account names differ) and the same cluster runs many suites. Shape::

    result_wait_s: 15      # grace for a finished job's result file to appear (shared FS lag)
    max_requeues: 3        # requeues after a time limit / preemption before giving up
    snapshot: true         # copy harness/ and methods/ at submission; jobs import that copy
    defaults:              # merged under both stages
      partition: gpu
      account: my-lab
    sft:
      time: 120            # minutes
      gpus_per_node: 1
    cell:
      time: 240
      gpus_per_node: 4     # > 1: the cell runs under `accelerate launch --num_processes 4`

Every key is checked by the one typed checker (``methods.settings``: types, ranges, unknown
names with a did-you-mean); all problems are reported at once as a ``UserError`` naming the file
and the key. See slurm/README.md for each key.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from methods.settings import Checker, Range, format_path, ok, show, unknown_key

STAGES = ("sft", "cell")

# sbatch options the launcher sets itself: letting `additional` override them would break
# arrays, logs or the sft -> cell ordering.
MANAGED_SBATCH_OPTIONS = frozenset(
    {"array", "output", "error", "open-mode", "job-name", "dependency", "signal", "wckey"}
)


def _key(default: Any, rng: Range | None = None, factory=None) -> Any:
    md = {"range": rng} if rng is not None else {}
    return field(default_factory=factory, metadata=md) if factory else field(default=default, metadata=md)


@dataclass(frozen=True)
class StageResources:
    """What one job of a stage asks for. Field docs are the user-facing help (slurm/README.md)."""

    partition: str | None = None      # sbatch --partition; None: the cluster's default
    account: str | None = None        # sbatch --account
    qos: str | None = None            # sbatch --qos
    time: int = _key(60, Range(ge=1))  # time limit in minutes (sbatch --time)
    nodes: int = _key(1, Range(ge=1))  # nodes per job; > 1 needs gpus_per_node >= 1 (accelerate multi-node)
    gpus_per_node: int = _key(0, Range(ge=0))  # sbatch --gpus-per-node; > 1 runs the job under accelerate launch
    cpus_per_task: int = _key(1, Range(ge=1))  # sbatch --cpus-per-task (one task per node)
    mem_gb: float | None = _key(None, Range(gt=0))  # sbatch --mem in GB; None: the cluster's default
    setup: tuple[str, ...] = ()       # shell lines run before the job (module load, source a venv)
    additional: dict = _key(None, factory=dict)  # other sbatch options, e.g. {constraint: a100}
    accelerate_args: tuple[str, ...] = ()  # extra `accelerate launch` arguments (multi-GPU only)
    signal_delay_s: int = _key(90, Range(ge=0))  # seconds before the time limit when the job is told to requeue

    @property
    def uses_accelerate(self) -> bool:
        """Multi-GPU or multi-node jobs run their function once per GPU under accelerate."""
        return self.gpus_per_node > 1 or self.nodes > 1


@dataclass(frozen=True)
class ProfileSettings:
    """The profile's top-level settings (the stages are checked as ``StageResources``)."""

    result_wait_s: float = _key(15.0, Range(ge=0))
    max_requeues: int = _key(3, Range(ge=0))
    snapshot: bool = True


@dataclass(frozen=True)
class SlurmProfile:
    path: Path
    sft: StageResources
    cell: StageResources
    result_wait_s: float = 15.0
    max_requeues: int = 3
    snapshot: bool = True
    smoke: bool = False    # shrunk by smoke_profile for `run --smoke`

    def stage(self, name: str) -> StageResources:
        if name not in STAGES:
            raise ValueError(f"unknown resources key {name!r}; expected one of {STAGES}")
        return getattr(self, name)


_STAGE_KEYS = [f.name for f in fields(StageResources)]
_TOP_KEYS = [f.name for f in fields(ProfileSettings)] + ["defaults", *STAGES]
_NAMES = ("partition", "account", "qos")  # sbatch names: a string that is not blank
_LISTS = ("setup", "accelerate_args")     # one string stands for a list of one


def _check_stage(raw: Any, where: str, checker: Checker) -> dict:
    """Checks one stage mapping; returns the keys that passed (so defaults can be merged)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        checker.add((where,), f"must be a mapping of resource keys, got {show(raw)}")
        return {}
    given = dict(raw)
    for key in _LISTS:  # a single line may be written as a string; null means none
        if key in given and (given[key] is None or isinstance(given[key], str)):
            given[key] = [] if given[key] is None else [given[key]]
    if "additional" in given and given["additional"] is None:
        given["additional"] = {}
    good = {k: v for k, v in checker.fields(StageResources, given, (where,)).items() if ok(v)}
    for key in _NAMES:
        if isinstance(good.get(key), str) and not good[key].strip():
            checker.add((where, key), "must be a name or null, got an empty string")
            good.pop(key)
    if "additional" in good:
        good["additional"] = _check_additional(good["additional"], (where, "additional"), checker)
    return good


def _check_additional(options: dict, path: tuple, checker: Checker) -> dict:
    """Other sbatch options: names as sbatch spells them, values a string, number or bool."""
    clean = {}
    for opt, v in options.items():
        flag = str(opt).replace("_", "-")
        if flag in MANAGED_SBATCH_OPTIONS:
            checker.add(path + (opt,), f"set by the launcher itself; remove it "
                                       f"(managed options: {', '.join(sorted(MANAGED_SBATCH_OPTIONS))})")
        elif not isinstance(v, (str, bool, int, float)):
            checker.add(path + (opt,), f"must be a string, number or true/false, got {show(v)}")
        else:
            clean[flag] = v
    return clean


def load_profile(path: str | Path) -> SlurmProfile:
    """Reads and validates a profile. Raises ``UserError`` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: SLURM profile not found. Point launcher.slurm_profile at a file "
                        f"like slurm/default.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(_TOP_KEYS)}")

    checker = Checker()
    for key in raw:
        if key not in _TOP_KEYS:
            hint = " Resource keys go under 'defaults', 'sft' or 'cell'." if key in _STAGE_KEYS else ""
            checker.add((key,), unknown_key(key, _TOP_KEYS, "at the top level") + hint)
    settings = {k: raw[k] for k in (f.name for f in fields(ProfileSettings)) if k in raw}
    top = {k: v for k, v in checker.fields(ProfileSettings, settings).items() if ok(v)}
    defaults = _check_stage(raw.get("defaults"), "defaults", checker)
    stages = {}
    for name in STAGES:
        own = _check_stage(raw.get(name), name, checker)
        res = StageResources(**{**defaults, **own})
        if res.nodes > 1 and res.gpus_per_node < 1:
            checker.add((name, "nodes"), f"{res.nodes} nodes need gpus_per_node >= 1 (multi-node jobs run "
                                         f"under accelerate launch); set nodes: 1 for CPU jobs")
        # set on the stage itself (not inherited from defaults) yet unused: probably a mistake
        if own.get("accelerate_args") and not res.uses_accelerate:
            checker.add((name, "accelerate_args"), "only used when gpus_per_node > 1 or nodes > 1; remove "
                                                   "it or raise gpus_per_node")
        stages[name] = res
    if checker.problems:
        raise UserError(problems=[f"{path}: {format_path(p.path)}: {p.reason}" for p in checker.problems])
    return SlurmProfile(path=path, sft=stages["sft"], cell=stages["cell"], **top)


SMOKE_TIME_MIN = 30


def smoke_profile(profile: SlurmProfile) -> SlurmProfile:
    """The profile for ``run --smoke``: every model is a tiny stand-in trained on one CPU
    thread, so each job asks for one node, one CPU, no GPU, the partition's default memory,
    no accelerate launch and at most SMOKE_TIME_MIN minutes; where it runs (partition,
    account, qos, setup lines, other sbatch options) stays as the profile says."""
    def shrink(res: StageResources) -> StageResources:
        return replace(res, nodes=1, gpus_per_node=0, cpus_per_task=1, mem_gb=None,
                       accelerate_args=(), time=min(res.time, SMOKE_TIME_MIN),
                       signal_delay_s=min(res.signal_delay_s, 60))
    return replace(profile, sft=shrink(profile.sft), cell=shrink(profile.cell), smoke=True)
