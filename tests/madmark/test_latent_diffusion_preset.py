"""model=latent_diffusion through the CLI: a fast smoke run of the tiny model, its one-line refusals
(λ ≠ 1 without labels, an image too small), and (slow, ~12 min each) the paper's signatures with
the real config on small mnist5k pools: a fully synthetic loop with λ < 1 loses recall while
precision holds; a fresh-data loop with a large real fraction stays near generation 1. Both are
measured NOT to hold within the VAE's thresholds yet (strict xfails carrying the numbers): an
unexpected pass fails the run, so fixing the model flags them for removal."""
import pytest

from madmark.rundir import read_csv
from tests.madmark.conftest import run_dirs
from tests.madmark.test_vae_preset import lenet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["model=latent_diffusion_tiny", "model.ae_steps=10", "model.train_steps=20",
        "progress=false", "samples_grid=16"]


#: the smoke run (shared with test_columns.py through the shared_run fixture)
SMOKE = (*TINY, "loop.generations=2", "loop.n_real=600", "loop.bias=0.8",
         "eval.features.name=random_cnn")


def test_latent_diffusion_tiny_smoke_run(shared_run):
    run, _ = shared_run(*SMOKE)
    rows = read_csv(run / "results.csv")
    assert [r["generation"] for r in rows] == ["1", "2"]
    assert [r["real_fraction"] for r in rows] == ["1.0", "0.0"]      # fully synthetic
    for r in rows:
        assert r["fit_ae_steps"] == "10.0" and r["fit_diffusion_steps"] == "20.0"
        assert r["fit_num_classes"] == "10.0" and float(r["fid"]) > 0     # mnist5k's labels
        assert float(r["fit_loss"]) < float(r["fit_loss_initial"])
    assert (run / "samples" / "g0002.png").is_file()


def test_lambda_below_1_without_labels_is_one_line_exit_2(cli, tmp_path):
    code, _, err = cli("run", *TINY, "model.use_labels=false", "loop.bias=0.7",
                       "loop.generations=1", "loop.n_real=300", "eval.enabled=false")
    assert code == 2, err
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err, err
    assert "classifier-free guidance" in line and "loop.bias=1" in line, line


def test_an_image_too_small_for_the_architecture_is_one_line_exit_2(cli, tmp_path):
    code, _, err = cli("run", *TINY, "data=digits", "model.ae_levels=3", "loop.generations=1",
                       "eval.enabled=false")
    assert code == 2 and "\n" not in err.strip() and "set model.ae_levels=2" in err, err


def test_latent_diffusion_refuses_vector_data(cli, tmp_path):
    code, _, err = cli("run", *TINY, "data=gaussian", "loop.generations=1")
    assert code == 2 and "LatentDiffusionModel does not take vector data" in err, err


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured (seed 0, 2-epoch LeNet): recall collapses "
                   "(0.451 -> 0.026 -> 0.001) and precision holds at generation 2 (0.986 -> "
                   "0.989) but dips 0.043 at generation 3 (0.943), past the 0.03 allowed")
def test_fully_synthetic_loop_with_bias_loses_recall_and_keeps_precision(cli, tmp_path):
    code, _, err = cli("run", "model=latent_diffusion", "loop.generations=3", "loop.bias=0.6",
                       "loop.n_real=1500", "progress=false", "samples_grid=0", *lenet(tmp_path))
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "outputs" / "default")
    rows = read_csv(run / "results.csv")
    precision = [float(r["precision"]) for r in rows]
    recall = [float(r["recall"]) for r in rows]
    assert recall[2] < 0.75 * recall[0] and recall[1] < recall[0], rows
    assert min(precision[1:]) > precision[0] - 0.03, rows


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured (seed 0, 2-epoch LeNet): precision holds "
                   "(0.972 -> 0.960, 0.962) but generation 2 steps down once and does not decay "
                   "further: FID 16.9 -> 25.7, 25.5; recall 0.668 -> 0.507, 0.578; coverage "
                   "0.736 -> 0.642, 0.678. Not within a few points yet")
def test_fresh_data_loop_with_mostly_real_pools_stays_near_generation_1(cli, tmp_path):
    code, _, err = cli("run", "model=latent_diffusion", "loop=fresh_data", "loop.generations=3",
                       "loop.n_real=1500", "loop.n_synthetic=500", "progress=false",
                       "samples_grid=0", *lenet(tmp_path))
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "outputs" / "default")
    rows = read_csv(run / "results.csv")
    assert [float(r["real_fraction"]) for r in rows] == [1.0, 0.75, 0.75]
    first = rows[0]
    for r in rows[1:]:
        assert abs(float(r["precision"]) - float(first["precision"])) < 0.03, rows
        assert float(r["fid"]) < float(first["fid"]) + 5.0, rows
        for key in ("recall", "coverage"):
            assert float(r[key]) > float(first[key]) - 0.05, (key, rows)


@pytest.mark.parametrize("model, family, real_fraction", [
    ("vae_tiny", "synthetic_augmentation", 0.5),
    ("latent_diffusion_tiny", "fresh_data", 0.5),
    pytest.param("vae_tiny", "fresh_data", 0.5, marks=pytest.mark.slow),
    pytest.param("latent_diffusion_tiny", "synthetic_augmentation", 0.5, marks=pytest.mark.slow)])
def test_the_deep_regenerators_run_in_every_loop_family(cli, tmp_path, model, family,
                                                        real_fraction):
    """Fully synthetic is the smoke runs above; the two families with real data in later pools
    (their pool at generation 2: half real, half the model's samples)."""
    tiny = TINY if model == "latent_diffusion_tiny" else ["model=vae_tiny", "model.epochs=1",
                                                           "progress=false"]
    code, _, err = cli("run", *tiny,
                       f"loop={family}", "loop.generations=2", "loop.n_real=300",
                       "loop.n_synthetic=300", "eval.features.name=random_cnn", "eval.kid=false")
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "outputs" / "default")
    rows = read_csv(run / "results.csv")
    assert [float(r["real_fraction"]) for r in rows] == [1.0, real_fraction]
    assert all(0 <= float(r["precision"]) <= 1 for r in rows)
