"""Plans and reports at cluster scale (issue 15's last goal).

Goals: a suite of about 10,000 cells validates and plans in under 10 s; the report over 1,000
finished cells (synthetic results) in under 60 s.

    python benchmarks/bench_scale.py                       # 10,000-cell plan, 1,000-cell report
    python benchmarks/bench_scale.py --cells 20000 --report-cells 2000
    python benchmarks/bench_scale.py --quick               # tiny sizes: the smoke test

What is timed (wall clock):

* ``validate``: ``python -m harness validate SUITE`` in a fresh process, as a user runs it
  (interpreter start and imports included);
* ``run --dry-run``: ``python -m harness run SUITE --dry-run`` likewise (validation, the plan
  and the launch description; nothing is written);
* ``plan in-process``: ``harness.config.load_suite`` + ``expand`` in this process (imports done);
* ``report``: ``python -m harness report RESULTS/<suite>`` in a fresh process over finished cells.

Each row also gives CPU seconds (user + system; the child's for the CLI rows), which depend
less on other load than wall time; the goals are judged on wall time.

The suite is the embedded ``addition``/``reverse`` tasks with the tiny model: data sets x
(4 methods x a beta grid) x seeds. The finished cells are written the way ``harness run``
writes them: the plan comes from ``harness.config.expand``, the folders, ``config.yaml``,
``plan.json`` and ``suite.yaml`` from ``harness.runner.materialize``; then each cell gets a
synthetic ``metrics.json`` (the keys a real cell writes), a ``train_log.jsonl``, an
``env.json`` and status ``done``, through the writers of ``harness.results``. The SFT stages
are left pending (the report reads only cells).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("dpo", "ipo", "simpo", "tdpo2")
BETAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
PLAN_GOAL_S, REPORT_GOAL_S = 10.0, 60.0


def shape(cells: int) -> tuple[int, int, int]:
    """(data sets, betas per method, seeds) giving at least ``cells`` cells, close to it."""
    datasets = 10 if cells >= 2000 else 5 if cells >= 200 else 2
    betas = 5 if cells >= 200 else 1
    seeds = max(1, math.ceil(cells / (datasets * len(METHODS) * betas)))
    return datasets, betas, seeds


def suite_yaml(name: str, cells: int) -> str:
    """A suite of about ``cells`` cells (one tiny model, shared SFT per data set)."""
    n_ds, n_beta, n_seeds = shape(cells)
    lines = [f"name: {name}", "models:", "  - name: tiny",
             "    tiny: {arch: llama, hidden_size: 32, num_layers: 1, num_heads: 2, "
             "max_position_embeddings: 64, tokenizer: char}", "datasets:"]
    for i in range(n_ds):
        if i % 2 == 0:
            lines += [f"  - name: add{i}", "    task: addition",
                      f"    task_args: {{digits: {2 + i % 3}, n_pairs: {200 + i}, n_heldout: 100}}"]
        else:
            lines += [f"  - name: rev{i}", "    task: reverse",
                      f"    task_args: {{min_len: 4, max_len: {6 + i % 4}, n_pairs: {200 + i}, n_heldout: 100}}"]
        lines.append("    heldout_size: 50")
    betas = ", ".join(str(b) for b in BETAS[:n_beta])
    lines.append("methods:")
    lines += [f"  - {{name: {m}, grid: {{beta: [{betas}]}}}}" for m in METHODS]
    lines.append(f"seeds: [{', '.join(str(s) for s in range(n_seeds))}]")
    lines += ["sft: {steps: 10, batch_size: 8, max_length: 32, max_prompt_length: 16}",
              "train: {steps: 10, batch_size: 8, lr: 1.0e-4, max_length: 32, max_prompt_length: 16}",
              "eval: {generation_prompts: 20, semantic_diversity: 'off'}",
              "launcher: {type: local, workers: 2}", "report: {baseline: dpo}", ""]
    return "\n".join(lines)


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_cli(args: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of ``python -m harness ARGS`` in a fresh process (raises on failure).
    CPU time (user + system) depends less on the machine's other load than wall time does."""
    t0, c0 = time.perf_counter(), _child_cpu()
    p = subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if p.returncode != 0:
        raise SystemExit(f"python -m harness {' '.join(args)} exited {p.returncode}:\n"
                         f"{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return wall, cpu


def plan_in_process(path: Path) -> tuple[float, float, int]:
    """(wall, CPU) seconds of load + expand in this process, and the plan's cell count."""
    from harness import config

    t0, c0 = time.perf_counter(), time.process_time()
    plan = config.expand(config.load_suite(path))
    return time.perf_counter() - t0, time.process_time() - c0, len(plan.cells)


def synthetic_metrics(cell, rng: random.Random) -> dict:
    """The keys a real finished cell's metrics.json holds, with plausible random values."""
    c = cell.config
    acc = min(1.0, max(0.0, rng.gauss(0.4, 0.1)))
    return {
        "cell_id": cell.cell_id, "suite": c["suite"], "model": c["model"]["name"],
        "dataset": c["dataset"]["name"], "method": c["method"]["name"], "label": c["method"]["label"],
        "seed": c["seed"], "hparams": c["method"].get("hparams", {}),
        "task/accuracy": acc, "task/accuracy_sft": 0.3, "task/n": 50,
        "pref/accuracy": rng.uniform(0.5, 0.8), "pref/accuracy_norm": rng.uniform(0.5, 0.8),
        "pref/reward_accuracy": rng.uniform(0.5, 0.8), "pref/n": 100,
        "winrate/vs_sft": rng.uniform(30, 70), "winrate/lc_vs_sft": rng.uniform(30, 70),
        "winrate/lc_length_coef": rng.gauss(0, 0.1), "winrate/n": 20, "winrate/n_draws": 5,
        "winrate/standard_error": 2.0, "kl/policy_ref": rng.uniform(0.5, 2.0),
        "diversity/distinct_2": rng.uniform(0.4, 0.8), "diversity/distinct_4": rng.uniform(0.6, 0.9),
        "diversity/entropy": rng.uniform(1, 2), "diversity/self_bleu": rng.uniform(20, 40),
        "gen/mean_length": rng.uniform(3, 6),
        "displacement/chosen_delta": rng.gauss(-0.3, 0.1), "displacement/rejected_delta": rng.gauss(-3, 0.5),
        "displacement/chosen_logp_policy": -2.9, "displacement/chosen_logp_ref": -2.6,
        "displacement/rejected_logp_policy": -11.7, "displacement/rejected_logp_ref": -8.4,
        "cost/train_wall_s": rng.uniform(3, 5), "cost/eval_wall_s": 3.0, "cost/sft_wall_s": 20.0,
        "cost/flops": 1.5e11, "cost/params": 40000, "cost/peak_mem_mb": 600.0,
        "cost/tokens_per_s": rng.uniform(1e4, 1.4e4), "cost/train_tokens": 5000,
        "cost/accelerator_hours": 0.0, "cost/ref_cache_hit": 0, "cost/ref_forward_passes": 100,
        "data/train_pairs": 200, "data/stats": {"train": 200, "heldout": 100, "flipped": 0},
        "data/tokenization": {"input": 200, "kept": 200, "dropped": 0,
                              "prompt_truncated": 0, "response_truncated": 0},
        "train/final_loss": rng.uniform(0.4, 0.7), "train/resumed_from": None,
    }


def write_finished(suite_path: Path, results: Path, steps: int = 10) -> int:
    """Materialize the suite's plan as ``harness run`` does, then finish every cell with
    synthetic results. Returns the number of cells."""
    from harness import config
    from harness.results import JsonlWriter, atomic_write_json, env_info, write_status
    from harness.runner import materialize

    loaded = config.load_suite(suite_path)
    plan = config.expand(loaded)
    suite_dir = results / plan.suite.name
    materialize(plan, suite_dir, suite_path.read_text())
    env, rng = env_info(), random.Random(0)
    for cell in plan.cells:
        d = suite_dir / cell.cell_id
        atomic_write_json(d / "env.json", env)
        with JsonlWriter(d / "train_log.jsonl") as w:
            for step in range(1, steps + 1):
                loss = 0.69 * math.exp(-0.05 * step) + rng.gauss(0, 0.01)
                w.write({"step": step, "loss": loss, "lr": 1e-4, "grad_norm": rng.uniform(1, 3),
                         "rewards/margins": 0.05 * step, "rewards/accuracies": min(1.0, 0.5 + 0.03 * step),
                         "rewards/chosen": 0.01 * step, "rewards/rejected": -0.04 * step,
                         "logps/chosen": -2.5, "logps/rejected": -9.0, "tokens": 600,
                         "tokens_per_s": 12000.0, "step_s": 0.05, "peak_mem_mb": 480.0})
        atomic_write_json(d / "metrics.json", synthetic_metrics(cell, rng))
        write_status(d, "done", wall_s=round(rng.uniform(10, 15), 3))
    return len(plan.cells)


def row(step: str, wall: float, cpu: float, goal: float | None) -> list[str]:
    met = "-" if goal is None else ("met" if wall < goal else "NOT met")
    return [step, f"{wall:.2f}", f"{cpu:.2f}", "-" if goal is None else f"< {goal:.0f}", met]


def print_table(rows: list[list[str]]) -> None:
    header = ["step", "wall s", "cpu s", "goal s", "result"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=10_000, help="cells in the planned suite")
    ap.add_argument("--report-cells", type=int, default=1_000, help="finished cells the report reads")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (40 and 16 cells): the smoke test")
    ap.add_argument("--keep", type=Path, help="write suites and results here (kept) instead of a temp folder")
    a = ap.parse_args(argv)
    if a.quick:
        a.cells, a.report_cells = 40, 16
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "HARNESS_SLURM": "0"}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        big, small, results = work / "scale_plan.yaml", work / "scale_report.yaml", work / "results"
        big.write_text(suite_yaml("scale_plan", a.cells))
        small.write_text(suite_yaml("scale_report", a.report_cells))
        rows = []
        t_val = timed_cli(["validate", str(big), "--results", str(results)], work, env)
        t_dry = timed_cli(["run", str(big), "--dry-run", "--results", str(results)], work, env)
        *t_plan, n_plan = plan_in_process(big)
        rows += [row(f"validate ({n_plan} cells, CLI)", *t_val, PLAN_GOAL_S),
                 row(f"run --dry-run ({n_plan} cells, CLI)", *t_dry, PLAN_GOAL_S),
                 row(f"plan in-process ({n_plan} cells)", *t_plan, None)]
        t0, c0 = time.perf_counter(), time.process_time()
        n_rep = write_finished(small, results)
        t_write = (time.perf_counter() - t0, time.process_time() - c0)
        t_rep = timed_cli(["report", str(results / "scale_report")], work, env)
        if not (results / "scale_report" / "report" / "report.md").is_file():
            raise SystemExit("report: no report.md written")
        rows += [row(f"write {n_rep} synthetic cells", *t_write, None),
                 row(f"report ({n_rep} cells, CLI)", *t_rep, REPORT_GOAL_S)]
        print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"cpus: {os.cpu_count()}")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
