"""lm-eval's own task names are accepted, not only the project's aliases.

Before: ``eval.lm_eval_tasks: [hellaswag]`` was refused ("unknown lm-eval task"); only the
embedded tasks and seven aliases of the paper's benchmarks were known. Now any task or group of
the installed lm-eval is found (by a fast scan of its YAML files, confirmed by lm-eval's index of
that one folder), checked before anything runs (hub data, Python modules, code execution) and
run with the task's own defaults.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from harness.errors import UserError
from harness.evaluate import lmeval, lmeval_benchmarks, lmeval_check, lmeval_tasks
from harness.evaluate.lmeval import check_available, smoke_standin


@pytest.fixture
def offline_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_lm_evals_own_names_are_known_and_checked_like_the_aliases(offline_cache):
    with pytest.raises(UserError) as e:
        check_available(["hellaswag", "truthfulqa_mc2"])
    msg = "\n".join(e.value.problems)
    assert "unknown" not in msg
    assert "'hellaswag'" in msg and "Rowan/hellaswag" in msg and "offline" in msg
    assert "truthfulqa/truthful_qa" in msg
    (offline_cache / "ds" / "Rowan___hellaswag").mkdir(parents=True)  # a local copy of its data
    check_available(["hellaswag"])


def test_a_typo_gets_lm_evals_own_name_suggested():
    with pytest.raises(UserError) as e:
        check_available(["hellaswg"])
    assert "Did you mean 'hellaswag'" in e.value.problems[0]


def test_a_tag_is_refused_with_the_fix():
    tag = next(n for n in ("truthfulqa-multi", "ai2_arc") if n in lmeval_tasks.native_index())
    with pytest.raises(UserError) as e:
        check_available([tag])
    assert "tag" in e.value.problems[0] and "list the tasks" in e.value.problems[0]


def test_requirements_come_from_the_code_the_task_calls():
    ifeval = lmeval_tasks.resolve("ifeval")
    assert {"langdetect", "immutabledict", "nltk"} <= set(ifeval.requires)
    assert "spacy" not in ifeval.requires  # imported by the multilingual variants only
    assert lmeval_tasks.resolve("humaneval").unsafe_code
    assert lmeval_tasks.resolve("gsm8k").kind == "gen" and lmeval_tasks.resolve("hellaswag").kind == "mc"
    assert smoke_standin("hellaswag") == "embedded_mc" and smoke_standin("mmlu_pro") == "embedded_gen"


@pytest.mark.parametrize("name", ["ifeval", "leaderboard_ifeval"])
def test_a_missing_benchmark_module_names_the_projects_extra(name, offline_cache, monkeypatch):
    if name not in lmeval_tasks.native_index() and name not in lmeval.STANDARD_BENCHMARKS:
        pytest.skip(f"{name} not in this lm-eval")
    real = importlib.util.find_spec
    monkeypatch.setattr(lmeval_check, "find_spec", lambda m, *a: None if m == "langdetect" else real(m, *a))
    with pytest.raises(UserError) as e:
        check_available([name])
    assert any("langdetect" in p and "prefopt-harness[benchmarks]" in p for p in e.value.problems)


@pytest.mark.slow
def test_the_scan_finds_every_task_and_group_of_lm_evals_full_index():
    from lm_eval.tasks import TaskManager

    tm = TaskManager()  # the full index (7-30 s)
    runnable = {n for n, e in tm.task_index.items() if getattr(e.kind, "name", "") in ("TASK", "GROUP")}
    assert runnable - set(lmeval_tasks.native_index()) == set()


def test_an_lm_eval_name_runs_through_the_native_path(tmp_path, monkeypatch):
    """The run path for an lm-eval name, offline: the name resolves to a folder that lm-eval
    indexes and runs (here a folder with a local-data task of that name stands in for the
    installed task, whose data are on the hub)."""
    from harness.evaluate.lmeval import run_lm_eval, write_local_tasks
    from tests.core_helpers import tiny

    folder = tmp_path / "tasks"
    write_local_tasks(folder, [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2=", "answer": "4"}], [],
                      prefix="arith")
    fake = lmeval_tasks.NativeTask("arith_gen", folder, "gen", (), (), False)
    monkeypatch.setattr(lmeval_tasks, "resolve", lambda n: fake if n == "arith_gen" else None)
    monkeypatch.setattr(lmeval_benchmarks, "lm_eval_tasks_dir", lambda: tmp_path)
    model, tok = tiny(0)
    out = run_lm_eval(model, tok, ["arith_gen"], include_path=None, limit=None, batch_size=2, device="cpu")
    assert out["lm_eval/arith_gen/exact_match"] in (0.0, 0.5, 1.0)
    assert out["lm_eval/arith_gen/_n_samples"] == 2
    json.dumps(out)
