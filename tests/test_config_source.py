"""Reading YAML safely: a document that is small on disk but huge in memory is refused.

A "billion laughs" suite (issue 18, item 9): nine levels of ten aliases each are well under
1.5 KB of text and expand to 10^9 strings (the reader used to build them all, and ``validate``
died after 3.6 GB). Expected: ``validate`` exits 2 at once with the file and the
line of the key whose value grew too large, in bounded memory.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from harness.config import load_suite
from harness.config.source import MAX_VALUES
from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TAIL = ("models: [{name: m, tiny: {}}]\ndatasets: [{name: d, task: addition}]\nmethods: [{name: dpo}]\n")


def billion_laughs() -> tuple[str, int]:
    """The classic document as a suite: (text, line of the key whose value passes
    MAX_VALUES). Level a is a list of 10 strings; each next level a list of 10 aliases of the
    one before, so level i stands for 10^9 strings. Values made, counting each list as one:
    the root mapping 1 and 'name' 1, then a 11, b 111, c 1,111, d 11,111 (12,346 in all),
    and e 111,111: the 100,000th value is made inside e, on line 6."""
    lines = ["name: laughs", "x-a: &a [" + ", ".join(['"lol"'] * 10) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"x-{cur}: &{cur} [{', '.join([f'*{prev}'] * 10)}]")
    return "\n".join(lines) + "\n" + TAIL, 6


def test_the_bomb_is_small_on_disk():
    text, line = billion_laughs()
    assert len(text.encode()) < 1500  # the was 1.4 KB
    assert text.splitlines()[line - 1].startswith("x-e: ")


def test_billion_laughs_is_refused_fast_in_bounded_memory(tmp_path):
    text, line = billion_laughs()
    f = tmp_path / "laughs.yaml"
    f.write_text(text)
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(UserError) as e:
            load_suite(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 20  # ~1 s here; generous for a loaded shared machine
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # ~30 MiB here
    assert e.value.problems == [
        f"{f}:{line}: YAML error: its aliases (*name) expand to more than {MAX_VALUES:,} values (nested "
        f"aliases, a 'billion laughs' document?); a suite is a small tree: write the values out or nest "
        f"fewer aliases"]


def test_merge_keys_read_as_pyyaml_reads_them(tmp_path):
    """Merge keys are PyYAML's own (``flatten_mapping``): values and key order (which labels
    and so cell ids depend on) equal ``yaml.safe_load``'s, quirks included (in 6.0.4 the later
    mapping of ``<<: [*b, *a]`` wins). A mapping reached through several aliases is merged
    once and its keys are not reported as duplicates."""
    text = ("name: m\n"
            "x-a: &a {beta: 0.1, label_smoothing: 0.0}\n"
            "x-b: &b {<<: *a, beta: 0.5}\n"
            "models: [{name: m, tiny: {}}]\n"
            "datasets: [{name: d, task: addition}]\n"
            "methods:\n"
            "  - {name: dpo, label: one, hparams: {<<: [*b, *a], label_smoothing: 0.2}}\n"
            "  - {name: dpo, label: two, hparams: *b}\n"
            "  - {name: dpo, label: three, hparams: *b, train: {steps: 3}}\n")
    f = tmp_path / "m.yaml"
    f.write_text(text)
    s = load_suite(f).suite
    want = yaml.safe_load(text)["methods"]
    for got, ref in zip(s.methods, want):
        assert got.hparams == ref["hparams"] and list(got.hparams) == list(ref["hparams"])


def test_deep_nesting_is_a_problem_not_a_crash(tmp_path):
    f = tmp_path / "deep.yaml"
    f.write_text("name: deep\ndescription: " + "[" * 3000 + "]" * 3000 + "\n" + TAIL)
    with pytest.raises(UserError) as e:
        load_suite(f)
    assert "nested more than" in e.value.problems[0] and e.value.problems[0].startswith(f"{f}")


def test_validate_exits_2_naming_file_and_line_under_a_memory_cap(tmp_path):
    """The real command, in a process capped at 1 GiB of address space: before the fix it
    needed more than 3.6 GB and was killed."""
    text, line = billion_laughs()
    f = tmp_path / "laughs.yaml"
    f.write_text(text)
    cap = 1 << 30

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "harness", "validate", str(f)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"error: {f}:{line}: YAML error: its aliases (*name) expand to more than")
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr
    assert time.monotonic() - t0 < 60
