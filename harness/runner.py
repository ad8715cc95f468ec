"""Run one SFT stage or one cell, from its folder; what every launcher calls.

A plan is *materialized* before anything runs: each SFT stage and each cell gets its folder
with the resolved ``config.yaml`` and a ``status``. A job then needs its two paths and its
config (``run_job(suite_dir, kind, id, config=...)``), so the same function runs inline, in a
local worker process, or in a SLURM array task. The config comes from the plan, never from
the folder: a results folder cannot choose the code a job imports or the trust it grants.
Each job:

1. takes the folder's lock (another live process holding it -> the job is skipped, and says
   who holds it);
2. returns at once if the status is ``done`` (and its result is there);
3. a cell whose SFT stage is not done (failed, interrupted, damaged) stays ``pending`` with
   that reason and returns: a plain rerun makes the stage and then the cell;
4. marks itself ``running``, trains (resuming from the newest intact checkpoint), evaluates,
   writes its results atomically, and marks itself ``done``; it checks at every step and
   before every write that its lock is still its own, and stops if it is not;
5. on SIGINT/SIGTERM or a full disk marks itself ``pending`` (interrupted, resumable); on any
   other exception marks itself ``failed`` with the reason (a numerical fault also records
   the step and the last finite metrics) and re-raises, so launchers see the failure.

A cell's own work (set up, train, evaluate, cost, save) is :mod:`harness.cell`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from .cell import rank as _rank
from .cell import report_drops as _report_drops
from .cell import require_pairs as _require_pairs
from .cell import run_cell as _run_cell
from .cell import stage_data as _stage_data
from .cell import plain_config as _plain
from .cell import tiny_texts  # noqa: F401 - what a tiny model's tokenizer is built from (SFT and cells)
from .cell import write_importance_examples as _write_importance_examples  # noqa: F401
from .config.cell import build_method, load_cell_config, load_stage_config
from .errors import UserError
from .lifecycle import LockGuard, StageDamaged, plan_jobs, record_failure, stage_problem, suite_lock, write_config


# --------------------------------------------------------------------------- folders
def materialize(plan, suite_dir: Path, suite_text: str | None = None, phase1=None) -> list[str]:
    """Write the plan into its results folder and return notes for the user.

    Every stage and cell gets its folder, its ``config.yaml`` (rewritten from the plan when the
    one there differs: a results folder never chooses plugins, ``trust_remote_code`` or any
    other setting) and a ``pending`` status when new. A folder marked done whose result is
    missing or unreadable (metrics.json, an SFT stage's model) is set back to pending, so the
    run makes it again. ``plan.json`` records which folders make up this suite now (a tuned
    suite's finals are materialized with ``phase1``, the first phase's plan: both phases); crash
    leftovers in ``_cache/`` and ``report/`` are removed. Done, failed and interrupted folders
    are otherwise left as they are."""
    from .results import CorruptFileError, atomic_write_text, read_status, write_status
    from .results.layout import done_problem, remove_temp_leftovers, write_plan

    suite_dir = Path(suite_dir)
    suite_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    # Two `harness run` on the same results: without the lock, one could read "new", the
    # other start the job and mark it running, and the first then overwrite that with pending.
    with suite_lock(suite_dir):
        if suite_text is not None:
            atomic_write_text(suite_dir / "suite.yaml", suite_text)
        whole = [plan] if phase1 is None else [phase1, plan]  # a tuned suite's finals: both phases
        write_plan(suite_dir, plan.suite.name, list(dict.fromkeys(c.cell_id for p in whole for c in p.cells)),
                   list(dict.fromkeys(s.stage_id for p in whole for s in p.sft_stages)))
        for kind, job_id, folder, cfg in plan_jobs(plan, suite_dir):
            folder.mkdir(parents=True, exist_ok=True)
            notes += write_config(folder, cfg)
            try:
                st = read_status(folder)
            except CorruptFileError as e:
                notes.append(f"{e}; set back to pending")
                st = {"state": "new"}
            problem = done_problem(folder, kind) if st["state"] == "done" else None
            if st["state"] == "new":
                write_status(folder, "pending")
            elif problem:
                write_status(folder, "pending", reason=f"was done, but {problem}: made again")
                notes.append(f"{folder.name}: marked done, but {problem}; it runs again")
        for shared in ("_cache", "report"):
            remove_temp_leftovers(suite_dir / shared, recursive=True, min_age_s=60.0)
    return notes


# ------------------------------------------------------------------------------ jobs
def run_job(suite_dir: str, kind: str, job_id: str, retry_failed: bool = False,
            config: dict | None = None) -> dict:
    """Entry point of every launcher. ``kind`` is "sft", "onpolicy" (an on-policy sample
    stage) or "cell"; ``config`` is the job's config from the plan (the launchers always pass
    it; without it, as in ``python -m harness.runner``, the folder's config.yaml is used).

    Returns ``{"state": ..., "id": ...}``: ``done``; ``failed`` (skipped, not retried);
    ``locked`` (another live process holds the folder, ``holder`` says who); ``blocked`` (a
    job whose SFT or on-policy stage is not done: left pending with the reason); ``lost`` (this
    process lost its lock while working and stopped without writing). A failure is recorded in
    the folder and raised; SIGINT/SIGTERM mark the folder pending (interrupted) and raise.

    Under a distributed launch (several processes per cell, e.g. one per GPU) every rank
    trains, but only rank 0 takes the lock, writes status and results, and evaluates."""
    from .results import CellLock, lock_info, read_status
    from .signals import STOP_SIGNALS, stop_on_signals

    _quiet_threads()
    suite_dir = Path(suite_dir)
    folder = suite_dir / STAGE_DIRS[kind] / job_id if kind in STAGE_DIRS else suite_dir / job_id
    if config is not None:
        # the plan's config onto disk before anything reads it back (every rank writes the same
        # bytes atomically): a folder's own config.yaml never chooses plugins or trust
        write_config(folder, config)
    deps = _stages_of(kind, folder, config)
    rank, world = _rank()
    if world > 1 and rank != 0:
        st = read_status(folder)
        if st["state"] == "done" or (st["state"] == "failed" and not retry_failed):
            return {"state": st["state"], "id": job_id, "skipped": True}
        _stage_runner(kind)(suite_dir, folder)
        return {"state": "done", "id": job_id, "rank": rank}

    # Under SLURM, submitit ignores SIGTERM on purpose (a preemption sends it before the
    # signal that makes submitit requeue the job); elsewhere SIGTERM stops the job cleanly.
    stop = (signal.SIGINT,) if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else STOP_SIGNALS
    with stop_on_signals(stop):
        if deps:
            _wait_for_stages(suite_dir, folder, deps)
        lock = CellLock(folder)
        if not lock.acquire(timeout=0):
            return {"state": "locked", "id": job_id, "holder": lock_info(folder)}
        try:
            return _run_locked(suite_dir, kind, job_id, folder, deps, lock, retry_failed)
        finally:
            lock.release()


from .lifecycle import STAGE_DIRS, STAGE_NAMES  # noqa: E402 - where each kind of stage keeps its folders


def _stages_of(kind: str, folder: Path, config: dict | None) -> list[tuple[str, str]]:
    """The stages (kind, id) a job starts from: a cell from its SFT stage and on-policy sample
    stage (when it has them), an on-policy stage from its SFT stage, an SFT stage from none."""
    if kind == "sft":
        return []
    if config is None:
        try:
            from .config.cell import load_onpolicy_config

            cfg = load_cell_config(folder) if kind == "cell" else load_onpolicy_config(folder)
        except UserError:  # missing or invalid: the job itself reports it, with its status
            return []
        config = {"sft_stage": cfg.sft_stage, "onpolicy_stage": getattr(cfg, "onpolicy_stage", None)}
    deps = [("sft", config.get("sft_stage"))]
    if kind == "cell":
        deps.append(("onpolicy", config.get("onpolicy_stage")))
    return [(k, sid) for k, sid in deps if sid]


def _run_onpolicy(suite_dir: Path, folder: Path, guard=None) -> dict:
    from .data.onpolicy import run_stage

    return run_stage(suite_dir, folder) if _rank()[0] == 0 else {}


def _stage_runner(kind: str):
    return {"sft": _run_sft, "onpolicy": _run_onpolicy}.get(kind, _run_cell)


def _checked_cell_config(folder: Path):
    """The cell's config read back, its plugins loaded and its method built: each problem is a
    UserError naming the file and key."""
    import methods

    cfg = load_cell_config(folder)
    for p in cfg.plugins:
        methods.load_plugin(p)
    build_method(cfg, folder / "config.yaml")
    return cfg


def _run_locked(suite_dir: Path, kind: str, job_id: str, folder: Path, deps: list[tuple[str, str]], lock,
                retry_failed: bool) -> dict:
    from .results import read_status, write_status
    from .results.layout import done_problem, remove_temp_leftovers
    from .results.locks import LockLostError
    from .results.progress import reporting

    remove_temp_leftovers(folder)
    st = read_status(folder)
    if st["state"] == "done" and not done_problem(folder, kind):
        return {"state": "done", "id": job_id, "skipped": True}
    if st["state"] == "failed" and not retry_failed:
        return {"state": "failed", "id": job_id, "skipped": True, "reason": st.get("reason")}
    if kind == "cell":
        try:  # a config that does not read back is this cell's failure, whatever its stage's state
            _checked_cell_config(folder)
        except UserError as e:
            record_failure(folder, e)
    if kind != "sft":
        blocked = next(filter(None, (stage_problem(suite_dir, sid, k) for k, sid in deps)), None)
        if blocked:
            write_status(folder, "pending", reason=blocked)
            return {"state": "blocked", "id": job_id, "reason": blocked}
    extra = {"took_over": lock.broke} if lock.broke else {}
    write_status(folder, "running", host=os.uname().nodename, pid=os.getpid(),
                 slurm_job=os.environ.get("SLURM_JOB_ID"), **extra)
    t0 = time.time()
    guard = LockGuard(lock)
    try:
        with reporting(folder, "sampling" if kind == "onpolicy" else "set-up",  # progress.json
                       may_write=lock.verify):
            out = _stage_runner(kind)(suite_dir, folder, guard)
        lock.ensure_held()
    except LockLostError as e:
        print(f"{folder.name}: {e}", file=sys.stderr, flush=True)
        return {"state": "lost", "id": job_id, "reason": str(e)}
    except StageDamaged as e:
        write_status(folder, "pending", reason=str(e))
        return {"state": "blocked", "id": job_id, "reason": str(e)}
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
        record_failure(folder, e)
    write_status(folder, "done", wall_s=round(time.time() - t0, 3))
    return {"state": "done", "id": job_id, **(out or {})}


def _wait_for_stages(suite_dir: Path, folder: Path, deps: list[tuple[str, str]], poll_s: float = 1.0) -> None:
    """A cell starts from its SFT stage's checkpoint (and its on-policy samples). When another
    process (a second ``harness run`` on the same results folder) holds a stage's lock and is
    running it, wait for it to finish instead of failing the job because the stage is not done yet."""
    from .results import lock_info, read_status

    for kind, sid in deps:
        stage = suite_dir / STAGE_DIRS[kind] / sid
        what = STAGE_NAMES[kind]
        told = False
        while read_status(stage)["state"] not in ("done", "failed"):
            holder = lock_info(stage)
            if holder is None or holder.get("stale"):
                break  # nobody is running it: the job reports the stage's state itself
            if not told:
                print(f"{folder.name}: waiting for {what} {sid}, which host {holder.get('host')} "
                      f"pid {holder.get('pid')} is running", file=sys.stderr, flush=True)
                told = True
            time.sleep(poll_s)


def _quiet_threads() -> None:
    try:  # per-load progress bars drown the sweep's own progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass
    from . import threads

    threads.apply()  # the user's setting, else this process's share of the granted CPUs


# ------------------------------------------------------------------------- SFT stage
def _run_sft(suite_dir: Path, folder: Path, guard=None) -> dict:
    from .core.train import SFTObjective, resolve_schedule, train
    from .data.tokenize import tokenize
    from .models import load_model, save_model, weights_fingerprint
    from .results import atomic_write_json
    from .results.layout import share_like_other_files
    from .results.progress import current, steps_stage

    cfg = load_stage_config(folder)
    data = _stage_data(cfg)
    mspec, sft = cfg.model, cfg.sft
    seed = cfg.seed or 0
    texts = tiny_texts(data) if mspec.tiny else None
    model, tok = load_model(mspec, alphabet=data.alphabet, texts=texts, seed=seed)
    tdata = tokenize(data.sft, tok, sft.max_length, sft.max_prompt_length, mspec.chat_template,
                     cache_dir=suite_dir / "_cache")
    _require_pairs(tdata, data, "SFT examples", sft)
    _report_drops(tdata, data, "SFT examples", sft)
    from .trackers import for_run

    trk = for_run(_plain(folder), folder, "sft") if _rank()[0] == 0 else None
    on_step = steps_stage("sft", resolve_schedule(sft, len(tdata)).steps, guard)  # progress.json
    res = train(model, tdata, SFTObjective(), sft, seed, folder, tokenizer=tok, desc=f"sft {folder.name}",
                on_step=on_step, trackers=trk)
    if trk is not None:
        trk.finish({"final_loss": res.last_metrics.get("loss"), "wall_s": res.wall_s})
    model = res.model  # under FSDP: the gathered, unsharded model (core/sharded.py)
    if _rank()[0] != 0:
        return {}
    model = model.cpu()
    if guard is not None:
        guard()
    current().stage("saving")
    save_model(model, tok, folder / "model")
    share_like_other_files((folder / "model").glob("*.safetensors"))
    info = {"wall_s": round(res.wall_s, 3), "steps": res.steps, "tokens": res.tokens,
            "weights_fingerprint": weights_fingerprint(model), "tokenization": tdata.stats,
            "data": data.stats,
            "final_loss": res.last_metrics.get("loss"),
            **({"damaged_checkpoints": res.damaged_checkpoints} if res.damaged_checkpoints else {})}
    atomic_write_json(folder / "stage.json", info)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return info


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.runner SUITE_DIR sft|cell ID``: one job, e.g. under
    ``accelerate launch --num_processes N -m harness.runner ...`` for a multi-GPU cell."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m harness.runner")
    ap.add_argument("suite_dir")
    ap.add_argument("kind", choices=["sft", "cell"])
    ap.add_argument("job_id")
    ap.add_argument("--retry-failed", action="store_true")
    a = ap.parse_args(argv)
    out = run_job(a.suite_dir, a.kind, a.job_id, retry_failed=a.retry_failed)
    out.pop("holder", None)
    print(json.dumps({k: v for k, v in out.items() if k != "metrics"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
