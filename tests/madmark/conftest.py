import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from madmark.cli import main

REPO = Path(__file__).resolve().parents[2]
#: sitecustomize.py that records every file a process writes under MADMARK_AUDIT_ROOT
AUDIT = Path(__file__).resolve().parent / "write_audit"
#: a fast vector loop: analytic Gaussian data and model, no progress bars
FAST = ["data=gaussian", "model=gaussian", "data.dim=3", "data.n_train=200", "data.n_reference=200",
        "loop.generations=3", "progress=false"]


def madmark_subprocess(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run the real CLI in a fresh Python process (as a user would)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "madmark", *args], capture_output=True, text=True,
                          env=env, **kwargs)


@pytest.fixture
def cli(tmp_path, capsys):
    """Run ``madmark`` in-process with outputs under tmp_path; returns (code, stdout, stderr)."""

    def call(*args):
        code = main([*args, f"out_dir={tmp_path / 'outputs'}"] if args and args[0] == "run"
                    else list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def run_dirs(root: Path) -> list[Path]:
    """Run directories under root (folders holding madmark's config.yaml, not Hydra's own)."""
    return sorted(p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra")


def torchrun_madmark(root: Path, command: str, *args: str,
                     timeout: int = 600) -> tuple[subprocess.CompletedProcess, list]:
    """``madmark <command> *args`` on 2 gloo processes (torchrun) with working directory
    ``root/cwd``; asserts success and returns the process and, per rank, the [event, path]
    writes it made under ``root`` (recorded by the audit hook in write_audit/)."""
    cwd, log = root / "cwd", root.parent / f"{root.name}_audit"
    cwd.mkdir(parents=True)
    log.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{AUDIT}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1",
           "MADMARK_DIST_BACKEND": "gloo", "PYTHONDONTWRITEBYTECODE": "1",
           "MADMARK_AUDIT_ROOT": str(root), "MADMARK_AUDIT_LOG": str(log)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "madmark", command, *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, [json.loads((log / f"rank{r}.json").read_text()) for r in range(2)]


def preempt_after_generation(monkeypatch, t: int) -> None:
    """Raise SystemExit(-1) (what submitit raises on preemption) once generation t's report is
    written: generation t is checkpointed, and nothing after it (logging, later generations) ran."""
    import madmark.commands.run as run_command

    write_report = run_command.write_report

    def report_then_exit(path):
        write_report(path)
        if json.loads((Path(path) / "status.json").read_text())["generations_done"] == t:
            raise SystemExit(-1)

    monkeypatch.setattr(run_command, "write_report", report_then_exit)


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """``shared_run(*overrides)``: ``madmark run *overrides`` in-process, once per session for each
    distinct list of overrides (several tests assert on one run instead of each running its own);
    returns (the run directory, what the run printed). The directory is shared: a test that
    changes it, or runs a command that writes into it (report, radioactivity, resume), copies it
    first with :func:`copy_run`. Each run computes with one torch thread, whichever test asks
    first (as under tests/conftest.py's one_torch_thread): a test comparing a shared run's files
    with a run of its own byte for byte uses one_torch_thread too (the last digits of e.g. fid
    can depend on the thread count)."""
    runs: dict[tuple[str, ...], tuple[Path, str]] = {}

    def get(*overrides: str) -> tuple[Path, str]:
        if overrides not in runs:
            root = tmp_path_factory.mktemp("shared_run")
            out, err = io.StringIO(), io.StringIO()
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
                        contextlib.redirect_stderr(err):
                    patch.setenv("OMP_NUM_THREADS", "1")
                    code = main(["run", *overrides, f"out_dir={root / 'outputs'}"])
            finally:
                torch.set_num_threads(threads)
            assert code == 0, err.getvalue()
            (run,) = run_dirs(root / "outputs")
            runs[overrides] = run, out.getvalue()
        return runs[overrides]

    return get


def copy_run(run: Path, where: Path) -> Path:
    """A private copy of a (shared) run directory under ``where``, with the run's folder name
    (its report's title)."""
    return Path(shutil.copytree(run, where / run.name))
