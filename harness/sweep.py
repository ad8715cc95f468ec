"""A sweep as the command line sees it: the user mistakes to refuse before anything is written,
how each stage and cell of the plan stands once the launcher returns, and the exit status that
says so.

Exit status of ``harness run`` (README, "When things go wrong"):

* 0: every SFT stage and cell of the plan is done;
* 1: some failed (each is listed with its reason; ``--retry-failed`` reruns them);
* 2: invalid input (suite, data, arguments, the results folder), nothing written;
* 3: some are not done and none failed: held by another run (the lock's holder is named),
  waiting for an SFT stage that did not finish, stopped by a full disk, or ended by the
  scheduler (time limit after the last requeue, cancelled); the same command finishes them;
* 130 / 143: stopped by SIGINT (Ctrl-C) / SIGTERM; what was interrupted is pending and resumes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_NOT_DONE = 0, 1, 2, 3
NO_SPACE_MARKS = ("[Errno 28]", "[Errno 122]")   # ENOSPC, EDQUOT in a traceback's last line


# ------------------------------------------------------------------ mistakes refused up front
def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_results_root(root: Path, option: str = "--results") -> None:
    """``--results`` (or ``option``) must be (or be creatable as) a writable folder; a
    UserError otherwise, before anything is written."""
    root = Path(root)
    anc = _existing_ancestor(root)
    if not anc.is_dir():
        what = "is a file" if anc == root.absolute() else f"is inside {anc}, which is a file"
        raise UserError(f"{option} {root}: {what}, not a folder. Give a folder for the results "
                        f"(it is created if missing).")
    try:
        readonly = bool(os.statvfs(anc).f_flag & os.ST_RDONLY)
    except OSError:
        readonly = False
    if readonly:
        raise UserError(f"{option} {root}: {anc} is on a read-only file system. Give a folder on a "
                        f"writable one.")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{option} {root}: {anc} is not writable by this user. Give a folder you can "
                        f"write to, or fix its permissions.")


def _name_max(root: Path) -> tuple[int, int]:
    anc = _existing_ancestor(Path(root))
    anc = anc if anc.is_dir() else anc.parent
    try:
        return os.pathconf(anc, "PC_NAME_MAX"), os.pathconf(anc, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


# the longest name a run writes inside a cell folder: an atomic write's temp file
# ".token_importance.json.<pid>.<8 hex>.tmp", and checkpoint files below it
_LONGEST_INSIDE = len(".token_importance.json.4194304.12345678.tmp")
_DEEPEST_INSIDE = len("/checkpoints/.step-00000000.tmp4194304/model.safetensors")


def check_folder_names(plan, root: Path, source: str) -> None:
    """Every folder the plan will create must have a name the file system at ``root`` allows
    (NAME_MAX bytes per name, PATH_MAX in all); a UserError naming the suite key to shorten
    otherwise, before anything is written."""
    name_max, path_max = _name_max(root)
    suite = plan.suite.name
    problems = []
    if len(suite.encode()) + _LONGEST_INSIDE > name_max:
        problems.append(f"{source}: name: {suite[:40]!r}... is {len(suite)} characters; the results folder "
                        f"is named after it and this file system allows names of {name_max} bytes: "
                        f"shorten it (to at most {name_max - _LONGEST_INSIDE})")
    folders = [(c.cell_id, c) for c in plan.cells] + [(s.stage_id, s) for s in plan.sft_stages]
    for name, item in folders:
        if len(name.encode()) + _LONGEST_INSIDE <= name_max:
            continue
        model, data = item.model, item.dataset
        longest = max([("models", model), ("datasets", data)] + (
            [("methods", item.label)] if hasattr(item, "label") else []), key=lambda kv: len(kv[1]))
        problems.append(f"{source}: {longest[0]}: name {longest[1][:40]!r}... ({len(longest[1])} characters) makes "
                        f"the folder name {name[:40]}... {len(name)} bytes long; this file system allows "
                        f"{name_max} (less {_LONGEST_INSIDE} for the files inside): shorten it")
        break
    deepest = len(str(Path(root).absolute() / suite / "_sft")) + max((len(n) for n, _ in folders), default=0)
    if not problems and deepest + _DEEPEST_INSIDE + 1 > path_max:
        problems.append(f"{source}: the results paths would be {deepest + _DEEPEST_INSIDE} bytes long, over "
                        f"the {path_max} this file system allows: use a shorter --results folder or names")
    if problems:
        raise UserError(problems=problems)


# --------------------------------------------------------------------- where the plan stands
@dataclass
class ItemState:
    kind: str          # "sft" | "cell"
    id: str
    folder: Path
    state: str         # "done" | "failed" | "not done"
    reason: str | None = None


def item_state(kind: str, job_id: str, folder: Path) -> ItemState:
    """How one stage or cell stands now, from its folder: done (with its result there),
    failed (with the reason), or not done (held by whom, waiting for what, interrupted)."""
    from .results import CorruptFileError, lock_info, read_status
    from .results.layout import done_problem
    from .results.locks import describe_holder

    try:
        st = read_status(folder)
    except CorruptFileError as e:
        return ItemState(kind, job_id, folder, "not done", str(e))
    state, reason = st["state"], st.get("reason")
    if state == "done":
        problem = done_problem(folder, kind)
        return ItemState(kind, job_id, folder, "done" if problem is None else "not done", problem)
    if state == "failed":
        return ItemState(kind, job_id, folder, "failed", reason)
    holder = lock_info(folder)
    if holder is not None and not holder.get("stale"):
        return ItemState(kind, job_id, folder, "not done", f"locked by {describe_holder(holder)} "
                                                           f"(another run is working on it)")
    if state == "running":
        reason = "interrupted: its process is gone (killed, or its node failed)"
    return ItemState(kind, job_id, folder, "not done", reason or "not run yet")


def plan_states(items: list[tuple[str, str, Path]]) -> list[ItemState]:
    return [item_state(kind, job_id, folder) for kind, job_id, folder in items]


def exit_code(states: list[ItemState]) -> int:
    if any(s.state == "failed" for s in states):
        return EXIT_FAILED
    if any(s.state != "done" for s in states):
        return EXIT_NOT_DONE
    return EXIT_OK


def not_done_lines(states: list[ItemState], limit: int = 20) -> list[str]:
    """The not-done part of the end-of-run summary (failed ones are listed by the launcher's
    summary)."""
    left = [s for s in states if s.state == "not done"]
    if not left:
        return []
    what = ", ".join(f"{n} {k}" for k, n in (("SFT stages", sum(s.kind == "sft" for s in left)),
                                             ("on-policy stages", sum(s.kind == "onpolicy" for s in left)),
                                             ("cells", sum(s.kind == "cell" for s in left))) if n)
    lines = [f"not done: {what}; the same command finishes them once the cause is gone:"]
    lines += [f"  {s.id}: {s.reason}" for s in left[:limit]]
    if len(left) > limit:
        lines.append(f"  ... and {len(left) - limit} more (`python -m harness validate SUITE` lists all)")
    return lines


def out_of_space(outcomes) -> str | None:
    """The headline of the first job that stopped because the disk (or quota) was full."""
    from .launch.base import headline

    for o in outcomes:
        h = headline(o.error) if not o.ok else ""
        if any(m in h for m in NO_SPACE_MARKS):
            return h
    return None


# ----------------------------------------------------------------- what the jobs left behind
def record_hard_failures(outcomes, folders: dict) -> None:
    """A job that ended without a result (killed, cancelled, out of memory, a time limit
    without requeue) could not record how it ended; do it here, unless the job did (an
    interrupted job marks itself pending) or a live process holds the folder's lock. A
    scheduler's stop (cancelled, time limit after the last requeue, preemption, node failure)
    leaves the folder pending, resumable by a plain rerun; anything else (SIGKILL, out of
    memory, a crash) marks it failed."""
    from .launch.base import headline, stops_sweep
    from .results import lock_info, read_status, write_status

    for o in outcomes:
        folder = folders.get(o.name)
        if o.ok or folder is None or stops_sweep(o) or o.error.startswith("not started:"):
            continue   # out of space: the folder stays as the job left it (resumable)
        st = read_status(folder)
        if st["state"] in ("failed", "done") or (st["state"] == "pending" and st.get("reason")):
            continue
        info = lock_info(folder)
        if info is not None and not info.get("stale"):
            continue
        if getattr(o, "resumable", False):
            write_status(folder, "pending", reason=headline(o.error), logs=list(o.log_paths), job_id=o.job_id)
        else:
            write_status(folder, "failed", reason=f"job ended without a result: {headline(o.error)}",
                         logs=list(o.log_paths), job_id=o.job_id)


def mark_interrupted(folders: list[Path], reason: str) -> int:
    """After an interrupted run: every folder still marked running whose process is gone (no
    live lock) is set to pending with ``reason``; returns how many."""
    from .results import CorruptFileError, lock_info, read_status, write_status

    n = 0
    for folder in folders:
        try:
            st = read_status(folder)
        except (CorruptFileError, OSError):
            continue
        info = lock_info(folder)
        if st["state"] == "running" and (info is None or info.get("stale")):
            write_status(folder, "pending", reason=reason)
            n += 1
    return n
