"""Real-vs-synthetic detectors (eval.detectors): the conformal threshold's false-positive rate
against its closed form, the detectors' FPR on fresh real images against the beta-binomial law
of a calibrated threshold, TPR on an obviously different distribution, the probe against
sklearn's logistic regression, determinism."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import betabinom, norm
from sklearn.linear_model import LogisticRegression

from eval.detectors import (CNNDetector, CNNDetectorConfig, LinearProbeDetector,
                            ProbeDetectorConfig, conformal_rank, conformal_threshold,
                            min_calibration)
from eval.features import RandomCNNExtractor

SIDE = 16


def real_images(n: int, seed: int) -> torch.Tensor:
    """(n, 1, 16, 16) 'real' images: two Gaussian blobs of random centre and width each."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(SIDE, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centre = torch.rand(n, 2, 2, generator=g) * SIDE
    width = 1.5 + 2.5 * torch.rand(n, 2, generator=g)
    d2 = (yy - centre[..., 0, None, None]) ** 2 + (xx - centre[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * width[..., None, None] ** 2)).sum(1, keepdim=True).clamp(0, 1)


def noisy_images(n: int, seed: int) -> torch.Tensor:
    """The same blobs plus uniform pixel noise in ±0.5: an obviously different distribution."""
    g = torch.Generator().manual_seed(seed + 10_000)
    return (real_images(n, seed) + torch.rand(n, 1, SIDE, SIDE, generator=g) - 0.5).clamp(0, 1)


def test_conformal_rank_and_minimum_calibration_size():
    assert conformal_rank(99, 0.01) == 99 and conformal_rank(98, 0.01) == 99     # 98 too few
    assert conformal_rank(500, 0.01) == 496 and conformal_rank(19, 0.05) == 19
    assert [min_calibration(a) for a in (0.01, 0.05, 0.1, 0.5)] == [99, 19, 9, 1]
    for alpha in (0.003, 0.01, 0.05, 0.2):
        n = min_calibration(alpha)
        assert conformal_rank(n, alpha) <= n and conformal_rank(n - 1, alpha) > n - 1 or n == 1
    with pytest.raises(ValueError, match="at least 99"):
        conformal_threshold(torch.randn(50), 0.01)


def test_threshold_false_positive_rate_averages_to_its_closed_form():
    """Normal scores: the FPR of a threshold τ is 1 − Φ(τ) exactly; over many calibration sets of
    n = 99 its mean is (n + 1 − k)/(n + 1) = 0.05 at α = 0.05 (k = 95), with a Beta(5, 95)
    spread."""
    g = torch.Generator().manual_seed(0)
    n, alpha, reps = 99, 0.05, 4000
    k = conformal_rank(n, alpha)
    fpr = np.array([norm.sf(conformal_threshold(torch.randn(n, generator=g), alpha))
                    for _ in range(reps)])
    mean, sd = (n + 1 - k) / (n + 1), math.sqrt(k * (n + 1 - k) / ((n + 1) ** 2 * (n + 2)))
    assert mean == pytest.approx(alpha)
    assert abs(fpr.mean() - mean) < 4 * sd / math.sqrt(reps)
    assert fpr.std() == pytest.approx(sd, rel=0.1)


def detectors():
    return {"cnn": CNNDetector(CNNDetectorConfig(width=8, epochs=4)),
            "probe": LinearProbeDetector(RandomCNNExtractor(seed=0, in_channels=1),
                                         ProbeDetectorConfig(weight_decay=0.001))}


@pytest.mark.parametrize("kind", ["cnn", "probe"])
def test_calibrated_detector_flags_alpha_of_fresh_real_images_and_catches_noise(kind):
    """Trained on 300 + 300, calibrated on 400 other real images at α = 0.05: the count of 3,000
    fresh real images flagged is BetaBinomial(3000, n + 1 − k, k) (k = 381); bounds at
    probability 1e-3 each side. Noisy images are caught (TPR > 0.99)."""
    det = detectors()[kind]
    info = det.fit(real_images(300, 1), noisy_images(300, 2), torch.Generator().manual_seed(0))
    assert info["n_real"] == 300 and info["n_synth"] == 300 and info["train_acc"] > 0.98
    n, alpha, m = 400, 0.05, 3000
    cal = det.calibrate(real_images(n, 3), alpha)
    k = conformal_rank(n, alpha)
    assert cal.n == n and cal.fpr == pytest.approx((n - k) / n) and cal.train_acc > 0.95
    law = betabinom(m, n + 1 - k, k)
    count = int(det.flag(real_images(m, 4)).sum())
    assert law.ppf(0.001) <= count <= law.ppf(0.999), (count, law.mean())
    assert det.tpr({"noise": noisy_images(1000, 5)})["noise"] > 0.99


def test_probe_reaches_sklearn_logistic_regression_optimum():
    """The same strictly convex objective: C = 1/(nλ), balanced class weights, standardised
    features, unpenalised intercept."""
    real, synth = real_images(150, 6), noisy_images(100, 7)
    lam = 0.05
    det = LinearProbeDetector(RandomCNNExtractor(seed=1, in_channels=1, dim=32),
                              ProbeDetectorConfig(weight_decay=lam, max_iter=500, tolerance=1e-10))
    det.fit(real, synth, torch.Generator().manual_seed(0))
    f = det.extractor.extract(torch.cat([real, synth])).double()
    z = ((f - f.mean(0)) / f.std(0)).numpy()
    y = np.r_[np.zeros(150), np.ones(100)]
    ref = LogisticRegression(C=1 / (len(y) * lam), class_weight="balanced", tol=1e-12,
                             max_iter=10_000).fit(z, y)
    assert np.allclose(det.w.numpy(), ref.coef_[0], atol=1e-4, rtol=1e-4)
    assert float(det.b) == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    x_real, x_synth, x = real_images(100, 8), noisy_images(100, 9), real_images(50, 10)
    state = torch.random.get_rng_state()
    scores = []
    for _ in range(2):
        det = CNNDetector(CNNDetectorConfig(width=4, epochs=2))
        det.fit(x_real, x_synth, torch.Generator().manual_seed(3))
        scores.append(det.score(x))
    assert torch.equal(scores[0], scores[1]) and scores[0].shape == (50,)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_detector_refuses_bad_use():
    det = CNNDetector()
    with pytest.raises(RuntimeError, match="fit the detector"):
        det.score(real_images(2, 0))
    with pytest.raises(ValueError, match="differ in shape"):
        det.fit(real_images(4, 0), torch.zeros(4, 1, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="must be >= 1"):
        CNNDetector(CNNDetectorConfig(epochs=0))
