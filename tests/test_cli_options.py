"""Issue 16 items 3 and 5: ``--set`` and ``--only``, every option checked like a suite key, and
``validate`` making every check ``run`` makes before training (hub models, plugin ``needs``).

``--set`` must give exactly the plan of the suite file edited the same way (compared with an
edited copy of the file); ``--only`` must select cells without changing their ids; every bad
option or value exits 2 with a message naming the option and writes nothing. Nothing here
trains: runs see cells already marked done.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import methods
from harness import config
from harness.errors import UserError
from test_cli import _done, cli, tree  # the command line in this process, a folder's listing, a done cell

TESTS = Path(__file__).resolve().parent
GOOD = TESTS / "good_suites"
PLUGIN = TESTS / "plugins" / "undeclared.py"


def ids(loaded) -> list[str]:
    return [c.cell_id for c in config.expand(loaded).cells]


def listed_ids(out: str) -> list[str]:
    """The cell ids ``validate`` prints (the last column of its "Cells:" table)."""
    lines = out.splitlines()
    start = lines.index("Cells:") + 2  # past the header row
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or not lines[i].strip())
    return [ln.split()[-1] for ln in lines[start:end]]


# --------------------------------------------------------------------------------- --set
GRID_EDITS = [  # (--set option, the same edit of tests/good_suites/grid.yaml's text)
    ("train.steps=5", ("  steps: 10\n  batch_size: 4", "  steps: 5\n  batch_size: 4")),
    ("methods.ipo.hparams.beta=0.2", ("hparams: {beta: 0.5}", "hparams: {beta: 0.2}")),
    ("methods[0].grid.beta=[0.1, 0.3]", ("beta: [0.1, 0.5]", "beta: [0.1, 0.3]")),
    ("seeds=[0, 7]", ("seeds: [0, 1]", "seeds: [0, 7]")),
    ("datasets.add.task_args.n_pairs=100", ("n_pairs: 200", "n_pairs: 100")),
    ("train.lr=1e-6", ("  lr: 5e-7\n  max_length: 64\n  max_prompt_length: 32\neval",
                       "  lr: 1e-6\n  max_length: 64\n  max_prompt_length: 32\neval")),
    ("eval.lm_eval_tasks=[]", ("eval:\n", "eval:\n  lm_eval_tasks: []\n")),  # a key the file leaves out
]


def test_set_gives_the_cell_ids_of_the_file_edited_the_same_way(tmp_path):
    text = (GOOD / "grid.yaml").read_text()
    for opt, (old, new) in GRID_EDITS:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    edited = tmp_path / "grid.yaml"
    edited.write_text(text)
    sets = [opt for opt, _ in GRID_EDITS]
    by_set = config.load_suite(GOOD / "grid.yaml", sets)
    assert ids(by_set) == ids(config.load_suite(edited))
    assert set(ids(by_set)).isdisjoint(ids(config.load_suite(GOOD / "grid.yaml")))  # every cell changed
    # and through the command line: the same listing
    args = [x for opt in sets for x in ("--set", opt)]
    rc, out, err = cli("validate", GOOD / "grid.yaml", *args, "--results", tmp_path / "r")
    rc2, out2, _ = cli("validate", edited, "--results", tmp_path / "r")
    assert rc == rc2 == 0, err
    assert listed_ids(out) == listed_ids(out2) == ids(by_set) and len(ids(by_set)) == 24
    assert "with --set train.steps=5" in out


def test_set_selects_list_items_by_label_name_index_and_dotted_name(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmodels:\n  - name: qwen2.5-x\n    tiny: {}\ndatasets:\n  - {name: add, task: addition}\n"
                     "methods:\n  - {name: dpo, label: DPO-a}\n  - {name: dpo, label: DPO-b}\n  - {name: ipo}\n")
    edited = tmp_path / "e.yaml"
    edited.write_text(suite.read_text().replace("tiny: {}", "tiny: {hidden_size: 32}")
                      .replace("label: DPO-b}", "label: DPO-b, hparams: {beta: 0.3}}")
                      .replace("{name: ipo}", "{name: ipo, hparams: {beta: 0.7}}"))
    sets = ["models.qwen2.5-x.tiny.hidden_size=32", "methods[DPO-b].hparams.beta=0.3", "methods.2.hparams.beta=0.7"]
    assert ids(config.load_suite(suite, sets)) == ids(config.load_suite(edited))
    with pytest.raises(UserError) as e:  # two entries are named dpo: select by label or index
        config.load_suite(suite, ["methods.dpo.hparams.beta=0.3"])
    assert "--set methods.dpo.hparams.beta=0.3: methods: 2 items are named 'dpo' (items 0, 1)" in str(e.value)


@pytest.mark.parametrize("opt, says", [
    ("train.stpes=5", "--set train.stpes=5: train.stpes: unknown key 'stpes'. Did you mean 'steps'?"),
    ("trian.steps=5", "--set trian.steps=5: trian: unknown key 'trian'. Did you mean 'train'?"),
    ("train.steps=0", "--set train.steps=0: train.steps: must be > 0, got 0"),
    ("train.steps=five", "--set train.steps=five: train.steps: must be an integer, got 'five'"),
    ("methods.dpoo.hparams.beta=1", "--set methods.dpoo.hparams.beta=1: methods: no item named 'dpoo'. "
                                    "Did you mean 'dpo'?"),
    ("methods.dpo.hparams.betta=1", "--set methods.dpo.hparams.betta=1: methods[0].hparams.betta: "),
    ("models[3].path=x", "--set models[3].path=x: models: has 1 items; [3] is not one of them"),
    ("train.steps.max=3", "--set train.steps.max=3: train.steps: is 10, not a mapping"),
    ("seeds=[0, 1", "--set seeds=[0, 1: the value '[0, 1' is not readable YAML"),
    ("train.steps", "--set train.steps: give KEY.PATH=VALUE"),
])
def test_bad_set_exits_2_names_the_option_and_writes_nothing(opt, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "in" / "grid.yaml"
    suite.parent.mkdir()
    suite.write_text((GOOD / "grid.yaml").read_text())
    before = tree(tmp_path)
    rc, out, err = cli("run", suite, "--set", opt)
    assert rc == 2 and says in err and "Traceback" not in err, err
    assert tree(tmp_path) == before


def test_a_run_with_set_records_the_edited_suite(tmp_path):
    results = tmp_path / "results"
    sets = ["--set", "train.steps=5", "--set", "methods.tidpo.hparams.beta=0.2"]
    rc, out, err = cli("validate", GOOD / "no_sft.yaml", *sets, "--results", results)
    assert rc == 0, err
    cells = listed_ids(out)
    for cid in cells:
        _done(results / "no_sft" / cid)
    rc, out, err = cli("run", GOOD / "no_sft.yaml", *sets, "--results", results, "--no-report")
    assert rc == 0 and "2 cells (2 done" in out, err
    written = (results / "no_sft" / "suite.yaml").read_text()
    assert "with --set train.steps=5" in written  # the header says how it differs from the file
    assert ids(config.load_suite(results / "no_sft" / "suite.yaml")) == cells  # and it plans the same cells
    assert json.loads((results / "no_sft" / "plan.json").read_text())["cells"] == cells


# -------------------------------------------------------------------------------- --only
def test_only_selects_cells_and_their_stages_without_changing_ids(tmp_path):
    plan = config.expand(config.load_suite(GOOD / "grid.yaml"))
    rc, out, err = cli("validate", GOOD / "grid.yaml", "--only", "method=ipo,SFT", "--only", "seed=1",
                       "--only", "dataset=rev", "--results", tmp_path)
    assert rc == 0, err
    want = [c.cell_id for c in plan.cells if c.label in ("ipo", "SFT") and c.seed == 1 and c.dataset == "rev"]
    assert listed_ids(out) == want and len(want) == 2
    assert "--only method=ipo,SFT --only seed=1 --only dataset=rev: 2 of the suite's 24 cells, 1 of 4 SFT stages" in out
    assert "2 cells = 1 model x 1 data set x 2 method variants x 1 seed" in out  # counted as selected
    # a grid label selects one variant; a method name all of its variants
    rc, out, err = cli("validate", GOOD / "grid.yaml", "--only", "method=dpo (beta=0.5, label_smoothing=0.1)",
                       "--results", tmp_path)
    assert len(listed_ids(out)) == 4  # 2 data sets x 2 seeds
    rc, out, err = cli("validate", GOOD / "grid.yaml", "--only", "method=dpo", "--results", tmp_path)
    assert len(listed_ids(out)) == 16


@pytest.mark.parametrize("only, says", [
    ("method=dpoo", "--only method=dpoo: this suite has no method 'dpoo'. Did you mean 'dpo'?"),
    ("seed=2", "--only seed=2: this suite has no seed '2'"),
    ("dataset=ad", "--only dataset=ad: this suite has no dataset 'ad'. Did you mean 'add'?"),
    ("models=tiny", "--only models=tiny: unknown key 'models'. Did you mean 'model'?"),
    ("method", "--only method: give KEY=VALUE[,VALUE...]"),
])
def test_bad_only_exits_2_and_writes_nothing(only, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli("run", GOOD / "grid.yaml", "--only", only)
    assert rc == 2 and says in err and "Traceback" not in err, err
    assert tree(tmp_path) == []


def test_a_run_with_only_runs_the_selection_and_keeps_the_whole_suite(tmp_path):
    results = tmp_path / "results"
    whole = ids(config.load_suite(GOOD / "no_sft.yaml"))
    rc, out, err = cli("validate", GOOD / "no_sft.yaml", "--only", "model=small", "--results", results)
    [picked] = listed_ids(out)
    _done(results / "no_sft" / picked)
    rc, out, err = cli("run", GOOD / "no_sft.yaml", "--only", "model=small", "--results", results, "--no-report")
    assert rc == 0 and "1 cells (1 done, 0 failed and skipped), 0 SFT stages and 0 cells to run" in out, err
    other = next(c for c in whole if c != picked)
    assert not (results / "no_sft" / other).exists()  # nothing written for the cells left out
    assert json.loads((results / "no_sft" / "plan.json").read_text())["cells"] == whole  # the report's members
    rc, out, err = cli("run", GOOD / "no_sft.yaml", "--results", results, "--dry-run")
    assert "Status: 1 done, 1 new" in out  # the same id without --only


# ---------------------------------------------------------------------- every option
@pytest.mark.parametrize("args, says", [
    (["run", "SUITE", "--workers", "-1"], "--workers -1: must be > 0, got -1"),
    (["run", "SUITE", "--workers", "2"], "--workers 2: applies to the local launcher only; this run uses 'inline'"),
    (["run", "SUITE", "--workers", "2", "--launcher", "slurm"], "this run uses 'slurm' (--launcher)"),
    (["run", "SUITE", "--results", "FILE"], "--results FILE: is a file, not a folder"),
    (["run", "SUITE", "--results", "FILE", "--dry-run"], "--results FILE: is a file, not a folder"),
    (["validate", "SUITE", "--results", "FILE/sub"], "--results FILE/sub: is inside"),
    (["run", "SUITE", "--plugin", "no_such_plugin_mod"], "--plugin no_such_plugin_mod: plugin module"),
    (["report", "RESULTS", "--out", "FILE"], "--out FILE: is a file, not a folder"),
])
def test_each_option_is_checked_exit_2_nothing_written(args, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder\n")
    (tmp_path / "RESULTS").mkdir()
    before = tree(tmp_path)
    rc, out, err = cli(*[str(GOOD / "minimal.yaml") if a == "SUITE" else a for a in args])
    assert rc == 2 and says in err and "Traceback" not in err, err
    assert tree(tmp_path) == before


# ------------------------------------------------------------ validate = run's checks
def test_validate_refuses_an_uncached_hub_model_offline_and_accepts_a_cached_one(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    suite = tmp_path / "s.yaml"
    suite.write_text((GOOD / "minimal.yaml").read_text().replace("    tiny: {}", "    hub: org/model"))
    rc, out, err = cli("validate", suite, "--results", tmp_path / "r")  # used to say "valid"
    assert rc == 2 and "model 'tiny': hub id 'org/model' cannot be downloaded here (offline" in err
    assert "not in the local hub cache" in err
    rc2, _, err2 = cli("run", suite, "--results", tmp_path / "r")
    assert rc2 == 2 and err2 == err and not (tmp_path / "r").exists()  # run says the same, first
    repo = tmp_path / "hub" / "models--org--model"  # the hub cache's layout, with the model's config
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    rc, out, err = cli("validate", suite, "--results", tmp_path / "r")
    assert rc == 0, err  # run used to refuse a cached hub model offline too


def test_validate_catches_a_plugin_reading_an_undeclared_feature(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text((GOOD / "minimal.yaml").read_text().replace("  - name: dpo", "  - name: weighted-dpo\n"
                                                                 "  - name: tidy-dpo"))
    rc, out, err = cli("validate", suite, "--plugin", PLUGIN, "--results", tmp_path / "r")
    assert rc == 2, out
    assert "methods[0].name: method 'weighted-dpo'" in err and "reads token_weights (chosen_weights)" in err
    assert "needs = frozenset({'reference', 'token_weights'})" in err
    assert "tidy-dpo" not in err  # a generic look at every field that changes nothing is allowed
    rc, out, err = cli("run", suite, "--plugin", PLUGIN, "--results", tmp_path / "r")
    assert rc == 2 and "reads token_weights" in err and not (tmp_path / "r").exists()


def test_the_needs_check_passes_every_builtin_and_survives_misbehaving_plugins():
    from methods.conformance import needs_problem, undeclared_reads

    for name in methods.available():
        assert undeclared_reads(methods.get(name)) == {}, name
    methods.load_plugin(str(TESTS / "plugins" / "misbehaving.py"))
    assert needs_problem(methods.get("exits")) is None  # its loss exits: not a needs problem
    methods.load_plugin(str(PLUGIN))
    assert undeclared_reads(methods.get("weighted-dpo")) == {"token_weights": ["chosen_weights"]}


def test_the_needs_check_of_plugins_survives_a_loss_that_kills_its_process():
    from methods.conformance import needs_problems

    # die-hard SIGKILLs the process that calls its loss: validate and run must survive it (the
    # check runs in a child), and the methods after it are still checked
    methods.load_plugin(str(TESTS / "slurm_plugins" / "die_hard.py"))
    methods.load_plugin(str(PLUGIN))
    killer, bad, good = (methods.get_class(n) for n in ("die-hard", "weighted-dpo", "tidy-dpo"))
    got = needs_problems([(killer, {}), (bad, {"beta": 0.3}), (good, {"beta": 0.1})])
    assert got[0] is None and got[2] is None
    assert "reads token_weights (chosen_weights)" in got[1] and "'token_weights'" in got[1]


def test_only_on_a_tuned_suite_keeps_trials_and_the_stages_the_selected_finals_need():
    from harness.config.only import parse_only, select

    plan = config.expand(config.load_suite(TESTS.parent / "suites" / "quickstart.yaml"))
    part = select(parse_only(["method=DPO", "seed=0"]), plan)
    assert part.cells and all(c.config["tuning"]["entry"] == "DPO" for c in part.cells)
    # the trials keep every tuning seed (selection on dev needs them); the seed filter is for finals
    assert {c.seed for c in part.cells} == set(plan.suite.tuning.seeds)
    assert [sp.entry_label for sp in part.spaces] == ["DPO"] and part.suite.seeds == [0]
    # DPO trains on on-policy pairs only on the data sets that say `pairs: onpolicy`
    onpolicy = {d.name for d in plan.suite.datasets if d.pairs == "onpolicy"}
    assert {s.dataset for s in part.onpolicy_stages} == onpolicy and all(s.seed == 0 for s in part.onpolicy_stages)
    assert {c.cell_id for c in part.cells} <= {c.cell_id for c in plan.cells}  # ids unchanged
