"""GMMModel against scikit-learn's GaussianMixture and the generating mixture."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from loops.errors import LoopError
from loops.models import GMMModel

MEANS = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 20.0]])
WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.4])


def mixture(n=6000, seed=0):
    """Well separated 4-component mixture in 3-D with distinct full covariances, float32 (n, 3)."""
    g = torch.Generator().manual_seed(seed)
    comp = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    a = 0.4 * torch.randn(4, 3, 3, generator=g) + torch.eye(3)
    z = torch.randn(n, 3, generator=g)
    return MEANS[comp] + torch.einsum("nij,nj->ni", a[comp], z), comp


def _match(est_means):
    """Permutation of estimated components closest to MEANS."""
    perms = list(itertools.permutations(range(4)))
    return min(perms, key=lambda p: float((est_means[list(p)] - MEANS.double()).norm()))


@pytest.fixture(scope="module")
def fitted():
    x, _ = mixture()
    m = GMMModel(n_components=4, max_iter=300, tol=1e-6)
    stats = m.fit(x, torch.Generator().manual_seed(1))
    return m, stats, x


def test_recovers_means_and_weights(fitted):
    """Up to permutation, the fitted means/weights equal the per-component empirical ones (the
    generating labels are known) and are close to the generating parameters."""
    m, stats, x = fitted
    _, comp = mixture()
    perm = list(_match(m.means))
    emp_means = torch.stack([x[comp == k].double().mean(0) for k in range(4)])
    emp_weights = torch.bincount(comp, minlength=4).double() / len(comp)
    torch.testing.assert_close(m.means[perm], emp_means, atol=1e-3, rtol=0)
    torch.testing.assert_close(m.weights[perm], emp_weights, atol=1e-3, rtol=0)
    torch.testing.assert_close(m.means[perm], MEANS.double(), atol=0.25, rtol=0)
    torch.testing.assert_close(m.weights[perm], WEIGHTS.double(), atol=0.02, rtol=0)
    assert stats["converged"] == 1.0 and 1 <= stats["n_iter"] <= 300


def test_log_likelihood_matches_sklearn(fitted):
    m, stats, x = fitted
    xn = x.double().numpy()
    sk = GaussianMixture(4, covariance_type="full", tol=1e-6, max_iter=300, random_state=0).fit(xn)
    assert stats["log_likelihood"] == pytest.approx(sk.score(xn), abs=1e-3)
    assert m.score(x) == pytest.approx(stats["log_likelihood"], abs=1e-12)
    # per-sample densities agree too
    assert np.allclose(m.score(x[:50]), sk.score(xn[:50]), atol=1e-3)


def test_moments_are_mixture_moments(fitted):
    m, _, _ = fitted
    mean, cov = m.moments()
    w, mu, sig = (t.numpy() for t in (m.weights, m.means, m.covariances))
    ref_mean = w @ mu
    ref_cov = sum(w[k] * (sig[k] + np.outer(mu[k] - ref_mean, mu[k] - ref_mean)) for k in range(4))
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_bias_scales_component_covariances(fitted, lam):
    m, _, _ = fitted
    s = m.sample(80_000, lam, torch.Generator().manual_seed(2))
    assert s.shape == (80_000, 3) and s.dtype == torch.float32 and torch.isfinite(s).all()
    s = s.double()
    labels = (s.unsqueeze(1) - m.means.unsqueeze(0)).norm(dim=-1).argmin(1)  # separated: exact
    for k in range(4):
        sk = s[labels == k].numpy()
        assert len(sk) / len(s) == pytest.approx(float(m.weights[k]), abs=0.01)
        ref = lam * m.covariances[k].numpy()  # ≥ 8000 samples: ~1.6% s.e. per entry
        np.testing.assert_allclose(np.cov(sk, rowvar=False), ref, atol=0.07 * np.abs(ref).max())


def test_deterministic_given_generator():
    x, _ = mixture(1500, seed=3)
    outs = []
    for _ in range(2):
        m = GMMModel(n_components=3, max_iter=20, init="kmeans++")
        m.fit(x, torch.Generator().manual_seed(7))
        outs.append((m.means, m.sample(20, 0.7, torch.Generator().manual_seed(8))))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    r = GMMModel(n_components=3, max_iter=20, init="random")
    calls = []
    st = r.fit(x, torch.Generator().manual_seed(7), progress=lambda i, t: calls.append((i, t)))
    assert calls and calls[0] == (1, 20) and len(calls) == st["n_iter"]


def test_state_dict_roundtrip(fitted):
    m, _, x = fitted
    other = GMMModel()
    other.load_state_dict(m.state_dict())
    assert other.n_components == 4
    assert other.score(x) == pytest.approx(m.score(x), abs=1e-12)


def test_nan_input_and_divergence_raise_loop_error():
    x, _ = mixture(500)
    x[10, 2] = float("nan")
    with pytest.raises(LoopError):
        GMMModel(n_components=2).fit(x, torch.Generator())
    # duplicated points with no regularisation: a component collapses to a singular covariance
    pts = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]).repeat(50, 1)
    with pytest.raises(LoopError, match="reg_covar"):
        GMMModel(n_components=3, reg_covar=0.0).fit(pts, torch.Generator().manual_seed(0))
    with pytest.raises(LoopError):
        GMMModel(n_components=10).fit(torch.randn(5, 2), torch.Generator())
