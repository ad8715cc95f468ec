"""Issue 18, as a user meets it: an edited suite, a results folder from someone else, a full
disk, locks held by others, damaged checkpoints and SFT models, missing metrics, a killed SFT
worker, a frozen lock holder, and the mistakes that must be exit 2 with nothing written.

Everything goes through the command line: ``harness.cli.main`` in this process, or ``python -m
harness`` in a subprocess where a process must die, pause or fill a disk (tests/hooks/
sitecustomize.py instruments those processes, workers included). Suites are tests/suites/
crash.yaml and variations of it: one tiny SFT stage and one DPO cell, seconds per run.

Expected values come from the inputs (steps, checkpoint schedule) or from an uninterrupted run
of the same suite, never from the code under test.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reliability_helpers as rh
from harness.cli import main
from harness.report.collect import collect
from harness.results import CellLock, lock_info, read_json, read_jsonl, read_status, write_status

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
HOOKS = TESTS / "hooks"
CRASH = rh.SUITES / "crash.yaml"
MISBEHAVING = rh.PLUGINS / "misbehaving.py"


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def sub_env(hooks: tuple[str, ...] = ()) -> dict:
    env = dict(os.environ)
    path = [str(ROOT), str(TESTS)]
    if hooks:
        path.insert(0, str(HOOKS))
        env["HARNESS_TEST_HOOKS"] = ",".join(hooks)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HARNESS_NO_PROGRESS="1", PYTHONPATH=os.pathsep.join(path))
    return env


def harness(*args, hooks: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` in a subprocess of its own."""
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, env=sub_env(hooks),
                          capture_output=True, text=True, timeout=timeout)


def only_cell(suite_dir: Path) -> Path:
    [cell] = rh.cell_dirs(suite_dir)
    return cell


def stage_dir(suite_dir: Path) -> Path:
    [stage] = [p for p in (suite_dir / "_sft").iterdir() if p.is_dir()]
    return stage


def locks_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*lock*") if p.is_file())


@pytest.fixture(scope="module")
def restore_methods():
    import methods

    methods.available()
    before = dict(methods.REGISTRY._entries)
    yield
    methods.REGISTRY._entries.clear()
    methods.REGISTRY._entries.update(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An uninterrupted, finished run of crash.yaml: the reference every recovery must match."""
    root = tmp_path_factory.mktemp("base")
    rc, out, err = cli("run", CRASH, "--results", root, "--no-report")
    assert rc == 0, err
    suite = root / "crash"
    return {"root": root, "suite": suite, "cell": only_cell(suite),
            "metrics": read_json(only_cell(suite) / "metrics.json")}


def copy_of(base: dict, dst: Path) -> Path:
    """A copy of the finished base results (``dst/crash``); returns the cell folder."""
    shutil.copytree(base["root"], dst)
    return only_cell(dst / "crash")


def same_result(cell: Path, base: dict) -> None:
    """Done, with the metrics of the uninterrupted run (what a recovery may add: the list of
    damaged checkpoints it skipped)."""
    assert read_status(cell)["state"] == "done"
    m = read_json(cell / "metrics.json")
    m.pop("train/damaged_checkpoints", None)
    assert rh.comparable(m) == rh.comparable(base["metrics"])


# ======================================================= 1. the report of an edited suite
def test_the_report_aggregates_only_the_cells_of_the_suite_it_is_given(tmp_path):
    """Two seeds, then the suite edited (another lr, seeds [0]) and rerun into the same folder:
    the DPO row has one seed, the new one; the old cells are named apart, not averaged in.
    Then edited again with the new cell failing: the old done results do not stand in."""
    results = tmp_path / "results"
    common = dict(name="edit", seeds=[0, 1], train={"steps": 2, "checkpoint_every": 0},
                  eval={"generation_prompts": 2, "kl_samples": 0, "heldout_pairs": 4})
    suite = rh.write_suite(tmp_path / "edit.yaml", "crash", **common)
    rc, out, err = cli("run", suite, "--results", results, "--no-report")
    assert rc == 0, err
    old = {c.name for c in rh.cell_dirs(results / "edit")}
    assert len(old) == 2
    rh.write_suite(suite, "crash", **{**common, "seeds": [0], "train": {**common["train"], "lr": 3.0e-3}})
    rc, out, err = cli("run", suite, "--results", results)
    assert rc == 0, err
    [new] = {c.name for c in rh.cell_dirs(results / "edit")} - old
    col = collect(results / "edit")
    assert sorted(col.cells["cell_id"]) == [new]          # exactly the plan's cells
    assert list(col.done["seed"]) == [0]
    [note] = [n for n in col.notes if "not part of this suite" in n]
    assert all(f"{c} (done)" in note for c in old)
    report = (results / "edit" / "report" / "report.md").read_text()
    assert "not part of this suite as last run" in report and "- Cells: 1 (done 1)" in report
    assert "| Method | Seeds |" in report and "| dpo | 1 |" in report

    # edited once more; its cell fails (recorded here before the run): no old result stands in
    rh.write_suite(suite, "crash", **{**common, "seeds": [0], "train": {**common["train"], "lr": 5.0e-3}})
    rc, out, err = cli("validate", suite, "--results", results)
    [newest] = [ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("dpo ")]
    write_status(results / "edit" / newest, "failed", reason="RuntimeError: broken on purpose")
    rc, out, err = cli("run", suite, "--results", results, "--no-report")
    assert rc == 1
    col = collect(results / "edit")
    assert list(col.cells["cell_id"]) == [newest] and col.done.empty


# ============================================== 2. a results folder cannot name code or trust
def test_a_results_folder_cannot_name_code_or_widen_trust(tmp_path, monkeypatch, restore_methods):
    """Someone else's results folder: a cell set back to pending, an evil.py next to it, its
    config.yaml naming that plugin and trust_remote_code. Running one's own unmodified suite
    over it imports nothing from there and trusts nothing: the config comes from the suite."""
    from transformers import AutoModelForCausalLM

    from harness import schema
    from harness.models import build_tiny, char_tokenizer, save_model

    tok = char_tokenizer("0123456789+=")
    save_model(build_tiny(schema.TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2), tok, 0), tok,
               tmp_path / "plain")
    suite = rh.write_suite(
        tmp_path / "suite.yaml", "crash", name="trust", models=[{"name": "plain", "path": str(tmp_path / "plain")}],
        datasets=[{"name": "add", "task": "addition", "task_args": {"digits": 1, "n_sft": 8, "n_pairs": 16,
                                                                     "n_heldout": 4}}],
        sft={"enabled": False}, train={"steps": 1, "checkpoint_every": 0}, eval={"enabled": False})
    results = tmp_path / "results"
    rc, out, err = cli("run", suite, "--results", results, "--no-report")
    assert rc == 0, err
    cell = only_cell(results / "trust")
    marker = tmp_path / "PWNED"
    (cell / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('evil.py ran')\n")
    cfg = rh.read_config(cell)
    cfg["plugins"] = [str(cell / "evil.py")]
    cfg["model"]["trust_remote_code"] = True
    (cell / "config.yaml").write_text(json.dumps(cfg))
    (cell / "metrics.json").unlink()
    write_status(cell, "pending")

    calls = []
    real = AutoModelForCausalLM.from_pretrained

    def recording(src, *a, **kw):
        calls.append(kw.get("trust_remote_code"))
        return real(src, *a, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    rc, out, err = cli("run", suite, "--results", results, "--no-report")
    assert rc == 0, err
    assert not marker.exists()                        # evil.py never imported
    assert calls and not any(calls)                   # trust_remote_code stayed off
    assert f"{cell / 'config.yaml'}: differed from the suite's plan (model, plugins)" in err
    cfg = rh.read_config(cell)
    assert cfg["plugins"] == [] and cfg["model"]["trust_remote_code"] is False
    assert read_status(cell)["state"] == "done"


# ========================================================================= 3. disk full
@contextlib.contextmanager
def tmpfs(mnt: Path, options: str):
    """A tmpfs mounted at ``mnt`` for the block (root only); the test is skipped where mounting
    is not allowed."""
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 48 MB disk of its own (the lock-level disk-full test in test_locks.py runs anywhere)."""
    with tmpfs(tmp_path / "disk", "size=48m") as mnt:
        yield mnt


def test_a_full_disk_stops_the_run_honestly_and_a_rerun_finishes_it(tiny_disk, base):
    """A real full disk (a small tmpfs filled at training step 3 of the first cell of three):
    the run stops with a message, exit 3 and no traceback, leaves no lock behind and starts no
    more cells; once space is freed the same command finishes every cell, as an uninterrupted
    run would have."""
    results, filler = tiny_disk / "results", tiny_disk / "filler"
    suite = rh.write_suite(tiny_disk / "suite.yaml", "crash", seeds=[0, 1, 2])
    r = harness("run", suite, "--results", results, "--no-report", hooks=(f"fill:train:3:{filler}",))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "No space left on device" in r.stderr and "free some space" in r.stderr
    assert "Traceback" not in r.stderr
    assert locks_in(results) == []
    cells = rh.cell_dirs(results / "crash")
    states = sorted(read_status(c)["state"] for c in cells)
    assert "done" not in states and "failed" not in states, states
    assert not any((c / "metrics.json").exists() for c in cells)
    filler.unlink()
    r = harness("run", suite, "--results", results, "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    by_seed = {rh.read_config(c)["seed"]: c for c in rh.cell_dirs(results / "crash")}
    same_result(by_seed[0], base)   # seed 0 is the base suite's only cell
    assert all(read_status(c)["state"] == "done" for c in by_seed.values())


# ========================================================== 4. held by others: exit 3, named
def test_cells_held_by_another_run_are_not_done_and_the_holder_is_named(tmp_path, base):
    cell = copy_of(base, tmp_path / "r")
    (cell / "metrics.json").unlink()
    write_status(cell, "pending")
    lock = cell / "lock"
    # a live run on another host (fresh heartbeat): its cell is not done, exit 3, holder named
    lock.write_text(json.dumps({"host": "node-7", "pid": 4242, "token": "t", "job": "991_2", "attempt": 0}))
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 3, err
    assert f"{cell.name}: locked by host node-7 pid 4242, SLURM job 991_2, last heartbeat " in err
    assert not (cell / "metrics.json").exists()
    # a garbled lock being written right now: the same, naming the file
    lock.write_bytes(b"\x00garbage")
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 3 and f"locked by an unreadable lock file ({lock}" in err
    # ... but one older than a write takes was left by a crash: broken, the cell runs
    old = time.time() - 120
    os.utime(lock, (old, old))
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 0, err
    same_result(cell, base)


def test_a_lock_whose_pid_was_reused_does_not_block(tmp_path, base):
    """The lock names this host and a live pid (this test's), but that pid started at another
    time than the lock's holder: the holder is gone and the cell runs (item 4)."""
    cell = copy_of(base, tmp_path / "r")
    (cell / "metrics.json").unlink()
    write_status(cell, "running")
    (cell / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": 1,
                                           "token": "t"}))
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 0, err
    same_result(cell, base)


# ============================================== 5. damaged checkpoints and SFT models
@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """crash.yaml SIGKILLed after training step 5: checkpoints step-3 and step-4 are on disk."""
    root = tmp_path_factory.mktemp("killed")
    r = harness("run", CRASH, "--results", root, "--no-report", hooks=("kill:train:5",))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    ckpts = only_cell(root / "crash") / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000003", "step-00000004"]
    return root


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


DAMAGE = {
    "model.safetensors": (_truncate, "truncated"),
    "optimizer.pt": (lambda p: p.write_bytes(b"PK\x03\x04 not a zip any more"), "cannot be loaded"),
    "meta.json": (lambda p: p.write_text('{"step": '), "unreadable"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_the_older_one_resumes(killed, base, tmp_path, name):
    shutil.copytree(killed, tmp_path / "r")
    cell = only_cell(tmp_path / "r" / "crash")
    damaged = cell / "checkpoints" / "step-00000004" / name
    damage, says = DAMAGE[name]
    damage(damaged)
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 0, err
    m = read_json(cell / "metrics.json")
    assert m["train/resumed_from"] == 3
    [line] = m["train/damaged_checkpoints"]
    assert line.startswith(f"{damaged}: {says}"), line
    assert "warning: checkpoint step-00000004 is damaged and skipped" in err
    same_result(cell, base)


def test_no_intact_checkpoint_means_training_from_the_start(killed, base, tmp_path):
    shutil.copytree(killed, tmp_path / "r")
    cell = only_cell(tmp_path / "r" / "crash")
    for step in ("step-00000003", "step-00000004"):
        _truncate(cell / "checkpoints" / step / "model.safetensors")
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 0, err
    m = read_json(cell / "metrics.json")
    assert m["train/resumed_from"] is None and len(m["train/damaged_checkpoints"]) == 2
    same_result(cell, base)


def test_a_damaged_sft_model_is_named_and_trained_again(tmp_path, base):
    """The SFT stage's weights cut short (a full disk, a bad copy): the cell still to run must
    not fail for good; the run names the file, trains the stage again (deterministically the
    same model) and then the cell."""
    cell = copy_of(base, tmp_path / "r")
    (cell / "metrics.json").unlink()
    write_status(cell, "pending")
    weights = stage_dir(tmp_path / "r" / "crash") / "model" / "model.safetensors"
    _truncate(weights)
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 0, err
    assert f"marked done, but {weights}: truncated" in err and "it runs again" in err
    assert "1 SFT stages and 1 cells to run" in out
    same_result(cell, base)


# ======================================================= 6. done, but metrics.json is gone
@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_done_cell_without_usable_metrics_is_noticed_by_report_and_run(tmp_path, base, how):
    cell = copy_of(base, tmp_path / "r")
    if how == "missing":
        (cell / "metrics.json").unlink()
    else:
        _truncate(cell / "metrics.json")
    col = collect(tmp_path / "r" / "crash")       # the report does not count it as a seed
    assert col.done.empty and list(col.cells["state"]) == ["unreadable"]
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 0, err
    assert f"{cell.name}: marked done, but {cell / 'metrics.json'}" in err and "it runs again" in err
    assert "0 SFT stages and 1 cells to run" in out
    same_result(cell, base)


# ======================================= 7. the SFT worker killed under the local launcher
def test_a_killed_sft_worker_is_reported_truly_and_a_plain_rerun_recovers(tmp_path, base):
    results = tmp_path / "r"
    r = harness("run", CRASH, "--results", results, "--no-report", "--launcher", "local",
                hooks=("kill:sft:2",))
    assert r.returncode == 1, r.stdout + r.stderr
    suite = results / "crash"
    stage, cell = stage_dir(suite), only_cell(suite)
    st = read_status(stage)
    assert st["state"] == "failed" and "worker process ended without reporting a result" in st["reason"]
    assert "FINISHED" not in r.stderr
    cst = read_status(cell)
    assert cst["state"] == "pending", cst                       # not failed: it never started
    assert cst["reason"].startswith(f"waiting for SFT stage {stage.name}, which was interrupted")
    assert "error.txt" not in cst["reason"]
    assert f"{cell.name}: waiting for SFT stage {stage.name}" in r.stderr
    r = harness("run", CRASH, "--results", results, "--no-report", "--launcher", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    same_result(cell, base)


# ============================================================ 10. mistakes: exit 2, nothing written
def _tree(p: Path) -> list[str]:
    return sorted(str(q.relative_to(p)) for q in p.rglob("*")) if p.exists() else []


@pytest.fixture
def readonly_dir(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        yield mnt


def test_results_path_that_is_a_file_is_exit_2(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("my notes\n")
    for target, says in ((f, "is a file, not a folder"), (f / "sub", f"is inside {f}, which is a file")):
        rc, out, err = cli("run", CRASH, "--results", target)
        assert rc == 2 and f"error: --results {target}: {says}" in err and "Traceback" not in err
    assert f.read_text() == "my notes\n" and _tree(tmp_path) == ["results.txt"]


def test_results_on_a_read_only_file_system_is_exit_2(readonly_dir):
    rc, out, err = cli("run", CRASH, "--results", readonly_dir / "results")
    assert rc == 2 and "is on a read-only file system" in err and "Traceback" not in err
    assert _tree(readonly_dir) == []


@pytest.mark.parametrize("cmd", ["validate", "run"])
@pytest.mark.parametrize("what", ["suite name", "model name"])
def test_names_too_long_for_the_file_system_are_exit_2(tmp_path, cmd, what):
    if what == "suite name":
        suite = rh.write_suite(tmp_path / "s.yaml", "crash", name="s" * 300)
        says = "name: 'ssss"
    else:
        doc = rh.write_suite(tmp_path / "s.yaml", "crash")
        suite = rh.write_suite(doc, doc, models=[{"name": "m" * 240, "tiny": {
            "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 64}}])
        says = "models: name 'mmmm"
    rc, out, err = cli(cmd, suite, "--results", tmp_path / "results")
    assert rc == 2, (out, err)
    assert f"error: {suite}: {says}" in err and "shorten" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_a_foreign_suite_lock_says_who_holds_it_then_exits_2(tmp_path, monkeypatch):
    import harness.lifecycle as lifecycle

    monkeypatch.setattr(lifecycle, "SUITE_LOCK_WAIT_S", 1.0)
    monkeypatch.setattr(lifecycle, "SUITE_LOCK_QUIET_S", 0.2)
    suite_dir = tmp_path / "results" / "crash"
    suite_dir.mkdir(parents=True)
    (suite_dir / "_suite.lock").write_text(json.dumps({"host": "login-2", "pid": 777, "token": "x"}))
    t0 = time.monotonic()
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "results")
    assert rc == 2 and time.monotonic() - t0 < 30
    assert f"waiting up to 1 s for {suite_dir / '_suite.lock'}, held by host login-2 pid 777" in err
    assert f"error: {suite_dir / '_suite.lock'}: held by host login-2 pid 777" in err and "Traceback" not in err
    assert _tree(tmp_path / "results") == ["crash", "crash/_suite.lock"]


# ============================================================== 11. a holder that lost its lock
def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def test_a_holder_that_lost_its_lock_stops_without_writing(tmp_path, base):
    """The run is frozen (SIGSTOP) after training step 3, longer than the lock's stale
    timeout; another process breaks the lock and takes it. Resumed, the frozen run must notice
    before it writes anything more to that cell, say so, and exit 3."""
    results = tmp_path / "r"
    shutil.copytree(base["root"], results)
    cell = only_cell(results / "crash")
    (cell / "metrics.json").unlink()
    write_status(cell, "pending")
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(CRASH), "--results", str(results),
                             "--no-report"], cwd=ROOT, env=sub_env(("pause:train:3",)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _stopped(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        before = {p.name: p.stat().st_mtime_ns for p in cell.rglob("*") if p.is_file() and p.name != "lock"}
        time.sleep(1.5)
        thief = CellLock(cell, stale_after=1.0, heartbeat_every=0.2)
        assert thief.acquire(timeout=0)                      # broken as stale: no heartbeat for 1.5 s
        assert "no heartbeat" in thief.broke
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out + err
    assert "this process lost its lock" in err and f"now held by host {socket.gethostname()} pid {os.getpid()}" in err
    assert f"{cell.name}: locked by host {socket.gethostname()} pid {os.getpid()}" in err
    after = {p.name: p.stat().st_mtime_ns for p in cell.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before                                   # nothing written after the loss
    assert not (cell / "metrics.json").exists() and thief.held
    thief.release()
    rc, out, err = cli("run", CRASH, "--results", results, "--no-report")
    assert rc == 0, err
    same_result(cell, base)


# ============================================================================ 13. minor items
def test_a_plugin_calling_sys_exit_fails_its_cell_and_the_sweep_goes_on(tmp_path, restore_methods):
    suite = rh.write_suite(tmp_path / "s.yaml", "crash", name="exits", methods=[{"name": "exits"}, {"name": "dpo"}],
                           sft={"enabled": False}, train={"steps": 2, "checkpoint_every": 0}, eval={"enabled": False})
    rc, out, err = cli("run", suite, "--plugin", MISBEHAVING, "--results", tmp_path / "r", "--no-report")
    assert rc == 1, err
    cells = {rh.read_config(c)["method"]["name"]: c for c in rh.cell_dirs(tmp_path / "r" / "exits")}
    st = read_status(cells["exits"])
    assert st["state"] == "failed" and st["reason"].startswith("the job called sys.exit(3)")
    assert read_status(cells["dpo"])["state"] == "done"


def test_nan_rewards_with_a_finite_loss_are_a_numerical_fault(tmp_path, restore_methods):
    suite = rh.write_suite(tmp_path / "s.yaml", "crash", name="nanr", methods=[{"name": "nan-rewards"}],
                           sft={"enabled": False}, train={"steps": 2, "checkpoint_every": 0}, eval={"enabled": False})
    rc, out, err = cli("run", suite, "--plugin", MISBEHAVING, "--results", tmp_path / "r", "--no-report")
    assert rc == 1
    st = read_status(only_cell(tmp_path / "r" / "nanr"))
    assert st["state"] == "failed" and st["step"] == 1
    assert st["reason"].startswith("NumericalFault: non-finite rewards/chosen (the loss was finite) at step 1")


def test_crash_leftovers_in_cache_and_report_are_cleaned(tmp_path, base):
    copy_of(base, tmp_path / "r")
    suite = tmp_path / "r" / "crash"
    dead = rh_dead_pid()
    old = time.time() - 3600
    stale = [suite / "_cache" / f".tok-abc.npz.{dead}.0123abcd.tmp",
             suite / "report" / "figures" / f".bars_accuracy.png.{dead}.89abcdef.tmp"]
    fresh = suite / "_cache" / ".ref-xyz.npz.1.fedcba98.tmp"   # a live writer's (pid 1 is alive)
    for p in stale + [fresh]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    for p in stale:
        os.utime(p, (old, old))
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report")
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and fresh.exists()


def rh_dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_weight_files_get_the_mode_of_every_other_file(tmp_path):
    """safetensors writes 0600 whatever the umask; a group-shared results folder needs the
    weights readable like the rest (0666 less the umask: 0664 under umask 002)."""
    suite = rh.write_suite(tmp_path / "s.yaml", "crash", name="modes", train={"steps": 2, "keep_model": True,
                                                                             "checkpoint_every": 1},
                           eval={"enabled": False})
    old = os.umask(0o002)
    try:
        rc, out, err = cli("run", suite, "--results", tmp_path / "r", "--no-report")
    finally:
        os.umask(old)
    assert rc == 0, err
    suite_dir = tmp_path / "r" / "modes"
    weights = [stage_dir(suite_dir) / "model" / "model.safetensors", only_cell(suite_dir) / "model" / "model.safetensors"]
    for p in weights + [only_cell(suite_dir) / "metrics.json"]:
        assert oct(p.stat().st_mode & 0o777) == oct(0o664), p


def test_max_grad_norm_null_per_method_is_accepted(tmp_path):
    suite = rh.write_suite(tmp_path / "s.yaml", "crash", methods=[{"name": "dpo", "train": {"max_grad_norm": None}}])
    rc, out, err = cli("validate", suite)
    assert rc == 0, err
    from harness import config

    plan = config.expand(config.load_suite(suite))
    assert plan.cells[0].config["train"]["max_grad_norm"] is None


def test_local_launcher_prunes_the_log_files_of_finished_jobs(tmp_path, base):
    cell = copy_of(base, tmp_path / "r")
    (cell / "metrics.json").unlink()
    rc, out, err = cli("run", CRASH, "--results", tmp_path / "r", "--no-report", "--launcher", "local")
    assert rc == 0, err
    assert list((tmp_path / "r" / "crash" / "_launch" / "local").iterdir()) == []
    same_result(cell, base)
