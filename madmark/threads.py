"""The thread budget of a job: how many CPU threads torch and the BLAS/OpenMP pools may use.

    threads: null     # configs/*.yaml: null = auto (below); an integer wins (threads=1)

On a shared machine OpenMP pools oversubscribe: two jobs of 2 threads on 2 cores made a k-NN
metric call take 0.5-6 s instead of ~1 s. The budget, :func:`decide`:

1. ``threads=<n>`` (n >= 1): n, source ``explicit``;
2. else the CPUs this process may use (``os.sched_getaffinity``, else ``os.cpu_count()``), or
   ``SLURM_CPUS_PER_TASK`` when that is fewer (source ``affinity`` / ``slurm``),
3. divided by the jobs a launcher runs at the same time: ``hydra.launcher.n_jobs`` of the joblib
   launcher in a multirun, joblib's meaning (-1 = one per CPU, -2 = all but one; source
   ``affinity / n_jobs`` / ``slurm / n_jobs``),
4. never more than an ``OMP_NUM_THREADS`` the process inherited (torchrun sets 1 per process; a
   user sets it to share a machine; source ``OMP_NUM_THREADS``), and at least 1.

:func:`thread_budget` applies it for the length of one job, inside the job's own process (each
joblib/loky worker, each Slurm task, each torchrun rank), and restores what was there after (a
sequential multirun, in-process tests): ``torch.set_num_threads``; the interop pool where torch
still allows it (only before its first parallel work); the BLAS/OpenMP pools numpy, scipy and
scikit-learn have loaded (``threadpoolctl``); and ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` for libraries loaded later and child processes (DataLoader workers).
:func:`in_effect` is what env.json records (madmark.rundir.environment).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, Optional

import torch

from madcore.errors import MadmarkError

#: environment variables that size the OpenMP / BLAS pools of libraries and child processes
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@dataclass(frozen=True)
class Budget:
    """One job's thread budget and what it was derived from."""
    threads: int                      # the budget
    source: str                       # explicit | affinity | slurm | ... / n_jobs | OMP_NUM_THREADS
    cpus_available: int               # CPUs this process may use (affinity)
    n_jobs: Optional[int] = None      # concurrent jobs of the launcher (resolved), None = one
    slurm_cpus_per_task: Optional[int] = None
    inherited_omp_num_threads: Optional[int] = None


def cpus_available() -> int:
    """The CPUs this process may run on: its affinity mask, else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):           # macOS, Windows
        return max(1, os.cpu_count() or 1)


def positive_int(value: Any) -> Optional[int]:
    """``value`` as an integer >= 1 (an environment variable's text too), else None."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 1 else None


def concurrent_jobs(n_jobs: int, cpus: int) -> int:
    """joblib's ``n_jobs`` as a number of jobs: n > 0 itself, -1 all CPUs, -2 all but one, ...;
    at least 1."""
    return max(1, n_jobs if n_jobs > 0 else cpus + 1 + n_jobs)


def check_setting(threads: Any) -> Optional[int]:
    """The ``threads`` setting: None (auto) or an integer >= 1; anything else is a user error."""
    if threads is None:
        return None
    number = None if isinstance(threads, bool) else positive_int(threads)
    if number is None or str(threads).strip() != str(number):
        raise MadmarkError(f"threads={threads!r} is not a thread count (an integer >= 1)",
                           "set threads=1 (or another count), or threads=null for the CPUs "
                           "this job may use")
    return number


def decide(threads: Any, cpus: int, n_jobs: Optional[int] = None,
           slurm_cpus: Optional[int] = None, omp: Optional[int] = None) -> Budget:
    """The budget rule of the module docstring, from its inputs: the ``threads`` setting, the
    CPUs available, the launcher's ``n_jobs`` (joblib's meaning; None = no launcher pool),
    ``SLURM_CPUS_PER_TASK`` and an inherited ``OMP_NUM_THREADS`` (None = unset)."""
    cpus = max(1, int(cpus))
    jobs = None if n_jobs is None else concurrent_jobs(int(n_jobs), cpus)
    inputs = dict(cpus_available=cpus, n_jobs=jobs, slurm_cpus_per_task=slurm_cpus,
                  inherited_omp_num_threads=omp)
    explicit = check_setting(threads)
    if explicit is not None:
        return Budget(explicit, "explicit", **inputs)
    count, source = cpus, "affinity"
    if slurm_cpus is not None and slurm_cpus <= cpus:
        count, source = slurm_cpus, "slurm"
    if jobs is not None:
        count, source = max(1, count // jobs), f"{source} / n_jobs"
    if omp is not None and omp < count:
        count, source = omp, "OMP_NUM_THREADS"
    return Budget(max(1, count), source, **inputs)


def launcher_jobs() -> Optional[int]:
    """``hydra.launcher.n_jobs`` when this is a job of a joblib multirun (any launcher config
    whose ``_target_`` is hydra-joblib-launcher's), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.get("launcher") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN or launcher.get("_target_") != JOBLIB_LAUNCHER:
        return None
    n_jobs = launcher.get("n_jobs")
    return -1 if n_jobs is None else int(n_jobs)


def budget_for(threads: Any, environ: Mapping[str, str] = os.environ) -> Budget:
    """This process's budget for the ``threads`` setting (see :func:`decide`)."""
    return decide(threads, cpus_available(), n_jobs=launcher_jobs(),
                  slurm_cpus=positive_int(environ.get("SLURM_CPUS_PER_TASK")),
                  omp=positive_int(environ.get("OMP_NUM_THREADS")))


_CURRENT: list[Budget] = []           # the budgets applied now, innermost last


@contextmanager
def thread_budget(threads: Any) -> Iterator[Budget]:
    """Apply the budget for ``threads`` (:func:`budget_for`) while the block runs, then restore
    torch's thread count, the library pools and the environment variables (torch's interop pool
    cannot be changed back once set)."""
    from threadpoolctl import threadpool_limits

    budget = budget_for(threads)
    n = budget.threads
    torch_before, env_before = torch.get_num_threads(), {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(n) for v in THREAD_VARS})
    limits = threadpool_limits(limits=n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:                  # torch allows it only before its first parallel work
        pass
    _CURRENT.append(budget)
    try:
        yield budget
    finally:
        _CURRENT.pop()
        limits.restore_original_limits()
        torch.set_num_threads(torch_before)
        for var, value in env_before.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def in_effect() -> dict[str, Any]:
    """For env.json: the budget applied now (None when none was), where it came from, and the
    thread counts torch and the loaded BLAS/OpenMP libraries actually use."""
    from threadpoolctl import threadpool_info

    budget = _CURRENT[-1] if _CURRENT else None
    record: dict[str, Any] = {"budget": None, "source": "not applied",
                              "cpus_available": cpus_available()}
    if budget is not None:
        record.update(budget=budget.threads, **{k: v for k, v in asdict(budget).items()
                                                 if k != "threads"})
    record["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")   # madmark/__init__.py
    record["torch_threads"] = torch.get_num_threads()
    record["torch_interop_threads"] = torch.get_num_interop_threads()
    record["libraries"] = {str(i.get("prefix")): i.get("num_threads") for i in threadpool_info()}
    return record
