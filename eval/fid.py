"""Fréchet distance (FID-style) and kernel distance (KID) between feature sets, in float64.

Features are (N, d) tensors or arrays from any extractor (Inception, LeNet, ...). Values are only
comparable at a fixed extractor and fixed N (FID is biased in N).

* :class:`FeatureStats` — streaming float64 sums (n, Σx, XᵀX): accumulate in batches, merge or
  all-reduce across ranks, then read ``mean`` (d,) and unbiased ``cov`` (d, d).
* :func:`frechet_distance` — ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½, with the
  square-root trace from ``eigh`` of the *symmetric* PSD matrix Σ1^½ Σ2 Σ1^½ (never from eigenvalues
  of the non-symmetric Σ1Σ2); tiny negative eigenvalues are clamped to 0, and the result is clamped
  at 0 only for round-off: below −1e-6·max(1, tr Σ1 + tr Σ2) it raises.
* :func:`fid` — convenience on two feature sets; warns when N < 2d (covariance rank-deficient).
* :func:`kid` — unbiased MMD² with the polynomial kernel (x·y·γ + coef)^degree over random subsets,
  as torchmetrics' ``KernelInceptionDistance``; returns (mean, std) over subsets.
* :class:`FrechetDistance` — a ``torchmetrics.Metric`` on features with float64 sum states
  (``dist_reduce_fx="sum"``), so it reduces across ranks.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from torchmetrics import Metric

from eval.gaussian import frechet_distance

__all__ = ["FeatureStats", "frechet_distance", "fid", "kid", "FrechetDistance"]

_BATCH = 8192  # rows converted to float64 at a time (bounded memory for large N)


def _features(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected (N, d) features, got shape {tuple(t.shape)}")
    return t


class FeatureStats:
    """Streaming first/second moments of d-dimensional features: float64 ``n``, ``sum`` (d,) = Σx,
    ``sum_outer`` (d, d) = XᵀX. ``update`` adds a batch (B, d); ``+``/``merge`` and
    :meth:`all_reduce` combine partial sums (e.g. one per rank)."""

    def __init__(self, dim: int, device=None):
        self.dim = int(dim)
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    @classmethod
    def from_features(cls, x) -> "FeatureStats":
        """Statistics of a whole (N, d) feature set, converted to float64 batch by batch."""
        x = _features(x, "features")
        stats = cls(x.shape[1], device=x.device)
        for s in range(0, x.shape[0], _BATCH):
            stats.update(x[s:s + _BATCH])
        return stats

    def update(self, x) -> "FeatureStats":
        """Add a batch of features (B, d) (any float dtype; accumulated in float64)."""
        x = _features(x, "features").to(device=self.sum.device, dtype=torch.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"features have d={x.shape[1]}, stats have d={self.dim}")
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another partial sum in place (same d)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of d={other.dim} into d={self.dim}")
        self.n += other.n.to(self.n.device)
        self.sum += other.sum.to(self.sum.device)
        self.sum_outer += other.sum_outer.to(self.sum_outer.device)
        return self

    def __add__(self, other: "FeatureStats") -> "FeatureStats":
        out = FeatureStats(self.dim, device=self.sum.device)
        return out.merge(self).merge(other)

    def all_reduce(self, group=None) -> "FeatureStats":
        """Sum the partial statistics over all ranks of ``torch.distributed`` (no-op if not
        initialised)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            for t in (self.n, self.sum, self.sum_outer):
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return self

    @property
    def count(self) -> int:
        return int(self.n)

    @property
    def mean(self) -> torch.Tensor:
        """(d,) float64 sample mean."""
        if self.count < 1:
            raise ValueError("no features accumulated")
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """(d, d) float64 unbiased covariance (XᵀX − n μμᵀ)/(n − 1), symmetrised."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 features, got {self.count}")
        mu = self.mean
        c = (self.sum_outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return 0.5 * (c + c.T)


def fid(real_features, fake_features) -> float:
    """Fréchet distance between the Gaussian fits of two (N, d) feature sets (FID when the features
    are Inception pool features). Warns when a set has N < 2d."""
    stats = []
    for name, x in (("real", real_features), ("fake", fake_features)):
        x = _features(x, name)
        if x.shape[0] < 2 * x.shape[1]:
            warnings.warn(f"fid: {name} set has N={x.shape[0]} < 2d={2 * x.shape[1]}: the "
                          "covariance estimate is poor (rank-deficient for N <= d)", stacklevel=2)
        stats.append(FeatureStats.from_features(x))
    (a, b) = stats
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef: float) -> float:
    """Unbiased MMD² with k(u, v) = (γ u·v + coef)^degree for equal-size sets x, y (m, d)."""
    m = x.shape[0]
    kxx = (x @ x.T * gamma + coef) ** degree
    kyy = (y @ y.T * gamma + coef) ** degree
    kxy = (x @ y.T * gamma + coef) ** degree
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: Optional[float] = None, coef: float = 1.0,
        generator: Optional[torch.Generator] = None) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) over ``subsets`` of the unbiased MMD² between random
    ``subset_size`` subsets of real (N, d) and fake (M, d) features (units: kernel units).

    Kernel (γ x·y + coef)^degree with γ = 1/d by default; float64. Each subset draws
    ``randperm(N)`` then ``randperm(M)`` from ``generator`` (global RNG if None) — the same draws as
    torchmetrics' ``KernelInceptionDistance``, so equal seeds give equal subsets; std is the
    population std (``unbiased=False``), as there.
    """
    x = _features(real, "real")
    y = _features(fake, "fake").to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real has d={x.shape[1]}, fake has d={y.shape[1]}")
    if subset_size > min(x.shape[0], y.shape[0]) or subset_size < 2:
        raise ValueError(f"subset_size={subset_size} must be in [2, min(N, M)]")
    gamma = 1.0 / x.shape[1] if gamma is None else float(gamma)
    scores = []
    for _ in range(int(subsets)):
        pr = torch.randperm(x.shape[0], generator=generator)[:subset_size].to(x.device)
        pf = torch.randperm(y.shape[0], generator=generator)[:subset_size].to(x.device)
        scores.append(_poly_mmd2(x[pr].double(), y[pf].double(), degree, gamma, coef))
    s = torch.tensor(scores, dtype=torch.float64)
    return float(s.mean()), float(s.std(unbiased=False))


class FrechetDistance(Metric):
    """torchmetrics ``Metric`` for the Fréchet distance on precomputed features.

    ``update(features (B, d), real: bool)``; ``compute()`` → float64 scalar tensor. States are
    float64 sums with ``dist_reduce_fx="sum"`` (n, Σx, XᵀX per side), so they reduce across ranks.
    ``reset_real_features=False`` keeps the real statistics across ``reset()``.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, num_features: int, reset_real_features: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.reset_real_features = reset_real_features
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, features: torch.Tensor, real: bool) -> None:
        f = features.to(torch.float64).reshape(features.shape[0], -1)
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)

    def _stats(self, side: str) -> FeatureStats:
        s = FeatureStats(self.num_features, device=self.real_sum.device)
        s.n, s.sum, s.sum_outer = (getattr(self, f"{side}_n"), getattr(self, f"{side}_sum"),
                                   getattr(self, f"{side}_outer"))
        return s

    def compute(self) -> torch.Tensor:
        r, f = self._stats("real"), self._stats("fake")
        return torch.tensor(frechet_distance(r.mean, r.cov, f.mean, f.cov), dtype=torch.float64)

    def reset(self) -> None:
        if self.reset_real_features:
            return super().reset()
        kept = {k: getattr(self, k).clone() for k in ("real_n", "real_sum", "real_outer")}
        super().reset()
        for k, v in kept.items():
            setattr(self, k, v)
