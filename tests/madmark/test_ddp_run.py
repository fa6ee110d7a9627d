"""``madmark run`` under torchrun: 2 CPU processes (gloo) give the single-process run's results.csv,
make one run directory, and only rank 0 writes — checked by an audit hook (write_audit/) that
records every file each rank opens for writing, creates, renames or removes under the test's folder.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m madmark run ...
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from madmark.rundir import read_csv, rows_to_csv
from tests.madmark.conftest import run_dirs, torchrun_madmark

#: two generations of the analytic Gaussian loop with the feature metrics (raw features)
TINY = ["data=gaussian", "model=gaussian", "loop.generations=2", "data.dim=2", "data.n_train=200",
        "data.n_reference=200", "eval.enabled=true", "progress=false"]
#: two generations of the tiny DDPM on 128 MNIST digits, LeNet features (1 epoch, cached)
DDPM = ["data=mnist5k", "model=ddpm_tiny", "loop.generations=2", "loop.n_real=128",
        "loop.n_synthetic=128", "model.train_steps=6", "model.batch_size=16",
        "model.warmup_steps=2", "model.sample_steps=2", "eval.n_real=128",
        "eval.features.name=lenet", "eval.features.epochs=1", "eval.kid_subset_size=64",
        "samples_grid=16", "progress=false"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchrun(root: Path, *args: str, timeout: int) -> tuple[subprocess.CompletedProcess, list]:
    """``madmark run *args`` on 2 gloo processes (see conftest.torchrun_madmark)."""
    return torchrun_madmark(root, "run", *args, timeout=timeout)


def check_only_rank_0_wrote(root: Path, run: Path, done: subprocess.CompletedProcess,
                            writes: list) -> None:
    assert writes[1] == [], f"rank 1 wrote {writes[1][:5]}"
    assert str(run / "results.csv") in {str(Path(p).resolve()) for _, p in writes[0]}  # seen
    assert list((root / "cwd").iterdir()) == []          # no Hydra output folder, log or .hydra/
    assert done.stdout.count("run directory:") == 1      # one table, printed by rank 0
    assert json.loads((run / "env.json").read_text())["world_size"] == 2


def single_and_ddp(tmp_path: Path, cli, overrides: list[str]) -> tuple[list, list, Path]:
    """``madmark run *overrides`` in one process and under torchrun, each training its own LeNet
    cache (rank 0 trains it, rank 1 loads it); checks that torchrun made one run directory that
    only rank 0 wrote and that both wrote the same columns for 2 generations. Returns the two
    results.csv row lists and the torchrun run directory."""
    code, _, err = cli("run", *overrides, f"eval.features.cache_dir={tmp_path / 'cache1'}",
                       f"hydra.run.dir={tmp_path / 'single'}")
    assert code == 0, err
    root = tmp_path / "ddp"
    done, writes = torchrun(root, *overrides, f"eval.features.cache_dir={root / 'lenet_cache'}",
                            f"hydra.run.dir={root / 'run'}", timeout=600)
    run = root / "run"
    assert run_dirs(root) == [run]
    check_only_rank_0_wrote(root, run, done, writes)
    one, two = read_csv(tmp_path / "single" / "results.csv"), read_csv(run / "results.csv")
    assert [r.keys() for r in one] == [r.keys() for r in two] and len(two) == 2
    return one, two, run


@pytest.mark.slow        # ~30 s of torchrun start-up; tests/loops/test_distributed.py covers DDP
def test_torchrun_run_equals_the_single_process_run(tmp_path, cli):
    code, _, err = cli("run", *TINY, f"hydra.run.dir={tmp_path / 'single'}")
    assert code == 0, err
    root = tmp_path / "ddp"
    # the default hydra.run.dir, ${out_dir}/${name}/${now:...}: each rank resolves its own ${now}
    done, writes = torchrun(root, *TINY, f"out_dir={root / 'outputs'}", timeout=300)
    runs = run_dirs(root)
    assert len(runs) == 1 and runs[0].parent == root / "outputs" / "default"
    single = (tmp_path / "single" / "results.csv").read_text()
    assert (runs[0] / "results.csv").read_text() == single
    assert json.loads((runs[0] / "status.json").read_text())["state"] == "complete"
    check_only_rank_0_wrote(root, runs[0], done, writes)


@pytest.mark.slow
def test_torchrun_resumes_a_killed_run(tmp_path, cli):
    """A run stopped after generation 1 (generation 2's checkpoint and row gone) continues under
    torchrun: both ranks read generation 1 before rank 0 writes generation 2."""
    code, _, err = cli("run", *TINY, f"hydra.run.dir={tmp_path / 'single'}")
    assert code == 0, err
    root = tmp_path / "ddp"
    run = root / "run"
    shutil.copytree(tmp_path / "single", run)
    (run / "state" / "g0002.pt").unlink()
    full = read_csv(run / "results.csv")
    (run / "results.csv").write_text(rows_to_csv(full[:1]))
    (run / "status.json").write_text(json.dumps({"state": "failed", "generations_done": 1}))
    done, writes = torchrun(root, f"resume={run}", timeout=300)
    assert run_dirs(root) == [run]
    assert (run / "results.csv").read_text() == (tmp_path / "single" / "results.csv").read_text()
    assert (run / "state" / "g0002.pt").is_file()
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert writes[1] == [], f"rank 1 wrote {writes[1][:5]}"
    assert done.stdout.count("run directory:") == 1


@pytest.mark.slow
def test_torchrun_ddpm_run_trains_with_ddp_and_matches_one_process(tmp_path, cli):
    """The tiny DDPM trains under DDP (global batch of 16 split 8 / 8) and samples split across
    ranks; the LeNet feature network is trained and cached by rank 0 alone (rank 1 loads it)."""
    one, two, run = single_and_ddp(tmp_path, cli, DDPM)
    assert (run / "samples" / "g0002.png").is_file() and (run / "state" / "g0002.pt").is_file()
    for a, b in zip(one, two):
        # the same global batches and sample noise; Adam turns float rounding of the 2-rank
        # gradient sum into tiny weight differences (measured: ~1e-7 relative in these columns)
        for key in ("fit_loss", "fit_loss_initial", "spread_ratio", "fid", "kid", "kid_std"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4), key
        for key in ("precision", "recall", "density", "coverage"):
            assert abs(float(b[key]) - float(a[key])) <= 1 / 128, key
        same = set(a) - {"fit_loss", "fit_loss_initial", "spread_ratio", "fid", "kid", "kid_std",
                         "precision", "recall", "density", "coverage", "fit_images_per_s"}
        assert {k: b[k] for k in same} == {k: a[k] for k in same}


#: two generations of the tiny VAE on 128 MNIST digits (global batch 16 split 8 / 8)
VAE = ["data=mnist5k", "model=vae_tiny", "loop.generations=2", "loop.n_real=128",
       "loop.n_synthetic=128", "model.epochs=1", "model.batch_size=16", "model.prior_steps=5",
       "eval.n_real=128", "eval.features.name=lenet", "eval.features.epochs=1",
       "eval.kid_subset_size=64", "samples_grid=0", "progress=false"]


@pytest.mark.slow
def test_torchrun_vae_run_trains_with_ddp_and_matches_one_process(tmp_path, cli):
    """The VAE trains under DDP (each rank takes its half of every global batch, the same draws as
    one process); the latent flow is fitted identically on both ranks."""
    one, two, _ = single_and_ddp(tmp_path, cli, VAE)
    # generation 1: the same batches and draws, float rounding of the 2-rank gradient sum only
    # (measured: ~1e-7 relative in the VAE's losses, 1e-4 in the flow's NLL and the FID);
    # generation 2 trains on generation 1's slightly different samples (measured: 2e-3 in the KL)
    for a, b, rel in zip(one, two, (1e-3, 1e-2)):
        assert b["fit_steps"] == a["fit_steps"] == "8.0"
        for key in ("fit_neg_elbo", "fit_neg_elbo_initial", "fit_reconstruction", "fit_kl",
                    "fit_prior_nll", "fid"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=rel), key


#: two generations of the tiny latent diffusion on 128 MNIST digits (global batches of 16 split
#: 8 / 8 in both stages; conditional: mnist5k has labels, guided at λ = 0.8)
LATENT_DIFFUSION = ["data=mnist5k", "model=latent_diffusion_tiny", "loop.generations=2",
                    "loop.n_real=128", "loop.n_synthetic=128", "loop.bias=0.8",
                    "model.ae_steps=8", "model.ae_batch_size=16", "model.train_steps=6",
                    "model.batch_size=16", "model.warmup_steps=2", "model.sample_steps=2",
                    "eval.n_real=128", "eval.features.name=lenet", "eval.features.epochs=1",
                    "eval.kid_subset_size=64", "samples_grid=0", "progress=false"]


@pytest.mark.slow
def test_torchrun_latent_diffusion_run_trains_with_ddp_and_matches_one_process(tmp_path, cli):
    """Both stages train under DDP (each rank takes its half of every global batch, the same
    draws as one process) and the latent DDPM samples split across ranks."""
    one, two, _ = single_and_ddp(tmp_path, cli, LATENT_DIFFUSION)
    # generation 1: float rounding of the 2-rank gradient sums only; generation 2 trains on
    # generation 1's slightly different samples
    for a, b, rel in zip(one, two, (1e-3, 1e-2)):
        assert b["fit_ae_steps"] == a["fit_ae_steps"] == "8.0"
        assert b["fit_num_classes"] == a["fit_num_classes"] == "10.0"
        for key in ("fit_ae_reconstruction", "fit_ae_kl", "fit_latent_scale", "fit_loss",
                    "fit_loss_initial", "fid"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=rel), key
