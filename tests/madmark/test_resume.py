"""A run killed with SIGKILL mid-generation and resumed equals an uninterrupted run."""
import json
import signal
import subprocess
import sys
import time

from tests.madmark.conftest import REPO, madmark_subprocess, run_dirs

# ~0.3 s per generation: slow enough to be killed inside one, fast enough for CI
ARGS = ["data=digits", "model=pca_gmm", "model.n_components=16", "model.gmm_components=8",
        "model.max_iter=60", "loop.generations=6", "progress=false", "seed=7"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    args = [*ARGS, f"eval.features.cache_dir={tmp_path / 'cache'}"]   # LeNet features, cached
    done = madmark_subprocess("run", *args, f"hydra.run.dir={full_dir}", timeout=300)
    assert done.returncode == 0, done.stderr

    import os
    proc = subprocess.Popen([sys.executable, "-m", "madmark", "run", *args,
                             f"hydra.run.dir={cut_dir}"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (cut_dir / "state" / "g0002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (cut_dir / "state").glob("g*.pt"))
    assert 2 <= len(finished) < 6
    assert json.loads((cut_dir / "status.json").read_text())["state"] == "running"

    resumed = madmark_subprocess("run", f"resume={cut_dir}", "progress=false", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (cut_dir / "results.csv").read_text() == (full_dir / "results.csv").read_text()
    assert "precision" in (cut_dir / "results.csv").read_text()
    assert json.loads((cut_dir / "status.json").read_text())["state"] == "complete"
    assert run_dirs(tmp_path) == [cut_dir, full_dir]


def test_resume_of_a_missing_run_is_a_one_line_error(tmp_path):
    out = madmark_subprocess("run", f"resume={tmp_path / 'nothing'}", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("madmark: error:") and "Traceback" not in out.stderr
