"""Gaussian mixture model with full covariances, fitted by EM in torch (float64, any device).

Mirrors scikit-learn's ``GaussianMixture(covariance_type="full")``: ``reg_covar`` is added to
every component's diagonal, ``tol`` bounds the change of the mean per-sample log-likelihood
between EM iterations, empty components keep a tiny weight (10·eps). Initialisation draws from
the given ``torch.Generator`` only: k-means++ seeding plus a few vectorised Lloyd steps
(``init="kmeans++"``) or random responsibilities (``init="random"``).

Everything is vectorised over samples and components; the only Python loops run over EM / Lloyd
iterations, k-means++ seeds and (when sampling) components. Sampling bias λ scales every
component covariance: pick k ~ Cat(w), then x ~ N(μ_k, λΣ_k).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import LoopError, check_bias
from .base import GenerativeModel, ProgressFn, fit_column

_EPS = torch.finfo(torch.float64).eps
_DIVERGED_FIX = "raise model.reg_covar (e.g. 1e-4) or lower model.n_components"


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, K) between rows of x (N, D) and c (K, D)."""
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_min(0.0)


class GMMModel(GenerativeModel):
    """Mixture Σ_k w_k N(μ_k, Σ_k) over vectors (N, D); parameters kept in float64."""

    accepts = ("vector",)
    fit_columns = (
        fit_column("log_likelihood", "mean log-likelihood per sample under the final EM "
                   "parameters", "nats per sample"),
        fit_column("n_iter", "EM iterations run", "count"),
        fit_column("converged", "1 when |Δ log-likelihood| < tol before max_iter, else 0",
                   "flag (0 or 1)"),
    )

    def __init__(self, n_components: int = 10, max_iter: int = 100, tol: float = 1e-3,
                 reg_covar: float = 1e-6, init: str = "kmeans++", kmeans_iter: int = 10) -> None:
        if init not in ("kmeans++", "random"):
            raise LoopError(f"unknown GMM init {init!r}", "set model.init to kmeans++ or random")
        if int(n_components) < 1 or int(max_iter) < 1:
            raise LoopError("GMM needs n_components >= 1 and max_iter >= 1",
                            "fix model.n_components / model.max_iter")
        self.n_components, self.max_iter = int(n_components), int(max_iter)
        self.tol, self.reg_covar = float(tol), float(reg_covar)
        self.init, self.kmeans_iter = init, int(kmeans_iter)
        self.weights: Optional[torch.Tensor] = None      # (K,)
        self.means: Optional[torch.Tensor] = None        # (K, D)
        self.covariances: Optional[torch.Tensor] = None  # (K, D, D)
        self._chol: Optional[torch.Tensor] = None        # (K, D, D) lower, L Lᵀ = Σ_k
        self._dtype = torch.get_default_dtype()

    # ------------------------------------------------------------- EM steps
    def _m_step(self, x: torch.Tensor, resp: torch.Tensor) -> None:
        """Weights, means, covariances (+ reg_covar·I) from responsibilities resp (N, K)."""
        nk = resp.sum(0) + 10 * _EPS                                   # (K,)
        means = resp.T @ x / nk[:, None]                               # (K, D)
        diff = x.unsqueeze(0) - means.unsqueeze(1)                     # (K, N, D)
        cov = (diff * resp.T.unsqueeze(-1)).mT @ diff / nk[:, None, None]  # (K, D, D)
        cov = cov + self.reg_covar * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        self._set(nk / nk.sum(), means, 0.5 * (cov + cov.mT))

    def _set(self, weights: torch.Tensor, means: torch.Tensor, cov: torch.Tensor) -> None:
        """Store parameters and the Cholesky factors; LoopError if a covariance is not SPD."""
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()) or not bool(torch.isfinite(chol).all()):
            raise LoopError("GMM EM diverged (a component covariance is singular or NaN)",
                            _DIVERGED_FIX)
        self.weights, self.means, self.covariances, self._chol = weights, means, cov, chol

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """ln w_k + ln N(x_n | μ_k, Σ_k) as (N, K)."""
        diff = x.unsqueeze(0) - self.means.unsqueeze(1)                # (K, N, D)
        y = torch.linalg.solve_triangular(self._chol, diff.mT, upper=False)  # (K, D, N)
        maha = (y * y).sum(1).T                                        # (N, K)
        half_logdet = torch.log(torch.diagonal(self._chol, dim1=-2, dim2=-1)).sum(-1)
        d = x.shape[1]
        return torch.log(self.weights) - 0.5 * (d * math.log(2 * math.pi) + maha) - half_logdet

    def _e_step(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Responsibilities (N, K) and mean per-sample log-likelihood."""
        lj = self._log_joint(x)
        ll = torch.logsumexp(lj, dim=1, keepdim=True)
        return torch.exp(lj - ll), float(ll.mean())

    # ----------------------------------------------------------------- init
    def _init_resp(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, k = x.shape[0], self.n_components
        if self.init == "random":
            r = torch.rand((n, k), generator=g, device=x.device, dtype=x.dtype)
            return r / r.sum(1, keepdim=True)
        first = torch.randint(n, (1,), generator=g, device=x.device)
        centers = x[first]
        d2 = _sq_dists(x, centers).squeeze(1)
        for _ in range(1, k):                                          # k-means++ seeding
            p = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
            idx = torch.multinomial(p, 1, generator=g)
            centers = torch.cat([centers, x[idx]])
            d2 = torch.minimum(d2, _sq_dists(x, x[idx]).squeeze(1))
        for _ in range(self.kmeans_iter):                              # Lloyd iterations
            onehot = torch.nn.functional.one_hot(_sq_dists(x, centers).argmin(1), k).to(x.dtype)
            counts = onehot.sum(0)
            new = onehot.T @ x / counts.clamp_min(1.0)[:, None]
            centers = torch.where(counts[:, None] > 0, new, centers)   # keep empty clusters
        labels = _sq_dists(x, centers).argmin(1)
        return torch.nn.functional.one_hot(labels, k).to(x.dtype)

    # ------------------------------------------------------------------ fit
    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """EM on x (N, D). Returns ``log_likelihood`` (mean per sample, nats, under the final
        parameters), ``n_iter`` and ``converged`` (1.0 if |Δ log-likelihood| < tol)."""
        if x.ndim != 2:
            raise LoopError(f"GMMModel got data of shape {tuple(x.shape)}",
                            "use vector data (N, D), or PCAGMMModel for images")
        if x.shape[0] < self.n_components:
            raise LoopError(f"GMM has {self.n_components} components but only {x.shape[0]} "
                            "samples", "lower model.n_components or raise the pool size")
        if not bool(torch.isfinite(x).all()):
            raise LoopError("GMMModel got non-finite (NaN/inf) training data",
                            "check the data source or the previous generation's samples")
        self._dtype = x.dtype
        xd = x.to(torch.float64)
        self._m_step(xd, self._init_resp(xd, generator))
        prev, converged, it = -math.inf, False, 0
        for it in range(1, self.max_iter + 1):
            resp, ll = self._e_step(xd)
            if not math.isfinite(ll):
                raise LoopError("GMM EM diverged (log-likelihood is not finite)", _DIVERGED_FIX)
            self._m_step(xd, resp)
            if progress is not None:
                progress(it, self.max_iter)
            if abs(ll - prev) < self.tol:
                converged = True
                break
            prev = ll
        _, ll = self._e_step(xd)
        if not math.isfinite(ll):
            raise LoopError("GMM EM diverged (log-likelihood is not finite)", _DIVERGED_FIX)
        return {"log_likelihood": ll, "n_iter": float(it), "converged": float(converged)}

    def score(self, x: torch.Tensor) -> float:
        """Mean per-sample log-likelihood of x (N, D) under the fitted mixture (nats)."""
        self._require_fitted()
        return self._e_step(x.to(device=self.means.device, dtype=torch.float64))[1]

    # --------------------------------------------------------------- sample
    def sample(self, n: int, bias: float = 1.0,
               generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n samples (n, D): component k ~ Cat(w), then N(μ_k, λΣ_k); in the fitted dtype."""
        self._require_fitted()
        lam = check_bias(bias)
        comp = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        z = torch.randn((int(n), self.means.shape[1]), generator=generator,
                        device=self.means.device, dtype=torch.float64)
        out = torch.empty_like(z)
        for k in range(self.n_components):                             # loop over components
            idx = (comp == k).nonzero().squeeze(1)
            out[idx] = self.means[k] + (lam ** 0.5) * (z[idx] @ self._chol[k].T)
        if not bool(torch.isfinite(out).all()):
            raise LoopError("GMM produced non-finite samples", _DIVERGED_FIX)
        return out.to(self._dtype)

    # ---------------------------------------------------------------- state
    def moments(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Mixture mean Σ w_k μ_k (D,) and covariance Σ w_k(Σ_k + μ_k μ_kᵀ) − μμᵀ (D, D)."""
        self._require_fitted()
        w, mu = self.weights, self.means
        mean = w @ mu
        second = torch.einsum("k,kij->ij", w, self.covariances + mu[:, :, None] * mu[:, None, :])
        return mean, second - torch.outer(mean, mean)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"weights": (K,), "means": (K, D), "covariances": (K, D, D)} float64."""
        self._require_fitted()
        return {"weights": self.weights.clone(), "means": self.means.clone(),
                "covariances": self.covariances.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the mixture; ``n_components`` follows the saved weights."""
        w = state["weights"].to(torch.float64)
        mu = state["means"].to(device=w.device, dtype=torch.float64)
        cov = state["covariances"].to(device=w.device, dtype=torch.float64)
        self.n_components = int(w.shape[0])
        self._set(w, mu, cov)

    def _require_fitted(self) -> None:
        if self.means is None:
            raise LoopError("GMMModel is not fitted", "call fit() or load_state_dict() first")
