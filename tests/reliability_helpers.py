"""Helpers for tests/test_reliability.py.

Run as a script, it is ``python -m harness`` with test-only instrumentation installed by
monkeypatching harness functions before ``harness.cli.main`` runs, so production code needs
no test hooks::

    python tests/reliability_helpers.py [--kill-at POINT] [--record-train FILE]
                                        [--barrier DIR:N] -- run SUITE --results DIR ...
    python tests/reliability_helpers.py --zygote JOBS.json   # several such runs, one import

``--kill-at`` sends SIGKILL to the process itself (no cleanup, no exception handler runs,
exactly like the OOM killer or a node failure) at a deterministic point (Linux: the metrics
write is recognised through /proc/self/fd):

* ``train:N``  right after optimizer step N of a preference cell (not the SFT stage);
* ``eval``     in the middle of a cell's evaluation: at its third generation call, after the
               greedy samples of samples.jsonl were written and before metrics.json exists;
* ``write:metrics``  halfway through writing the bytes of metrics.json's temp file;
* ``interrupt:N``  not a kill: SIGINT (Ctrl-C) right after optimizer step N of a cell.

``--record-train FILE`` appends one JSON line ``{"job", "kind", "pid"}`` to FILE each time a
training run starts (O_APPEND, one write per line, safe across processes): the proof of how
many times each cell was trained, whichever process did it.

``--barrier DIR:N`` makes the process wait, after its imports, until N processes have
reached the barrier (each creates ``DIR/ready.<pid>``), so concurrent runs really overlap.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SUITES = TESTS / "suites"
PLUGINS = TESTS / "plugins"

# metrics.json keys that measure the machine or the run's history rather than the result
TIMING_SUFFIXES = ("_wall_s", "tokens_per_s", "step_s")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- instrumentation
def install_kill(point: str) -> None:
    """Patch harness functions so the process SIGKILLs itself at ``point`` (see above)."""
    if point.startswith(("train:", "interrupt:")):
        at = int(point.split(":", 1)[1])
        sig = signal.SIGKILL if point.startswith("train:") else signal.SIGINT
        import harness.core.train as core

        real = core.train

        def train(model, data, objective, cfg, seed, run_dir, **kw):
            if getattr(objective, "kind", None) == "preference":
                inner = kw.get("on_step")

                def on_step(step, rec):
                    if inner is not None:
                        inner(step, rec)
                    if step == at:
                        os.kill(os.getpid(), sig)

                kw["on_step"] = on_step
            return real(model, data, objective, cfg, seed, run_dir, **kw)

        core.train = train
    elif point == "eval":
        import harness.evaluate.generation as generation

        real_generate = generation.generate
        calls = {"n": 0}

        def generate(*a, **kw):
            calls["n"] += 1
            if calls["n"] == 3:  # 1: policy greedy, 2: SFT greedy (samples written), 3: KL samples
                _die()
            return real_generate(*a, **kw)

        generation.generate = generate
    elif point == "write:metrics":
        import harness.results.atomic as results

        real_write = results._write_all

        def write_all(fd, data):
            target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if target.startswith(".metrics.json."):
                real_write(fd, data[: len(data) // 2])
                os.fsync(fd)
                _die()
            real_write(fd, data)

        results._write_all = write_all
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def install_train_recorder(path: str) -> None:
    import harness.core.train as core

    real = core.train

    def train(model, data, objective, cfg, seed, run_dir, **kw):
        line = json.dumps({"job": Path(run_dir).name, "kind": getattr(objective, "kind", "?"),
                           "pid": os.getpid()}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return real(model, data, objective, cfg, seed, run_dir, **kw)

    core.train = train


def barrier(spec: str, timeout: float = 120.0) -> None:
    folder, n = spec.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"ready.{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).glob("ready.*"))) < int(n):
        if time.monotonic() > deadline:
            raise SystemExit("barrier: the other processes never arrived")
        time.sleep(0.05)


def _child(job: dict, cli) -> int:
    """In a forked child: output to files, instrumentation, then the CLI."""
    for fd, key in ((1, "stdout"), (2, "stderr")):
        f = os.open(job[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    if job.get("kill_at"):
        install_kill(job["kill_at"])
    if job.get("record_train"):
        install_train_recorder(job["record_train"])
    if job.get("barrier"):
        barrier(job["barrier"])
    try:
        return int(cli.main(job["args"]) or 0)
    except SystemExit as e:
        return int(e.code or 0)


def zygote(spec_file: str) -> int:
    """Run several CLI processes from one set of imports.

    ``spec_file`` (JSON): ``{"out": path, "jobs": [{"name", "args", "stdout", "stderr",
    "kill_at"?, "record_train"?, "barrier"?}]}``. The libraries are imported once, before
    anything has run (no thread started, no tensor computed, so forking is safe); each job is
    then a forked child process that runs ``harness.cli.main(args)``, all at once. Each
    child is a process of its own (own pid, own locks, killed on its own), so it stands for
    a separate `python -m harness` while sparing every one of them ~5 s of imports. Writes
    ``{name: {"pid", "returncode"}}`` to ``out`` (returncode -9 for SIGKILL, as subprocess
    reports it)."""
    import torch

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_file).read_text())
    import accelerate  # noqa: F401
    import harness.core.train  # noqa: F401
    import harness.evaluate.policy  # noqa: F401
    import harness.launch.inline  # noqa: F401
    import harness.models  # noqa: F401
    import harness.runner  # noqa: F401
    from harness import cli
    from transformers import LlamaForCausalLM  # noqa: F401

    children: dict[int, str] = {}
    for job in spec["jobs"]:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            rc = 70
            try:
                rc = _child(job, cli)
            except BaseException:  # noqa: BLE001 - reported in the child's stderr file
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        children[pid] = job["name"]
    results = {}
    while children:
        pid, status = os.waitpid(-1, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        results[children.pop(pid)] = {"pid": pid, "returncode": rc}
    Path(spec["out"]).write_text(json.dumps(results))
    return 0


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    sep = argv.index("--")
    opts, cli_args = argv[:sep], argv[sep + 1:]
    it = iter(opts)
    wait_for = None
    for opt in it:
        value = next(it)
        if opt == "--kill-at":
            install_kill(value)
        elif opt == "--record-train":
            install_train_recorder(value)
        elif opt == "--barrier":
            wait_for = value
        else:
            raise SystemExit(f"unknown option {opt}")
    from harness import cli

    if wait_for:
        # the heavy imports first, so the processes meet where the real work starts
        import harness.evaluate.policy  # noqa: F401
        import harness.models  # noqa: F401
        import harness.runner  # noqa: F401
        from transformers import LlamaForCausalLM  # noqa: F401

        barrier(wait_for)
    return cli.main(cli_args)


# ------------------------------------------------------------------ test utilities
def write_suite(dst: Path, src: str | Path | dict, **changes) -> Path:
    """Write a suite to ``dst``: ``src`` (a name under tests/suites/, a path or a dict) with
    top-level sections updated by ``changes`` (``train={"steps": 2}`` merges into train;
    a non-dict value replaces the key)."""
    if isinstance(src, dict):
        doc = json.loads(json.dumps(src))
    else:
        p = Path(src)
        p = p if p.is_file() else SUITES / f"{src}.yaml"
        doc = yaml.safe_load(p.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def read_config(folder: Path) -> dict:
    return yaml.safe_load((Path(folder) / "config.yaml").read_text())


def cell_dirs(suite_dir: Path) -> list[Path]:
    """The cell folders of a results/<suite> folder (not _sft, _cache, report, ...)."""
    return sorted(d for d in Path(suite_dir).iterdir()
                  if d.is_dir() and not d.name.startswith(("_", ".")) and (d / "config.yaml").exists())


def cell_of(suite_dir: Path, model: str, method: str) -> Path:
    """The one cell folder of ``method`` on ``model`` (a suite with one data set and seed)."""
    [d] = [d for d in cell_dirs(suite_dir) if d.name.startswith(f"{method}-{model}-")]
    return d


def cli(*args) -> tuple[int, str, str]:
    """``python -m harness ARGS`` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def comparable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between an interrupted-and-resumed run
    and an uninterrupted one: cost/* (wall time, tokens of this process, peak memory, cache
    hits), timing keys and train/resumed_from. NaN becomes a string so == compares it."""
    out = {}
    for k, v in metrics.items():
        if k.startswith("cost/") or k.endswith(TIMING_SUFFIXES) or "peak_mem" in k \
                or k == "train/resumed_from":
            continue
        if isinstance(v, dict):
            v = comparable(v)
        elif isinstance(v, float) and math.isnan(v):
            v = "nan"
        out[k] = v
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:2] == ["--zygote"]:
        sys.exit(zygote(sys.argv[2]))
    sys.exit(main(sys.argv[1:]))
