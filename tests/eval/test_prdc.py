"""eval.prdc against the pip ``prdc`` package, a brute-force ``<=`` reference and known laws."""
import contextlib
import io

import numpy as np
import pytest
import torch

from eval import knn
from eval.prdc import RealManifold, prdc

KEYS = ("precision", "recall", "density", "coverage")


def _reference_prdc(real, fake, k):
    """prdc.compute_prdc, silenced (it prints the set sizes)."""
    prdc_pkg = pytest.importorskip("prdc")
    with contextlib.redirect_stdout(io.StringIO()):
        out = prdc_pkg.compute_prdc(real, fake, k)
    return {key: float(out[key]) for key in KEYS}


def _bruteforce_le(real, fake, k):
    """Dense float64 numpy reference with our conventions (exact on integer data): ``<=`` for
    precision, recall and coverage, ``<`` for density."""
    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rr = np.sort(sq(real, real), axis=1)[:, k]
    ff = np.sort(sq(fake, fake), axis=1)[:, k]
    rf = sq(real, fake)
    in_real = rf <= rr[:, None]
    return {"precision": in_real.any(0).mean(), "recall": (rf <= ff[None, :]).any(1).mean(),
            "density": (rf < rr[:, None]).sum() / (k * fake.shape[0]),
            "coverage": in_real.any(1).mean()}


@pytest.mark.parametrize("n,m,d", [(500, 500, 2), (700, 400, 16), (300, 600, 64)])
@pytest.mark.parametrize("k", [5, 3])
def test_matches_prdc_package(n, m, d, k):
    g = np.random.default_rng(n + d + k)
    real = g.standard_normal((n, d))
    fake = g.standard_normal((m, d)) * 1.1 + 0.1
    ref = _reference_prdc(real, fake, k)
    ours = prdc(real, fake, k)                               # numpy float64 input
    for key in KEYS:
        assert abs(ours[key] - ref[key]) <= 1e-6, key
    real32, fake32 = torch.from_numpy(real).float(), torch.from_numpy(fake).float()
    ref32 = _reference_prdc(real32.double().numpy(), fake32.double().numpy(), k)  # same points
    ours32 = prdc(real32, fake32, k)                         # float32 tensor input
    for key in KEYS:
        assert abs(ours32[key] - ref32[key]) <= 1e-6, key


@pytest.mark.parametrize("symmetric", [False, True])
def test_exact_ties_follow_le_convention(symmetric, monkeypatch):
    """Integer lattice data: many exactly tied distances, decided with ``<=``."""
    monkeypatch.setattr(knn, "_SYMMETRIC_MIN_N", 1 if symmetric else 10**9)
    monkeypatch.setattr(knn, "_SYMMETRIC_MIN_D", 1)
    g = np.random.default_rng(3)
    real = g.integers(0, 4, size=(300, 3)).astype(np.float64)
    fake = g.integers(0, 5, size=(200, 3)).astype(np.float64)
    ours, ref = prdc(real, fake, 5), _bruteforce_le(real, fake, 5)
    for key in KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


@pytest.mark.parametrize("k", [3, 5])
def test_identical_sets(k):
    x = torch.randn(400, 10, generator=torch.Generator().manual_seed(0))
    out = prdc(x, x.clone(), k)
    assert out["precision"] == out["recall"] == out["coverage"] == out["density"] == 1.0
    same = torch.ones(50, 4)          # prdc issue #7: all points equal (strict < gives 0 there)
    out = prdc(same, same, k)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert out["density"] == 0.0      # open balls of radius 0 hold nothing


def test_collapsed_generator_high_precision_low_recall():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(1000, 8, generator=g)
    fake = real[7] + 1e-3 * torch.randn(1000, 8, generator=g)   # all fakes near one real point
    out = prdc(real, fake, 5)
    assert out["precision"] >= 0.99
    assert out["recall"] <= 0.01 and out["coverage"] <= 0.01


def test_two_samples_of_one_distribution():
    """N = M: E[density] = 1 and E[coverage] ≈ 1 − 2^−k. Spread over 40 seeds at N = 4000, d = 8:
    density sd 0.013, coverage sd 0.003; tolerances are ~4.5 sd."""
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g)
    out = prdc(real, fake, 5)
    assert abs(out["density"] - 1.0) <= 0.06
    assert abs(out["coverage"] - (1 - 2.0 ** -5)) <= 0.015


def test_chunked_equals_unchunked_and_manifold_reuse():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(150, 5, generator=g, dtype=torch.float64)
    fakes = [torch.randn(120, 5, generator=g, dtype=torch.float64) * s for s in (0.7, 1.0, 1.5)]
    manifold = RealManifold(real, 5)
    tiny = RealManifold(real, 5, chunk_bytes=1)                # 1-row tiles, 1-pair pieces
    for fake in fakes:
        whole = prdc(real, fake, 5, chunk_bytes=2**40)
        assert manifold.score(fake) == whole
        assert tiny.score(fake) == whole
    assert torch.allclose(manifold.radii ** 2, manifold.sq_radii)


def _gaussian_loop(fit_sample, generations=10, seed=0):
    """Fully synthetic loop, λ = 0.8: P/R of each generation against a fixed fresh real sample."""
    g = torch.Generator().manual_seed(seed)
    d, n = 8, 2000
    manifold = RealManifold(torch.randn(n, d, generator=g, dtype=torch.float64), 5)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    scores = {}
    for t in range(1, generations + 1):
        x = fit_sample(x, n, 0.8, g)
        scores[t] = manifold.score(x)
    return scores


def _inline_fit_sample(x, n, lam, g):
    mu, cov = x.mean(0), torch.cov(x.T)                       # unbiased (n − 1)
    z = torch.randn(n, x.shape[1], generator=g, dtype=torch.float64)
    return mu + lam ** 0.5 * z @ torch.linalg.cholesky(cov).T


def _model_fit_sample(x, n, lam, g):
    gaussian = pytest.importorskip("loops.models.gaussian")
    model = gaussian.GaussianModel()
    model.fit(x, generator=g)
    return model.sample(n, lam, generator=g)


@pytest.mark.parametrize("fit_sample", [_inline_fit_sample, _model_fit_sample],
                         ids=["inline", "GaussianModel"])
def test_gaussian_loop_precision_up_recall_down(fit_sample):
    """PAPER.md: precision → 1.00, recall 0.90 → 0.38 → 0.03 at t = 1, 5, 10 (d=8, n=2000,
    λ=0.8, k=5). Seed 0 gives (0.98, 0.89), (1.00, 0.39), (1.00, 0.02) with the inline loop."""
    s = _gaussian_loop(fit_sample)
    assert 0.8 <= s[1]["recall"] <= 0.95
    assert 0.25 <= s[5]["recall"] <= 0.5
    assert s[10]["recall"] <= 0.05 and s[10]["precision"] >= 0.95
