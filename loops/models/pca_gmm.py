"""PCA + GMM: a cheap, closed-form-ish generative model for images (and vectors).

Each generation, from scratch: flatten the pool to (N, F), fit PCA (top ``n_components``
principal axes of the centred data), fit a :class:`GMMModel` with ``gmm_components`` full-
covariance components on the latent codes (N, k). Sampling draws latents with bias λ (component
covariances × λ), decodes x = mean + z Wᵀ and, for images, clamps to [0, 1] and reshapes to the
fitted (C, H, W).

PCA is exact and deterministic: the eigendecomposition (``torch.linalg.eigh``, float64) of the
smaller Gram matrix — XᵀX (F × F) when F ≤ N, else XXᵀ (N × N) — with sklearn's sign convention
(largest-|loading| entry of each axis positive). Only the GMM initialisation uses the generator.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ..errors import LoopError
from .base import FIT_PREFIX, GenerativeModel, ProgressFn, fit_column
from .gmm import GMMModel


def pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of x (N, F) float64 → (mean (F,), components W (F, k) orthonormal columns,
    all eigenvalues (min(N, F),) of the covariance (divisor N − 1), descending)."""
    n, f = x.shape
    mean = x.mean(0)
    xc = x - mean
    if f <= n:
        evals, evecs = torch.linalg.eigh(xc.T @ xc)                    # ascending
        evals, w = evals.flip(0), evecs.flip(1)[:, :k]
    else:
        evals, u = torch.linalg.eigh(xc @ xc.T)
        evals, u = evals.flip(0), u.flip(1)[:, :k]
        w = xc.T @ u / evals[:k].clamp_min(1e-300).sqrt()               # right singular vectors
        w = w / w.norm(dim=0).clamp_min(1e-300)
    idx = w.abs().argmax(0)                                            # svd_flip-like signs
    signs = torch.sign(w[idx, torch.arange(w.shape[1], device=w.device)])
    w = w * torch.where(signs == 0, torch.ones_like(signs), signs)
    return mean, w, evals.clamp_min(0.0) / max(n - 1, 1)


class PCAGMMModel(GenerativeModel):
    """GMM in a PCA latent space. Images (N, C, H, W) in [0, 1] or vectors (N, D)."""

    accepts = ("image", "vector")
    fit_columns = (
        fit_column("explained_variance_ratio", "variance kept by the k PCA axes ÷ total variance",
                   "fraction in [0, 1]"),
        fit_column("n_latent", "latent dimension k = min(n_components, features, N − 1)",
                   "count"),
        *(replace(c, name=f"{FIT_PREFIX}gmm_{c.name.removeprefix(FIT_PREFIX)}",
                  meaning=f"latent GMM: {c.meaning}",
                  computed_on="the k-dimensional PCA codes of generation t's training pool, by "
                              "the EM fit")
          for c in GMMModel.fit_columns),
    )

    def __init__(self, n_components: int = 64, gmm_components: int = 20, max_iter: int = 100,
                 tol: float = 1e-3, reg_covar: float = 1e-6, init: str = "kmeans++") -> None:
        if int(n_components) < 1:
            raise LoopError(f"PCA n_components={n_components} < 1", "set model.n_components >= 1")
        self.n_components = int(n_components)
        self.gmm = GMMModel(n_components=gmm_components, max_iter=max_iter, tol=tol,
                            reg_covar=reg_covar, init=init)
        self.mean: Optional[torch.Tensor] = None        # (F,) float64
        self.components: Optional[torch.Tensor] = None  # (F, k) float64
        self.shape: Optional[tuple[int, ...]] = None    # data shape without the batch dim
        self._dtype = torch.get_default_dtype()

    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """PCA on flattened x, then EM on the latent codes.

        Latent dimension k = min(n_components, F, N − 1). Returns
        ``explained_variance_ratio`` (variance kept by the k axes / total variance), ``n_latent``
        (k) and the GMM statistics prefixed ``gmm_``.
        """
        if x.ndim not in (2, 4):
            raise LoopError(f"PCAGMMModel got data of shape {tuple(x.shape)}",
                            "use images (N, C, H, W) or vectors (N, D)")
        if x.shape[0] < 2:
            raise LoopError("PCAGMMModel needs at least 2 samples", "raise the pool size")
        if not bool(torch.isfinite(x).all()):
            raise LoopError("PCAGMMModel got non-finite (NaN/inf) training data",
                            "check the data source or the previous generation's samples")
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        k = min(self.n_components, flat.shape[1], flat.shape[0] - 1)
        mean, w, evals = pca(flat, k)
        total = float(evals.sum())
        evr = float(evals[:k].sum()) / total if total > 0 else 1.0
        codes = (flat - mean) @ w                                      # (N, k)
        gstats = self.gmm.fit(codes, generator, progress)
        self.mean, self.components = mean, w
        self.shape, self._dtype = tuple(x.shape[1:]), x.dtype
        return {"explained_variance_ratio": evr, "n_latent": float(k),
                **{f"gmm_{key}": val for key, val in gstats.items()}}

    def sample(self, n: int, bias: float = 1.0,
               generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n samples (n, *fitted shape); images clamped to [0, 1]; in the fitted dtype."""
        self._require_fitted()
        z = self.gmm.sample(n, bias, generator).to(torch.float64)     # (n, k), λ applied there
        out = self.mean + z @ self.components.T                        # (n, F)
        if self._is_image:
            out = out.clamp(0.0, 1.0)
        return out.reshape(int(n), *self.shape).to(self._dtype)

    @property
    def _is_image(self) -> bool:
        return self.shape is not None and len(self.shape) == 3

    def moments(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """For vector data, mean (D,) and covariance W Σ_z Wᵀ (D, D) of the decoded mixture
        (rank ≤ k); ``None`` for images (clamping makes them non-closed-form)."""
        self._require_fitted()
        if self._is_image:
            return None
        mz, cz = self.gmm.moments()
        w = self.components
        return self.mean + w @ mz, w @ cz @ w.T

    def state_dict(self) -> dict[str, torch.Tensor]:
        """PCA mean/components, the data shape (int64) and the GMM state under ``gmm_``."""
        self._require_fitted()
        return {"pca_mean": self.mean.clone(), "pca_components": self.components.clone(),
                "shape": torch.tensor(self.shape, dtype=torch.int64),
                **{f"gmm_{k}": v for k, v in self.gmm.state_dict().items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore PCA and GMM; samples then come back in the dtype last fitted (default float32)."""
        self.mean = state["pca_mean"].to(torch.float64)
        self.components = state["pca_components"].to(device=self.mean.device, dtype=torch.float64)
        self.shape = tuple(int(s) for s in state["shape"].tolist())
        self.gmm.load_state_dict({k[4:]: v.to(self.mean.device) for k, v in state.items()
                                  if k.startswith("gmm_")})

    def _require_fitted(self) -> None:
        if self.mean is None:
            raise LoopError("PCAGMMModel is not fitted", "call fit() or load_state_dict() first")
