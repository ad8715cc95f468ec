"""The DPO benchmark runs end to end (``--quick``: tiny model, a few steps, both frameworks).

Not a timing test: it checks that every configuration ran and produced positive, finite
numbers, that the derived ratios follow from the rows they are computed from, and that the
table names every row. The speed claims themselves live in benchmarks/README.md.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_dpo.py"

DPO_ROWS = ["harness DPO, cold cache", "harness DPO, warm cache", "TRL DPO", "TRL DPO, precompute_ref_log_probs"]
BARE = "bare forward+backward (no loop, no optimizer)"
TIDPO_ROWS = ["TI-DPO, policy weights", "TI-DPO, reference weights (cached)",
              "TI-DPO, reference anchors, policy weights", "TI-DPO, reference anchors and weights (cached)",
              "weighted DPO, policy weights", "weighted DPO, reference weights (cached)",
              "anchor sampling alone (per step)"]


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_benchmark_produces_every_row(tmp_path):
    out, tab = tmp_path / "bench.json", tmp_path / "bench.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--table", str(tab),
                           "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    res = json.loads(out.read_text())
    assert set(res["sizes"]) == {"tiny"}
    size = res["sizes"]["tiny"]
    assert size["batch"] == 8 and 250 < size["tokens_per_pair"] < 310  # ~140-token rows, two per pair
    for row in DPO_ROWS + [BARE] + TIDPO_ROWS:
        runs = size["runs"][row]
        assert len(runs) == 1 and len(runs[0]["tokens"]) == 2  # 3 steps, warmup 0: two timed periods
        assert all(t > 0 for t in runs[0]["tokens"])
    for clock in ("cpu", "wall"):
        s = size[clock]
        assert _pos(s["matmul_gflops_median"])
        for row in DPO_ROWS + [BARE] + TIDPO_ROWS:
            d = s["rows"][row]
            assert _pos(d["step_s"]) and _pos(d["tokens_per_s"]), (clock, row, d)
        rows = s["rows"]
        # the reference pass is timed where it happens, and only there
        for row in ("harness DPO, cold cache", "TRL DPO, precompute_ref_log_probs"):
            assert _pos(rows[row]["reference_pass_s"]) and _pos(rows[row]["tokens_per_s_amortized"])
            assert rows[row]["tokens_per_s_amortized"] < rows[row]["tokens_per_s"]
        assert "reference_pass_s" not in rows["harness DPO, warm cache"]
        assert "reference_pass_s" not in rows["TRL DPO"] and "reference_pass_s" not in rows[BARE]
        # ratios are quotients of the rows above
        r = s["ratios"]
        assert math.isclose(r["warm / TRL default"],
                            rows["harness DPO, warm cache"]["tokens_per_s"] / rows["TRL DPO"]["tokens_per_s"])
        assert math.isclose(r["TI-DPO, policy weights / DPO step"],
                            rows["TI-DPO, policy weights"]["step_s"] / rows["harness DPO, warm cache"]["step_s"])
        # FLOP accounting: 6N per token for the policy, +2N for TRL's per-step reference forward
        N = size["matmul_params"]
        assert rows["TRL DPO"]["flops_per_token_step"] == 8 * N
        assert rows["harness DPO, warm cache"]["flops_per_token_step"] == 6 * N
        assert len(s["goals"]) == 10 and all(isinstance(g["met"], bool) for g in s["goals"])
        assert s["suite"]["k"] == 5 and _pos(s["suite"]["harness_s"])

    text = tab.read_text()
    for row in DPO_ROWS + [BARE] + TIDPO_ROWS:
        assert f"| {row} |" in text
    assert "| goal | measured | met |" in text and "Suite of k = 5" in text
