"""The README's main job timed end to end, with the time per stage (issue 15's goal: under 180 s
on a quiet 2-core machine).

    python benchmarks/time_quickstart.py                        # suites/quickstart.yaml, as a newcomer runs it
    python benchmarks/time_quickstart.py --suite my.yaml --launcher inline --out times.json

It runs ``python -m harness run SUITE --no-report`` into a fresh results folder with nothing
added to the environment (the threads are the harness's defaults, as in the README), then
``python -m harness report`` on it, and reads each job's own records:

* ``sweep``: the wall time of ``harness run``; ``report``: of ``harness report``; ``total``;
* ``sft``: the SFT stages' training time (``stage.json``), summed; their jobs' wall time;
* ``train`` / ``eval``: the cells' training and evaluation time (``cost/train_wall_s``,
  ``cost/eval_wall_s``), summed; ``cell other``: the rest of the cells' job wall time (start
  model load, tokenization, reference pass, importance examples, saving);
* ``launcher``: the sweep's wall time times the workers, less every job's wall time: start-up,
  per-job overhead and workers left idle while a stage waits for its slowest job.

Sums over jobs are CPU-side times of jobs that ran side by side: with 2 workers they add up to
about twice the sweep's wall time. Time it on a quiet machine (the numbers of a loaded one say
little), or compare two configurations side by side in one run.
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


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_times(suite_dir: Path) -> dict[str, float]:
    """Per-stage sums from the job records of a finished suite folder."""
    t = {"sft": 0.0, "sft_jobs": 0.0, "train": 0.0, "eval": 0.0, "cell_jobs": 0.0, "cells": 0, "sft_stages": 0}
    for st in sorted((suite_dir / "_sft").glob("*/stage.json")):
        t["sft"] += _json(st).get("wall_s") or 0.0
        t["sft_jobs"] += _json(st.parent / "status").get("wall_s") or 0.0
        t["sft_stages"] += 1
    for mf in sorted(suite_dir.glob("*/metrics.json")):
        m = _json(mf)
        t["train"] += m.get("cost/train_wall_s") or 0.0
        t["eval"] += m.get("cost/eval_wall_s") or 0.0
        t["cell_jobs"] += _json(mf.parent / "status").get("wall_s") or 0.0
        t["cells"] += 1
    t["cell_other"] = t["cell_jobs"] - t["train"] - t["eval"]
    return t


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"time_quickstart: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", type=Path, default=ROOT / "suites" / "quickstart.yaml")
    ap.add_argument("--launcher", choices=["inline", "local"], help="override the suite's launcher")
    ap.add_argument("--workers", type=int, help="workers for the local launcher (the suite's by default)")
    ap.add_argument("--results", type=Path, help="results folder (default: a temporary one, deleted)")
    ap.add_argument("--out", type=Path, help="write the times as JSON here")
    a = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="time-quickstart-") as tmp:
        results = a.results or Path(tmp)
        cmd = [sys.executable, "-m", "harness", "run", str(a.suite.resolve()), "--results", str(results), "--no-report"]
        if a.launcher:
            cmd += ["--launcher", a.launcher]
        if a.workers:
            cmd += ["--workers", str(a.workers)]
        sweep = _run(cmd, env)
        [suite_dir] = [p for p in results.iterdir() if p.is_dir()]
        report = _run([sys.executable, "-m", "harness", "report", str(suite_dir)], env)
        t = stage_times(suite_dir)
    workers = 1 if a.launcher == "inline" else (a.workers or _suite_workers(a.suite))
    t.update(sweep=sweep, report=report, total=sweep + report, workers=workers,
             launcher=sweep * workers - t["sft_jobs"] - t["cell_jobs"])
    _print(t)
    if a.out:
        a.out.write_text(json.dumps({k: round(v, 3) for k, v in t.items()}, indent=1) + "\n")
    return 0


def _suite_workers(suite: Path) -> int:
    import yaml

    launcher = (yaml.safe_load(suite.read_text()) or {}).get("launcher") or {}
    return 1 if launcher.get("type", "inline") == "inline" else int(launcher.get("workers", 2))


def _print(t: dict) -> None:
    rows = [("sweep (harness run, wall)", t["sweep"]), ("report (harness report, wall)", t["report"]),
            ("total (wall)", t["total"]), (f"SFT training, {t['sft_stages']} stages (summed)", t["sft"]),
            ("SFT jobs (summed)", t["sft_jobs"]), (f"cell training, {t['cells']} cells (summed)", t["train"]),
            ("cell evaluation (summed)", t["eval"]), ("cell other: load, tokenize, reference, save (summed)",
                                                      t["cell_other"]),
            (f"launcher and idle workers (wall x {t['workers']} - jobs)", t["launcher"])]
    width = max(len(r[0]) for r in rows)
    for name, v in rows:
        print(f"{name:<{width}}  {v:8.1f} s")


if __name__ == "__main__":
    sys.exit(main())
