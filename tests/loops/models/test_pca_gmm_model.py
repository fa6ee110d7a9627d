"""PCAGMMModel on image-shaped data (sklearn's 8×8 digits) and vectors, against sklearn / numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from loops.errors import LoopError
from loops.models import PCAGMMModel


@pytest.fixture(scope="module")
def digits():
    """(1797, 1, 8, 8) float32 in [0, 1]."""
    return torch.from_numpy(load_digits().images / 16.0).float().unsqueeze(1)


@pytest.fixture(scope="module")
def fitted(digits):
    m = PCAGMMModel(n_components=12, gmm_components=5, max_iter=50)
    calls = []
    stats = m.fit(digits, torch.Generator().manual_seed(0), progress=lambda i, t: calls.append(i))
    return m, stats, calls


def test_samples_have_fitted_shape_and_range(fitted):
    m, stats, calls = fitted
    s = m.sample(300, 0.7, torch.Generator().manual_seed(1))
    assert s.shape == (300, 1, 8, 8) and s.dtype == torch.float32
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    assert calls and len(calls) == stats["gmm_n_iter"]
    assert {"gmm_log_likelihood", "gmm_converged", "n_latent"} <= set(stats)
    assert m.moments() is None                       # clamped images: no closed form


def test_explained_variance_matches_sklearn(fitted, digits):
    m, stats, _ = fitted
    flat = digits.reshape(len(digits), -1).double().numpy()
    ref = PCA(n_components=12, svd_solver="full").fit(flat)
    assert stats["explained_variance_ratio"] == pytest.approx(ref.explained_variance_ratio_.sum(),
                                                              rel=1e-9)
    overlap = np.abs(m.components.numpy().T @ ref.components_.T)   # same axes up to sign
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-6)
    np.testing.assert_allclose(m.mean.numpy(), ref.mean_, atol=1e-12)


def test_wide_data_pca_matches_numpy_svd():
    """N < F takes the N × N Gram route; compare with numpy's SVD of the centred data."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 100, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 100)
    m = PCAGMMModel(n_components=5, gmm_components=2, max_iter=30)
    stats = m.fit(x, torch.Generator().manual_seed(3))
    xc = x.numpy() - x.numpy().mean(0)
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    assert stats["explained_variance_ratio"] == pytest.approx((sv[:5] ** 2).sum() / (sv ** 2).sum(),
                                                              rel=1e-9)
    np.testing.assert_allclose(np.abs(m.components.numpy().T @ vt[:5].T), np.eye(5), atol=1e-6)
    s = m.sample(50, 1.0, torch.Generator().manual_seed(4))
    assert s.shape == (50, 100) and s.dtype == torch.float64
    mean, cov = m.moments()                          # vectors: decoded mixture moments, rank 5
    assert mean.shape == (100,) and int(torch.linalg.matrix_rank(cov)) == 5


def test_deterministic_with_same_generator(digits):
    outs = []
    for _ in range(2):
        m = PCAGMMModel(n_components=8, gmm_components=3, max_iter=20)
        m.fit(digits[:600], torch.Generator().manual_seed(5))
        outs.append(m.sample(16, 0.9, torch.Generator().manual_seed(6)))
    assert torch.equal(outs[0], outs[1])


def test_bias_shrinks_latent_spread_and_state_roundtrip(fitted):
    m, _, _ = fitted
    lat = lambda s: (s.reshape(len(s), -1).double() - m.mean) @ m.components  # noqa: E731
    g = torch.Generator().manual_seed(7)
    v1 = float(lat(m.sample(4000, 1.0, g)).var(0).sum())
    v05 = float(lat(m.sample(4000, 0.3, g)).var(0).sum())
    assert v05 < v1
    other = PCAGMMModel()
    other.load_state_dict(m.state_dict())
    a = m.sample(8, 0.8, torch.Generator().manual_seed(9))
    b = other.sample(8, 0.8, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a.float(), b.float())


def test_errors():
    with pytest.raises(LoopError):
        PCAGMMModel().fit(torch.full((10, 1, 4, 4), float("nan")), torch.Generator())
    with pytest.raises(LoopError):
        PCAGMMModel().sample(3)
