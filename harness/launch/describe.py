"""What ``run --dry-run`` says about the launch: which launcher, which SLURM profile, and the
resources each job will ask for, so a sweep's cost is visible before anything is submitted."""
from __future__ import annotations

from pathlib import Path

from harness.launch.profile import SlurmProfile, StageResources


def _resources(res: StageResources) -> str:
    parts = [f"partition {res.partition or '(default)'}"]
    if res.account:
        parts.append(f"account {res.account}")
    if res.qos:
        parts.append(f"qos {res.qos}")
    parts.append(f"time {res.time} min")
    gpus = f"{res.gpus_per_node} GPU{'s' if res.gpus_per_node != 1 else ''}" if res.gpus_per_node else "no GPU"
    parts.append(f"{res.nodes} node{'s' if res.nodes > 1 else ''} x {gpus}")
    parts.append(f"{res.cpus_per_task} CPU{'s' if res.cpus_per_task > 1 else ''}")
    parts.append(f"{res.mem_gb:g} GB memory" if res.mem_gb is not None else "default memory")
    if res.uses_accelerate:
        parts.append(f"accelerate launch, {res.gpus_per_node * res.nodes} processes")
    parts += [f"--{k} {v}" for k, v in sorted(res.additional.items())]
    return ", ".join(parts)


def _pending(kind_folders: list[Path]) -> int:
    from harness.results import CorruptFileError, read_status

    n = 0
    for f in kind_folders:
        try:
            n += read_status(f)["state"] != "done"
        except (CorruptFileError, OSError):
            n += 1
    return n


def describe_launch(plan, spec, profile: SlurmProfile | None, suite_dir: Path) -> str:
    """Lines for the dry run: the launcher and, for SLURM, the profile and each stage's jobs
    (how many would be submitted now, and what each asks for)."""
    suite_dir = Path(suite_dir)
    n_sft = _pending([suite_dir / "_sft" / s.stage_id for s in plan.sft_stages])
    n_cell = _pending([suite_dir / c.cell_id for c in plan.cells])
    if spec.type == "inline":
        return (f"Launcher: inline (every job in this process, one after another): "
                f"{n_sft} SFT stages and {n_cell} cells to run")
    if spec.type == "local":
        return (f"Launcher: local ({spec.workers} worker processes on this machine): "
                f"{n_sft} SFT stages and {n_cell} cells to run")
    smoke = " (shrunk for --smoke: the models are tiny stand-ins)" if profile.smoke else ""
    lines = [f"Launcher: slurm, profile {profile.path}{smoke}; at most {spec.parallelism} jobs of an array "
             f"at once, {profile.max_requeues} requeues after a time limit or preemption"]
    for name, n, res in (("SFT", n_sft, profile.sft), ("cell", n_cell, profile.cell)):
        if n:
            after = " (one array, after the SFT jobs)" if name == "cell" and n_sft else " (one array)"
            lines.append(f"  {n} {name} jobs{after}, each: {_resources(res)}")
    if not n_sft and not n_cell:
        lines.append("  nothing to submit: every SFT stage and cell is done")
    return "\n".join(lines)
