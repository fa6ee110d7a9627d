"""Distances and summaries of Gaussians N(μ, Σ): tensors (or array-likes) in, Python floats out.

All computations run in float64 on the inputs' device. Matrix square roots go through the
symmetric eigendecomposition (``torch.linalg.eigh``) with tiny negative eigenvalues clamped to 0 —
never through eigenvalues of a non-symmetric product such as Σ1Σ2.
"""
from __future__ import annotations

import math

import torch

__all__ = ["sqrtm_psd", "frechet_distance", "w2_gaussian", "logdet", "trace", "gaussian_stats"]


def _f64(a, device=None) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64, device=device)


def _as_mat(cov, device=None) -> torch.Tensor:
    """A covariance as a (D, D) float64 tensor; scalars / 1-element inputs become (1, 1)."""
    c = _f64(cov, device)
    return c.reshape(1, 1) if c.ndim < 2 else c


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root S (…, D, D) of symmetric ``a`` (S S = a), via eigh; negative
    eigenvalues (round-off) are clamped to 0."""
    a = _f64(a)
    w, v = torch.linalg.eigh(0.5 * (a + a.mT))
    return (v * w.clamp_min(0.0).sqrt().unsqueeze(-2)) @ v.mT


def frechet_distance(mu1, cov1, mu2, cov2, clamp: bool = True) -> float:
    """Fréchet distance (squared W₂ of Gaussians, units²) between N(μ1, Σ1) and N(μ2, Σ2).

    μ: (d,), Σ: (d, d) symmetric PSD; computed in float64 on the inputs' device. The cross term
    is Σ √λ over the eigenvalues λ (clamped at 0) of the symmetric PSD M = Σ1^½ Σ2 Σ1^½. With
    ``clamp`` the value is floored at 0 (round-off only); a raw value below −1e-6·max(1, tr Σ1 +
    tr Σ2) raises RuntimeError. ``clamp=False`` returns the raw value.
    """
    mu1 = torch.as_tensor(mu1, dtype=torch.float64).reshape(-1)
    dev = mu1.device
    mu2 = torch.as_tensor(mu2, dtype=torch.float64, device=dev).reshape(-1)
    c1 = torch.as_tensor(cov1, dtype=torch.float64, device=dev)
    c2 = torch.as_tensor(cov2, dtype=torch.float64, device=dev)
    d = mu1.numel()
    if mu2.numel() != d or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {tuple(mu1.shape)}, cov1 {tuple(c1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, cov2 {tuple(c2.shape)}")
    s1 = sqrtm_psd(c1)
    m = s1 @ (0.5 * (c2 + c2.T)) @ s1
    cross = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0.0).sqrt().sum()
    traces = torch.trace(c1) + torch.trace(c2)
    val = float((mu1 - mu2).square().sum() + traces - 2.0 * cross)
    if not clamp:
        return val
    if val < -1e-6 * max(1.0, float(traces)):
        raise RuntimeError(f"Fréchet distance {val:.3g} is negative beyond round-off: "
                           "covariances are not PSD?")
    return max(val, 0.0)


def w2_gaussian(mu1, cov1, mu2, cov2) -> float:
    """2-Wasserstein distance W₂ (not squared; same units as the data) between N(μ1, Σ1) and
    N(μ2, Σ2): the square root of :func:`frechet_distance` (round-off below 0 clamped to 0),

        W₂ = sqrt(‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ2^½ Σ1 Σ2^½)^½)).

    μ: (D,), Σ: (D, D) (scalars are taken as 1-D variances).
    """
    mu1 = _f64(mu1).reshape(-1)
    dev = mu1.device
    mu2 = _f64(mu2, dev).reshape(-1)
    c1, c2 = _as_mat(cov1, dev), _as_mat(cov2, dev)
    if not (mu1.shape == mu2.shape and c1.shape == c2.shape == (mu1.numel(), mu1.numel())):
        raise ValueError(f"w2_gaussian: shapes mu1 {tuple(mu1.shape)}, cov1 {tuple(c1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, cov2 {tuple(c2.shape)} do not match")
    return math.sqrt(max(frechet_distance(mu2, c2, mu1, c1, clamp=False), 0.0))


def logdet(cov) -> float:
    """ln det Σ (nats) of a symmetric PSD (D, D) matrix; −inf if Σ is singular."""
    sign, val = torch.linalg.slogdet(_as_mat(cov))
    return float(val) if float(sign) > 0 else float("-inf")


def trace(cov) -> float:
    """tr Σ of a (D, D) matrix (total variance)."""
    return float(torch.trace(_as_mat(cov)))


def gaussian_stats(mean, cov, true_mean, true_cov) -> dict[str, float]:
    """Summary of a fitted Gaussian (μ, Σ) against the true (μ0, Σ0).

    Keys: ``w2_to_true`` (W₂, not squared), ``logdet_cov`` (ln det Σ), ``trace_cov`` (tr Σ),
    ``mean_err`` (‖μ − μ0‖).
    """
    mean = _f64(mean).reshape(-1)
    true_mean = _f64(true_mean, mean.device).reshape(-1)
    return {
        "w2_to_true": w2_gaussian(mean, cov, true_mean, true_cov),
        "logdet_cov": logdet(cov),
        "trace_cov": trace(cov),
        "mean_err": float((mean - true_mean).norm()),
    }
