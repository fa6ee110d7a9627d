"""A run killed with SIGKILL mid-generation, right after a checkpoint or in the middle of a write,
and resumed equals an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loops.checkpoint import Checkpoints
from madcore.files import is_temporary
from tests.madmark.conftest import REPO, madmark_subprocess, run_dirs

# ~0.3 s per generation: slow enough to be killed inside one, fast enough for CI
ARGS = ["data=digits", "model=pca_gmm", "model.n_components=16", "model.gmm_components=8",
        "model.max_iter=60", "loop.generations=6", "progress=false", "seed=7"]


@pytest.mark.slow        # ~1 min; the kill points below cover resume in the default suite
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


# -- SIGKILL at named points (madcore.faults): after the last checkpoint, mid-write ------------
#: a fast image loop (sklearn's 8x8 digits, no feature extractor): sample grids, ~1 s of compute
KILL_ARGS = ["data=digits", "model=pca_gmm", "model.n_components=8", "model.gmm_components=4",
             "model.max_iter=30", "loop.generations=3", "eval.enabled=false", "progress=false",
             "seed=5"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = madmark_subprocess("run", *KILL_ARGS, f"hydra.run.dir={folder}", timeout=300)
    assert done.returncode == 0, done.stderr
    return folder


def outputs(folder: Path) -> dict:
    """The files a run's results live in (env.json and Hydra's log differ by nature)."""
    names = ["results.csv", "report.md", "status.json",
             *(f"samples/{p.name}" for p in sorted((folder / "samples").glob("*.png")))]
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}


@pytest.mark.parametrize("point", [
    "after-checkpoint@3",             # the last checkpoint is on disk; its results.csv, status
                                      # and report are not
    "before-rename:results.csv@3",    # mid-write of generation 3's results.csv (a .tmp is left)
    "before-rename:report.md@4",      # mid-write of the final report: status.json says complete
])
def test_sigkill_at_a_point_then_resume_equals_uninterrupted(cli, uninterrupted, tmp_path,
                                                             point):
    cut = tmp_path / "run"                  # the report's title is the folder's name
    killed = subprocess.run([sys.executable, "-m", "madmark", "run", *KILL_ARGS,
                             f"hydra.run.dir={cut}"], cwd=tmp_path, capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "MADMARK_KILL_AT": point},
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert Checkpoints(cut / "state").finished() == [1, 2, 3]
    status = json.loads((cut / "status.json").read_text())
    report = (cut / "report.md").read_text()
    if point.startswith("before-rename:report.md"):
        assert status["state"] == "complete" and "status: running" in report
    else:
        assert status["state"] == "running" and status["generations_done"] == 2
    temporaries = [p for p in cut.rglob("*") if is_temporary(p)]
    assert bool(temporaries) == point.startswith("before-rename"), temporaries

    code, out, err = cli("run", f"resume={cut}", "progress=false")
    assert code == 0, err
    assert outputs(cut) == outputs(uninterrupted)             # grids, results, status, report
    assert "generations finished: 3 of 3, status: complete" in (cut / "report.md").read_text()
    assert not [p for p in cut.rglob("*") if is_temporary(p)]


# -- the deep regenerators: SIGKILL after a checkpoint, resume, byte-identical outputs ------------
#: two generations of each on sklearn's 8x8 digits (labelled: latent_diffusion is conditional
#: and samples with guidance at λ = 0.8; the VAE is unconditional and λ is its temperature)
DEEP = {"vae_tiny": ["model.epochs=1", "model.prior_steps=10"],
        "latent_diffusion_tiny": ["model.ae_steps=5", "model.train_steps=10"]}


@pytest.mark.slow                  # ~25-60 s each (3 processes, 5 fits) on 2 shared CPU cores
@pytest.mark.parametrize("model", DEEP)
def test_sigkill_of_a_deep_model_run_then_resume_equals_uninterrupted(cli, tmp_path, model):
    args = ["data=digits", f"model={model}", *DEEP[model], "loop.generations=3",
            "loop.n_real=200", "loop.bias=0.8", "eval.enabled=false", "progress=false",
            "samples_grid=16", "seed=3"]
    full, cut = tmp_path / "full" / "run", tmp_path / "cut" / "run"   # the report names the folder
    code, _, err = cli("run", *args, f"hydra.run.dir={full}")
    assert code == 0, err
    killed = subprocess.run([sys.executable, "-m", "madmark", "run", *args,
                             f"hydra.run.dir={cut}"], cwd=tmp_path, capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(REPO),
                                 "MADMARK_KILL_AT": "after-checkpoint@2"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert Checkpoints(cut / "state").finished() == [1, 2]
    code, _, err = cli("run", f"resume={cut}", "progress=false")
    assert code == 0, err
    assert outputs(cut) == outputs(full)                      # grids, results, status, report
    assert (cut / "state" / "g0003.pt").read_bytes() == (full / "state" / "g0003.pt").read_bytes()
