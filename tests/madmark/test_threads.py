"""The thread budget (madmark/threads.py): the rule, with its inputs monkeypatched, and its
application around one job. The 2-job joblib sweep that checks each job's budget is in
test_launchers.py (test_joblib_multirun_equals_the_basic_launcher)."""
import os

import pytest
import torch

from madcore.errors import MadmarkError
from madmark import threads
from madmark.threads import concurrent_jobs, decide


@pytest.mark.parametrize("cpus, n_jobs, expected", [
    (8, 2, 4), (8, 3, 2), (2, 2, 1), (2, 4, 1), (1, 1, 1),
    (8, -1, 1), (8, -2, 1), (16, -15, 8), (16, -13, 4), (2, -1, 1), (2, -2, 2)])
def test_auto_budget_is_the_cpus_divided_by_the_concurrent_jobs(cpus, n_jobs, expected):
    budget = decide(None, cpus=cpus, n_jobs=n_jobs)
    assert budget.threads == expected
    assert budget.source == "affinity / n_jobs" and budget.cpus_available == cpus


def test_joblib_n_jobs_counts_as_joblib_counts_it():
    """joblib's own reading of n_jobs: -1 = every CPU, -2 = all but one, never fewer than 1."""
    assert [concurrent_jobs(n, 8) for n in (1, 3, -1, -2, -8, -20)] == [1, 3, 8, 7, 1, 1]


def test_without_a_launcher_the_budget_is_the_affinity():
    assert decide(None, cpus=6) == threads.Budget(6, "affinity", cpus_available=6)


def test_slurm_cpus_per_task_caps_the_affinity_and_is_then_divided():
    assert (decide(None, cpus=64, slurm_cpus=8).threads,
            decide(None, cpus=64, slurm_cpus=8).source) == (8, "slurm")
    assert (decide(None, cpus=64, n_jobs=2, slurm_cpus=8).threads,
            decide(None, cpus=64, n_jobs=2, slurm_cpus=8).source) == (4, "slurm / n_jobs")
    assert decide(None, cpus=4, slurm_cpus=8).source == "affinity"   # the mask is narrower


def test_an_inherited_omp_num_threads_only_lowers_the_budget():
    assert (decide(None, cpus=8, omp=1).threads, decide(None, cpus=8, omp=1).source) == (
        1, "OMP_NUM_THREADS")
    assert decide(None, cpus=8, n_jobs=2, omp=4).source == "affinity / n_jobs"    # loky's own
    assert decide(None, cpus=2, omp=16).threads == 2


@pytest.mark.parametrize("value", [1, 3, 64, "2"])
def test_an_explicit_value_wins(value):
    budget = decide(value, cpus=2, n_jobs=2, slurm_cpus=1, omp=1)
    assert (budget.threads, budget.source) == (int(value), "explicit")


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True, [2]])
def test_a_bad_explicit_value_is_a_user_error(value):
    with pytest.raises(MadmarkError, match="is not a thread count"):
        decide(value, cpus=2)


def test_never_below_one():
    assert decide(None, cpus=1, n_jobs=16).threads == 1
    assert decide(None, cpus=0).threads == 1


def test_budget_for_reads_affinity_slurm_and_omp_from_the_process(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    budget = threads.budget_for(None, environ={"SLURM_CPUS_PER_TASK": "4", "OMP_NUM_THREADS": ""})
    assert (budget.threads, budget.source, budget.cpus_available) == (4, "slurm", 6)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.budget_for(None, environ={}).threads == 3


def test_thread_budget_applies_and_restores(monkeypatch):
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(threads, "cpus_available", lambda: 1)
    interop = []                     # torch allows one change per process: keep this one's
    monkeypatch.setattr(torch, "set_num_interop_threads", interop.append)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with threads.thread_budget(None) as budget:
        assert budget.threads == 1 and torch.get_num_threads() == 1 and interop == [1]
        assert all(os.environ[v] == "1" for v in threads.THREAD_VARS)
        assert all(i["num_threads"] == 1 for i in threadpool_info())
        record = threads.in_effect()
        assert (record["budget"], record["source"], record["torch_threads"]) == (1, "affinity", 1)
    assert torch.get_num_threads() == before
    assert os.environ["MKL_NUM_THREADS"] == "7" and "OMP_NUM_THREADS" not in os.environ
    assert threads.in_effect()["budget"] is None


def test_a_joblib_multirun_job_reads_n_jobs_from_the_hydra_config(monkeypatch):
    """hydra/launcher=joblib without n_jobs: the plugin's default -1 (one job per CPU), so one
    thread per job; the same launcher outside a multirun runs no pool."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    from omegaconf import OmegaConf

    monkeypatch.setattr(threads, "cpus_available", lambda: 4)

    def job_of(mode: RunMode) -> None:
        launcher = OmegaConf.structured(JobLibLauncherConf)
        hydra = OmegaConf.merge(OmegaConf.structured(HydraConf),
                                {"mode": mode, "launcher": launcher})
        HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))

    try:
        job_of(RunMode.RUN)
        assert threads.launcher_jobs() is None
        job_of(RunMode.MULTIRUN)
        assert threads.launcher_jobs() == -1
        budget = threads.budget_for(None, environ={})
        assert (budget.threads, budget.source, budget.n_jobs) == (1, "affinity / n_jobs", 4)
    finally:
        HydraConfig.instance().cfg = None


def test_the_madmark_package_makes_openmp_threads_wait_passively_unless_told_otherwise():
    import subprocess
    import sys

    code = ("import madmark, os, torch; from madmark import threads; "
            "print(os.environ['OMP_WAIT_POLICY'], threads.in_effect()['omp_wait_policy'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["PASSIVE", "PASSIVE"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, check=True).stdout.split()
    assert out == ["ACTIVE", "ACTIVE"]                 # a user's choice wins
