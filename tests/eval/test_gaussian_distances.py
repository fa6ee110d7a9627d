"""eval.gaussian: W₂ between Gaussians against scipy's sqrtm closed form and 1-D formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from eval import gaussian_stats, logdet, trace, w2_gaussian
from eval.gaussian import sqrtm_psd


def _spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d)) * scale
    return a @ a.T + 0.1 * np.eye(d)


def _w2_scipy(m1, c1, m2, c2):
    """Reference: sqrt(‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2 sqrtm(Σ1Σ2))) with scipy.linalg.sqrtm."""
    cross = scipy.linalg.sqrtm(c1 @ c2)
    return math.sqrt(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(cross)))


@pytest.mark.parametrize("d,seed", [(2, 0), (5, 1), (16, 2), (40, 3)])
def test_w2_matches_scipy_sqrtm(d, seed):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = _spd(rng, d), _spd(rng, d, scale=2.0)
    ref = _w2_scipy(m1, c1, m2, c2)
    got = w2_gaussian(torch.tensor(m1), torch.tensor(c1), torch.tensor(m2), torch.tensor(c2))
    assert isinstance(got, float)
    assert got == pytest.approx(ref, rel=1e-6)
    # symmetric in its arguments and accepts float32 tensors
    assert w2_gaussian(m2, c2, m1, c1) == pytest.approx(ref, rel=1e-6)
    f32 = w2_gaussian(*(torch.tensor(a, dtype=torch.float32) for a in (m1, c1, m2, c2)))
    assert f32 == pytest.approx(ref, rel=1e-4)


def test_w2_equal_covariances_is_mean_distance():
    rng = np.random.default_rng(4)
    c = torch.tensor(_spd(rng, 6))
    m1, m2 = torch.tensor(rng.standard_normal(6)), torch.tensor(rng.standard_normal(6))
    assert w2_gaussian(m1, c, m2, c) == pytest.approx(float((m1 - m2).norm()), rel=1e-7)
    assert w2_gaussian(m1, c, m1, c) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 2.0), (1.5, 0.3, -2.0, 1.7),
                                         (0.0, 1.0, 3.0, 1.0)])
def test_w2_one_dimensional_closed_form(m1, s1, m2, s2):
    ref = math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    got = w2_gaussian(t([m1]), t([[s1 ** 2]]), t([m2]), t([[s2 ** 2]]))
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert w2_gaussian(m1, s1 ** 2, m2, s2 ** 2) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_w2_singular_covariances_do_not_crash():
    c1 = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    c2 = torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64))
    z = torch.zeros(3, dtype=torch.float64)
    assert w2_gaussian(z, c1, z, c2) == pytest.approx(math.sqrt(1.0 + 1.0), rel=1e-9)
    with pytest.raises(ValueError):
        w2_gaussian(z, c1, torch.zeros(2), c2)


def test_sqrtm_logdet_trace_and_stats():
    rng = np.random.default_rng(5)
    c = _spd(rng, 7)
    s = sqrtm_psd(torch.tensor(c))
    np.testing.assert_allclose(s.numpy(), np.real(scipy.linalg.sqrtm(c)), rtol=1e-8, atol=1e-10)
    assert logdet(c) == pytest.approx(np.linalg.slogdet(c)[1], rel=1e-10)
    assert logdet(np.zeros((2, 2))) == float("-inf")
    assert trace(c) == pytest.approx(np.trace(c), rel=1e-12)
    mu, mu0 = rng.standard_normal(7), np.zeros(7)
    stats = gaussian_stats(torch.tensor(mu), torch.tensor(c), torch.tensor(mu0), torch.eye(7))
    assert set(stats) == {"w2_to_true", "logdet_cov", "trace_cov", "mean_err"}
    assert stats["w2_to_true"] == pytest.approx(_w2_scipy(mu, c, mu0, np.eye(7)), rel=1e-6)
    assert stats["mean_err"] == pytest.approx(np.linalg.norm(mu), rel=1e-12)
    assert stats["trace_cov"] == pytest.approx(np.trace(c)) and stats["logdet_cov"] == logdet(c)


def test_eval_does_not_import_loops():
    import eval.gaussian as mod
    src = open(mod.__file__, encoding="utf-8").read()
    assert "import loops" not in src and "from loops" not in src and "madmark" not in src
