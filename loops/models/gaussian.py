"""Multivariate Gaussian model: the closed-form case of Alemohammad et al. §3.1 / App. A.

Fit = unbiased estimators (mean, covariance with divisor n − 1); sample = N(μ, λΣ) with sampling
bias λ ∈ (0, 1]. A leading batch dimension holds *independent chains*, so a whole Monte-Carlo
study of the loop (thousands of chains) runs as one batched tensor program:

* ``fit(x)`` with x of shape (n, D) or (B, n, D);
* ``sample(n)`` returns (n, D) or (B, n, D) accordingly.

Statistics are computed in float64 on the device of the data; samples come back in the data's
dtype. Sampling multiplies standard normals by a square-root factor L of Σ (L Lᵀ = Σ): the
Cholesky factor, or — for chains whose Σ is singular (e.g. n ≤ D) and Cholesky fails — the
symmetric eigen factor V·diag(√max(w, 0)), which is exact for any PSD matrix and never crashes.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import LoopError, check_bias
from .base import GenerativeModel, ProgressFn, fit_column


def psd_factor(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Square-root factor L (…, D, D) with L Lᵀ = cov for symmetric PSD ``cov`` (…, D, D), and a
    bool mask (…) of the matrices where it is the Cholesky factor.

    Cholesky where it succeeds; matrices where it fails (singular / slightly indefinite from
    round-off) get V·diag(√max(w, 0)) from ``torch.linalg.eigh`` instead.
    """
    chol, info = torch.linalg.cholesky_ex(cov)
    ok = info == 0
    if not bool(ok.all()):
        w, v = torch.linalg.eigh(0.5 * (cov + cov.mT))
        eig_factor = v * w.clamp_min(0.0).sqrt().unsqueeze(-2)
        chol = torch.where(ok[..., None, None], chol, eig_factor)
    return chol, ok


def _logdet(cov: torch.Tensor, factor: torch.Tensor, is_chol: torch.Tensor) -> torch.Tensor:
    """ln det of symmetric PSD matrices (…, D, D) from their Cholesky factors where available,
    else slogdet; −inf for singular ones."""
    out = 2.0 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
    if not bool(is_chol.all()):
        sign, logabs = torch.linalg.slogdet(cov)
        out = torch.where(is_chol, out,
                          torch.where(sign > 0, logabs, torch.full_like(logabs, float("-inf"))))
    return out


class GaussianModel(GenerativeModel):
    """N(μ̂, λΣ̂) with μ̂ the sample mean and Σ̂ the unbiased (n − 1) sample covariance.

    Vector data only. ``moments()`` returns (μ̂ (…, D), Σ̂ (…, D, D)) in float64, with the batch
    dimension when the model was fitted on batched chains.
    """

    accepts = ("vector",)
    fit_columns = (
        fit_column("mean_norm", "‖μ̂‖ of the fitted mean (mean over chains)", "data units"),
        fit_column("trace_cov", "tr Σ̂ of the fitted covariance (mean over chains)",
                   "data units²"),
        fit_column("logdet_cov", "ln det Σ̂ of the fitted covariance, −inf if singular (mean "
                   "over chains)", "ln(data units^2D)"),
    )

    def __init__(self) -> None:
        self._mean: Optional[torch.Tensor] = None   # (…, D) float64
        self._cov: Optional[torch.Tensor] = None    # (…, D, D) float64
        self._factor: Optional[torch.Tensor] = None  # (…, D, D) float64, L Lᵀ = Σ̂
        self._is_chol: Optional[torch.Tensor] = None  # (…) bool, factor is Cholesky
        self._dtype: torch.dtype = torch.get_default_dtype()

    # ------------------------------------------------------------------ fit
    def fit(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Estimate μ̂, Σ̂ from x (n, D) or (B, n, D); deterministic (``generator`` unused).

        Returns ``mean_norm`` (‖μ̂‖), ``trace_cov`` (tr Σ̂), ``logdet_cov`` (ln det Σ̂, −inf if
        singular); averaged over chains for batched input.
        """
        if x.ndim not in (2, 3):
            raise LoopError(f"GaussianModel got data of shape {tuple(x.shape)}",
                            "use vector data (N, D) or batched chains (B, N, D)")
        n = x.shape[-2]
        if n < 2:
            raise LoopError(f"GaussianModel needs at least 2 samples to fit, got {n}",
                            "raise the pool size (loop.n_samples)")
        xd = x.to(torch.float64)
        mean = xd.mean(dim=-2)
        xc = xd - mean.unsqueeze(-2)
        cov = xc.mT @ xc / (n - 1)
        if not bool(torch.isfinite(torch.diagonal(cov, dim1=-2, dim2=-1).sum())):  # NaN/inf in x
            raise LoopError("GaussianModel got non-finite (NaN/inf) training data",
                            "check the data source or the previous generation's samples")
        self._set(mean, 0.5 * (cov + cov.mT))
        self._dtype = x.dtype
        if progress is not None:
            progress(1, 1)
        return {
            "mean_norm": float(mean.norm(dim=-1).mean()),
            "trace_cov": float(torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).mean()),
            "logdet_cov": float(_logdet(self._cov, self._factor, self._is_chol).mean()),
        }

    def _set(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        self._mean, self._cov = mean, cov
        self._factor, self._is_chol = psd_factor(cov)

    # --------------------------------------------------------------- sample
    def sample(self, n: int, bias: float = 1.0,
               generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Draw n samples from N(μ̂, λΣ̂): (n, D), or (B, n, D) per chain if fitted batched."""
        self._require_fitted()
        lam = check_bias(bias)
        mean, factor = self._mean, self._factor
        z = torch.randn((*mean.shape[:-1], int(n), mean.shape[-1]), generator=generator,
                        device=mean.device, dtype=torch.float64)
        if z.ndim == 2:
            out = torch.addmm(mean, z, factor.T, alpha=lam ** 0.5)
        else:
            out = torch.baddbmm(mean.unsqueeze(-2), z, factor.mT, alpha=lam ** 0.5)
        return out.to(self._dtype)

    # ---------------------------------------------------------------- state
    def moments(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(μ̂, Σ̂) in float64: (D,), (D, D) — or (B, D), (B, D, D) for batched chains."""
        self._require_fitted()
        return self._mean.clone(), self._cov.clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"mean": (…, D), "cov": (…, D, D)} float64."""
        self._require_fitted()
        return {"mean": self._mean.clone(), "cov": self._cov.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore μ̂, Σ̂; samples then come back in the dtype last fitted (default: float32)."""
        mean = state["mean"].to(torch.float64)
        cov = state["cov"].to(device=mean.device, dtype=torch.float64)
        if cov.shape != (*mean.shape, mean.shape[-1]):
            raise LoopError(f"GaussianModel state has mean {tuple(mean.shape)} and cov "
                            f"{tuple(cov.shape)}", "load a state saved by GaussianModel")
        self._set(mean, cov)

    def _require_fitted(self) -> None:
        if self._mean is None:
            raise LoopError("GaussianModel is not fitted", "call fit() or load_state_dict() first")
