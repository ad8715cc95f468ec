"""Experiment trackers (``train.trackers``): Weights & Biases and TensorBoard, as their users
expect them.

* **W&B**: one project per suite (the suite's name; ``WANDB_ENTITY`` picks the team), one run
  per cell or SFT stage, named by its id (a resumed cell continues its own run: the run id is
  derived from the cell id), grouped by ``<model>/<dataset>`` (so W&B's grouping shows the
  seeds of a method together), tagged with the method, its label, the model, the data set,
  the seed and ``smoke`` for a smoke run. The run's config is the cell's resolved
  ``config.yaml`` plus a flat ``hparams`` block (the method's hyperparameters and the main
  training settings). Per-step training scalars go under ``train/``, the held-out curves of
  ``train.eval_every`` under ``eval/``, and the cell's final ``metrics.json`` numbers into the
  run summary (and logged once under ``final/`` at the last step). ``WANDB_MODE=offline``
  or ``disabled`` work as W&B documents.
* **TensorBoard**: event files in the cell's ``trackers/tensorboard/``: the same ``train/`` and
  ``eval/`` scalars, the final metrics as ``final/`` scalars, and the hyperparameters with the
  final metrics in TensorBoard's HParams plugin (``add_hparams``), so runs can be compared
  in its table and parallel-coordinates views.

Only the main process logs (rank 0 of a distributed cell). Values that are not finite numbers
are left out (trackers reject or mis-plot them). The packages are imported only when a
tracker is asked for; ``validate`` checks that they are installed (:data:`PACKAGES`).
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

# tracker -> the Python package it needs (and the extra that installs it)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
INSTALL_HINT = "pip install 'prefopt-harness[trackers]'"
# the train settings shown next to the method's hyperparameters
TRAIN_HPARAMS = ("steps", "epochs", "batch_size", "grad_accum", "lr", "optimizer", "schedule", "warmup_steps",
                 "warmup_ratio", "max_grad_norm", "max_length", "precision")


def _numbers(values: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or k == "step":
            continue
        out[prefix + k] = float(v)
    return out


def hparams_of(config: dict) -> dict[str, Any]:
    """A flat mapping of what a run varies: method, label, model, data set, seed, the method's
    hyperparameters (``hp/<name>``) and the main training settings (``train/<name>``)."""
    method = config.get("method") or {}
    train = config.get("train") or config.get("sft") or {}
    out: dict[str, Any] = {"method": method.get("name", "sft-stage"), "label": method.get("label", "SFT stage"),
                           "model": (config.get("model") or {}).get("name"),
                           "dataset": (config.get("dataset") or {}).get("name"), "seed": config.get("seed")}
    out.update({f"hp/{k}": v for k, v in (method.get("hparams") or {}).items()})
    out.update({f"train/{k}": train.get(k) for k in TRAIN_HPARAMS if k in train})
    # TensorBoard's HParams plugin takes numbers, strings and booleans only
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in out.items()}


class Trackers:
    """The trackers of one run (a cell or an SFT stage); a no-op when none is configured."""

    def __init__(self, kinds: list[str], run_dir: Path, *, project: str, name: str, group: str,
                 tags: list[str], config: dict, job_type: str):
        self.kinds, self.run_dir = list(kinds), Path(run_dir)
        self.hparams = hparams_of(config)
        self._wandb = self._tb = None
        self._done = False
        self._last_step = 0
        if "wandb" in self.kinds:
            import wandb

            self._wandb = wandb.init(project=project, name=name, id=run_id(project, name), resume="allow",
                                     group=group, job_type=job_type, tags=tags,
                                     config={**config, "hparams": self.hparams},
                                     dir=str(self._dir("wandb")))
        if "tensorboard" in self.kinds:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self._dir("tensorboard")))

    def _dir(self, name: str) -> Path:
        d = self.run_dir / "trackers" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log(self, values: dict, step: int, prefix: str = "train/") -> None:
        """Numeric ``values`` at ``step`` under ``prefix`` (``train/`` or ``eval/``)."""
        nums = _numbers(values, prefix)
        self._last_step = max(self._last_step, step)
        if not nums:
            return
        if self._wandb is not None:
            self._wandb.log(nums, step=step)
        if self._tb is not None:
            for k, v in nums.items():
                self._tb.add_scalar(k, v, step)

    def finish(self, final: dict | None = None, failed: bool = False) -> None:
        """Log the final metrics (summary, ``final/`` scalars, TensorBoard hparams) and close.
        Called once; later calls do nothing."""
        if self._done:
            return
        self._done = True
        nums = _numbers(final or {}, "final/")
        if self._wandb is not None:
            if nums:
                self._wandb.log(nums, step=self._last_step)
                self._wandb.summary.update({k[len("final/"):]: v for k, v in nums.items()})
            self._wandb.finish(exit_code=1 if failed else 0)
        if self._tb is not None:
            for k, v in nums.items():
                self._tb.add_scalar(k, v, self._last_step)
            if nums and not failed:
                self._tb.add_hparams(self.hparams, nums, run_name=".")
            self._tb.close()


def run_id(project: str, name: str) -> str:
    """A W&B run id for a cell: its id in the characters W&B allows, at most 64 of them (a
    cell id ends in its config hash, which keeps them apart)."""
    rid = re.sub(r"[^A-Za-z0-9_-]", "-", name)
    return rid[-64:]


def for_run(config: dict, run_dir: Path, kind: str) -> Trackers | None:
    """The trackers of a cell (``kind="cell"``, from its config) or an SFT stage (``"sft"``),
    or None when its train settings name none."""
    spec = config.get("train") if kind == "cell" else config.get("sft")
    kinds = list((spec or {}).get("trackers") or [])
    if not kinds:
        return None
    missing = [k for k in kinds if missing_package(PACKAGES.get(k, k))]
    if missing:  # validate reports this first; a results folder copied elsewhere can still hit it
        from .errors import UserError

        raise UserError(f"{kind} trackers {', '.join(missing)} need the package(s) "
                        f"{', '.join(PACKAGES.get(k, k) for k in missing)}: {INSTALL_HINT}")
    model = (config.get("model") or {}).get("name")
    dataset = (config.get("dataset") or {}).get("name")
    method = config.get("method") or {}
    tags = [t for t in ([method.get("name"), method.get("label")] if kind == "cell" else ["sft-stage"]) if t]
    tags += [f"model:{model}", f"dataset:{dataset}"]
    if config.get("seed") is not None:
        tags.append(f"seed:{config['seed']}")
    if config.get("smoke"):
        tags.append("smoke")
    name = Path(run_dir).name
    return Trackers(kinds, Path(run_dir), project=str(config.get("suite") or "harness"), name=name,
                    group=f"{model}/{dataset}", tags=list(dict.fromkeys(tags)), config=config,
                    job_type=kind)


def missing_package(package: str) -> bool:
    """Whether ``package`` can be neither found nor is already imported."""
    import importlib.util

    return package not in sys.modules and importlib.util.find_spec(package) is None
