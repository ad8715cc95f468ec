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

Every key is checked (type, range, unknown names with a did-you-mean); all problems are reported
at once as a ``UserError`` naming the file and the key. See slurm/README.md for each key.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError

STAGES = ("sft", "cell")

# sbatch options the launcher sets itself: letting `additional` override them would break
# arrays, logs or the sft -> cell ordering.
MANAGED_SBATCH_OPTIONS = frozenset(
    {"array", "output", "error", "open-mode", "job-name", "dependency", "signal", "wckey"}
)


@dataclass(frozen=True)
class StageResources:
    """What one job of a stage asks for. Field docs are the user-facing help (slurm/README.md)."""

    partition: str | None = None      # sbatch --partition; None: the cluster's default
    account: str | None = None        # sbatch --account
    qos: str | None = None            # sbatch --qos
    time: int = 60                    # time limit in minutes (sbatch --time)
    nodes: int = 1                    # nodes per job; > 1 needs gpus_per_node >= 1 (accelerate multi-node)
    gpus_per_node: int = 0            # sbatch --gpus-per-node; > 1 runs the job under accelerate launch
    cpus_per_task: int = 1            # sbatch --cpus-per-task (one task per node)
    mem_gb: float | None = None       # sbatch --mem in GB; None: the cluster's default
    setup: tuple[str, ...] = ()       # shell lines run before the job (module load, source a venv)
    additional: dict = field(default_factory=dict)  # other sbatch options, e.g. {constraint: a100}
    accelerate_args: tuple[str, ...] = ()  # extra `accelerate launch` arguments (multi-GPU only)
    signal_delay_s: int = 90          # seconds before the time limit when the job is told to requeue

    @property
    def uses_accelerate(self) -> bool:
        """Multi-GPU or multi-node jobs run their function once per GPU under accelerate."""
        return self.gpus_per_node > 1 or self.nodes > 1


@dataclass(frozen=True)
class SlurmProfile:
    path: Path
    sft: StageResources
    cell: StageResources
    result_wait_s: float = 15.0
    max_requeues: int = 3
    snapshot: bool = True

    def stage(self, name: str) -> StageResources:
        if name not in STAGES:
            raise ValueError(f"unknown resources key {name!r}; expected one of {STAGES}")
        return getattr(self, name)


_STAGE_KEYS = [f.name for f in fields(StageResources)]
_TOP_KEYS = ["result_wait_s", "max_requeues", "snapshot", "defaults", *STAGES]


def did_you_mean(name: str, choices: list[str]) -> str:
    # imported here: importing the methods package pulls in torch (seconds), and every SLURM job
    # imports this module to unpickle its call
    from methods.registry import did_you_mean as dym

    return dym(name, choices)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_stage(raw: Any, where: str, problems: list[str]) -> dict:
    """Checks one stage mapping; returns the keys that passed (so defaults can be merged)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of resource keys, got {type(raw).__name__}")
        return {}
    good: dict = {}
    for key, value in raw.items():
        k = f"{where}.{key}"
        if key not in _STAGE_KEYS:
            problems.append(
                f"{k}: unknown key.{did_you_mean(str(key), _STAGE_KEYS)} "
                f"Known keys: {', '.join(_STAGE_KEYS)}."
            )
            continue
        if key in ("partition", "account", "qos"):
            if value is not None and not (isinstance(value, str) and value.strip()):
                problems.append(f"{k}: expected a name (string) or null, got {value!r}")
                continue
        elif key in ("time", "nodes", "cpus_per_task"):
            if not _is_int(value) or value < 1:
                unit = " (minutes)" if key == "time" else ""
                problems.append(f"{k}: expected a whole number >= 1{unit}, got {value!r}")
                continue
        elif key in ("gpus_per_node", "signal_delay_s"):
            if not _is_int(value) or value < 0:
                problems.append(f"{k}: expected a whole number >= 0, got {value!r}")
                continue
        elif key == "mem_gb":
            if value is not None and (not _is_num(value) or value <= 0):
                problems.append(f"{k}: expected a number of GB > 0 or null, got {value!r}")
                continue
        elif key in ("setup", "accelerate_args"):
            if isinstance(value, str):
                value = [value]
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                problems.append(f"{k}: expected a list of strings, got {value!r}")
                continue
            value = tuple(value)
        elif key == "additional":
            value = {} if value is None else value
            if not isinstance(value, dict):
                problems.append(f"{k}: expected a mapping of sbatch options, got {value!r}")
                continue
            clean = {}
            for opt, v in value.items():
                flag = str(opt).replace("_", "-")
                if flag in MANAGED_SBATCH_OPTIONS:
                    problems.append(
                        f"{k}.{opt}: set by the launcher itself; remove it "
                        f"(managed options: {', '.join(sorted(MANAGED_SBATCH_OPTIONS))})"
                    )
                elif not (isinstance(v, (str, bool)) or _is_num(v)):
                    problems.append(f"{k}.{opt}: expected a string, number or true/false, got {v!r}")
                else:
                    clean[flag] = v
            value = clean
        good[key] = value
    return good


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

    problems: list[str] = []
    for key in raw:
        if key not in _TOP_KEYS:
            hint = did_you_mean(str(key), _TOP_KEYS + _STAGE_KEYS)
            if key in _STAGE_KEYS:
                hint = " Resource keys go under 'defaults', 'sft' or 'cell'."
            problems.append(f"{key}: unknown key.{hint} Known top-level keys: {', '.join(_TOP_KEYS)}.")
    top: dict[str, Any] = {}
    wait = raw.get("result_wait_s", 15.0)
    if not _is_num(wait) or wait < 0:
        problems.append(f"result_wait_s: expected a number of seconds >= 0, got {wait!r}")
    else:
        top["result_wait_s"] = float(wait)
    req = raw.get("max_requeues", 3)
    if not _is_int(req) or req < 0:
        problems.append(f"max_requeues: expected a whole number >= 0, got {req!r}")
    else:
        top["max_requeues"] = req
    snap = raw.get("snapshot", True)
    if not isinstance(snap, bool):
        problems.append(f"snapshot: expected true or false, got {snap!r}")
    else:
        top["snapshot"] = snap

    defaults = _check_stage(raw.get("defaults"), "defaults", problems)
    stages = {}
    for name in STAGES:
        own = _check_stage(raw.get(name), name, problems)
        res = StageResources(**{**defaults, **own})
        if res.nodes > 1 and res.gpus_per_node < 1:
            problems.append(
                f"{name}.nodes: {res.nodes} nodes need gpus_per_node >= 1 (multi-node jobs run under "
                f"accelerate launch); set nodes: 1 for CPU jobs"
            )
        # set on the stage itself (not inherited from defaults) yet unused: probably a mistake
        if own.get("accelerate_args") and not res.uses_accelerate:
            problems.append(
                f"{name}.accelerate_args: only used when gpus_per_node > 1 or nodes > 1; remove it "
                f"or raise gpus_per_node"
            )
        stages[name] = res
    if problems:
        raise UserError(problems=[f"{path}: {p}" for p in problems])
    return SlurmProfile(path=path, sft=stages["sft"], cell=stages["cell"], **top)


def resolve_profile_path(name: str | Path, search_dirs: list[Path]) -> Path:
    """An absolute path as is; a relative one is looked up in each of ``search_dirs`` in order
    (the suite's folder, the working directory, the project root)."""
    p = Path(name)
    if p.is_absolute():
        if not p.is_file():
            raise UserError(f"launcher.slurm_profile: {p} does not exist")
        return p
    tried = []
    for d in search_dirs:
        cand = Path(d) / p
        tried.append(str(cand))
        if cand.is_file():
            return cand
    raise UserError(
        f"launcher.slurm_profile: {name} not found (looked in: {', '.join(tried)}); "
        f"give a path relative to the suite or the project, e.g. slurm/default.yaml"
    )
