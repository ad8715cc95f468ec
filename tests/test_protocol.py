"""Tuning as part of the protocol (harness/config/space.py, plan.py, harness/tuning.py): search
spaces with one budget for every method, dev and test splits that never share an item, trials
scored on dev, the dev optimum chosen, finals with stable ids scored on test.

Expected values are written out by hand from the suites below (space sizes, which trials exist,
which point is best); trial results are planted as files, so selection is tested on numbers
chosen here, not on numbers the code computed.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.config import expand, final_cells, load_suite_dict
from harness.config.space import Point
from harness.errors import UserError
from harness.results import atomic_write_json, write_status
from harness.tuning import best_point, describe_finals, finals_plan, select

TINY = {"arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 32}
SUITE = {
    "name": "proto",
    "models": [{"name": "tiny", "tiny": TINY}],
    "datasets": [{"name": "add", "task": "addition",
                  "task_args": {"digits": 1, "n_sft": 20, "n_pairs": 32, "n_heldout": 40},
                  "heldout_size": 25, "dev_size": 15}],
    "methods": [{"name": "sft", "label": "SFT"},
                {"name": "sft-continued", "label": "SFT-continued"},
                {"name": "dpo", "label": "DPO", "grid": {"beta": [0.1, 0.5, 2.0]}},
                {"name": "ipo", "label": "IPO"}],
    "seeds": [0, 1],
    "sft": {"steps": 4, "batch_size": 4, "max_length": 24, "max_prompt_length": 12},
    "train": {"steps": 2, "batch_size": 4, "lr": 1e-4, "max_length": 24, "max_prompt_length": 12},
    "tuning": {"enabled": True, "metric": "task/accuracy", "budget": 4, "grid": {"lr": [1e-4, 3e-4]},
               "seeds": [7]},
}


def _suite(**changes) -> dict:
    s = copy.deepcopy(SUITE)
    for k, v in changes.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    return s


def _problems(d: dict) -> list[str]:
    with pytest.raises(UserError) as e:
        load_suite_dict(d)
    return e.value.problems


# ------------------------------------------------------------------------------ spaces
def test_every_method_gets_the_same_budget_and_a_larger_space_is_subsampled_reproducibly():
    plan = expand(load_suite_dict(SUITE))
    by = {sp.entry_label: sp for sp in plan.spaces}
    # by hand: SFT-continued searches lr only (2 points); DPO beta x lr = 3 x 2 = 6 points, cut
    # to the budget 4; IPO lr only (2); SFT nothing
    assert (by["SFT"].size, by["SFT-continued"].size, by["DPO"].size, by["IPO"].size) == (1, 2, 6, 2)
    assert [len(by[k].points) for k in ("SFT", "SFT-continued", "DPO", "IPO")] == [0, 2, 4, 2]
    assert all(len(sp.points) <= 4 for sp in plan.spaces)
    assert by["DPO"].subsampled and not by["IPO"].subsampled
    # the six points in space order (method grid major, train grid minor); the subsample keeps order
    full = [(b, lr) for b in (0.1, 0.5, 2.0) for lr in (1e-4, 3e-4)]
    got = [(p.hparams["beta"], p.train["lr"]) for p in by["DPO"].points]
    assert set(got) <= set(full) and got == sorted(got, key=full.index) and len(set(got)) == 4
    again = expand(load_suite_dict(SUITE))
    assert [p.values for p in next(s for s in again.spaces if s.entry_label == "DPO").points] == \
        [p.values for p in by["DPO"].points]
    # the subsample is drawn per sample seed: over a few seeds, more than one subset appears
    subsets = {tuple(repr(p.values) for p in next(
        s for s in expand(load_suite_dict(_suite(tuning={**SUITE["tuning"], "sample_seed": k}))).spaces
        if s.entry_label == "DPO").points) for k in range(6)}
    assert len(subsets) > 1 and all(len(s) == 4 for s in subsets)
    # no budget: every point
    nob = expand(load_suite_dict(_suite(tuning={**SUITE["tuning"], "budget": None})))
    assert len(next(s for s in nob.spaces if s.entry_label == "DPO").points) == 6


def test_phase_one_holds_the_trials_on_dev_and_the_untuned_rows_on_test():
    plan = expand(load_suite_dict(SUITE))
    trials = [c for c in plan.cells if c.role == "trial"]
    # 2 (SFT-continued) + 4 (DPO) + 2 (IPO) points x 1 trial seed
    assert len(trials) == 8 and {c.seed for c in trials} == {7}
    assert all(c.config["tuning"]["split"] == "dev" for c in trials)
    # a trial skips what selection never reads
    assert all(c.config["eval"]["diversity_prompts"] == 0 and c.config["eval"]["lm_eval_tasks"] == [] for c in trials)
    dpo = [c for c in trials if c.method == "dpo"]
    for c in dpo:
        pt = c.config["tuning"]["point"]
        assert c.config["method"]["hparams"]["beta"] == pt["beta"] and c.config["train"]["lr"] == pt["lr"]
    rows = [c for c in plan.cells if c.role == "cell"]
    assert [(c.label, c.seed) for c in rows] == [("SFT", 0), ("SFT", 1)]
    # SFT stages: the finals' seeds 0 and 1, and the trial seed 7
    assert sorted(st.seed for st in plan.sft_stages) == [0, 1, 7]


def test_final_ids_hash_the_chosen_setting_and_are_stable():
    plan = expand(load_suite_dict(SUITE))
    dpo = next(sp for sp in plan.spaces if sp.entry_label == "DPO")
    chosen = {("tiny", "add", dpo.method_index): dpo.points[1]}
    a = final_cells(plan, chosen)
    b = final_cells(expand(load_suite_dict(SUITE)), chosen)
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells] and len(a.cells) == 2
    for c in a.cells:
        assert c.label == "DPO" and c.config["tuning"] == {"role": "final", "entry": "DPO", "split": "test",
                                                           "point": dpo.points[1].values}
        assert c.config["method"]["hparams"]["beta"] == dpo.points[1].hparams["beta"]
        assert c.config["train"]["lr"] == dpo.points[1].train["lr"]
        assert c.config["eval"]["diversity_prompts"] == 20  # the suite's own evaluation
    other = final_cells(plan, {("tiny", "add", dpo.method_index): dpo.points[0]})
    assert not {c.cell_id for c in other.cells} & {c.cell_id for c in a.cells}
    assert not {c.cell_id for c in a.cells} & {c.cell_id for c in plan.cells}
    assert not a.sft_stages  # the finals start from the first phase's SFT stages


# ---------------------------------------------------------------------------- selection
def _plant(suite_dir: Path, cells, values: dict, state: str = "done", metric: str = "task/accuracy") -> None:
    """Write a status (and metrics.json with ``values[point]``) for each trial cell."""
    for c in cells:
        d = suite_dir / c.cell_id
        d.mkdir(parents=True, exist_ok=True)
        v = values.get(tuple(sorted(c.config["tuning"]["point"].items())))
        if state == "done":
            atomic_write_json(d / "metrics.json", {metric: v})
        write_status(d, state)


def _key(**kw) -> tuple:
    return tuple(sorted(kw.items()))


def test_the_chosen_setting_is_the_dev_optimum_and_ties_go_to_the_earlier_point(tmp_path):
    plan = expand(load_suite_dict(SUITE))
    suite_dir = tmp_path / "proto"
    trials = [c for c in plan.cells if c.role == "trial"]
    dpo = next(sp for sp in plan.spaces if sp.entry_label == "DPO")
    # a dev score per point, chosen by hand: the third DPO point is best
    vals = {}
    for i, p in enumerate(dpo.points):
        vals[tuple(sorted(p.values.items()))] = [0.30, 0.20, 0.55, 0.10][i]
    vals[_key(lr=1e-4)] = 0.4   # SFT-continued and IPO both search lr only: the same key
    vals[_key(lr=3e-4)] = 0.4   # a tie: the earlier point (lr 1e-4) wins
    _plant(suite_dir, trials, vals)
    plan2, sel = finals_plan(plan, suite_dir)
    assert sel.chosen[("tiny", "add", dpo.method_index)] == dpo.points[2]
    for label in ("SFT-continued", "IPO"):
        idx = next(sp.method_index for sp in plan.spaces if sp.entry_label == label)
        assert sel.chosen[("tiny", "add", idx)] == Point({}, {"lr": 1e-4})
    assert {c.label for c in plan2.cells} == {"SFT-continued", "DPO", "IPO"} and len(plan2.cells) == 6
    written = json.loads((suite_dir / "_tuning" / "selection.json").read_text())
    g = next(g for g in written["groups"] if g["entry"] == "DPO")
    assert g["chosen"] == dpo.points[2].values and g["chosen_dev"] == 0.55 and g["space_size"] == 6


def test_a_lower_is_better_metric_picks_the_minimum():
    pts = [Point({"beta": b}, {}) for b in (0.1, 0.5, 1.0)]
    assert best_point(list(zip(pts, [0.3, 0.1, float("nan")])), +1) == pts[0]
    assert best_point(list(zip(pts, [0.3, 0.1, float("nan")])), -1) == pts[1]
    assert best_point(list(zip(pts, [float("nan")] * 3)), +1) is None


def test_selection_waits_for_unfinished_trials_and_skips_failed_ones(tmp_path):
    plan = expand(load_suite_dict(SUITE))
    suite_dir = tmp_path / "proto"
    trials = [c for c in plan.cells if c.role == "trial"]
    ipo = [c for c in trials if c.method == "ipo"]
    rest = [c for c in trials if c.method != "ipo"]
    _plant(suite_dir, rest, {})
    _plant(suite_dir, ipo[:1], {_key(lr=1e-4): 0.9})
    _plant(suite_dir, ipo[1:], {}, state="running")
    sel = select(plan, suite_dir)
    assert ("tiny", "add", "IPO") in sel.waiting
    ipo_idx = next(sp.method_index for sp in plan.spaces if sp.entry_label == "IPO")
    assert ("tiny", "add", ipo_idx) not in sel.chosen
    # the failed (best-looking) trial is left out: the other one is chosen
    _plant(suite_dir, ipo[:1], {}, state="failed")
    _plant(suite_dir, ipo[1:], {_key(lr=3e-4): 0.2})
    sel = select(plan, suite_dir)
    assert sel.chosen[("tiny", "add", ipo_idx)] == Point({}, {"lr": 3e-4})
    # trials with no value at all (metric missing everywhere): no final, said so
    dpo = [c for c in trials if c.method == "dpo"]
    _plant(suite_dir, dpo, {})
    sel = select(plan, suite_dir)
    g = next(g for g in sel.groups if g["entry"] == "DPO")
    assert g["status"].startswith("no trial has a value")


def test_dry_run_shows_both_phases(tmp_path):
    plan = expand(load_suite_dict(SUITE))
    text = "\n".join(describe_finals(plan, tmp_path))
    assert "Phase 2 (finals on the test split): 6 cells = 3 tuned (model, data set, method) x 2 seeds" in text
    assert "waiting for trials" in text
    trials = [c for c in plan.cells if c.role == "trial"]
    _plant(tmp_path / "proto", trials, {_key(lr=1e-4): 0.5, _key(lr=3e-4): 0.1})
    text = "\n".join(describe_finals(plan, tmp_path))
    assert "known now" in text and text.count(" s0 ") + text.count(" s1 ") >= 4


# ----------------------------------------------------------------------------- checks
def test_a_tuned_suite_needs_a_dev_split_and_a_metric_with_a_direction():
    ds = [{**SUITE["datasets"][0], "dev_size": 0}]
    assert any("datasets[0].dev_size: tuning needs a dev split" in p for p in _problems(_suite(datasets=ds)))
    bad = _problems(_suite(tuning={**SUITE["tuning"], "metric": "task/acuracy"}))
    assert any("tuning.metric: unknown metric 'task/acuracy'. Did you mean 'task/accuracy'" in p for p in bad)
    assert any("no better direction" in p for p in _problems(_suite(tuning={**SUITE["tuning"], "metric": "kl/policy_ref"})))
    assert any("lm-eval benchmark" in p for p in _problems(_suite(tuning={**SUITE["tuning"], "metric": "lm_eval/mmlu/acc"})))
    bad = _problems(_suite(tuning={**SUITE["tuning"], "grid": {"lrr": [1e-4]}}))
    assert any("tuning.grid.lrr: unknown key 'lrr'. Did you mean 'lr'" in p for p in bad)
    bad = _problems(_suite(tuning={**SUITE["tuning"], "grid": {"lr": [1e-4, -1.0]}}))
    assert any("tuning.grid.lr[1]: must be > 0" in p for p in bad)
    meth = copy.deepcopy(SUITE["methods"])
    meth[2]["train"] = {"lr": 1e-3}
    assert any("methods[2].train.lr: also searched by tuning.grid.lr" in p for p in _problems(_suite(methods=meth)))
    nothing = _problems(_suite(methods=[SUITE["methods"][0], {"name": "ipo"}], tuning={**SUITE["tuning"], "grid": {}}))
    assert any("no method has anything to search" in p for p in nothing)


def test_dev_and_test_must_fit_in_the_tasks_held_out_problems():
    ds = [{**SUITE["datasets"][0], "heldout_size": 30, "dev_size": 15}]  # 45 > n_heldout 40
    assert any("heldout_size 30 + dev_size 15 exceeds the task's 40 held-out problems" in p
               for p in _problems(_suite(datasets=ds)))


def test_an_oracle_judge_needs_an_embedded_task(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(30)))
    d = {**SUITE, "datasets": [{"name": "file", "path": str(f), "heldout_size": 5, "pairs": "onpolicy"}],
         "tuning": {"enabled": False}}
    assert any("datasets[0].pairs: on-policy samples are scored by onpolicy.judge, 'oracle'" in p
               for p in _problems(d))


# ------------------------------------------------------------------------------ splits
def test_dev_and_test_are_disjoint_and_apart_from_training_for_both_tasks():
    from harness.data.loading import load_dataset
    from harness.schema import DatasetSpec

    for task, args in (("addition", {"digits": 2, "n_heldout": 300}),
                       ("reverse", {"n_heldout": 300, "n_pairs": 500, "n_sft": 100})):
        d = load_dataset(DatasetSpec(name="x", task=task, task_args=args, heldout_size=200, dev_size=100))
        test, dev = {p.prompt for p in d.heldout}, {p.prompt for p in d.dev}
        assert (len(d.heldout), len(d.dev)) == (200, 100) and len(test) == 200 and len(dev) == 100
        assert not test & dev
        assert not (test | dev) & {p.prompt for p in d.train}
        assert not (test | dev) & {p for p, _ in d.sft}
        # the test split is the one a suite without a dev split scores: unchanged by dev_size
        plain = load_dataset(DatasetSpec(name="x", task=task, task_args=args, heldout_size=200))
        assert [p.prompt for p in plain.heldout] == [p.prompt for p in d.heldout] and plain.dev == []
        assert d.scored_on("dev").heldout == d.dev and d.scored_on("test") is d


def test_a_file_data_sets_dev_and_test_never_share_a_prompt(tmp_path):
    from harness.data.loading import load_dataset
    from harness.schema import DatasetSpec

    f = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i // 2}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(80)]  # 2 pairs per prompt
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_dataset(DatasetSpec(name="f", path=str(f), heldout_size=11, dev_size=9))
    test, dev = {p.prompt for p in d.heldout}, {p.prompt for p in d.dev}
    assert not test & dev and not (test | dev) & {p.prompt for p in d.train}
    assert len(d.heldout) == 12  # whole prompt groups: 6 prompts x 2 pairs reach 11
    assert len(d.heldout) + len(d.dev) + len(d.train) == 80
