"""GaussianModel against numpy references: moments, batching, sampling covariance, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loops.errors import LoopError
from loops.models import GaussianModel, GenerativeModel


def _data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape[-1], shape[-1], generator=g)
    return torch.randn(shape, generator=g) @ a.T + torch.arange(shape[-1], dtype=torch.float32)


def test_moments_match_numpy():
    x = _data((200, 5))
    m = GaussianModel()
    assert isinstance(m, GenerativeModel)
    stats = m.fit(x, torch.Generator())
    mu, cov = m.moments()
    xn = x.double().numpy()
    assert mu.dtype == cov.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), np.mean(xn, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(xn, rowvar=False, ddof=1), rtol=1e-10, atol=1e-12)
    ref_cov = np.cov(xn, rowvar=False, ddof=1)
    assert stats["trace_cov"] == pytest.approx(np.trace(ref_cov), rel=1e-10)
    assert stats["logdet_cov"] == pytest.approx(np.linalg.slogdet(ref_cov)[1], rel=1e-10)
    assert stats["mean_norm"] == pytest.approx(np.linalg.norm(np.mean(xn, axis=0)), rel=1e-10)


def test_batched_fit_equals_per_chain_fits():
    x = _data((6, 40, 3), seed=1)
    batched = GaussianModel()
    batched.fit(x, torch.Generator())
    mu_b, cov_b = batched.moments()
    assert mu_b.shape == (6, 3) and cov_b.shape == (6, 3, 3)
    for b in range(6):
        single = GaussianModel()
        single.fit(x[b], torch.Generator())
        mu, cov = single.moments()
        torch.testing.assert_close(mu_b[b], mu, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cov_b[b], cov, rtol=1e-12, atol=1e-12)
    s = batched.sample(7, 0.5, torch.Generator().manual_seed(0))
    assert s.shape == (6, 7, 3) and s.dtype == x.dtype


@pytest.mark.parametrize("lam", [1.0, 0.6])
def test_sample_covariance_is_lambda_sigma(lam):
    m = GaussianModel()
    m.fit(_data((500, 4), seed=2), torch.Generator())
    mu, cov = m.moments()
    s = m.sample(200_000, lam, torch.Generator().manual_seed(3)).double().numpy()
    assert s.shape == (200_000, 4)
    np.testing.assert_allclose(np.cov(s, rowvar=False), lam * cov.numpy(), rtol=0.03,
                               atol=0.03 * np.trace(cov.numpy()) / 4)
    np.testing.assert_allclose(s.mean(0), mu.numpy(), atol=0.05 * np.sqrt(np.trace(cov.numpy())))


def test_deterministic_given_generator_and_dtype():
    m = GaussianModel()
    m.fit(_data((50, 3)).double(), torch.Generator())
    a = m.sample(10, 0.8, torch.Generator().manual_seed(5))
    b = m.sample(10, 0.8, torch.Generator().manual_seed(5))
    assert a.dtype == torch.float64 and torch.equal(a, b)


def test_degenerate_covariance_does_not_crash():
    """n ≤ D gives a singular Σ̂: sampling falls back to the eigh factor and stays in its span."""
    x = _data((3, 6), seed=4)
    m = GaussianModel()
    stats = m.fit(x, torch.Generator())
    assert stats["logdet_cov"] < -20 or stats["logdet_cov"] == float("-inf")
    s = m.sample(1000, 1.0, torch.Generator().manual_seed(0)).double()
    assert torch.isfinite(s).all()
    mu, cov = m.moments()
    np.testing.assert_allclose(np.cov(s.numpy(), rowvar=False), cov.numpy(), atol=0.15 * cov.abs().max())
    # samples lie in the affine span of the 3 training points (rank 2)
    centred = s - mu
    assert torch.linalg.matrix_rank(centred, atol=1e-6 * float(centred.abs().max())) <= 2


def test_state_dict_roundtrip_and_errors():
    m = GaussianModel()
    m.fit(_data((30, 2)), torch.Generator())
    state = m.state_dict()
    assert set(state) == {"mean", "cov"}
    other = GaussianModel()
    other.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(m.sample(5, 1.0, g1), other.sample(5, 1.0, g2))
    with pytest.raises(LoopError):
        m.sample(5, 1.5)
    bad = _data((30, 2))
    bad[3, 1] = float("nan")
    with pytest.raises(LoopError):
        GaussianModel().fit(bad, torch.Generator())
    with pytest.raises(LoopError):
        GaussianModel().sample(3)
