"""``python -m harness status results/<suite>``: where every SFT stage, on-policy stage and cell
of a suite's results folder stands, while a run goes on or after it.

Read from the folders alone (``plan.json``, each folder's ``status``, ``lock`` and
``progress.json``), so it works from any shell, on any host that sees the results folder, under
any launcher. States:

* ``done``, ``failed``, ``pending`` (never run, interrupted, or waiting for its stage; the note
  says which) as the folder's ``status`` says;
* ``running``: its status says so and its lock's heartbeat is fresh;
* ``stale``: its status says running but its lock is gone or stale (the process was killed, or
  its node died): a plain rerun resumes it.

Columns: the job's short name, state, stage, step/total, ETA (at the rate so far), how long
ago its record was last updated, and a note (why it failed or waits; how long it took).
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from harness.errors import UserError
from harness.results import CorruptFileError, lock_info, read_status
from harness.results.layout import read_plan
from harness.results.progress import duration, eta_s, read_progress, short_name

NO_PROGRESS_NOTE_S = 600.0  # a running job whose progress has not moved for this long gets a note


def job_folders(suite_dir: Path) -> list[tuple[str, Path]]:
    """(kind, folder) of every job of the suite, stages first: the plan's, or (a folder written
    before plans were recorded) every folder that has a status or config. A UserError when
    ``suite_dir`` is not a suite's results folder."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise UserError(f"{suite_dir}: no such folder; give results/<suite> as written by `harness run`")
    plan = read_plan(suite_dir)
    onpolicy = sorted(d for d in (suite_dir / "_onpolicy").glob("*") if d.is_dir())
    if plan is not None:
        return ([("sft", suite_dir / "_sft" / s) for s in plan.get("sft_stages", [])]
                + [("onpolicy", d) for d in onpolicy] + [("cell", suite_dir / c) for c in plan["cells"]])

    def jobs(d: Path) -> list[Path]:
        return sorted(x for x in d.glob("*") if x.is_dir() and not x.name.startswith((".", "_"))
                      and ((x / "status").is_file() or (x / "config.yaml").is_file()))

    found = ([("sft", d) for d in jobs(suite_dir / "_sft")] + [("onpolicy", d) for d in onpolicy]
             + [("cell", d) for d in jobs(suite_dir)])
    if found:
        return found
    suites = sorted(d.name for d in suite_dir.iterdir() if d.is_dir() and (d / "plan.json").is_file())
    hint = (f" It holds the results of the suites {', '.join(suites)}: give one of them, e.g. "
            f"{suite_dir / suites[0]}." if suites else " Give results/<suite> as written by `harness run`.")
    raise UserError(f"{suite_dir}: not a suite's results folder (no plan.json and no cell folders).{hint}")


def _epoch(iso) -> float | None:
    try:
        return _dt.datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return None


def job_row(kind: str, folder: Path, now: float) -> dict:
    """One job's row: ``job``, ``kind``, ``state``, ``stage``, ``step``, ``eta``, ``age``, ``note``."""
    row = {"job": short_name(folder.name), "kind": kind, "state": "pending", "stage": "", "step": "",
           "eta": "", "age": "", "note": ""}
    try:
        st = read_status(folder)
    except (CorruptFileError, OSError) as e:
        return {**row, "state": "unreadable", "note": str(e)}
    state = st["state"] if st["state"] != "new" else "pending"
    rec = read_progress(folder) if state in ("running", "failed", "pending") else None
    updated = (rec or {}).get("updated") or _epoch(st.get("updated"))
    row.update(state=state, age=duration(now - updated) + " ago" if updated else "")
    if rec is not None:
        total = rec.get("total")
        row.update(stage=rec.get("stage", ""),
                   step=f"{rec.get('step')}/{total}" if isinstance(total, int) and total > 0
                   else (str(rec["step"]) if rec.get("step") else ""))
    if state == "running":
        lock = lock_info(folder)
        if lock is None or lock.get("stale"):
            row.update(state="stale", note=f"{(lock or {}).get('stale') or 'no lock'}: its process is gone; "
                                           f"rerun the same command to resume it")
        else:
            if rec is not None:
                row["eta"] = duration(eta_s(rec, now)) if eta_s(rec, now) is not None else ""
                if now - rec["updated"] > NO_PROGRESS_NOTE_S:
                    row["note"] = f"no progress for {duration(now - rec['updated'])} (lock heartbeat " \
                                  f"{duration(lock.get('age_s'))} ago)"
            where = st.get("host"), st.get("slurm_job")
            row["note"] = row["note"] or f"host {where[0]}" + (f", SLURM job {where[1]}" if where[1] else "")
    elif state == "done":
        row["note"] = f"took {duration(st['wall_s'])}" if isinstance(st.get("wall_s"), (int, float)) else ""
    elif st.get("reason"):
        row["note"] = str(st["reason"]).splitlines()[0][:160]
    return row


COLUMNS = (("job", "JOB"), ("state", "STATE"), ("stage", "STAGE"), ("step", "STEP"), ("eta", "ETA"),
           ("age", "UPDATED"), ("note", "NOTE"))


def status_table(suite_dir: str | Path, now: float | None = None) -> str:
    """The table of every job of the suite, then one line of counts."""
    now = time.time() if now is None else now
    rows = [job_row(kind, folder, now) for kind, folder in job_folders(Path(suite_dir))]
    width = {k: max([len(h)] + [len(str(r[k])) for r in rows]) for k, h in COLUMNS}
    lines = ["  ".join(f"{h:{width[k]}s}" for k, h in COLUMNS).rstrip()]
    lines += ["  ".join(f"{str(r[k]):{width[k]}s}" for k, _ in COLUMNS).rstrip() for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    order = ("done", "running", "stale", "pending", "failed", "unreadable")
    lines.append(f"{len(rows)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)))
    return "\n".join(lines)
