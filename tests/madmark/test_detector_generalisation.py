"""madmark.detector_generalisation: a detector trained against one model's samples, tested on
another's, next to the watermark detector (issue 16). benchmarks/detector_generalisation.py
prints the full-size numbers."""
import pytest
import torch
from scipy.stats import betabinom, binom

from eval.detectors import CNNDetector, CNNDetectorConfig, conformal_rank
from madmark.detector_generalisation import generalisation
from tests.eval.test_detectors import noisy_images, real_images


def toy_mark(x):
    x = x.clone()
    x[:, 0, 0, 0] = 1.0
    return x


def toy_flag(x):
    return x[:, 0, 0, 0] >= 0.999


def test_rows_hold_each_detectors_fpr_and_tpr_per_model_and_the_watermarks():
    """Trained against noisy blobs: caught (in distribution); the same blobs merely shifted in
    brightness are another 'model'; the toy watermark catches both once marked."""
    brighter = (real_images(400, 20) * 0.6 + 0.4)
    rows = generalisation(real_images(400, 21), real_images(500, 22), "noise",
                          noisy_images(200, 23), {"noise": noisy_images(400, 24),
                                                  "brighter": brighter},
                          {"cnn": lambda: CNNDetector(CNNDetectorConfig(width=8, epochs=4))},
                          alpha=0.05, watermark=(toy_mark, toy_flag))
    cnn, wm = rows
    assert cnn["detector"] == "cnn" and cnn["trained_on"] == "noise" and cnn["n_real_test"] == 500
    assert cnn["tpr_noise"] > 0.99 and 0 <= cnn["tpr_brighter"] <= 1
    k = conformal_rank(200, 0.05)                       # half of the 400 reference images
    assert cnn["fpr_real"] * 500 <= betabinom(500, 201 - k, k).ppf(0.999)
    assert wm["detector"] == "watermark" and wm["fpr_real"] == 0.0
    assert wm["tpr_noise"] == wm["tpr_brighter"] == 1.0


@pytest.mark.slow          # 10-40 s with the load: two PCA+GMM generations and a tiny VAE
def test_detectors_trained_on_pca_gmm_and_tested_on_a_vae():
    import importlib.util

    from tests.madmark.conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "detector_generalisation_benchmark", REPO / "benchmarks" / "detector_generalisation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.set_num_threads(1)
    rows = {r["detector"]: r for r in bench.run(
        "vae_tiny", alpha=0.01, n_train=300, n_test=500, n_real_test=1000, n_fit=1000,
        model_overrides=("model.n_components=16", "model.gmm_components=4"),
        other_overrides=("model.epochs=2", "model.prior_steps=50"))}
    assert set(rows) == {"cnn", "probe", "watermark"}
    k = conformal_rank(500, 0.01)
    for name in ("cnn", "probe"):
        assert rows[name]["tpr_pca_gmm"] > 0.9                       # in distribution
        assert rows[name]["fpr_real"] * 1000 <= betabinom(1000, 501 - k, k).ppf(0.999)
        assert 0 <= rows[name]["tpr_vae_tiny"] <= 1                  # the question, reported
    wm = rows["watermark"]                     # the watermark does not care which model it was
    assert min(wm["tpr_pca_gmm"], wm["tpr_pca_gmm_g2"], wm["tpr_vae_tiny"]) > 0.95
    assert wm["fpr_real"] * 1000 <= binom(1000, 0.01).ppf(0.999)
