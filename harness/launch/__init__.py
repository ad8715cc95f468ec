"""Launchers: run a list of jobs inline, in local processes, or as SLURM job arrays.

    from harness.launch import Job, launch, format_summary
    outcomes = launch(jobs, suite.launcher, work_dir, progress=print)
    print(format_summary(outcomes))

``launch`` returns one ``JobOutcome`` per job, in order; failures are outcomes, not exceptions.
The backends are imported lazily: ``python -m harness.launch.slurm`` (each accelerate process of
a multi-GPU job) must not find its own module already imported.
"""
from __future__ import annotations

from pathlib import Path

from harness.launch.base import Job, JobOutcome, ProgressFn, format_summary

__all__ = ["Job", "JobOutcome", "launch", "format_summary", "LAUNCHERS"]

LAUNCHERS = ("inline", "local", "slurm")


def launch(jobs: list[Job], spec, work_dir: Path, *, profile_path: str | Path | None = None,
           profile=None, progress: ProgressFn | None = None) -> list[JobOutcome]:
    """Runs ``jobs`` with the launcher ``spec`` (a ``harness.schema.LauncherSpec``).

    ``work_dir`` holds launcher files (submitit pickles and logs, the code snapshot).
    ``profile_path``: the SLURM profile, already resolved by the caller; when None,
    ``spec.slurm_profile`` is looked up as ``harness.paths.slurm_profile`` does (the working
    directory, then the project root).
    ``profile``: a loaded ``SlurmProfile`` to use as it is (``run --smoke`` shrinks one).
    ``progress`` is called with ``{"pending", "running", "done", "failed"}`` counts whenever
    they change.
    """
    kind = spec.type
    work_dir = Path(work_dir)
    if kind == "inline":
        from harness.launch.inline import launch_inline

        return launch_inline(jobs, work_dir, progress=progress)
    if kind == "local":
        from harness.launch.local import launch_local

        return launch_local(jobs, work_dir, workers=spec.workers, progress=progress)
    if kind == "slurm":
        import shutil

        from harness.errors import UserError
        from harness.launch.profile import load_profile
        from harness.launch.slurm import launch_slurm
        from harness.paths import slurm_profile

        if shutil.which("sbatch") is None:
            raise UserError("launcher.type: slurm, but sbatch is not on PATH. Run on a SLURM login "
                            "node, or use launcher.type: local (or slurm/cluster.sh for a test cluster)")
        if profile is None:
            profile = load_profile(profile_path or slurm_profile(spec.slurm_profile, None))
        return launch_slurm(jobs, work_dir, profile=profile, parallelism=spec.parallelism,
                            progress=progress)
    raise ValueError(f"unknown launcher {kind!r}; expected one of {LAUNCHERS}")
