"""The report's statistics end to end: `python -m harness report` on synthetic results folders.

* A null folder (every method drawn from one distribution, known means): at most 5% of the
  comparisons get a better/worse verdict, and the intervals cover the true means about 95% of
  the time.
* Degenerate values are flagged, not printed: collapsed LC fits, cells with fewer values than
  seeds; a smoke run says so everywhere; mixed commits are warned about; reward accuracy gets
  its own per-family table; aggregates across tasks match values worked out by hand.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.report import build_report
from harness.results import atomic_write_json, atomic_write_yaml, write_status

ROOT = Path(__file__).resolve().parent.parent
TRUE = {"task/accuracy": 0.55, "pref/accuracy": 0.70, "winrate/vs_sft": 50.0}
NOISE = {"task/accuracy": 0.02, "pref/accuracy": 0.015, "winrate/vs_sft": 2.0}


def _cell(s: Path, name: str, cfg: dict, metrics: dict, env: dict | None = None) -> None:
    d = s / name
    atomic_write_yaml(d / "config.yaml", cfg)
    atomic_write_json(d / "metrics.json", metrics)
    if env is not None:
        atomic_write_json(d / "env.json", env)
    write_status(d, "done")


def _cfg(suite, ds, label, method, seed, **extra) -> dict:
    return {"suite": suite, "model": {"name": "tiny"}, "dataset": {"name": ds},
            "method": {"name": method, "label": label, "hparams": {}}, "seed": seed, **extra}


def make_null(root: Path, labels: int = 16, seeds: int = 5) -> Path:
    """Every label drawn from one distribution per metric and data set; a small seed effect
    shared by the labels of a seed (a shared SFT checkpoint)."""
    rng = np.random.default_rng(2024)
    s = root / "null"
    atomic_write_yaml(s / "suite.yaml", {"name": "null", "report": {"baseline": "m00"}})
    for ds in ("a", "b"):
        u = {k: rng.normal(0, NOISE[k] / 4, seeds) for k in TRUE}
        for i in range(labels):
            for seed in range(seeds):
                vals = {k: TRUE[k] + u[k][seed] + rng.normal(0, NOISE[k]) for k in TRUE}
                _cell(s, f"m{i:02d}-{ds}-s{seed}", _cfg("null", ds, f"m{i:02d}", "dpo", seed),
                      vals)
    return s


@pytest.fixture(scope="module")
def null_report(tmp_path_factory):
    s = make_null(tmp_path_factory.mktemp("null"))
    out = tmp_path_factory.mktemp("out") / "report"
    proc = subprocess.run([sys.executable, "-m", "harness", "report", str(s), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def test_null_folder_calls_at_most_5_percent_better_or_worse(null_report):
    comp = pd.concat([pd.read_csv(null_report / "tables" / f) for f in
                      ("comparison.csv", "comparison_all.csv")])
    assert len(comp) == 2 * 15 * 3 + 15 * 3
    called = comp["verdict"].isin(["better", "worse"]).mean()
    assert called <= 0.05
    assert comp["verdict"].str.startswith("not distinguishable at n = 5").mean() >= 0.95
    # uncorrected, the paired t-test rejects about 5% (Holm then removes most)
    assert (comp["p_value"] < 0.05).mean() <= 0.12


def test_null_folder_intervals_cover_the_true_means(null_report):
    hit = []
    for ds in ("a", "b"):
        t = pd.read_csv(null_report / "tables" / f"main_tiny_{ds}.csv")
        for r in t.itertuples():
            true = TRUE[r.metric] * r.scale
            hit.append(r.ci_low <= true <= r.ci_high)
    cover = float(np.mean(hit))
    assert len(hit) == 2 * 16 * 3
    assert 0.88 <= cover <= 1.0, cover


# -------------------------------------------------------------------- flags and labels
def make_flagged(root: Path) -> Path:
    s = root / "toy-smoke"
    atomic_write_yaml(s / "suite.yaml", {"name": "toy-smoke", "report": {"baseline": "dpo"},
                                         "methods": [{"name": "dpo"}, {"name": "ipo"},
                                                     {"name": "simpo"}]})
    accs = {("a", "dpo"): [0.60, 0.64, 0.62], ("a", "ipo"): [0.70, 0.66, 0.71],
            ("a", "simpo"): [0.50, 0.52, 0.48], ("b", "dpo"): [0.50, 0.54, 0.55],
            ("b", "ipo"): [0.66, 0.62, 0.64], ("b", "simpo"): [0.45, 0.48, 0.42]}
    for (ds, lab), xs in accs.items():
        for seed, acc in enumerate(xs):
            m = {"task/accuracy": acc, "task/n": 100, "pref/reward_accuracy": acc + 0.2,
                 "winrate/vs_sft": 100 * acc, "winrate/lc_vs_sft": 50.0 if lab == "ipo" else
                 100 * acc + 1, "winrate/lc_length_coef": 0.0 if lab == "ipo" else -0.2,
                 "diversity/distinct_4": 0.8 if (lab, seed) != ("dpo", 2) else None}
            env = {"git_commit": "a" * 40 if seed < 2 else "b" * 40, "git_dirty": seed == 1,
                   "git_dirty_files": ["x.py"] if seed == 1 else []}
            _cell(s, f"{lab}-{ds}-s{seed}",
                  _cfg("toy-smoke", ds, lab, lab, seed, smoke=True,
                       sft={"enabled": True, "per_seed": True}), m, env)
    return s


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    s = make_flagged(root)
    make_null(root, labels=2, seeds=2)
    build_report(root, out_dir=root / "reports")  # several suites: an index
    return root / "reports"


def test_smoke_run_is_labelled_everywhere(flagged):
    out = flagged / "toy-smoke"
    assert "(SMOKE RUN: not results)" in (flagged / "index.md").read_text()
    assert "SMOKE RUN" in (flagged / "index.html").read_text()
    assert "null/report.md)\n" in (flagged / "index.md").read_text()  # a real suite: no tag
    md = (out / "report.md").read_text()
    assert md.startswith("# Suite: toy-smoke (SMOKE RUN: not results)")
    for t in (out / "tables").glob("*.md"):
        text = t.read_text()
        assert text.startswith("# SMOKE RUN: "), t.name
        assert "Smoke run (`run --smoke`)" in text, t.name
    for t in (out / "tables").glob("*.tex"):
        assert r"\caption{SMOKE RUN: " in t.read_text(), t.name
    assert md.count("### SMOKE RUN: ") >= len(list((out / "tables").glob("*.md")))
    assert "SMOKE RUN" not in (flagged / "null" / "report.md").read_text()


def test_collapsed_lc_and_short_cells_are_flagged(flagged):
    out = flagged / "toy-smoke"
    md = (out / "tables" / "main_tiny_a.md").read_text()
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    ipo = [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("| ipo"))
           .strip("|").split("|")]
    assert ipo[header.index("LC win rate vs SFT")] == "collapsed"
    assert "6 fit(s) collapsed" in md  # ipo, 3 seeds x 2 data sets
    div = (out / "tables" / "diversity.md").read_text()
    dpo_a = next(ln for ln in div.splitlines() if ln.startswith("| tiny | a | dpo"))
    assert "(n=2)" in dpo_a  # Distinct-4 missing for one of 3 seeds
    assert "includes the variance of: training seed, SFT seed." in md


def test_provenance_warns_about_mixed_commits(flagged):
    md = (flagged / "toy-smoke" / "report.md").read_text()
    assert "Code: 2 commit(s) (aaaaaaaaaa, bbbbbbbbbb); 6 cell(s) ran with uncommitted" in md
    assert "WARNING: mixed or unreproducible code: cells come from 2 different commits" in md
    prov = pd.read_csv(flagged / "toy-smoke" / "tables" / "provenance.csv")
    assert prov["cells"].sum() == 18


def test_reward_accuracy_is_per_family_and_never_bold(flagged):
    t = pd.read_csv(flagged / "toy-smoke" / "tables" / "reward_accuracy.csv")
    fam = dict(zip(t["label"], t["reward_family"]))
    assert fam["dpo"] == fam["ipo"] == "β·log-ratio vs reference"
    assert fam["simpo"].startswith("β·mean log-prob")
    assert not t["best"].any()
    main = (flagged / "toy-smoke" / "tables" / "main_tiny_a.md").read_text()
    assert "Reward acc." not in main


def test_aggregate_iqm_and_probability_of_improvement_by_hand(flagged):
    t = pd.read_csv(flagged / "toy-smoke" / "tables" / "aggregate.csv")
    r = t[(t.label == "ipo") & (t.metric == "task/accuracy")].iloc[0]
    # ipo runs 70, 66, 71, 66, 62, 64: IQM drops one at each end -> (64 + 66 + 66 + 70) / 4
    assert r.iqm == pytest.approx(66.5)
    assert r.runs == 6 and r.tasks == 2
    # every ipo run beats every dpo run on both tasks -> 1; simpo never does -> 0
    assert r.p_improve == pytest.approx(1.0)
    s = t[(t.label == "simpo") & (t.metric == "task/accuracy")].iloc[0]
    assert s.p_improve == pytest.approx(0.0)
    assert r.iqm_low <= r.iqm <= r.iqm_high
    assert (flagged / "toy-smoke" / "figures" / "performance_profiles.png").is_file()


def test_a_comparison_with_one_seed_says_nothing_was_tested(tmp_path):
    """One seed per row: no paired test exists, so the notes must not describe a Holm
    correction over 0 comparisons or an MDE at 0.05/0 (as the smollm2_real report did)."""
    s = tmp_path / "one"
    atomic_write_yaml(s / "suite.yaml", {"name": "one", "report": {"baseline": "A"}})
    for label, acc in (("A", 0.5), ("B", 0.6)):
        _cell(s, f"{label}-s0", _cfg("one", "d", label, "dpo", 0), {"pref/accuracy": acc})
    out = build_report(s, out_dir=tmp_path / "report")
    text = (Path(out) / "tables" / "comparison.md").read_text()
    assert "one seed: no test" in text
    assert "No comparison has 2 or more paired seeds" in text
    assert "over all 0 comparisons" not in text and "/0 =" not in text
