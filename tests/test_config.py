"""Suite loading, validation and expansion (the harness/config/ package).

The bad-suite corpus (tests/bad_suites/*.yaml) states in its header what each file must
produce: ``# expect: <substring>`` (one or more), ``# line: <n>`` (the line the problem must
name) and optionally ``# requires: tasks``. Expected counts, token totals and parameter counts
below are written out by hand from the suite files.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from harness.config import (
    describe_plan,
    expand,
    load_suite,
    load_suite_dict,
    schema_markdown,
    tiny_param_estimate,
)
from harness.errors import UserError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BAD = sorted((TESTS / "bad_suites").glob("*.yaml"))
GOOD = TESTS / "good_suites"
HAVE_TASKS = importlib.util.find_spec("harness.data.tasks") is not None
needs_tasks = pytest.mark.skipif(not HAVE_TASKS, reason="harness.data.tasks is not there yet")


def _header(path: Path) -> tuple[list[str], int, str | None]:
    text = path.read_text()
    expects = re.findall(r"^# expect: (.*)$", text, re.M)
    line = int(re.search(r"^# line: (\d+)$", text, re.M).group(1))
    req = re.search(r"^# requires: (\w+)$", text, re.M)
    return expects, line, req.group(1) if req else None


def _problems(path_or_dict, **kw) -> list[str]:
    with pytest.raises(UserError) as exc:
        if isinstance(path_or_dict, dict):
            load_suite_dict(path_or_dict, **kw)
        else:
            load_suite(path_or_dict)
    assert exc.value.problems, "a UserError must carry at least one problem"
    return exc.value.problems


# ------------------------------------------------------------------------ bad suites
def test_corpus_is_large_and_every_file_states_its_expectation():
    assert len(BAD) >= 20
    for f in BAD:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# expect: "), f"{f.name}: first line must be '# expect: ...'"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_suite_is_rejected_with_file_line_and_fix(path: Path, monkeypatch):
    expects, line, requires = _header(path)
    if requires == "tasks" and not HAVE_TASKS:
        pytest.skip("needs harness.data.tasks")
    monkeypatch.chdir(ROOT)
    rel = path.relative_to(ROOT)  # the file as the user named it
    problems = _problems(rel)
    message = "\n".join(problems)
    for e in expects:
        assert e in message, f"expected {e!r} in:\n{message}"
    assert f"{rel}:{line}: " in message, f"expected line {line} in:\n{message}"
    for p in problems:
        assert p.startswith(f"{rel}:"), p


def test_independent_problems_are_all_reported_at_once(tmp_path):
    suite = tmp_path / "three.yaml"
    suite.write_text(
        "name: three\n"                                  # 1
        "models:\n"                                      # 2
        "  - name: tiny\n"                               # 3
        "    tiny: {hidden_size: 32, num_heads: 2}\n"    # 4
        "datasets:\n"                                    # 5
        "  - name: d\n"                                  # 6
        f"    path: {tmp_path / 'd.jsonl'}\n"            # 7  (exists, below)
        "methods:\n"                                     # 8
        "  - name: dpo\n"                                # 9
        "    hparams: {beta: -1}\n"                      # 10 problem 1
        "train:\n"                                       # 11
        "  lr: 0\n"                                      # 12 problem 2
        "eval:\n"                                        # 13
        "  winrate: 1\n"                                 # 14 problem 3
    )
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    problems = _problems(suite)
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{suite}:10: methods[0].hparams.beta: ")
    assert problems[1] == f"{suite}:12: train.lr: must be > 0, got 0.0"
    assert problems[2] == f"{suite}:14: eval.winrate: must be true or false, got 1"


def test_a_misspelled_key_is_one_problem_not_a_cascade(tmp_path):
    # 'tinny' is unknown; 'no source given' would only repeat it
    problems = _problems({"name": "x", "models": [{"name": "m", "tinny": {}}],
                          "datasets": [{"name": "d", "task": "addition"}], "methods": [{"name": "dpo"}]})
    assert len(problems) == 1 and "Did you mean 'tiny'?" in problems[0]


def test_dict_suites_name_the_source_and_key_without_lines():
    problems = _problems({"name": "x", "models": [], "datasets": [], "methods": [],
                          "train": {"steps": 0}}, source="cli-args")
    assert "cli-args: train.steps: must be > 0, got 0" in problems
    assert "cli-args: models: no models; give at least one (see suites/README.md)" in problems
    assert all(p.startswith("cli-args: ") for p in problems)


def test_unknown_hparam_in_grid_is_one_problem_at_the_grid_key():
    problems = _problems({"name": "x", "models": [{"name": "m", "tiny": {}}],
                          "datasets": [{"name": "d", "task": "addition"}],
                          "methods": [{"name": "ipo", "grid": {"bta": [0.1, 0.2, 0.3]}}],
                          "report": {"baseline": "ipo"}})  # not a second problem: ipo just failed
    assert problems == ["<dict>: methods[0].grid.bta: unknown hyperparameter 'bta'. Did you mean 'beta'? "
                        "Valid hyperparameters: beta, length_normalize"]


def test_plugins_register_methods_and_broken_plugins_are_named(tmp_path):
    (tmp_path / "my_plugin.py").write_text(
        "import methods\n"
        "@methods.register('_test_cfg_plugin_method')\n"
        "class M(methods.PreferenceMethod):\n"
        "    '''A test method.'''\n"
        "    tau: float = 1.0\n"
        "    def loss(self, b):\n"
        "        raise NotImplementedError\n")
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    base = {"name": "x", "models": [{"name": "m", "tiny": {}}], "datasets": [{"name": "d", "task": "addition"}]}
    ok = load_suite_dict({**base, "plugins": ["my_plugin.py"],
                          "methods": [{"name": "_test_cfg_plugin_method", "hparams": {"tau": 2}}]},
                         base_dir=tmp_path)
    cell = expand(ok).cells[0]
    assert cell.config["method"]["hparams"] == {"tau": 2.0}
    assert cell.config["plugins"] == [str((tmp_path / "my_plugin.py").resolve())]
    problems = _problems({**base, "plugins": ["broken_plugin.py"], "methods": [{"name": "dpo"}]},
                         base_dir=tmp_path)
    assert problems == ["<dict>: plugins[0]: plugin 'broken_plugin.py' failed to import: RuntimeError: boom at import"]


def test_slurm_profile_found_next_to_the_suite(tmp_path):
    (tmp_path / "prof.yaml").write_text("partition: debug\n")
    d = {"name": "x", "models": [{"name": "m", "tiny": {}}], "datasets": [{"name": "d", "task": "addition"}],
         "methods": [{"name": "dpo"}], "launcher": {"type": "slurm", "slurm_profile": "prof.yaml"}}
    load_suite_dict(d, base_dir=tmp_path)  # no error
    with pytest.raises(UserError, match=r"launcher.slurm_profile: SLURM profile 'nope.yaml' not found"):
        load_suite_dict({**d, "launcher": {"type": "slurm", "slurm_profile": "nope.yaml"}}, base_dir=tmp_path)


# ----------------------------------------------------------------- YAML reading rules
@needs_tasks
def test_yaml_1_2_scalars_anchors_and_merge_keys(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: scalars\n"
        "base: &base {hidden_size: 32, num_heads: 2}\n"
        "models:\n"
        "  - name: a\n"
        "    tiny: *base\n"
        "  - name: b\n"
        "    tiny:\n"
        "      <<: *base\n"
        "      num_heads: 4\n"
        "datasets: [{name: d, task: addition}]\n"
        "methods: [{name: dpo}]\n"
        "seeds: [010]\n"
        "train: {lr: 5e-7, steps: 1_000}\n"
        "eval: {semantic_diversity: off}\n")
    # 'base' is not a suite key; anchors may live under an 'x-' key, which is ignored
    problems = _problems(f)
    assert len(problems) == 1
    assert problems[0].startswith(f"{f}:2: base: unknown key 'base'.")
    assert problems[0].endswith("Valid keys at the top level: name, description, plugins, models, datasets, "
                                "methods, seeds, sft, train, eval, onpolicy, tuning, launcher, report")
    f.write_text(f.read_text().replace("base: &base", "x-base: &base"))
    s = load_suite(f).suite
    assert s.train.lr == 5e-7 and isinstance(s.train.lr, float)  # YAML 1.1 would give '5e-7'
    assert s.train.steps == 1000
    assert s.seeds == [10]                                          # not octal 8
    assert s.eval.semantic_diversity == "off"                       # not the boolean false
    assert (s.models[1].tiny.hidden_size, s.models[1].tiny.num_heads) == (32, 4)


def test_syntax_error_names_file_line_and_problem(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\nmodels:\n  - name: a\n   tiny: {}\n")
    problems = _problems(f)
    assert len(problems) == 1 and problems[0].startswith(f"{f}:4: YAML syntax error: ")


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert "the suite is empty" in _problems(tmp_path / "empty.yaml")[0]
    assert _problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: suite file not found"]


# ------------------------------------------------------------------ good suites, plans
@needs_tasks
@pytest.mark.parametrize("name, n_cells, n_stages", [
    ("minimal", 1, 1),      # 1 model x 1 data set x 1 method x 1 seed; 1 stage
    ("grid", 24, 4),        # 1 x 2 x (2*2 dpo + ipo + sft = 6) x 2 seeds; a stage per data set
                            # and seed (sft.per_seed defaults to true)
    ("local_data", 6, 3),   # 1 x 1 x 2 x 3 seeds; per_seed stages: 3
    ("no_sft", 2, 0),       # 2 models x 1 x 1 x 1; sft disabled
])
def test_good_suites_expand_to_the_expected_plan(name, n_cells, n_stages):
    plan = expand(load_suite(GOOD / f"{name}.yaml"))
    assert len(plan.cells) == n_cells
    assert len(plan.sft_stages) == n_stages
    assert len({c.cell_id for c in plan.cells}) == n_cells
    stage_ids = {s.stage_id for s in plan.sft_stages}
    for c in plan.cells:
        assert re.fullmatch(rf"[a-z0-9.-]+-{re.escape(c.model)}-{re.escape(c.dataset)}-s{c.seed}-[0-9a-f]{{10}}",
                            c.cell_id), c.cell_id
        assert (c.sft_stage_id in stage_ids) if n_stages else c.sft_stage_id is None
        json.dumps(c.config, allow_nan=False)  # plain JSON


@needs_tasks
def test_grid_labels_order_and_resolved_configs():
    plan = expand(load_suite(GOOD / "grid.yaml"))
    add0 = [c for c in plan.cells if c.dataset == "add" and c.seed == 0]
    assert [c.label for c in add0] == [
        "dpo (beta=0.1, label_smoothing=0.0)", "dpo (beta=0.1, label_smoothing=0.1)",
        "dpo (beta=0.5, label_smoothing=0.0)", "dpo (beta=0.5, label_smoothing=0.1)", "ipo", "SFT"]
    dpo, ipo, sft = add0[1], add0[4], add0[5]
    assert dpo.config["method"] == {"name": "dpo", "label": "dpo (beta=0.1, label_smoothing=0.1)",
                                    "hparams": {"beta": 0.1, "label_smoothing": 0.1}}
    # ipo: the method's own default (length_normalize) is filled in; the train override applies
    assert ipo.config["method"]["hparams"]["beta"] == 0.5
    assert "length_normalize" in ipo.config["method"]["hparams"]
    assert ipo.config["train"]["lr"] == 1e-6 and dpo.config["train"]["lr"] == 5e-7
    assert ipo.config["train"]["steps"] == 10
    # the sft row trains nothing and starts from the same stage as its group
    assert sft.method == "sft" and sft.config["train"]["steps"] == 0 and sft.config["method"]["hparams"] == {}
    assert sft.sft_stage_id == dpo.sft_stage_id == plan.sft_stages[0].stage_id
    assert plan.sft_stages[0].stage_id.startswith("sft-tiny-add-")
    assert dpo.config["sft"]["steps"] == 20 and dpo.config["sft"]["lr"] == 1e-4
    # every task argument is resolved: written ones and the task's defaults
    targs = dpo.config["dataset"]["task_args"]
    assert targs["digits"] == 2 and targs["n_pairs"] == 200 and "data_seed" in targs
    assert set(dpo.config) == {"suite", "model", "dataset", "method", "seed", "sft", "train", "eval", "plugins"}
    assert dpo.config["eval"]["semantic_diversity"] == "off"


@needs_tasks
def test_cell_id_is_the_documented_hash_of_the_config():
    for cell in expand(load_suite(GOOD / "grid.yaml")).cells:
        cfg = {k: v for k, v in cell.config.items() if k != "plugins"}
        # keep_model (true by default since issue 16) is hashed as false: the ids stay as recorded
        cfg["train"] = {**cfg["train"], "keep_model": False}
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        assert cell.cell_id.endswith("-" + digest[:10])


@needs_tasks
def test_ids_are_stable_and_change_only_with_what_changes_results(tmp_path):
    text = (GOOD / "grid.yaml").read_text()

    def ids(t: str) -> list[str]:
        f = tmp_path / "g.yaml"
        f.write_text(t)
        plan = expand(load_suite(f))
        return [c.cell_id for c in plan.cells] + [s.stage_id for s in plan.sft_stages]

    base = ids(text)
    assert ids(text) == base
    assert ids(text + "launcher: {type: local, workers: 8}\nreport: {metrics: [a]}\n") == base
    assert ids(text.replace("description: a grid", "description: another grid")) == base
    changed = ids(text.replace("hparams: {beta: 0.5}", "hparams: {beta: 0.4}"))
    ipo = [i for i, c in enumerate(base) if c.startswith("ipo-")]
    assert all(changed[i] != base[i] for i in ipo)
    assert [c for i, c in enumerate(changed) if i not in ipo] == [c for i, c in enumerate(base) if i not in ipo]
    # an SFT setting changes the stages and every cell that starts from them
    sft_changed = ids(text.replace("  steps: 20\n", "  steps: 30\n"))
    assert not set(sft_changed) & set(base)


@needs_tasks
def test_local_paths_resolve_absolute_but_ids_survive_a_move(tmp_path):
    a = expand(load_suite(GOOD / "local_data.yaml"))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(GOOD / "local_data.yaml", moved)
    shutil.copy(GOOD / "pairs.jsonl", moved)
    b = expand(load_suite(moved / "local_data.yaml"))
    assert a.cells[0].config["dataset"]["path"] == str((GOOD / "pairs.jsonl").resolve())
    assert b.cells[0].config["dataset"]["path"] == str((moved / "pairs.jsonl").resolve())
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells]
    # per-seed SFT: each cell starts from the stage of its own seed
    stages = {s.stage_id: s for s in a.sft_stages}
    assert [s.seed for s in a.sft_stages] == [1, 2, 3]
    assert all(stages[c.sft_stage_id].seed == c.seed for c in a.cells)


@needs_tasks
def test_describe_plan_reads_status_and_estimates_compute(tmp_path):
    plan = expand(load_suite(GOOD / "minimal.yaml"))
    cell = plan.cells[0]
    (tmp_path / "minimal" / cell.cell_id).mkdir(parents=True)
    (tmp_path / "minimal" / cell.cell_id / "status").write_text(json.dumps({"state": "done"}))
    text = describe_plan(plan, tmp_path)
    assert "1 cell = 1 model x 1 data set x 1 method variant x 1 seed; 1 SFT stage" in text
    assert "Status: 1 done" in text
    assert re.search(rf"dpo\s+tiny\s+add\s+0\s+done\s+{cell.cell_id}", text)
    assert re.search(rf"tiny\s+add\s+0\s+200\s+new\s+{plan.sft_stages[0].stage_id}", text)
    # defaults: steps 200 x batch 8 x accum 1 x max_length 512 x 2 = 1,638,400 preference
    # tokens; SFT 200 x 8 x 1 x 512 = 819,200; total 2,457,600
    assert "1.64M preference + 819k SFT = 2.46M" in text
    # default tiny llama: h=128, 2 layers, MLP 256, char vocab ~64:
    # 2 x (4*128^2 + 3*128*256) + 128*64 = 2 x (65,536 + 98,304) + 8,192 = 335,872
    assert "~336k parameters" in text
    # 6 x 335,872 x 2,457,600 = 4.9526e12
    assert "~4.95T FLOPs" in text
    assert "estimate" in text.lower()


def test_tiny_param_estimate_by_hand():
    # gpt2 family, MLP = 2 h i: 3 x (4*64^2 + 2*64*100) + 64*512 (bpe) = 3 x 29,184 + 32,768 = 120,320
    tiny = {"arch": "gpt2", "hidden_size": 64, "num_layers": 3, "intermediate_size": 100,
            "tokenizer": "bpe", "bpe_vocab_size": 512}
    assert tiny_param_estimate(tiny) == 120_320


# -------------------------------------------------------------------------- the docs
def test_suites_readme_carries_the_current_key_tables():
    readme = (ROOT / "suites" / "README.md").read_text()
    assert schema_markdown() in readme, "suites/README.md is stale: run `python -m harness.config docs`"


def test_schema_markdown_documents_every_key():
    from dataclasses import fields

    from harness import schema

    md = schema_markdown()
    for cls in (schema.Suite, schema.ModelSpec, schema.TinyModelSpec, schema.LoraSpec, schema.DatasetSpec,
                schema.MethodSpec, schema.TrainSpec, schema.SFTSpec, schema.EvalSpec, schema.LauncherSpec,
                schema.ReportSpec):
        for fl in fields(cls):
            assert f"| `{fl.name}` |" in md, (cls.__name__, fl.name)
    assert "| `lr` | float | `5e-07` | > 0 |" in md
    assert "| `label_noise` | float | `0.0` | in [0, 1) |" in md


@needs_tasks
def test_readme_example_suite_is_valid(tmp_path):
    readme = (ROOT / "suites" / "README.md").read_text()
    example = re.search(r"## An example\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    f = tmp_path / "example.yaml"
    f.write_text(example)
    plan = expand(load_suite(f))
    # 1 model x 1 data set x (sft + 3 dpo + ipo + SimPO = 6) x 3 seeds, one stage per seed
    assert len(plan.cells) == 18 and len(plan.sft_stages) == 3


def test_loaded_suite_records_source_and_hash(tmp_path):
    f = tmp_path / "h.yaml"
    body = "name: h\nmodels: [{name: m, tiny: {}}]\ndatasets: [{name: d, task: addition}]\nmethods: [{name: dpo}]\n"
    f.write_text(body)
    if not HAVE_TASKS:
        pytest.skip("needs harness.data.tasks")
    loaded = load_suite(f)
    assert loaded.path == f and loaded.base_dir == tmp_path.resolve()
    assert loaded.text_hash == hashlib.sha256(body.encode()).hexdigest()
    assert asdict(loaded.suite.train)["steps"] == 200


def test_reading_problems_do_not_hide_the_others(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("name: dup\nname: dup2\nmodels: []\n")
    problems = _problems(f)
    assert f"{f}:2: name: duplicate key (first set at line 1); keep one" in problems
    assert f"{f}:3: models: no models; give at least one (see suites/README.md)" in problems


@needs_tasks
def test_expand_follows_edits_made_after_loading():
    # e.g. `run --smoke` shrinks a loaded suite; the plan must reflect the edit
    loaded = load_suite(GOOD / "minimal.yaml")
    loaded.suite.methods[0].hparams = {"beta": 0.3}
    loaded.suite.train.steps = 2
    cell = expand(loaded).cells[0]
    assert cell.config["method"]["hparams"]["beta"] == 0.3 and cell.config["train"]["steps"] == 2
    loaded.suite.methods[0].hparams = {"beta": -1.0}
    with pytest.raises(UserError, match=r"methods\[0\]\.hparams\.beta"):
        expand(loaded)
