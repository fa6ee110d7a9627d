"""experiment=mad_ddpm_mnist_gpu: the conditional MNIST DDPM loop sized for a short GPU slot.
Without a GPU its plumbing runs on the CPU with tiny model overrides: the preset composes to the
paper's conditional DDPM (4 generations, 1,600 steps of 128), both arms of its sweep run, and the
marked arm marks."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from madmark.rundir import read_csv
from tests.madmark.conftest import run_dirs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY_DDPM = ["device=cpu", "model.timesteps=20", "model.beta_schedule=cosine", "model.base_channels=8", "model.channel_mult=[1]",
             "model.num_res_blocks=1", "model.attn_resolution=0", "model.groups=4",
             "model.train_steps=2", "model.batch_size=16", "model.warmup_steps=1",
             "model.sample_steps=2", "loop.n_real=64", "loop.generations=1", "progress=false",
             "samples_grid=0", "eval.features.name=random_cnn", "eval.fid=false",
             "eval.kid_subset_size=32"]


def test_the_preset_is_the_sized_conditional_ddpm():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mad_ddpm_mnist_gpu"])
    assert cfg.device == "cuda" and cfg.loop.generations == 4
    assert cfg.loop.family == "fully_synthetic" and cfg.model.use_labels
    assert (cfg.model.train_steps, cfg.model.batch_size, cfg.model.sample_steps) == (1600, 128, 50)
    assert cfg.model._target_ == "loops.models.DDPMModel" and cfg.model.timesteps == 500


def test_both_arms_run_on_the_cpu_with_a_tiny_unet(cli, tmp_path):
    code, _, err = cli("run", "-m", "experiment=mad_ddpm_mnist_gpu", *TINY_DDPM,
                       f"out_dir={tmp_path / 'outputs'}")
    assert code == 0, err
    runs = run_dirs(tmp_path / "outputs" / "mad_ddpm_mnist_gpu")
    assert len(runs) == 2
    marked = {}
    for run in runs:
        rows = read_csv(run / "results.csv")
        assert [r["generation"] for r in rows] == ["1"]
        assert all(r["fit_num_classes"] == "10.0" for r in rows)         # conditional
        marked[run.name] = rows[-1].get("wm_marks", "")
    assert sorted(marked.values()) == ["", "True"]                      # watermark=none, marked
