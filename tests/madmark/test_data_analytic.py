"""Analytic vector sources: gaussian and gmm2d, their true moments and fresh draws."""
import torch

from madmark.data import GMM2D, Gaussian
from madmark.data.gmm2d import grid_means


def shared_rows(a: torch.Tensor, b: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in a.numpy()} & {r.tobytes() for r in b.numpy()}


def test_gaussian_splits_and_moments():
    s = Gaussian(seed=0, dim=5, n_train=300, n_reference=200).load()
    assert s.kind == "vector" and s.train.shape == (300, 5) and s.reference.shape == (200, 5)
    assert s.train.dtype == torch.float32
    assert torch.equal(s.true_mean, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(s.true_cov, torch.eye(5, dtype=torch.float64))
    assert not shared_rows(s.train, s.reference)
    again = Gaussian(seed=0, dim=5, n_train=300, n_reference=200).load()
    other = Gaussian(seed=1, dim=5, n_train=300, n_reference=200).load()
    assert torch.equal(again.train, s.train) and torch.equal(again.reference, s.reference)
    assert not torch.equal(other.train, s.train)


def test_gaussian_draw_real_gives_new_standard_normal_samples():
    source = Gaussian(seed=0, dim=4)
    train = source.load().train
    g = torch.Generator().manual_seed(7)
    x = source.draw_real(20000, g)
    assert x.shape == (20000, 4) and x.dtype == torch.float32
    assert not shared_rows(x, train)
    assert torch.allclose(x.mean(0), torch.zeros(4), atol=0.05)
    assert torch.allclose(torch.cov(x.T), torch.eye(4), atol=0.05)
    assert not torch.equal(source.draw_real(10, g), source.draw_real(10, g))


def test_gmm2d_true_moments_match_a_large_sample():
    source = GMM2D(seed=0, n_train=500, n_reference=500, std=0.05)
    s = source.load()
    assert s.kind == "vector" and s.train.shape == (500, 2) and s.true_cov.dtype == torch.float64
    assert torch.allclose(s.true_cov, (8 + 0.05 ** 2) * torch.eye(2, dtype=torch.float64))
    x = source.draw_real(100000, torch.Generator().manual_seed(1)).double()
    assert torch.allclose(x.mean(0), s.true_mean, atol=0.05)
    assert torch.allclose(torch.cov(x.T), s.true_cov, atol=0.1)


def test_gmm2d_samples_sit_on_their_labelled_modes():
    s = GMM2D(seed=3, n_train=2000, n_reference=1000).load()
    means = grid_means().float()
    dist = (s.train - means[s.train_labels]).norm(dim=1)
    assert dist.max() < 0.05 * 6  # within 6 std of the labelled mode
    assert len(torch.unique(s.train_labels)) == 25
    assert not shared_rows(s.train, s.reference)
    assert torch.equal(GMM2D(seed=3, n_train=2000, n_reference=1000).load().train, s.train)
    assert not torch.equal(GMM2D(seed=4, n_train=2000, n_reference=1000).load().train, s.train)
