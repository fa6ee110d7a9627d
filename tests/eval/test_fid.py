"""eval.fid: Fréchet distance, feature statistics and KID against closed forms and torchmetrics."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from eval.fid import FeatureStats, FrechetDistance, fid, frechet_distance, kid


class _Identity(torch.nn.Module):
    """torchmetrics 'feature extractor' that passes precomputed (B, d) features through, so the
    public FrechetInceptionDistance / KernelInceptionDistance run on our features."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


def _rand_spd(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _features(seed=0, n=600, m=500, d=16):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    fake = torch.randn(m, d, generator=g, dtype=torch.float64) @ _rand_spd(d, g) + 0.3
    return real, fake


def test_closed_form_diagonal():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = (torch.rand(6, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    want = float((mu1 - mu2).square().sum() + (s1 - s2).square().sum())
    got = frechet_distance(mu1, torch.diag(s1 ** 2), mu2, torch.diag(s2 ** 2))
    assert got == pytest.approx(want, rel=1e-10)


def test_matches_scipy_sqrtm_on_random_spd():
    g = torch.Generator().manual_seed(1)
    for d in (3, 20, 64):
        c1, c2 = _rand_spd(d, g), _rand_spd(d, g)
        mu1, mu2 = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(2))
        cross = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real
        want = float((mu1 - mu2).square().sum()) + np.trace(c1.numpy() + c2.numpy() - 2 * cross)
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-8)


def test_same_set_is_zero_and_not_negative():
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stats = FeatureStats.from_features(x)
    raw = frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov, clamp=False)
    assert -1e-6 <= raw <= 1e-8
    assert 0.0 <= fid(x, x) <= 1e-8
    singular = torch.zeros(4, 4, dtype=torch.float64)          # rank-0 covariance: PSD edge
    assert frechet_distance(torch.zeros(4), singular, torch.ones(4), singular) == pytest.approx(4)
    with pytest.raises(RuntimeError):                           # indefinite "covariance"
        frechet_distance(torch.zeros(2), -torch.eye(2), torch.zeros(2), -torch.eye(2))


def test_streaming_stats_equal_one_shot():
    real, _ = _features()
    one = FeatureStats.from_features(real)
    parts = FeatureStats(16)
    for batch in real.split(77):
        parts.update(batch)
    halves = FeatureStats.from_features(real[:250]) + FeatureStats.from_features(real[250:])
    for s in (parts, halves):
        assert s.count == 600
        assert torch.allclose(s.mean, one.mean, rtol=1e-12)
        assert torch.allclose(s.cov, one.cov, rtol=1e-10, atol=1e-12)
    assert torch.allclose(one.cov, torch.cov(real.T), rtol=1e-10, atol=1e-12)
    assert one.all_reduce() is one                              # no process group: no-op


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torchmetrics_fid(dtype):
    from torchmetrics.image.fid import FrechetInceptionDistance
    real, fake = (t.to(dtype) for t in _features())
    tm = FrechetInceptionDistance(feature=_Identity(16))
    tm.update(real, real=True)
    tm.update(fake, real=False)
    ours = fid(real, fake)
    assert ours == pytest.approx(float(tm.compute()), rel=1e-3)
    metric = FrechetDistance(16)                                # our Metric, in batches
    for r in real.split(100):
        metric.update(r, real=True)
    for f in fake.split(100):
        metric.update(f, real=False)
    assert float(metric.compute()) == pytest.approx(ours, rel=1e-9)


def test_metric_keeps_real_features():
    real, fake = _features()
    metric = FrechetDistance(16, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    metric.reset()
    metric.update(fake, real=False)
    assert float(metric.compute()) == pytest.approx(fid(real, fake), rel=1e-9)


def test_warns_when_n_below_2d():
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.warns(UserWarning, match="N=20 < 2d=32"):
        fid(x, x + 1.0)


def _mmd2_numpy(x, y, degree=3, coef=1.0):
    """Unbiased MMD² (polynomial kernel, γ = 1/d), written from the definition."""
    m, d = x.shape[0], x.shape[1]
    k = lambda a, b: (a @ b.T / d + coef) ** degree  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda a: (a.sum() - np.trace(a)) / (m * (m - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def test_kid_matches_torchmetrics_and_definition():
    from torchmetrics.image.kid import KernelInceptionDistance
    real, fake = _features(m=600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                         # "saves all features" warning
        tm = KernelInceptionDistance(feature=_Identity(16), subsets=5, subset_size=300)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    torch.manual_seed(11)
    tm_mean, tm_std = (float(v) for v in tm.compute())
    torch.manual_seed(11)                                       # same global draws
    mean, std = kid(real, fake, subsets=5, subset_size=300)
    assert mean == pytest.approx(tm_mean, rel=1e-10)
    assert std == pytest.approx(tm_std, rel=1e-8)
    # full-sample subsets: permutation-invariant, so equal to the definition with std 0
    mean, std = kid(real, fake, subsets=2, subset_size=600, generator=torch.Generator())
    assert mean == pytest.approx(_mmd2_numpy(real.numpy(), fake.numpy()), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
