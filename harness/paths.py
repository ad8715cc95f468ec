"""Where things are and what they are called on disk: one answer for the whole harness.

* ``PROJECT_ROOT``: the folder holding the ``harness`` and ``methods`` packages (a checkout,
  or the code snapshot a SLURM job runs).
* ``resolve``: a path as a suite writes it, relative to the suite file's folder.
* ``find_slurm_profile`` / ``slurm_profile``: the one lookup of a SLURM profile, used alike
  by ``validate``, ``run`` and the launcher (the suite's folder, the working directory, then
  the project), so that a suite that validates from any folder also runs from it.
* ``slug``: a label as it may appear in a file or folder name.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve(base_dir: Path, p: str) -> Path:
    """``p`` (``~`` expanded) as is when absolute, else relative to ``base_dir``."""
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base_dir / q)


def slurm_profile_dirs(base_dir: Path | None) -> list[Path]:
    """Where a relative profile path is looked up, in order."""
    dirs = [] if base_dir is None else [Path(base_dir)]
    return dirs + [Path.cwd(), PROJECT_ROOT]


def find_slurm_profile(name: str | Path, base_dir: Path | None) -> Path | None:
    """The SLURM profile file ``name`` (absolute, or relative to the suite's folder, the
    working directory or the project root, in that order), resolved; None if none exists."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for root in slurm_profile_dirs(base_dir):
        if (root / p).is_file():
            return (root / p).resolve()
    return None


def slurm_profile_problem(name: str | Path, base_dir: Path | None) -> str:
    """Why ``name`` cannot be used as a profile, and the fix."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return f"SLURM profile {str(name)!r} not found ({p} does not exist); point slurm_profile at a file like slurm/default.yaml"
    looked = ", ".join(str(d) for d in slurm_profile_dirs(base_dir))
    return (f"SLURM profile {str(name)!r} not found (looked in {looked}); create it (see slurm/) "
            f"or point slurm_profile at one")


def slurm_profile(name: str | Path, base_dir: Path | None) -> Path:
    """``find_slurm_profile``, or a ``UserError`` naming the key, the places looked in and the fix."""
    found = find_slurm_profile(name, base_dir)
    if found is None:
        raise UserError(f"launcher.slurm_profile: {slurm_profile_problem(name, base_dir)}")
    return found


def slug(text: str, max_len: int | None = None, keep_case: bool = False) -> str:
    """A label as it may appear in a file or folder name: every run of characters outside
    ``[a-z0-9.]`` becomes one '-', ends trimmed, at most ``max_len`` characters, "x" if
    nothing is left ('DPO (beta=0.1)' -> 'dpo-beta-0.1'). Cell ids use this form.

    ``keep_case``: the report's file names (tables, figures), which keep case, '_' and '-'
    and collapse nothing else ('TI-DPO' stays 'TI-DPO'). The two forms are kept apart because
    cell ids and committed report files must not change name.
    """
    if keep_case:
        s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    else:
        s = re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-.")
    if max_len is not None:
        s = s[:max_len].rstrip("-.")
    return s or "x"
