"""Threads that fit the machine by default (issue 15): the local launcher divides the granted
CPUs among its workers, inline uses them all, SLURM cells use their allocation, and a user's
explicit HARNESS_THREADS / OMP_NUM_THREADS wins. Expected counts come from the inputs (the CPUs
the test pretends to have), never from the code under test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import launch_helpers as h
from harness import threads
from harness.launch import Job, launch
from harness.schema import LauncherSpec

TESTS_DIR = Path(__file__).resolve().parent
ENV_VARS = ("HARNESS_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.WORKER_VAR, "SLURM_CPUS_PER_TASK",
            "SLURM_CPUS_ON_NODE", "LOCAL_WORLD_SIZE")


@pytest.fixture
def bare(monkeypatch):
    """Nothing set in the environment, as a newcomer runs it; 8 CPUs in the affinity mask."""
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(threads, "_cgroup_quota", lambda *a: None)
    return monkeypatch


def test_default_divides_the_cpus_among_local_workers_and_inline_takes_them_all(bare):
    assert threads.granted_cpus() == 8
    assert [threads.per_worker(w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert threads.for_this_process() == 8                       # inline: one process, every CPU
    env = threads.worker_env(2, env={})
    assert env[threads.WORKER_VAR] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"


def test_an_explicit_setting_wins(bare):
    bare.setenv("OMP_NUM_THREADS", "3")
    assert threads.per_worker(2) == 3 and threads.for_this_process() == 3
    env = threads.worker_env(2)
    assert env["OMP_NUM_THREADS"] == "3" and env[threads.WORKER_VAR] == "3"
    bare.setenv("HARNESS_THREADS", "5")                           # the harness's own variable first
    assert threads.for_this_process() == 5 and threads.worker_env(4)["OMP_NUM_THREADS"] == "3"
    bare.setenv("HARNESS_THREADS", "zero")                        # not a count: ignored
    assert threads.for_this_process() == 3


def test_slurm_cells_use_their_allocation_shared_by_the_node_processes(bare):
    bare.setenv("SLURM_CPUS_ON_NODE", "32")
    assert threads.for_this_process() == 32
    bare.setenv("SLURM_CPUS_PER_TASK", "6")                       # the task's grant comes first
    assert threads.for_this_process() == 6
    bare.setenv("LOCAL_WORLD_SIZE", "2")                          # accelerate: 2 ranks on the node
    assert threads.for_this_process() == 3


@pytest.mark.parametrize("files, want", [
    ({"cpu.max": "150000 100000\n"}, 2), ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None), ({}, None)])
def test_a_cgroup_cpu_quota_caps_the_grant(tmp_path, files, want):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads._cgroup_quota(tmp_path) == want


def test_apply_sets_torch_threads(bare):
    before = torch.get_num_threads()
    try:
        bare.setenv("HARNESS_THREADS", "2")
        assert threads.apply() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_each_local_worker_gets_its_share(tmp_path, monkeypatch):
    """Through the launcher for real, nothing set: each worker's torch runs the granted CPUs
    divided by the workers (this machine's CPUs, read here by the test itself)."""
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    cpus = len(os.sched_getaffinity(0))
    quota = threads._cgroup_quota()
    cpus = min(cpus, quota) if quota else cpus
    for workers in (1, 2):
        [o] = launch([Job("t", h.thread_count)], LauncherSpec(type="local", workers=workers), tmp_path / f"w{workers}")
        assert o.ok, o.error
        assert o.result == max(1, cpus // workers)
