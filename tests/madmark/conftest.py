import os
import subprocess
import sys
from pathlib import Path

import pytest

from madmark.cli import main

REPO = Path(__file__).resolve().parents[2]
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
