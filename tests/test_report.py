"""The report (`python -m harness report`): tables, figures, HTML, determinism.

A synthetic results folder is written with the real results writers: 3 methods x 3 seeds x 2
data sets (one with label noise), a diverged cell (NumericalFault status), a pending cell, a
superseded duplicate, a TI-DPO cell with token_importance.json, and a reported.csv. Expected
numbers are the written-out inputs averaged by hand (listed next to each assertion), checked
against an independent pandas groupby where useful.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import UserError
from harness.report import build_report
from harness.results import (JsonlWriter, atomic_write_json, atomic_write_text, atomic_write_yaml,
                             write_status)

ROOT = Path(__file__).resolve().parent.parent

# task/accuracy (fraction) per (dataset, label) for seeds 0, 1, 2
TASK = {
    ("arith", "dpo"): [0.60, 0.64, 0.62],         # mean 62.0 %
    ("arith", "simpo_norm"): [0.55, 0.52, 0.58],  # mean 55.0 %
    ("arith", "tidpo"): [0.70, 0.66, 0.71],       # mean 69.0 %
    ("arith_noise20", "dpo"): [0.50, 0.54, 0.55],         # mean 53.0 %
    ("arith_noise20", "simpo_norm"): [0.45, 0.48, 0.42],  # mean 45.0 %
    ("arith_noise20", "tidpo"): [0.66, 0.62, 0.64],       # mean 64.0 %
}
METHOD = {"dpo": "dpo", "simpo_norm": "simpo", "tidpo": "tidpo"}
NOISE = {"arith": 0.0, "arith_noise20": 0.2}
KL = {"dpo": 1.0, "simpo_norm": 2.0, "tidpo": 1.5}
SEPARATED = {"dpo": 0.0, "simpo_norm": 0.02, "tidpo": 0.3}

REPORTED = (
    "method,model,MMLU,GSM8K,GPQA,HumanEval,TruthfulQA,IFEval,Avg,note\n"
    "DPO,,65.3,69.3,24.0,61.0,56.7,70.0,57.7,\n"
    "TI-DPO,,70.0,73.0,26.0,67.0,62.0,75.7,62.3,Table 1 row: MMLU/GSM8K/GPQA 0.67 above B5-B7\n"
    "TI-DPO,Llama-3.2-3B,68,81,34.5,68,57,82,65.1,\n"
    "TI-DPO,Llama-3.1-8B,74,89,34.5,80,63,86,71.1,\n"
    "TI-DPO,Mistral-7B-v0.3,66,47,7,53,66,59,49.7,\n"
)


def _config(ds: str, label: str, method: str, seed: int) -> dict:
    return {"suite": "toy", "model": {"name": "tiny", "tiny": {"hidden_size": 32}},
            "dataset": {"name": ds, "task": "arith", "label_noise": NOISE[ds]},
            "method": {"name": method, "label": label, "hparams": {"beta": 0.1}}, "seed": seed}


def _metrics(ds: str, label: str, seed: int, acc: float) -> dict:
    return {
        "cell_id": "x", "suite": "toy", "model": "tiny", "dataset": ds, "method": METHOD[label],
        "label": label, "seed": seed, "hparams": {"beta": 0.1},
        "task/accuracy": acc, "pref/accuracy": acc + 0.1, "winrate/vs_sft": 100 * acc - 10,
        # a column where tidpo is far ahead with little seed noise: the corrected test separates
        "pref/accuracy_norm": 0.5 + SEPARATED[label] + 0.01 * seed + 0.001 * seed ** 2 * (
            label == "tidpo"),
        "task/n": 200, "pref/n": 100,
        "lm_eval/gsm8k/exact_match_strict_match": acc - 0.2,
        "lm_eval/gsm8k/exact_match_flexible_extract": acc - 0.1,
        "lm_eval/mmlu/acc": acc - 0.1 + 0.01 * seed, "lm_eval/mmlu/acc_stderr": 0.01,
        "lm_eval/mmlu/_version": 1.0,
        "kl/policy_ref": KL[label] + 0.1 * seed, "cost/train_wall_s": 10.0 + seed,
        "cost/flops": 2e12 if label == "tidpo" else 1e12, "cost/tokens_per_s": 1000.0 + seed,
        "cost/peak_mem_mb": 512.0, "diversity/self_bleu": 30.0 + seed + (label == "tidpo"),
        "diversity/distinct_2": 0.8 + 0.01 * seed, "diversity/distinct_4": 0.7,
        "diversity/entropy": 2.4, "displacement/chosen_delta": -1.0 - seed,
        "displacement/rejected_delta": -3.0, "data/tokenization": {"pairs": 10},
    }


def make_results(root: Path) -> Path:
    s = root / "toy"
    atomic_write_yaml(s / "suite.yaml", {
        "name": "toy", "report": {"baseline": "dpo"},
        "methods": [{"name": "dpo"}, {"name": "simpo", "label": "simpo_norm"}, {"name": "tidpo"},
                    {"name": "ipo"}]})
    for (ds, label), accs in TASK.items():
        for seed, acc in enumerate(accs):
            d = s / f"{label}-tiny-{ds}-s{seed}-0000"
            atomic_write_yaml(d / "config.yaml", _config(ds, label, METHOD[label], seed))
            atomic_write_json(d / "metrics.json", _metrics(ds, label, seed, acc))
            with JsonlWriter(d / "train_log.jsonl") as w:
                for step in range(1, 6):
                    w.write({"step": step, "loss": 0.7 - 0.05 * step - 0.01 * seed,
                             "rewards/margins": 0.1 * step + 0.02 * seed,
                             "rewards/accuracies": 0.5 + 0.05 * step, "lr": 1e-6})
            if label == "tidpo" and seed == 0 and ds == "arith":
                atomic_write_json(d / "token_importance.json", {"examples": [
                    {"pair": 0, "side": "chosen", "tokens": ["2", "+", "2", "=", "4", "$x$"],
                     "weights": [0.1, 0.05, 0.1, 0.05, 0.7, 0.0]},
                    {"pair": 0, "side": "rejected", "tokens": ["2", "+", "2", "=", "5"],
                     "weights": [0.1, 0.05, 0.1, 0.05, 0.7]}]})
            write_status(d, "done")
    # an older duplicate of dpo/arith/seed 0 with a wild value: must not count
    d = s / "dpo-tiny-arith-s0-old0"
    atomic_write_yaml(d / "config.yaml", _config("arith", "dpo", "dpo", 0))
    atomic_write_json(d / "metrics.json", _metrics("arith", "dpo", 0, 0.99))
    write_status(d, "done", updated="2000-01-01T00:00:00+00:00")
    # a diverged run: NumericalFault at step 7 with the last finite metrics
    d = s / "ipo-tiny-arith-s0-0000"
    atomic_write_yaml(d / "config.yaml", _config("arith", "ipo", "ipo", 0))
    with JsonlWriter(d / "train_log.jsonl") as w:
        for step in range(1, 7):
            w.write({"step": step, "loss": 0.7 + 0.5 * step, "rewards/margins": -0.1 * step})
    write_status(d, "failed", step=7,
                 reason="NumericalFault: non-finite loss at step 7; last finite metrics: ...",
                 last_metrics={"step": 6, "loss": 3.7, "grad_norm": 1234.5})
    # not run yet
    d = s / "dpo-tiny-arith-s3-0000"
    atomic_write_yaml(d / "config.yaml", _config("arith", "dpo", "dpo", 3))
    write_status(d, "pending")
    atomic_write_text(s / "reported.csv", REPORTED)
    return s


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


FRESH_CODE = ("import sys; from pathlib import Path; from harness.report import build_report; "
              "build_report(Path(sys.argv[1]), out_dir=Path(sys.argv[2]))")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    suite = make_results(root)
    # the same report from a fresh process, started now so it runs alongside this one
    fresh = tmp_path_factory.mktemp("fresh") / "report"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", FRESH_CODE, str(suite), str(fresh)], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = build_report(suite)
        yield suite, out, proc, fresh
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _md_row(text: str, first: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


# ------------------------------------------------------------------------------- main table
def test_main_table_means_match_hand_computed_values(report):
    suite, out, *_ = report
    assert out == suite / "report"
    csv = pd.read_csv(out / "tables" / "main_tiny_arith.csv")
    mean = {(r.label, r.metric): r.mean for r in csv.itertuples()}
    # written-out means (percent); mmlu = acc - 0.1 + 0.01 seed, gsm8k = acc - 0.2
    expected = {
        ("dpo", "task/accuracy"): 62.0, ("simpo_norm", "task/accuracy"): 55.0,
        ("tidpo", "task/accuracy"): 69.0, ("dpo", "pref/accuracy"): 72.0,
        ("dpo", "winrate/vs_sft"): 52.0,
        ("dpo", "lm_eval/mmlu/acc"): 53.0, ("dpo", "lm_eval/gsm8k/exact_match_strict_match"): 42.0,
        ("dpo", "avg/lm_eval"): 47.5, ("tidpo", "avg/lm_eval"): 54.5,
    }
    for k, v in expected.items():
        assert mean[k] == pytest.approx(v, abs=1e-9), k
    # and the same from an independent groupby of the inputs
    rows = [{"dataset": ds, "label": lab, "acc": 100 * a}
            for (ds, lab), accs in TASK.items() for a in accs]
    by_hand = pd.DataFrame(rows).groupby(["dataset", "label"])["acc"].mean()
    for lab in METHOD:
        assert mean[(lab, "task/accuracy")] == pytest.approx(by_hand[("arith", lab)])
    noisy = pd.read_csv(out / "tables" / "main_tiny_arith_noise20.csv")
    got = noisy[noisy.metric == "task/accuracy"].set_index("label")["mean"]
    for lab in METHOD:
        assert got[lab] == pytest.approx(by_hand[("arith_noise20", lab)])
    # averaged over the two data sets per seed, then over seeds: (62 + 53) / 2
    allc = pd.read_csv(out / "tables" / "main_all.csv")
    got = allc[allc.metric == "task/accuracy"].set_index("label")["mean"]
    assert got["dpo"] == pytest.approx(57.5)
    assert got["tidpo"] == pytest.approx(66.5)
    # dpo seeds: 3 (the superseded duplicate and the pending seed 3 are not counted)
    assert int(csv[(csv.label == "dpo") & (csv.metric == "task/accuracy")]["n"].iloc[0]) == 3


def test_main_table_layout_best_and_ci_text(report):
    _, out, *_ = report
    md = (out / "tables" / "main_tiny_arith.md").read_text()
    header = _md_row(md, "Method")
    assert header[:2] == ["Method", "Seeds"]
    assert header.index("MMLU") < header.index("GSM8K") < header.index("Avg")
    assert "lm_eval/gsm8k/exact_match_strict_match" in md  # headline: strict, not flexible
    tid, dpo = _md_row(md, "tidpo"), _md_row(md, "dpo")
    col = header.index("Task acc.")
    # tidpo has the highest mean, but its per-seed lead over dpo (10, 2, 9 points) gives a
    # paired t p = 0.11 before correction: not separated, so not bold
    assert tid[col] == "69.0 ± 6.6" and dpo[col] == "62.0 ± 5.0"
    # half-width: sd 2, se 2/sqrt(3) = 1.1547, t_{2, 0.975} = 4.3027 -> 4.968
    sep = header.index("Pref. acc. (len-norm.)")
    assert tid[sep].startswith("**81.2 ± ") and tid[sep].endswith("**")  # 80, 81.1, 82.4
    assert "Holm-corrected over the" in md and "1 column(s) qualify" in md
    csv = pd.read_csv(out / "tables" / "main_tiny_arith.csv")
    best = csv[csv.best]
    assert set(zip(best.label, best.metric)) == {("tidpo", "pref/accuracy_norm")}
    # item-level SE recovered from the share and the item count: sqrt(p (1 - p) / (n - 1))
    r = csv[(csv.label == "dpo") & (csv.metric == "task/accuracy")].iloc[0]
    want = np.mean([100 * (a * (1 - a) / 199) ** 0.5 for a in TASK[("arith", "dpo")]])
    assert r.item_se == pytest.approx(want)
    assert "includes the variance of: training seed." in md and "Not the SFT seed" in md
    # the CSV has numbers, not strings
    for c in ("mean", "std", "ci_low", "ci_high", "scale", "item_se"):
        assert pd.api.types.is_float_dtype(csv[c]), c
    assert pd.api.types.is_integer_dtype(csv["n"])
    assert pd.api.types.is_bool_dtype(csv["best"])
    row = csv[(csv.label == "dpo") & (csv.metric == "task/accuracy")].iloc[0]
    assert (row.ci_low, row.ci_high) == pytest.approx((62 - 4.9683, 62 + 4.9683), abs=1e-3)
    assert row["std"] == pytest.approx(2.0)  # sample std of 60, 64, 62


def test_latex_is_escaped(report):
    _, out, *_ = report
    tex = (out / "tables" / "main_tiny_arith_noise20.tex").read_text()
    assert r"arith\_noise20" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\textbf{" in tex
    for f in (out / "tables").glob("*.tex"):
        body = f.read_text().split("\n", 1)[1]  # the first line is a LaTeX comment
        assert not re.search(r"(?<!\\)[_%#]", body), f.name
        assert "±" not in body and "–" not in body, f.name
        lines = body.split("\\toprule\n")[1].split("\\bottomrule")[0].splitlines()
        rows = [ln for ln in lines if ln != "\\midrule"]
        seps = {len(re.findall(r"(?<!\\)&", ln)) for ln in rows}
        assert len(seps) == 1, f.name  # every row has the header's number of columns
    assert r"simpo\_norm" in (out / "tables" / "main_tiny_arith.tex").read_text()


def test_comparison_against_baseline_is_paired_by_seed(report):
    _, out, *_ = report
    csv = pd.read_csv(out / "tables" / "comparison.csv")
    r = csv[(csv.label == "tidpo") & (csv.metric == "task/accuracy") & (csv.dataset == "arith")]
    assert len(r) == 1
    r = r.iloc[0]
    # per-seed differences tidpo - dpo: 10, 2, 9 points -> mean 7.0
    assert r["diff"] == pytest.approx(7.0)
    assert r.n_pairs == 3 and r.baseline == "dpo"
    # paired t on (10, 2, 9): sd 4.3589, t = 7 / (4.3589 / sqrt 3) = 2.7815, df 2:
    # p = 1 - t / sqrt(2 + t^2) = 0.1086; Holm over the table can only raise it
    assert r.p_value == pytest.approx(1 - 2.78152 / (2 + 2.78152 ** 2) ** 0.5, abs=1e-4)
    assert r.p_adjusted >= r.p_value and r.correction == "Holm"
    assert r.verdict == "not distinguishable at n = 3"
    assert r.p_signflip == 0.25 and r.p_signflip_min == 0.25  # all 3 differences positive
    assert r.mde > 7.0  # the observed 7 points are below what 3 seeds can resolve here
    assert "dpo" not in set(csv.label)  # the baseline is not compared with itself
    # the separated column gets a verdict after correction
    s = csv[(csv.label == "tidpo") & (csv.metric == "pref/accuracy_norm")
            & (csv.dataset == "arith")].iloc[0]
    assert s.verdict == "better" and s.p_adjusted < 0.05
    md = (out / "tables" / "comparison.md").read_text()
    assert "Δ vs dpo" in md and "| better |" in md and "p (Holm)" in md
    assert "Holm-corrected over all" in md


# ------------------------------------------------------------------------- failures, status
def test_failed_cell_is_listed_with_step_reason_and_last_metrics(report):
    _, out, *_ = report
    md = (out / "tables" / "failed.md").read_text()
    row = _md_row(md, "ipo-tiny-arith-s0-0000")
    header = _md_row(md, "Cell")
    assert row[header.index("Step")] == "7"
    assert "NumericalFault" in row[header.index("Reason")]
    assert "loss=3.7" in row[header.index("Last finite metrics")]
    assert "grad_norm=1234" in row[header.index("Last finite metrics")]
    sup = _md_row(md, "dpo-tiny-arith-s0-old0")
    assert sup[1] == "superseded"
    csv = pd.read_csv(out / "tables" / "failed.csv")
    assert int(csv.set_index("cell_id").loc["ipo-tiny-arith-s0-0000", "step"]) == 7
    status = pd.read_csv(out / "tables" / "status.csv").set_index("label")
    assert status.loc["dpo", "done"] == 6 and status.loc["dpo", "pending"] == 1
    assert status.loc["ipo", "failed"] == 1 and status.loc["(all)", "total"] == 21
    html = (out / "report.html").read_text()
    assert "ipo-tiny-arith-s0-0000" in html and "failed 1" in html


# ------------------------------------------------------------------- reported vs reproduced
def test_reported_vs_reproduced_with_notes(report):
    _, out, *_ = report
    csv = pd.read_csv(out / "tables" / "reported_vs_reproduced.csv")
    r = csv[(csv.method == "DPO") & (csv.benchmark == "MMLU")].iloc[0]
    assert r.reported == pytest.approx(65.3)
    # our dpo MMLU over both data sets: (53.0 + 44.0) / 2 = 48.5
    assert float(r.reproduced_mean) == pytest.approx(48.5)
    assert float(r["diff"]) == pytest.approx(48.5 - 65.3)
    g = csv[(csv.method == "DPO") & (csv.benchmark == "GPQA")].iloc[0]
    assert g.reported == pytest.approx(24.0) and g.reproduced_n == 0
    md = (out / "tables" / "reported_vs_reproduced.md").read_text()
    assert "Table 1 row: MMLU/GSM8K/GPQA 0.67 above B5-B7" in md
    # the averaged TI-DPO row against the mean of its per-model rows (68, 74, 66 -> 69.33)
    assert "MMLU 70.0 vs 69.33" in md and "GSM8K 73.0 vs 72.33" in md
    assert "HumanEval" not in md.split("per-model rows:")[1].split("\n")[0]


# ------------------------------------------------------------------------ figures and html
def test_figures_are_valid_pngs_without_software_metadata(report):
    from PIL import Image

    _, out, *_ = report
    names = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"bars_accuracy", "accuracy_vs_cost", "reward_kl_frontier", "training_loss", "training_margins",
            "diversity", "label_noise", "token_importance_tidpo"} <= names
    for p in (out / "figures").glob("*.png"):
        data = p.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert b"Software" not in data and b"Matplotlib" not in data
        with Image.open(io.BytesIO(data)) as im:
            im.verify()


def test_html_and_markdown_reference_every_figure_and_table(report):
    _, out, *_ = report
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for p in (out / "figures").glob("*.png"):
        assert f'src="figures/{p.name}"' in html
        assert f"(figures/{p.name})" in md
    for p in (out / "tables").glob("*.csv"):
        assert f'href="tables/{p.name}"' in html
    assert "<b>81.2 ± " in html and "<b>69.0" not in html
    assert "Baseline for comparisons: dpo" in html
    manifest = (out / "MANIFEST").read_text().splitlines()
    listed = {line.split("  ", 1)[1] for line in manifest}
    assert listed == {k for k in _hashes(out) if k != "MANIFEST"}


def test_rebuild_and_fresh_process_give_identical_bytes(report):
    suite, out, proc, fresh = report
    first = _hashes(out)
    assert len(first) > 30
    build_report(suite)  # again, in place, in this process
    assert _hashes(out) == first
    log, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, log.decode(errors="replace")
    assert _hashes(fresh) == first


# ----------------------------------------------------------------------------- edge cases
def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        build_report(tmp_path)
    (tmp_path / "_sft" / "stage").mkdir(parents=True)
    write_status(tmp_path / "_sft" / "stage", "done")
    with pytest.raises(UserError, match="no cells"):
        build_report(tmp_path)


def test_unknown_explicit_baseline_is_a_user_error(report, tmp_path):
    suite, *_ = report
    with pytest.raises(UserError, match="did you mean|Did you mean"):
        build_report(suite, out_dir=tmp_path / "r", baseline="dpoo")


def test_missing_data_leaves_figures_out_without_a_note(tmp_path):
    s = tmp_path / "mini"
    for seed in (0, 1):
        d = s / f"dpo-s{seed}"
        atomic_write_yaml(d / "config.yaml", {
            "suite": "mini", "model": {"name": "m"}, "dataset": {"name": "d", "label_noise": 0.0},
            "method": {"name": "dpo", "label": "dpo", "hparams": {}}, "seed": seed})
        atomic_write_json(d / "metrics.json", {"pref/accuracy": 0.5 + 0.1 * seed})
        write_status(d, "done")
    out = build_report(s, out_dir=tmp_path / "out")
    figs = {p.stem for p in (out / "figures").glob("*.png")}
    assert figs == {"bars_accuracy"}
    html = (out / "report.html").read_text()
    # cost, KL, curves, diversity, noise, tokens, performance profiles (one group): not drawn,
    # and not announced either (a quickstart once showed a red "Figure skipped: label-noise")
    assert "skipped" not in html.lower() and html.count('<h3 id="fig-') == 1
    csv = pd.read_csv(out / "tables" / "main_m_d.csv")
    assert csv["mean"].tolist() == [pytest.approx(55.0)]
    assert not (out / "tables" / "comparison.csv").exists()  # one method: nothing to compare
    # a rerun after a cell disappears removes files it no longer writes (listed in MANIFEST)
    (out / "figures" / "old.png").write_bytes(b"not ours")
    atomic_write_text(out / "MANIFEST", (out / "MANIFEST").read_text() + "0  tables/gone.md\n")
    (out / "tables" / "gone.md").write_text("stale")
    build_report(s, out_dir=out)
    assert not (out / "tables" / "gone.md").exists()
    assert (out / "figures" / "old.png").exists()  # not listed: not ours, left alone


def test_headline_metrics_match_the_lm_eval_module():
    from harness.evaluate.lmeval import STANDARD_BENCHMARKS
    from harness.metrics import HEADLINE_METRIC
    from harness.report.summary import lm_eval_headlines

    assert HEADLINE_METRIC == {k: b.metric for k, b in STANDARD_BENCHMARKS.items()}
    got = lm_eval_headlines(["lm_eval/gsm8k/exact_match_flexible_extract",
                             "lm_eval/gsm8k/exact_match_strict_match",
                             "lm_eval/embedded_mc/acc", "lm_eval/embedded_mc/acc_norm",
                             "lm_eval/embedded_gen/exact_match", "lm_eval/mmlu/acc_stderr"])
    assert got == {"gsm8k": "lm_eval/gsm8k/exact_match_strict_match",
                   "embedded_gen": "lm_eval/embedded_gen/exact_match",
                   "embedded_mc": "lm_eval/embedded_mc/acc_norm"}
    assert json.dumps(list(got)) == '["gsm8k", "embedded_gen", "embedded_mc"]'


def test_the_committed_paper_table_reads_with_its_source_column_and_averaged_rows():
    """results/paper_table1/reported.csv (the file `python -m harness run suites/
    paper_table1.yaml` reports against) has a text `source` column and averaged rows whose
    model is 'average': both were refused / misread, so the headline suite's report failed."""
    from harness.report.collect import read_reported

    rep = read_reported(ROOT / "results" / "paper_table1" / "reported.csv")
    assert list(rep.columns[:4]) == ["method", "model", "note", "source"]
    assert set(rep["source"]) == {"Table 1 (v3)", "Table B5 (v3)", "Table B6 (v3)", "Table B7 (v3)"}
    dpo = rep[rep["method"] == "DPO"].set_index("model")
    assert set(dpo.index) == {"", "llama-3.1-8b", "llama-3.2-3b", "mistral-7b-v0.3"}
    assert dpo.loc["", "MMLU"] == pytest.approx(65.3)  # the paper's averaged DPO row
