"""The mad_wgan_mnist preset runs end to end on the CPU with the tiny WGAN-GP (its smoke command),
shortened: 500 real digits, 40 generator steps, a 1-epoch LeNet for the metrics."""
import pytest

from madmark.rundir import read_csv
from tests.madmark.conftest import run_dirs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow        # ~25 s; tests/loops/models/test_wgan.py trains the WGAN by default
def test_wgan_preset_smoke_run(cli, tmp_path):
    code, _, err = cli("run", "experiment=mad_wgan_mnist", "model=wgan_gp_tiny",
                       "loop.generations=2", "progress=false", "loop.n_real=500",
                       "model.steps=40", "eval.features.epochs=1",
                       f"eval.features.cache_dir={tmp_path / 'cache'}", "samples_grid=16")
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "outputs" / "mad_wgan_mnist")
    rows = read_csv(run / "results.csv")
    assert [r["generation"] for r in rows] == ["1", "2"]
    assert [r["real_fraction"] for r in rows] == ["1.0", "0.0"]      # fully synthetic
    assert all(r["fit_steps"] == "40.0" and r["bias"] == "1.0" for r in rows)
    assert all(float(r["fid"]) > 0 for r in rows)
    assert (run / "samples" / "g0002.png").is_file()
