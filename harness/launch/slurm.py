"""The SLURM launcher: one submitit job array per (stage, resources) group, cells after SFT.

How a run goes:

1. The code is snapshotted (``harness/`` and ``methods/`` copied to ``<work_dir>/snapshot/<stamp>``)
   and every job puts that copy first on its import path (``snapshot_setup``), so jobs that wait
   in the queue, or are requeued days later, run the code as it was at submission.
2. The SFT jobs go in as one array, the on-policy sample stages (when a suite has them) as
   another, the cell jobs as a third, each submitted right away with
   ``--dependency=afterany:<the earlier stages' array ids>``: the whole sweep is queued at once,
   the scheduler holds each stage until every job of the earlier ones has ended (however it
   ended: a cell whose SFT stage did not finish fails with that reason), and nothing depends
   on the submitting process staying alive; rerunning the suite skips finished cells and
   watches the jobs still queued or running (``<work_dir>/slurm_jobs.json``) instead of
   submitting them again. (A tuned suite is two such launches: trials, then finals; see
   ``harness.tuning``.)
   ``--array=0-N%P`` caps running tasks at ``launcher.parallelism``.
3. Each job runs a ``JobCall`` (a ``submitit.helpers.Checkpointable``): at a time limit or a
   preemption submitit calls its ``checkpoint()``, which requeues the same call (up to the
   profile's ``max_requeues``); the cell resumes from its own on-disk checkpoint. On the last
   attempt the time-limit warning is ignored: the job runs on to the limit.
4. With ``gpus_per_node > 1`` (or ``nodes > 1``) the job runs the function under
   ``accelerate launch --num_processes N`` (one process per GPU); rank 0's return value is the
   job's result.
5. The launcher polls every second: result files for outcomes, ``sacct`` for states (at most
   every 10 s once the run is long). A job that ended without a result file is reported after
   ``result_wait_s``: failed when killed or out of memory, stopped (resumable) when the
   scheduler ended it (time limit after the last requeue, cancelled, preempted, node failure). This needs SLURM
   accounting (slurmdbd): without it ``sacct`` knows no states and such a job would look
   pending forever.
"""
from __future__ import annotations

import os
import pickle
import shlex
import socket
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit

from harness.errors import UserError
from harness.launch.base import (
    RESOURCES,
    STAGE_ORDER,
    Job,
    JobOutcome,
    Progress,
    ProgressFn,
    by_stage,
    outcome_with_result,
    outcome_without_result,
    snapshot_code,
)
from harness.launch.profile import SlurmProfile, StageResources

# sacct states after which a job will not run again (the first word: "CANCELLED by 0")
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"})


# ----------------------------------------------------------------------------- the job's callable
@dataclass
class AccelerateSpec:
    """How a job runs its function under ``accelerate launch``."""

    gpus_per_node: int
    nodes: int = 1
    extra_args: tuple[str, ...] = ()


class JobCall(submitit.helpers.Checkpointable):
    """The callable each SLURM job runs: ``fn(*args, **kwargs)``, directly or under accelerate.

    ``checkpoint()`` (inherited) resubmits this same call when the job hits its time limit or is
    preempted; the function is expected to resume from its own on-disk state.
    """

    def __init__(self, fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                 accelerate: AccelerateSpec | None = None):
        self.fn = fn
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.accelerate = accelerate

    def __call__(self) -> Any:
        _run_to_the_limit_on_the_last_attempt()
        if self.accelerate is None:
            return self.fn(*self.args, **self.kwargs)
        return _run_under_accelerate(self)


def _run_to_the_limit_on_the_last_attempt() -> None:
    """SLURM signals a job ``signal_delay_s`` before its time limit; submitit then checkpoints
    and requeues it, or, once ``max_requeues`` are used up, stops it at once with "Job not
    requeued". That throws away the last ``signal_delay_s`` of the last attempt, in which the
    job might have finished. Here the signal is ignored on the last attempt: the job runs on
    until it finishes or SLURM ends it at the limit (then the launcher reports the time limit
    and max_requeues, and the cell stays resumable). Preemption (not a time-out) still goes to
    submitit, which requeues it. Uses submitit 1.5's handler attributes; if they are not
    there, submitit's handler is kept as it is."""
    import signal as _signal

    sig = submitit.JobEnvironment._usr_sig()
    handler = _signal.getsignal(sig)
    owner = getattr(handler, "__self__", None)
    delayed = getattr(owner, "_delayed", None)
    if delayed is None or not hasattr(delayed, "_timeout_countdown") or not hasattr(owner, "has_timed_out"):
        return

    def on_signal(signum, frame):
        if owner.has_timed_out() and delayed._timeout_countdown - 1 < 0:
            print(f"harness: the time limit is {delayed._timeout_min} min away by less than signal_delay_s, "
                  f"and no requeue is left (max_requeues used up): running on until the job finishes or "
                  f"SLURM stops it at the limit", file=sys.stderr, flush=True)
            return
        handler(signum, frame)

    _signal.signal(sig, on_signal)


def accelerate_command(call_file: str | Path, spec: AccelerateSpec, *, machine_rank: int = 0,
                       main_process_ip: str | None = None, main_process_port: int,
                       python: str | None = None) -> list[str]:
    """The ``accelerate launch`` command that runs one process per GPU (per node), each
    executing ``python -m harness.launch.slurm CALL_FILE``.

    ``--num_processes`` is the total over all nodes (accelerate's convention). ``--multi_gpu``
    is added unless ``extra_args`` already picks a distributed mode (FSDP, DeepSpeed, a config
    file), because accelerate accepts only one.
    """
    extra = list(spec.extra_args)
    cmd = [python or sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(spec.gpus_per_node * spec.nodes),
           "--num_machines", str(spec.nodes),
           "--machine_rank", str(machine_rank),
           "--main_process_port", str(main_process_port)]
    if spec.nodes > 1:
        if not main_process_ip:
            raise ValueError("a multi-node launch needs main_process_ip (the first node's host)")
        cmd += ["--main_process_ip", main_process_ip]
    given = {a.split("=", 1)[0] for a in extra}
    modes = {"--multi_gpu", "--use_fsdp", "--use_deepspeed", "--config_file", "--cpu"}
    if not given & modes:
        cmd.append("--multi_gpu")
    # accelerate warns about each unset default; state them (the training core's own
    # Accelerator(mixed_precision=...) still wins over the launcher's value)
    for flag in ("--mixed_precision", "--dynamo_backend"):
        if flag not in given and "--config_file" not in given:
            cmd += [flag, "no"]
    cmd += extra
    cmd += ["--module", "harness.launch.slurm", str(call_file)]
    return cmd


def job_port(job_id: str) -> int:
    """A port every node of a job derives alike from the job id (multi-node rendezvous)."""
    return 20000 + zlib.crc32(job_id.encode()) % 20000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_folder() -> tuple[Path, str, Any]:
    """(folder for the hand-off files, job id, submitit's JobEnvironment or None): a submitit
    job's own folder; outside one (the local launcher's workers) a folder of this process."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="harness-accelerate-")), f"local-{os.getpid()}", None
    return Path(env.paths.folder), str(env.job_id), env


def _run_under_accelerate(call: JobCall) -> Any:
    folder, job_id, env = _job_folder()
    spec = call.accelerate
    if env is None and spec.nodes > 1:
        raise RuntimeError("a multi-node accelerate launch needs a SLURM job (launcher.type: slurm)")
    base = folder / f"{job_id}_accelerate"
    call_file, result_file = base.with_suffix(".call.pkl"), base.with_suffix(".result.pkl")
    error_file = base.with_suffix(".error.txt")
    for p in (result_file, error_file):
        p.unlink(missing_ok=True)
    import cloudpickle  # submitit's own dependency

    call_file.write_bytes(cloudpickle.dumps((call.fn, call.args, call.kwargs, str(result_file))))
    if spec.nodes > 1:
        rank, ip, port = env.node, env.hostnames[0], job_port(job_id)
    else:
        rank, ip, port = 0, None, free_port()
    cmd = accelerate_command(call_file, spec, machine_rank=rank, main_process_ip=ip,
                             main_process_port=port)
    print("harness: running", shlex.join(cmd), flush=True)
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
        detail = error_file.read_text() if error_file.exists() else "see the job's stderr"
        raise RuntimeError(f"accelerate launch exited with code {rc}:\n{detail}")
    if rank != 0:
        return None   # the job's result is what node 0 (global rank 0) returns
    with open(result_file, "rb") as fh:
        return pickle.load(fh)


def _rank_main(argv: list[str]) -> None:
    """Entry point of one accelerate process: run the call, rank 0 saves the return value."""
    import cloudpickle

    call_file = Path(argv[0])
    fn, args, kwargs, result_file = cloudpickle.loads(call_file.read_bytes())
    rank = int(os.environ.get("RANK", "0"))
    try:
        value = fn(*args, **kwargs)
    except BaseException:
        err = call_file.with_name(call_file.name.replace(".call.pkl", ".error.txt"))
        if not err.exists():   # keep the first failing rank's traceback
            err.write_text(f"rank {rank}:\n{traceback.format_exc()}")
        raise
    if rank == 0:
        tmp = Path(result_file + f".tmp{os.getpid()}")
        tmp.write_bytes(cloudpickle.dumps(value))
        os.replace(tmp, result_file)


# ----------------------------------------------------------------------------- submission
def executor_parameters(res: StageResources, *, name: str, parallelism: int,
                        setup: list[str] = (), dependency: str | None = None) -> dict:
    """The ``AutoExecutor.update_parameters`` keywords for one array of a stage."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": res.time,
        "nodes": res.nodes,
        "tasks_per_node": 1,          # one task per node; accelerate spawns the GPU processes
        "cpus_per_task": res.cpus_per_task,
        "slurm_array_parallelism": parallelism,
        "slurm_signal_delay_s": res.signal_delay_s,
        "slurm_setup": [*res.setup, *setup],
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    for key in ("partition", "account", "qos"):
        if getattr(res, key):
            params[f"slurm_{key}"] = getattr(res, key)
    additional = {k: v for k, v in res.additional.items() if v is not False}
    if additional:
        params["slurm_additional_parameters"] = additional
    if dependency:
        params["slurm_dependency"] = dependency
    return params


def make_call(job: Job, res: StageResources) -> JobCall:
    acc = None
    if res.uses_accelerate:
        acc = AccelerateSpec(res.gpus_per_node, res.nodes, tuple(res.accelerate_args))
    return JobCall(job.fn, job.args, job.kwargs, acc)


def snapshot_setup(snapshot: Path, cwd: Path) -> list[str]:
    """Shell lines that make a job import the snapshot.

    PYTHONPATH alone is not enough: ``python -m`` puts the working directory first on sys.path,
    and jobs start in the submission directory, often the project root with its live
    ``harness/``. PYTHONSAFEPATH=1 (Python >= 3.11) drops that entry, in the job and in the
    accelerate processes it starts; the submission directory goes back on the path *after*
    the snapshot, so modules importable from it stay importable.
    """
    path = ":".join(shlex.quote(str(p)) for p in (snapshot, cwd))
    return [f"export PYTHONPATH={path}${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1"]


def _sbatch_message(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if "error" in ln.lower() and ln.strip()]
    return "; ".join(lines[-2:]) if lines else str(e).strip().splitlines()[-1]


def array_id(sjob: Any) -> str:
    return str(sjob.job_id).split("_", 1)[0]


def launch_slurm(jobs: list[Job], work_dir: Path, *, profile: SlurmProfile, parallelism: int = 16,
                 progress: ProgressFn | None = None, poll_s: float = 1.0) -> list[JobOutcome]:
    """Submit ``jobs`` (see the module docstring) and watch them to the end. Jobs that an
    earlier run of this results folder submitted and that are still queued or running (its
    driver was killed, and the same command was run again) are watched, not submitted twice;
    ``<work_dir>/slurm_jobs.json`` records which SLURM job runs which job."""
    from harness.results import CellLock

    work_dir = Path(work_dir)
    prog = Progress([j.name for j in jobs], progress)
    submitted: dict[str, tuple[Job, Any]] = {}
    try:
        with CellLock(work_dir, filename="submit.lock", timeout=300):
            _submit_all(jobs, work_dir, profile, parallelism, submitted)
        return _monitor(jobs, submitted, prog, profile, poll_s)
    except BaseException:
        ids = sorted({array_id(h) for _, h in submitted.values()})
        if ids:   # Ctrl-C or a crash here: don't leave a sweep running unwatched
            subprocess.run(["scancel", *ids], check=False)
            print(f"harness: cancelled SLURM jobs {' '.join(ids)}", file=sys.stderr)
        raise


def _submit_all(jobs: list[Job], work_dir: Path, profile: SlurmProfile, parallelism: int,
                submitted: dict) -> None:
    """Attach to the still-live jobs of an earlier run, submit the others as one array per
    (stage, resources) group, and record them all."""
    folder = work_dir / "submitit"
    record = _read_record(work_dir)
    live = _live_jobs([record[j.name] for j in jobs if j.name in record])
    attached = {j.name: record[j.name] for j in jobs if record.get(j.name) in live}
    for name, job_id in attached.items():
        job = next(j for j in jobs if j.name == name)
        submitted[name] = (job, submitit.SlurmJob(folder=folder, job_id=job_id))
    if attached:
        print(f"harness: {len(attached)} jobs of an earlier run are still queued or running on SLURM "
              f"({', '.join(sorted(set(map(str, attached.values()))))}); watching them instead of "
              f"submitting them again", file=sys.stderr, flush=True)
    stages = by_stage([j for j in jobs if j.name not in attached]) if len(attached) < len(jobs) else []
    setup = snapshot_setup(snapshot_code(work_dir), Path.cwd()) if profile.snapshot and stages else []
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    for group in stages:
        stage = group[0].stage
        # every array of the stages before this one (attached or submitted now)
        earlier = sorted({array_id(h) for j, h in submitted.values() if order[j.stage] < order[stage]})
        dependency = "afterany:" + ":".join(earlier) if earlier else None
        for res_key in RESOURCES:
            members = [j for j in group if j.resources == res_key]
            if not members:
                continue
            res = profile.stage(res_key)
            # a fresh executor per array: update_parameters accumulates, and one stage's
            # gpus/mem/partition must not leak into the next array
            executor = submitit.AutoExecutor(folder=work_dir / "submitit", cluster="slurm",
                                             slurm_max_num_timeout=profile.max_requeues)
            executor.update_parameters(**executor_parameters(
                res, name=f"harness-{stage}", parallelism=parallelism, setup=setup,
                dependency=dependency))
            try:
                with executor.batch():
                    handles = [executor.submit(make_call(j, res)) for j in members]
            except Exception as e:  # noqa: BLE001 - sbatch's own message says what is wrong
                raise UserError(
                    f"{profile.path}: sbatch rejected the {stage} jobs (resources '{res_key}'): "
                    f"{_sbatch_message(e)}. Check {res_key}.partition/account/qos/time/"
                    f"gpus_per_node/mem_gb against `sinfo` and your allocation."
                ) from e
            for j, h in zip(members, handles):
                submitted[j.name] = (j, h)
            _write_record(work_dir, {j.name: h.job_id for j, h in zip(members, handles)})


RECORD_FILE = "slurm_jobs.json"
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
               "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED")


def _read_record(work_dir: Path) -> dict[str, str]:
    from harness.results import CorruptFileError, read_json

    try:
        rec = read_json(Path(work_dir) / RECORD_FILE, default={})
    except (CorruptFileError, OSError):
        return {}
    return {str(k): str(v) for k, v in rec.items()} if isinstance(rec, dict) else {}


def _write_record(work_dir: Path, new: dict[str, str]) -> None:
    """Merge ``new`` (job name -> SLURM job id) into the record (callers hold submit.lock)."""
    from harness.results import atomic_write_json

    atomic_write_json(Path(work_dir) / RECORD_FILE, {**_read_record(work_dir), **new})


def _live_jobs(job_ids: list[str]) -> set[str]:
    """Which of ``job_ids`` (``123`` or array tasks ``123_4``) SLURM still has queued or
    running (squeue: the controller's own view, current at once, unlike sacct)."""
    if not job_ids:
        return set()
    arrays = sorted({str(j).split("_", 1)[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    live = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].upper() in LIVE_STATES:
            live.add(parts[0])
    return {j for j in job_ids if str(j) in live}


def ended_why(word: str, job: Job, profile: SlurmProfile) -> tuple[str | None, bool]:
    """(what a job that ended in sacct state ``word`` without a result went through, and
    whether its cell is resumable as it is). A scheduler's stop (time limit after the last
    requeue, cancelled, preempted, node failure) leaves the cell resumable; a job killed by a
    signal of its own, out of memory or crashed is a failure."""
    res = profile.stage(job.resources)
    if word == "TIMEOUT":
        return (f"it reached its time limit ({job.resources}.time: {res.time} min) on its last attempt, "
                f"after max_requeues ({profile.max_requeues}) requeues; raise `time` or `max_requeues` in "
                f"{profile.path}. Its checkpoint is kept: a rerun resumes it", True)
    if word == "CANCELLED":
        return "it was cancelled (scancel, or the scheduler); a rerun resumes it", True
    if word in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "REVOKED", "DEADLINE"):
        return f"the scheduler stopped it ({word}); a rerun resumes it", True
    if word == "OUT_OF_MEMORY":
        return (f"it ran out of memory ({job.resources}.mem_gb: {res.mem_gb or 'the default'} in "
                f"{profile.path}); give it more, or lower the batch size", False)
    return None, False


def _monitor(jobs: list[Job], submitted: dict, prog: Progress, profile: SlurmProfile,
             poll_s: float) -> list[JobOutcome]:
    watcher = submitit.SlurmJob.watcher
    outcomes: dict[str, JobOutcome] = {}
    ended_at: dict[str, float] = {}
    t0 = last_sacct = time.monotonic()
    watcher.update()
    while len(outcomes) < len(submitted):
        now = time.monotonic()
        # sacct every poll at first, then less often on long runs (spare slurmdbd)
        if now - last_sacct >= min(10.0, max(poll_s, (now - t0) / 10)):
            watcher.update()
            last_sacct = now
        for name, (job, sjob) in submitted.items():
            if name in outcomes:
                continue
            task = sjob.task(0) if sjob.num_tasks > 1 else sjob
            if task.paths.result_pickle.exists():
                outcomes[name] = outcome_with_result(sjob, job)
                prog.set(name, "done" if outcomes[name].ok else "failed")
                continue
            state = watcher.get_state(sjob.job_id, mode="cache")
            word = state.split()[0].upper() if state else "UNKNOWN"
            if word in TERMINAL_STATES:
                # the result file may lag on a shared filesystem: wait before calling it dead
                first = ended_at.setdefault(name, now)
                if now - first >= profile.result_wait_s:
                    why, resumable = ended_why(word, job, profile)
                    outcomes[name] = outcome_without_result(sjob, job, state, why, resumable)
                    prog.set(name, "failed")
                continue
            ended_at.pop(name, None)   # requeued after a timeout/preemption: not ended
            prog.set(name, "running" if word in RUNNING_STATES else "pending")
        prog.emit()
        if len(outcomes) < len(submitted):
            time.sleep(poll_s)
    return [outcomes[j.name] for j in jobs]


if __name__ == "__main__":   # one process of `accelerate launch ... --module harness.launch.slurm`
    _rank_main(sys.argv[1:])
