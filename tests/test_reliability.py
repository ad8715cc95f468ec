"""Issue 8, as a user meets it: bad input, crashes, numerical faults and interrupted or
concurrent sweeps lose nothing.

Everything goes through the command line: ``harness.cli.main([...])`` in this process,
``python -m harness`` in a real subprocess, or, where a process must die or two must run at
once, forked children of one helper process (``tests/reliability_helpers.py --zygote``),
each running the CLI with test-only kill points and recorders monkeypatched in. The suites
are tiny (tests/suites/*.yaml): a run costs a second or two plus the imports, so the runs
are shared by module-scoped fixtures and the background processes start with the module.

Expected values come from the inputs as written here (rows, steps, checkpoint schedule) or
from an uninterrupted run of the same suite, never from the code under test re-deriving them.
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import reliability_helpers as rh
from harness.cli import main
from harness.results import is_temp_name, list_cells, lock_info, read_json, read_jsonl, read_status

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
HELPER = TESTS / "reliability_helpers.py"
CRASH = rh.SUITES / "crash.yaml"
NAN_PLUGIN = rh.PLUGINS / "nan_method.py"
LOG_TIMING = ("tokens_per_s", "step_s", "peak_mem_mb")


def sub_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HARNESS_NO_PROGRESS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    return env


def cli(*args) -> tuple[int, str, str]:
    """``python -m harness ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def restore_methods():
    """Plugins loaded in this process register methods globally; put the registry back so
    other test modules see only the built-in methods."""
    import methods

    methods.available()
    before = dict(methods.REGISTRY._entries)
    modules = set(sys.modules)
    yield
    methods.REGISTRY._entries.clear()
    methods.REGISTRY._entries.update(before)
    for name in set(sys.modules) - modules:
        if name.startswith("harness_plugin_"):
            del sys.modules[name]


def only_cell(suite_dir: Path) -> Path:
    cells = rh.cell_dirs(suite_dir)
    assert len(cells) == 1, cells
    return cells[0]


def log_rows(cell: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in LOG_TIMING} for r in read_jsonl(cell / "train_log.jsonl")]


def temp_leftovers(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if is_temp_name(p.name)]


def checkpoints(cell: Path) -> list[str]:
    d = cell / "checkpoints"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# ============================================== processes that run in the background
KILL_POINTS = ("train:5", "eval", "write:metrics")


class Background:
    """The runs that need processes of their own, started when this module starts so they
    overlap with the in-process tests:

    * one forked child per kill point, each running tests/suites/crash.yaml into its own
      results folder and SIGKILLed there (reliability_helpers.zygote: one import for all),
      and one interrupted with Ctrl-C (SIGINT) instead;
    * two forked children running tests/suites/concurrent.yaml into one results folder at
      the same moment (a barrier), recording which process trained what;
    * a real ``python -m harness run`` of a malicious bad suite.
    """

    def __init__(self, root: Path):
        self.root = root
        jobs = []
        for point in KILL_POINTS:
            name = point.replace(":", "_")
            jobs.append({"name": name, "kill_at": point, "args": ["run", str(CRASH), "--results",
                                                                  str(root / name), "--no-report"]})
        jobs.append({"name": "interrupt", "kill_at": "interrupt:5",
                     "args": ["run", str(CRASH), "--results", str(root / "interrupt"), "--no-report"]})
        self.record = root / "trained.jsonl"
        for i in range(2):
            jobs.append({"name": f"concurrent{i}", "record_train": str(self.record),
                         "barrier": f"{root / 'barrier'}:2",
                         "args": ["run", str(rh.SUITES / "concurrent.yaml"), "--results", str(root / "shared"),
                                  "--no-report"]})
        for j in jobs:
            j["stdout"], j["stderr"] = str(root / f"{j['name']}.out"), str(root / f"{j['name']}.err")
        (root / "jobs.json").write_text(json.dumps({"out": str(root / "children.json"), "jobs": jobs}))
        # its own session: the forked children are in its process group, stopped with it
        self.zygote = subprocess.Popen([sys.executable, str(HELPER), "--zygote", str(root / "jobs.json")],
                                       env=sub_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.bad_results = root / "bad_results"
        self.bad_suite = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "tests/bad_suites/unsafe_python_tag.yaml",
             "--results", str(self.bad_results)], cwd=ROOT, env=sub_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._children = None

    def children(self) -> dict:
        """{name: Killed-like record} once every child has ended."""
        if self._children is None:
            out, _ = self.zygote.communicate(timeout=600)
            assert self.zygote.returncode == 0, out[-3000:]
            ended = json.loads((self.root / "children.json").read_text())
            self._children = {
                name: Child(self.root / name, r["returncode"], r["pid"],
                            (self.root / f"{name}.out").read_text(), (self.root / f"{name}.err").read_text())
                for name, r in ended.items()}
        return self._children

    def stop(self) -> None:
        """At the end of the module: whatever still runs (tests deselected with -k) is ended."""
        if self.zygote.poll() is None:
            os.killpg(self.zygote.pid, signal.SIGKILL)
            self.zygote.wait()
        if self.bad_suite.poll() is None:
            self.bad_suite.kill()
            self.bad_suite.wait()


@dataclass
class Child:
    results: Path
    returncode: int
    pid: int
    out: str
    err: str

    @property
    def cell(self) -> Path:
        return only_cell(self.results / "crash")


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory):
    bg = Background(tmp_path_factory.mktemp("background"))
    yield bg
    bg.stop()


# ================================================================== bad suites
BAD = sorted((TESTS / "bad_suites").glob("*.yaml"))


def _header(path: Path) -> tuple[list[str], int]:
    text = path.read_text()
    return re.findall(r"^# expect: (.*)$", text, re.M), int(re.search(r"^# line: (\d+)$", text, re.M).group(1))


@pytest.mark.parametrize("cmd", ["validate", "run"])
@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_suite_exits_2_naming_file_line_and_key_and_writes_nothing(path, cmd, tmp_path, monkeypatch):
    expects, line = _header(path)
    monkeypatch.chdir(ROOT)
    rel = path.relative_to(ROOT)  # the file as the user typed it
    results = tmp_path / "results"
    rc, out, err = cli(cmd, rel, "--results", results)
    assert rc == 2, (out, err)
    for e in expects:
        assert e in err, f"expected {e!r} in:\n{err}"
    assert f"{rel}:{line}: " in err, f"expected line {line} in:\n{err}"
    assert err.startswith("error: ") and "Traceback" not in err
    assert not results.exists()


def test_bad_suite_through_a_real_process(background):
    """`python -m harness run` on the suite whose YAML tag would run `echo hi`: exit status
    2, the file, line and key, no traceback, no code executed, nothing written."""
    out, err = background.bad_suite.communicate(timeout=300)
    expects, line = _header(TESTS / "bad_suites" / "unsafe_python_tag.yaml")
    assert background.bad_suite.returncode == 2, (out, err)
    assert f"tests/bad_suites/unsafe_python_tag.yaml:{line}: " in err and all(e in err for e in expects), err
    assert "Traceback" not in err
    assert "hi" not in out.split()  # os.system('echo hi') never ran
    assert not background.bad_results.exists()


# ==================================================================== bad data
GOOD_ROWS = [{"prompt": f"Question {i:02d}: what is {i} plus {i}? Answer with digits only.",
              "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(12)]


def data_suite(tmp_path: Path, rows_or_bytes, **dataset) -> Path:
    """A suite training on tmp_path/data.jsonl (rows as JSON lines, or raw bytes)."""
    data = tmp_path / "data.jsonl"
    if isinstance(rows_or_bytes, bytes):
        data.write_bytes(rows_or_bytes)
    else:
        data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows_or_bytes))
    return rh.write_suite(tmp_path / "suite.yaml", "crash", name="data",
                          models=[{"name": "t", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                         "max_position_embeddings": 64}}],
                          datasets=[{"name": "mine", "path": "data.jsonl", "heldout_size": 4, **dataset}],
                          sft={"enabled": False}, train={"steps": 2, "checkpoint_every": 0},
                          eval={"enabled": False})


def _with(rows: list, at: dict[int, object]) -> list:
    """``rows`` with ``at[line]`` inserted so that it lands on that (1-based) line."""
    out = list(rows)
    for line in sorted(at):
        out.insert(line - 1, at[line])
    return out


BAD_DATA = {
    # name: (row placed on line 5, what the message must say about that line)
    "missing_field": ({"prompt": "p?", "chosen": "a"}, "line 5: field 'rejected': missing [missing_field]"),
    "empty_chosen": ({"prompt": "p?", "chosen": "  ", "rejected": "b"},
                     "line 5: field 'chosen': empty (after stripping whitespace) [empty_response]"),
    "empty_rejected": ({"prompt": "p?", "chosen": "a", "rejected": ""},
                       "line 5: field 'rejected': empty (after stripping whitespace) [empty_response]"),
    "identical": ({"prompt": "p?", "chosen": "same", "rejected": " same "},
                  "line 5: field 'chosen/rejected': chosen and rejected are the same text [identical_responses]"),
    "non_string": ({"prompt": "p?", "chosen": 42, "rejected": "b"},
                   "line 5: field 'chosen': expected a string, got int [wrong_type]"),
    "not_json": ('{"prompt": "p?", "chosen": "a", ', "line 5, column"),
}


@pytest.mark.parametrize("cmd", ["run", "validate"])
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_rows_exit_2_naming_file_and_row_before_anything_is_written(case, cmd, tmp_path):
    row, says = BAD_DATA[case]
    suite = data_suite(tmp_path, _with(GOOD_ROWS, {5: row}))
    results = tmp_path / "results"
    rc, out, err = cli(cmd, suite, "--results", results)
    assert rc == 2, (out, err)
    assert f"{tmp_path / 'data.jsonl'}: {says}" in err, err
    assert "Traceback" not in err
    assert not results.exists()


def test_invalid_utf8_names_line_and_column(tmp_path):
    lines = [json.dumps(r).encode() for r in GOOD_ROWS]
    lines[2] = b'{"prompt": "caf\xe9?", "chosen": "a", "rejected": "b"}'  # latin-1, not UTF-8
    suite = data_suite(tmp_path, b"\n".join(lines) + b"\n")
    rc, out, err = cli("run", suite, "--results", tmp_path / "results")
    assert rc == 2
    # '{"prompt": "caf' is 15 bytes: the bad byte is column 16 of line 3
    assert f"{tmp_path / 'data.jsonl'}: line 3, column 16" in err and "invalid UTF-8" in err, err
    assert "Traceback" not in err and not (tmp_path / "results").exists()


def test_nothing_left_after_dropping_bad_rows_is_exit_2(tmp_path):
    rows = [{"prompt": "a?", "chosen": "x"}, {"prompt": "b?", "chosen": "same", "rejected": "same"}]
    suite = data_suite(tmp_path, rows, on_bad_rows="drop", format="pairs")
    rc, out, err = cli("run", suite, "--results", tmp_path / "results")
    assert rc == 2
    assert "no usable pairs left in data set 'mine'" in err and str(tmp_path / "data.jsonl") in err
    assert "dropped 2 (missing_field: 1, identical_responses: 1)" in err, err
    assert not (tmp_path / "results").exists()


def test_dropped_rows_and_truncated_prompts_are_counted_in_metrics(tmp_path):
    """on_bad_rows: drop trains on the good rows and counts the rest; every prompt here is
    longer than max_prompt_length (16) and is truncated, and counted."""
    bad = {3: {"prompt": "p?", "chosen": "a"},                    # missing_field
           7: {"prompt": "p?", "chosen": "same", "rejected": "same"},  # identical_responses
           9: {"prompt": "p?", "chosen": " x", "rejected": "x "},      # identical after stripping
           15: {"prompt": "p?", "chosen": ["a"], "rejected": "b"}}     # wrong_type
    suite = data_suite(tmp_path, _with(GOOD_ROWS, bad), on_bad_rows="drop")
    rc, out, err = cli("run", suite, "--results", tmp_path / "results", "--no-report")
    assert rc == 0, err
    m = read_json(only_cell(tmp_path / "results" / "data") / "metrics.json")
    stats = m["data/stats"]
    assert stats["rows_read"] == 16 and stats["rows_valid"] == 12
    assert stats["dropped"] == {"missing_field": 1, "identical_responses": 2, "wrong_type": 1}
    assert stats["dropped_total"] == 4
    # 12 valid pairs, one per prompt; heldout_size 4 holds out 4, 8 train
    assert stats["heldout"] == 4 and stats["train"] == 8 and m["data/train_pairs"] == 8
    # each prompt is 50+ characters (one token each) > max_prompt_length 16; the responses
    # (<= 2 digits + EOS) fit in the 16 tokens left of max_length 32
    assert m["data/tokenization"] == {"input": 8, "prompt_truncated": 8, "response_truncated": 0,
                                      "dropped": 0, "kept": 8, "prompt_prefix_shortened": 0,
                                      "prompt_truncation": "keep_end"}


def test_every_pair_dropped_by_tokenization_is_a_clear_error(tmp_path, monkeypatch):
    """A chat template that renders nothing for the assistant turn leaves no response token
    in any pair. Such a tokenizer is simulated here; the cell must fail saying so, naming
    the data set and the lengths to change, not with an IndexError from inside training."""
    import harness.data.tokenize as tokmod

    monkeypatch.setattr(tokmod, "split_example", lambda tok, prompt, responses, *a, **k: ([5], [[]] * len(responses), 0))
    suite = data_suite(tmp_path, GOOD_ROWS)
    rc, out, err = cli("run", suite, "--results", tmp_path / "results", "--no-report")
    assert rc == 1
    st = read_status(only_cell(tmp_path / "results" / "data"))
    assert st["state"] == "failed"
    assert st["reason"].startswith("DataError: data set 'mine' (")
    assert str(tmp_path / "data.jsonl") in st["reason"]
    assert "all 8 training pairs were dropped by tokenization" in st["reason"]
    assert "raise max_length or lower max_prompt_length" in st["reason"]
    assert "IndexError" not in (Path(st["log"]).read_text())


def test_generation_longer_than_the_position_table_is_refused_or_fits(tmp_path):
    """A tiny gpt2 has learned positions for max_position_embeddings (32) tokens only. Prompts
    of up to 16 tokens plus 32 generated ones need 48: the run must refuse the suite up front
    (exit 2 naming the keys) or keep generation inside the table, never die in a tensor op."""
    suite = rh.write_suite(tmp_path / "suite.yaml", "crash", name="positions",
                           models=[{"name": "g", "tiny": {"arch": "gpt2", "hidden_size": 32, "num_layers": 1,
                                                          "num_heads": 2, "max_position_embeddings": 32}}],
                           sft={"enabled": False}, train={"steps": 1, "checkpoint_every": 0},
                           eval={"max_new_tokens": 32, "generation_prompts": 2, "kl_samples": 0})
    rc, out, err = cli("run", suite, "--results", tmp_path / "results", "--no-report")
    if rc == 2:
        assert "max_new_tokens" in err and "max_position_embeddings" in err
    else:
        assert rc == 0, read_status(only_cell(tmp_path / "results" / "positions")).get("reason")


# ============================================================= numerical faults
@pytest.fixture(scope="module")
def nan_run(tmp_path_factory, restore_methods):
    results = tmp_path_factory.mktemp("nan") / "results"
    rc, out, err = cli("run", rh.SUITES / "nan.yaml", "--plugin", NAN_PLUGIN, "--results", results)
    cells = {rh.read_config(c)["method"]["name"]: c for c in rh.cell_dirs(results / "nan")}
    return rc, out, err, results / "nan", cells


@pytest.mark.parametrize("method, what", [("nan-after-3", "loss"), ("nan-grad-after-3", "gradient norm")])
def test_numerical_fault_fails_the_cell_with_step_and_last_finite_metrics(nan_run, method, what):
    rc, out, err, suite_dir, cells = nan_run
    cell = cells[method]
    st = read_status(cell)
    assert st["state"] == "failed"
    assert st["reason"].startswith(f"NumericalFault: non-finite {what} at step 4")
    assert st["step"] == 4
    last = st["last_metrics"]
    assert last["step"] == 3 and all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf")
                                     for v in last.values())
    assert [r["step"] for r in read_jsonl(cell / "train_log.jsonl")] == [1, 2, 3]
    assert last == read_jsonl(cell / "train_log.jsonl")[-1]
    assert not (cell / "metrics.json").exists()  # no half result
    assert "NumericalFault" in Path(st["log"]).read_text() and Path(st["log"]).parent == cell


def test_other_cells_go_on_and_the_run_exits_1_naming_the_failed_cells(nan_run):
    rc, out, err, suite_dir, cells = nan_run
    assert rc == 1
    dpo = cells["dpo"]
    assert read_status(dpo)["state"] == "done"
    m = read_json(dpo / "metrics.json")
    assert m["train/final_loss"] == read_jsonl(dpo / "train_log.jsonl")[-1]["loss"]
    assert "finished in" in out and ": 2 ok, 2 failed" in out  # SFT stage and dpo; the two NaN cells
    for method in ("nan-after-3", "nan-grad-after-3"):
        cell = cells[method]
        assert f"FAILED {cell.name}: " in err and str(cell) in err  # the cell and where its logs are
    assert "--retry-failed" in err


def test_failed_cells_are_skipped_on_rerun_until_retried(nan_run):
    rc, out, err, suite_dir, cells = nan_run
    rc2, out2, err2 = cli("run", rh.SUITES / "nan.yaml", "--plugin", NAN_PLUGIN, "--results", suite_dir.parent,
                          "--no-report")
    assert rc2 == 1
    assert "3 cells (1 done, 2 failed and skipped - rerun with --retry-failed)" in out2
    assert "0 SFT stages and 0 cells to run" in out2
    assert read_status(cells["nan-after-3"])["state"] == "failed"


def test_plugin_given_on_the_command_line_reaches_the_cell_config(nan_run):
    """Workers of the local and SLURM launchers load plugins from the cell's config.yaml."""
    rc, out, err, suite_dir, cells = nan_run
    for cell in cells.values():
        assert rh.read_config(cell)["plugins"] == [str(NAN_PLUGIN)]


def test_diverged_cells_are_listed_in_the_report(nan_run):
    try:
        from harness.report import build_report  # noqa: F401
    except ImportError:
        pytest.skip("report module not present")
    rc, out, err, suite_dir, cells = nan_run
    text = (suite_dir / "report" / "report.md").read_text()
    failed = text[text.index("### Failed"):]
    for method in ("nan-after-3", "nan-grad-after-3"):
        row = next(ln for ln in failed.splitlines() if ln.startswith(f"| {cells[method].name} |"))
        assert "| failed |" in row and "| 4 |" in row and "NumericalFault" in row


def test_keep_model_keeps_safetensors_weights_and_nothing_else(nan_run):
    rc, out, err, suite_dir, cells = nan_run
    dpo = cells["dpo"]
    assert (dpo / "model" / "model.safetensors").is_file() and (dpo / "model" / "config.json").is_file()
    assert not (dpo / "checkpoints").exists()
    assert not list(dpo.rglob("*.pt")) and not list(dpo.rglob("*.bin"))


# ================================================================ crashes (SIGKILL)
@pytest.fixture(scope="module")
def crash(background):
    """The three killed runs of tests/suites/crash.yaml (background), and an uninterrupted run
    of the same suite, made here meanwhile, for reference."""
    root = background.root
    rc, out, err = cli("run", CRASH, "--results", root / "uninterrupted", "--no-report")
    assert rc == 0, err
    killed = {point: background.children()[point.replace(":", "_")] for point in KILL_POINTS}
    # a pristine copy of the training-killed folder, for the checkpoint-safety test
    shutil.copytree(root / "train_5", root / "train_5_copy")
    return {"root": root, "base": only_cell(root / "uninterrupted" / "crash"), **killed}


def _assert_interrupted(k: Child) -> Path:
    """What SIGKILL leaves: status running with the dead pid, its stale lock, no result."""
    assert k.returncode == -9, k.err[-3000:]
    cell = k.cell
    st = read_status(cell)
    assert st["state"] == "running" and st["pid"] == k.pid
    lock = lock_info(cell)
    assert lock["pid"] == k.pid and "is gone" in lock["stale"]
    assert not (cell / "metrics.json").exists()
    [entry] = list_cells(k.results / "crash")
    assert entry["state"] == "running" and entry["has_metrics"] is False
    return cell


def _rerun_and_compare(k: Child, base: Path, resumed_from: int) -> Path:
    rc, out, err = cli("run", CRASH, "--results", k.results, "--no-report")
    assert rc == 0, err
    assert "0 SFT stages and 1 cells to run" in out  # the SFT stage finished before the kill
    cell = k.cell
    assert read_status(cell)["state"] == "done"
    m, ref = read_json(cell / "metrics.json"), read_json(base / "metrics.json")
    assert m["train/resumed_from"] == resumed_from and ref["train/resumed_from"] is None
    assert rh.comparable(m) == rh.comparable(ref)
    assert log_rows(cell) == log_rows(base)  # each step once, same numbers
    assert read_jsonl(cell / "samples.jsonl") == read_jsonl(base / "samples.jsonl")
    assert not (cell / "checkpoints").exists() and not (cell / "lock").exists()
    assert temp_leftovers(k.results) == []
    return cell


def test_kill_during_training_resumes_from_the_last_checkpoint(crash):
    k = crash["train:5"]
    cell = _assert_interrupted(k)
    assert [r["step"] for r in read_jsonl(cell / "train_log.jsonl")] == [1, 2, 3, 4, 5]
    # a checkpoint after every step, two kept: 1 and 2 rotated away, 5 never written
    assert checkpoints(cell) == ["step-00000003", "step-00000004"]
    _rerun_and_compare(k, crash["base"], resumed_from=4)


def test_kill_during_evaluation_resumes_and_evaluates_again(crash):
    k = crash["eval"]
    cell = _assert_interrupted(k)
    assert [r["step"] for r in read_jsonl(cell / "train_log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert checkpoints(cell) == ["step-00000005", "step-00000006"]
    # killed after the 4 greedy answers were logged, before the sampled ones
    assert [r["kind"] for r in read_jsonl(cell / "samples.jsonl")] == ["greedy"] * 4
    _rerun_and_compare(k, crash["base"], resumed_from=6)


def test_kill_during_the_metrics_write_leaves_no_readable_half_file(crash):
    k = crash["write:metrics"]
    cell = _assert_interrupted(k)
    [tmp] = [p for p in cell.iterdir() if p.name.startswith(".metrics.json.")]
    assert tmp.name.endswith(".tmp") and f".{k.pid}." in tmp.name
    with pytest.raises(json.JSONDecodeError):  # half the bytes: what a non-atomic write would leave
        json.loads(tmp.read_text())
    _rerun_and_compare(k, crash["base"], resumed_from=6)


def test_ctrl_c_marks_the_cell_pending_and_the_rerun_resumes(crash, background):
    k = background.children()["interrupt"]
    assert k.returncode == 130 and "interrupted (SIGINT): stopped" in k.err and "Rerun the same command" in k.err
    assert "Traceback" not in k.err
    cell = k.cell
    st = read_status(cell)
    assert st["state"] == "pending" and st["reason"] == "interrupted (SIGINT)"
    assert not (cell / "lock").exists()  # released on the way out
    assert checkpoints(cell) == ["step-00000003", "step-00000004"]
    _rerun_and_compare(k, crash["base"], resumed_from=4)


def test_finished_cell_holds_no_checkpoints_weights_or_temp_files(crash):
    base = crash["base"]
    assert read_status(base)["state"] == "done"
    assert not (base / "checkpoints").exists()
    # the only weights left are the kept final policy (train.keep_model, true by default since
    # issue 16), complete: kept.json is written last
    assert (base / "model" / "kept.json").is_file()
    assert not [p for p in base.rglob("*") if p.suffix in (".safetensors", ".pt", ".bin")
                and (base / "model") not in p.parents]
    suite_dir = base.parent
    assert temp_leftovers(suite_dir) == []
    [stage] = list((suite_dir / "_sft").iterdir())
    # the SFT stage keeps the model its cells start from, not its training checkpoints
    assert (stage / "model" / "model.safetensors").is_file() and not (stage / "checkpoints").exists()


def test_a_rerun_of_a_finished_suite_trains_nothing(crash):
    before = (crash["base"] / "metrics.json").read_bytes()
    rc, out, err = cli("run", CRASH, "--results", crash["root"] / "uninterrupted", "--no-report")
    assert rc == 0 and "1 cells (1 done, 0 failed and skipped), 0 SFT stages and 0 cells to run" in out
    assert (crash["base"] / "metrics.json").read_bytes() == before


# ================================================================== concurrency
def test_two_runs_on_one_results_folder_train_each_cell_once(background):
    children = background.children()
    runs = [children["concurrent0"], children["concurrent1"]]
    for r in runs:
        # 3: a cell the other run held was not done when this one ended (issue 18)
        assert r.returncode in (0, 3), r.err[-3000:]
        assert "finished in" in r.out and " 0 failed" in r.out
    trained = [json.loads(line) for line in background.record.read_text().splitlines()]
    suite_dir = background.root / "shared" / "concurrent"
    cells = rh.cell_dirs(suite_dir)
    assert len(cells) == 3
    jobs = sorted(r["job"] for r in trained)
    stage = [r["job"] for r in trained if r["kind"] == "sft"]
    assert len(stage) == 1 and jobs == sorted(stage + [c.name for c in cells])  # each trained once
    by_job = {r["job"]: r["pid"] for r in trained}
    assert set(by_job.values()) <= {r.pid for r in runs}
    for cell in cells:
        st = read_status(cell)
        assert st["state"] == "done" and st["pid"] == by_job[cell.name]  # done by whoever trained it
        read_json(cell / "metrics.json")  # parses
        assert [r["step"] for r in read_jsonl(cell / "train_log.jsonl")] == [1, 2, 3, 4]
    # what one process reports as held by another process, the other one trained
    # what one process reports as held by another process (naming it), the other one trained
    for r, other in zip(runs, runs[::-1]):
        locked = {ln.split(":")[0].strip(): ln for ln in r.err.splitlines() if ": locked by host " in ln}
        assert (r.returncode == 3) == bool(locked), r.err
        for job, line in locked.items():
            assert by_job[job] == other.pid and f"pid {other.pid}" in line
    assert temp_leftovers(suite_dir) == []


# ========================================================================= safety
@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/name:os.system",
                                 "!!python/object/new:os.system"])
def test_yaml_code_tags_are_refused_and_never_run(tag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    suite = tmp_path / "evil.yaml"
    suite.write_text((rh.SUITES / "crash.yaml").read_text()
                     + f'description: {tag} ["touch {marker}"]\n')
    for cmd in ("validate", "run"):
        rc, out, err = cli(cmd, suite, "--results", tmp_path / "results")
        assert rc == 2 and "is not allowed in a suite" in err and f"{suite}:" in err
    assert not marker.exists() and not (tmp_path / "results").exists()


def _plugin_marker_file(folder: Path) -> Path:
    (folder / "evil_plugin.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_name('IMPORTED').write_text('plugin code ran')\n")
    return folder / "IMPORTED"


def test_trust_remote_code_only_where_a_model_sets_it_and_unnamed_plugins_never_run(tmp_path, monkeypatch,
                                                                                    restore_methods):
    from transformers import AutoModelForCausalLM

    from harness import schema
    from harness.models import build_tiny, char_tokenizer, save_model

    tok = char_tokenizer("0123456789+=")
    model = build_tiny(schema.TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2), tok, 0)
    for name in ("plain", "trusting"):
        save_model(model, tok, tmp_path / name)
    marker = _plugin_marker_file(tmp_path)
    suite = rh.write_suite(
        tmp_path / "suite.yaml", "crash", name="trust",
        models=[{"name": "plain", "path": str(tmp_path / "plain")},
                {"name": "trusting", "path": str(tmp_path / "trusting"), "trust_remote_code": True}],
        datasets=[{"name": "add", "task": "addition", "task_args": {"digits": 1, "n_sft": 8, "n_pairs": 16,
                                                                     "n_heldout": 4}}],
        sft={"enabled": False}, train={"steps": 1, "checkpoint_every": 0}, eval={"enabled": False})
    calls = []
    real = AutoModelForCausalLM.from_pretrained

    def recording(src, *a, **kw):
        calls.append((Path(src).name, kw.get("trust_remote_code")))
        return real(src, *a, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    rc, out, err = cli("run", suite, "--results", tmp_path / "results", "--no-report")
    assert rc == 0, err
    assert {c for c in calls} == {("plain", False), ("trusting", True)}
    for cell in rh.cell_dirs(tmp_path / "results" / "trust"):
        cfg = rh.read_config(cell)
        assert cfg["model"]["trust_remote_code"] is (cfg["model"]["name"] == "trusting")
        assert cfg["plugins"] == []
    # evil_plugin.py sat next to the suite the whole time and was never imported ...
    assert not marker.exists()
    # ... though it would have run, had the user named it
    rc, out, err = cli("validate", suite, "--plugin", tmp_path / "evil_plugin.py")
    assert rc == 0 and marker.read_text() == "plugin code ran"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the crafted file
def test_checkpoints_load_without_unpickling(crash, tmp_path):
    """A results folder from someone else may hold a crafted optimizer.pt. Resuming from it
    must refuse to unpickle code: torch.load(weights_only=True). The refused checkpoint is
    named as damaged and the cell resumes from the older intact one (issue 18, item 5)."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    payload = pickle.dumps(Payload())
    pickle.loads(payload)  # what a plain unpickler does with it:
    assert marker.exists()
    marker.unlink()
    results = crash["root"] / "train_5_copy"
    cell = only_cell(results / "crash")
    (cell / "checkpoints" / "step-00000004" / "optimizer.pt").write_bytes(payload)
    rc, out, err = cli("run", CRASH, "--results", results, "--no-report")
    assert rc == 0, err
    assert not marker.exists()
    m = read_json(cell / "metrics.json")
    assert m["train/resumed_from"] == 3
    [damaged] = m["train/damaged_checkpoints"]
    assert damaged.startswith(f"{cell / 'checkpoints' / 'step-00000004' / 'optimizer.pt'}: cannot be loaded")
    assert "Weights only load failed" in damaged
    assert rh.comparable(m) == rh.comparable(read_json(crash["base"] / "metrics.json")) | \
        {"train/damaged_checkpoints": [damaged]}


UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"), ("joblib", "load"),
              ("marshal", "loads"), ("shelve", "open")}
# The SLURM launcher's own hand-off files for multi-GPU jobs (harness/launch/slurm.py): the
# call it pickles for the accelerate processes it starts, and the result rank 0 pickles back,
# deleted before each job starts. Launcher plumbing of this run, never a result or a checkpoint.
# The local launcher's messages to and from its own worker processes (harness/launch/worker.py):
# a socket pair between the launcher and the child it started, never a file.
ALLOWED = {("harness/launch/slurm.py", "pickle.load"), ("harness/launch/slurm.py", "cloudpickle.loads"),
           ("harness/launch/worker.py", "pickle.loads")}


def _unsafe_loads(source: str, rel: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, rel)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        name = f"{owner}.{node.func.attr}"
        kw = {k.arg: k.value for k in node.keywords}
        # the literal value of a keyword; None when missing or computed (so not provably safe)
        const = lambda key: kw[key].value if isinstance(kw.get(key), ast.Constant) else None  # noqa: E731
        bad = ((owner, node.func.attr) in UNPICKLERS
               or (name == "torch.load" and const("weights_only") is not True)
               or (owner in ("np", "numpy") and node.func.attr == "load" and "allow_pickle" in kw
                   and const("allow_pickle") is not False)
               or (name in ("yaml.load", "yaml.load_all")
                   and "Safe" not in ast.unparse(kw.get("Loader", ast.Constant(""))))
               or name in ("yaml.unsafe_load", "yaml.full_load"))
        if bad and (rel, name) not in ALLOWED:
            found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_code_unpickles_results_or_checkpoints():
    found, n = [], 0
    for pkg in ("harness", "methods"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            found += _unsafe_loads(f.read_text(), str(f.relative_to(ROOT)))
            n += 1
    assert n > 20 and found == []
    # the checker finds what it is meant to find, and lets the safe forms pass
    unsafe = ["pickle.load(f)", "pickle.loads(b)", "torch.load(p)", "torch.load(p, weights_only=False)",
              "np.load(p, allow_pickle=True)", "np.load(p, allow_pickle=flag)", "torch.load(p, weights_only=flag)",
              "yaml.load(t, Loader=yaml.Loader)", "yaml.unsafe_load(t)"]
    safe = ["torch.load(p, map_location='cpu', weights_only=True)", "np.load(p, allow_pickle=False)",
            "np.load(p)",  # numpy's default is allow_pickle=False
            "yaml.safe_load(t)", "yaml.load(t, Loader=yaml.SafeLoader)", "json.load(f)"]
    assert [len(_unsafe_loads(c, "probe.py")) for c in unsafe] == [1] * len(unsafe)
    assert [len(_unsafe_loads(c, "probe.py")) for c in safe] == [0] * len(safe)
