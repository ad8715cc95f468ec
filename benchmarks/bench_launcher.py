"""The local launcher's overhead per job (issue 15's goal: under 0.5 s), against a process per job.

    python benchmarks/bench_launcher.py                 # 1 and 2 workers, 40 jobs, plus the old way
    python benchmarks/bench_launcher.py --jobs 10 --no-baseline --out launcher.json

Each job does what every harness job does before its own work: it imports torch, transformers and
the harness's runner, and returns. So the time a job takes here is what the launcher adds to a real
job: sending it to a worker, its log files, collecting the result, and the worker's clean-up
between jobs (``gc``, ``malloc_trim``), plus the imports wherever a worker has not paid them yet.

Per worker count W, each job records when it started and in which worker: ``per_job_s`` is
the median time between the starts of consecutive jobs on one worker (a worker's first job
left out; the job itself takes microseconds), i.e. what one more job costs a worker in steady
state; ``per_job_mean_s`` its mean; ``startup_s`` the time from the launch to the first job's
start (worker start-up and the imports); ``wall_s`` the whole launch. The baseline
(``--no-baseline`` leaves it out) is what the launcher paid per job before workers were
long-lived: a fresh interpreter that imports the same modules.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMPORTS = "import torch, transformers, harness.runner"


def touch_imports() -> tuple[int, float]:
    """A job with no work of its own: the imports every job needs (free once a worker has them);
    returns (worker pid, when it started)."""
    started = time.time()
    import harness.runner  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    return os.getpid(), started


def process_per_job(rounds: int = 3) -> float:
    """Median wall time of a fresh interpreter importing what a job imports (the old launcher)."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(jobs: int, workers: int, work_dir: Path, poll_s: float = 0.2) -> dict:
    """``jobs`` import-only jobs on ``workers`` workers through the local launcher (its default
    poll interval unless told)."""
    from harness.launch.base import Job
    from harness.launch.local import launch_local

    if jobs <= workers:
        raise SystemExit(f"bench_launcher: --jobs ({jobs}) must exceed the worker count ({workers})")
    t0 = time.time()
    outs = launch_local([Job(name=f"job-{i:04d}", fn=touch_imports) for i in range(jobs)], work_dir,
                        workers=workers, poll_s=poll_s)
    wall = time.time() - t0
    bad = [o for o in outs if not o.ok]
    if bad:
        raise SystemExit(f"bench_launcher: job {bad[0].name} failed: {bad[0].error}")
    starts: dict[int, list[float]] = {}
    for o in outs:
        starts.setdefault(o.result[0], []).append(o.result[1])
    gaps = sorted(b - a for ts in starts.values() for a, b in zip(sorted(ts)[:-1], sorted(ts)[1:]))
    if not gaps:
        raise SystemExit("bench_launcher: no worker ran two jobs; raise --jobs")
    return {"workers": workers, "jobs": jobs, "wall_s": round(wall, 3),
            "startup_s": round(min(o.result[1] for o in outs) - t0, 3),
            "per_job_s": round(gaps[len(gaps) // 2], 4), "per_job_mean_s": round(sum(gaps) / len(gaps), 4),
            "workers_used": len(starts), "gaps": len(gaps)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--poll", type=float, default=0.2, help="the launcher's poll interval, s (its default)")
    ap.add_argument("--no-baseline", action="store_true", help="leave out the process-per-job baseline")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        for w in a.workers:
            r = measure(a.jobs, w, Path(tmp) / f"w{w}", a.poll)
            rows.append(r)
            print(f"{w} worker(s): {a.jobs} jobs in {r['wall_s']:.2f} s; first job after {r['startup_s']:.2f} s; "
                  f"then {r['per_job_s']:.3f} s per job per worker (median; mean {r['per_job_mean_s']:.3f} s)",
                  flush=True)
    res = {"rows": rows, "cpus": os.cpu_count()}
    if not a.no_baseline:
        res["process_per_job_s"] = round(process_per_job(), 3)
        print(f"a fresh process per job (the old launcher): {res['process_per_job_s']:.2f} s per job")
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
