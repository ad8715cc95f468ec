"""Questions several parts of the harness ask, each answered in one place, the same way.

* offline? (``harness.hub``): models, data sets, lm-eval and the ``run`` pre-flight agree;
  ``HF_HUB_OFFLINE=false`` means online everywhere (the CLI used to read it as offline);
* where is the SLURM profile? (``harness.paths``): ``validate`` and ``run`` find the same
  file from any working directory (from outside the project ``validate`` passed and ``run``
  could not find ``slurm/default.yaml``);
* the int rule: ``10.0`` is refused for an integer setting of every kind, with the fix.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from harness import config, hub, paths
from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "tests" / "good_suites"


def cli(*args) -> tuple[int, str, str]:
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ offline
@pytest.fixture
def no_flags(monkeypatch):
    for v in hub.OFFLINE_FLAGS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


@pytest.mark.parametrize("value, offline", [
    ("1", True), ("true", True), ("ON", True), ("yes", True),
    ("0", False), ("false", False), ("FALSE", False), ("no", False), ("", False),
])
@pytest.mark.parametrize("flag", hub.OFFLINE_FLAGS)
def test_each_flag_reads_as_hugging_face_reads_it(no_flags, flag, value, offline):
    no_flags.setenv(flag, value)
    assert hub.offline() is offline


def _hub_plan():
    return config.expand(config.load_suite_dict({
        "name": "h", "models": [{"name": "m", "hub": "org/model"}], "datasets": [{"name": "d", "task": "addition"}],
        "methods": [{"name": "dpo"}]}))


def test_hub_offline_false_is_online_for_the_run_preflight_and_the_model_loader(no_flags):
    from harness.cli import _check_runnable
    from harness.models import _check_hub_offline

    no_flags.setattr(hub, "hub_reachable", lambda timeout=2.0: True)  # a connected machine
    no_flags.setenv("HF_HUB_OFFLINE", "false")
    _check_runnable(_hub_plan())  # used to say "cannot be downloaded here (offline)"
    _check_hub_offline(_hub_plan().suite.models[0])  # returns: online, the hub may be asked
    no_flags.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot be downloaded here"):
        _check_runnable(_hub_plan())
    with pytest.raises(UserError, match="offline"):
        _check_hub_offline(_hub_plan().suite.models[0])


def test_lm_eval_and_data_sets_ask_the_same_question(no_flags, tmp_path):
    from harness.data import hub as data_hub
    from harness.evaluate import lmeval, lmeval_check

    no_flags.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    no_flags.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    no_flags.setenv("TRANSFORMERS_OFFLINE", "1")  # one flag is enough, for every library
    assert data_hub.hub_offline is hub.offline and lmeval_check.offline is hub.offline
    with pytest.raises(UserError, match="offline mode is on"):
        lmeval.check_available(["gsm8k"])


# ----------------------------------------------------------------------- SLURM profile
def test_validate_and_run_find_the_same_profile_from_outside_the_project(tmp_path, monkeypatch):
    suite = tmp_path / "suites" / "s.yaml"
    suite.parent.mkdir()
    suite.write_text((GOOD / "minimal.yaml").read_text() + "launcher: {type: slurm}\n")  # slurm/default.yaml
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, out, err = cli("validate", suite, "--results", tmp_path / "results")
    assert rc == 0, err
    seen = {}

    def fake_launch(jobs, spec, work_dir, *, profile_path=None, profile=None, progress=None):
        seen["profile"] = profile.path if profile is not None else profile_path   # run passes it loaded
        return []

    monkeypatch.setattr("harness.launch.launch", fake_launch)
    rc, out, err = cli("run", suite, "--results", tmp_path / "results", "--no-report")
    assert rc == 3, err   # the fake launcher ran nothing: every cell is left not done (issue 18)
    assert seen["profile"] == ROOT / "slurm" / "default.yaml" == paths.find_slurm_profile("slurm/default.yaml", None)


def test_a_missing_profile_stops_run_before_anything_is_written(tmp_path, monkeypatch):
    suite = tmp_path / "s.yaml"
    suite.write_text((GOOD / "minimal.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "no-project")
    rc, out, err = cli("run", suite, "--launcher", "slurm", "--results", tmp_path / "results")
    assert rc == 2 and "launcher.slurm_profile: SLURM profile 'slurm/default.yaml' not found" in err
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- int rule
def test_one_int_rule_for_every_kind_of_setting(tmp_path):
    import methods
    from harness.data.tasks import make_task
    from harness.launch.profile import load_profile

    with pytest.raises(UserError, match=r"train\.steps: must be an integer, got 10\.0; write 10"):
        config.load_suite_dict({"name": "x", "models": [{"name": "m", "tiny": {}}],
                                "datasets": [{"name": "d", "task": "addition"}], "methods": [{"name": "dpo"}],
                                "train": {"steps": 10.0}})
    with pytest.raises(methods.MethodConfigError, match="anchor_max_new_tokens' must be an integer, got 10.0; write 10"):
        methods.get("tidpo", anchor_max_new_tokens=10.0)  # was accepted
    with pytest.raises(ValueError, match="digits: must be an integer, got 2.0; write 2"):
        make_task("addition", {"digits": 2.0})
    (tmp_path / "p.yaml").write_text("cell: {time: 60.0}\n")
    with pytest.raises(UserError, match=r"cell\.time: must be an integer, got 60\.0; write 60"):
        load_profile(tmp_path / "p.yaml")


def test_the_two_slug_forms():
    # cell ids: lowercase, runs of other characters -> '-', capped; report files keep case
    assert paths.slug("DPO (beta=0.1)") == "dpo-beta-0.1"
    assert paths.slug("a" * 50, max_len=40) == "a" * 40
    assert paths.slug("TI-DPO", keep_case=True) == "TI-DPO"
    assert paths.slug("main/tiny add", keep_case=True) == "main-tiny-add"
    assert paths.slug("!!!") == paths.slug("!!!", keep_case=True) == "x"


def test_command_line_overrides_go_through_the_checker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad, says in (("0", "must be > 0, got 0"), ("-3", "must be > 0, got -3")):  # 0 was ignored, -3 used
        rc, out, err = cli("run", GOOD / "minimal.yaml", "--workers", bad, "--results", tmp_path / "r")
        assert rc == 2 and f"error: --workers {bad}: {says} (the suite key launcher.workers)" in err
    assert not (tmp_path / "r").exists()
