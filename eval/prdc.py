"""Improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

Definitions, for real features X (N, d), fake features Y (M, d), k nearest neighbours; r_k(x) is the
distance from x to its k-th nearest neighbour in its own set (self excluded); B(x, r) is the
*closed* ball {z : ‖z − x‖ <= r}:

* precision = (1/M) Σ_j 1[∃ i : Y_j ∈ B(X_i, r_k(X_i))]   (fakes on the real manifold)
* recall    = (1/N) Σ_i 1[∃ j : X_i ∈ B(Y_j, r_k(Y_j))]   (reals on the fake manifold)
* density   = 1/(kM) Σ_j Σ_i 1[‖Y_j − X_i‖ < r_k(X_i)]   (open ball, see Ties)
* coverage  = (1/N) Σ_i 1[min_j ‖X_i − Y_j‖ <= r_k(X_i)]

**Ties.** Precision, recall and coverage use ``distance <= radius`` (official P/R code); density
counts fakes strictly inside (``<``), as ``prdc.compute_prdc`` does for all four. On continuous
data (no ties) every convention agrees with prdc exactly; they differ only when distances tie:

* identical sets (Y = X, distinct points): all four are 1. (With ``<=`` density would be
  (k + 1)/k: each real ball would hold the copy of its centre *and* its k-th neighbour.)
* all points equal (prdc issue #7, radius 0): precision = recall = coverage = 1 with ``<=``;
  prdc's ``<`` gives 0 for those. Density is 0 there (no fake is strictly inside a radius-0 ball).

**Exactness.** Distances are screened in float32 and every pair the screen cannot decide is
re-checked in float64 (see :mod:`eval.knn`), so float32 round-off never flips a comparison; results
equal ``prdc.compute_prdc`` on data without (near-)ties at float64 resolution. (prdc rounds
distances of float32 inputs to float32, so on float32 inputs it can itself differ when two
distances agree to ~7 digits.) All four metrics come from ONE pass over real × fake tiles; the fake
radii need one pass over fake × fake tiles; the real radii are computed once by
:class:`RealManifold` and reused. Memory is bounded by the chunk budget (see :mod:`eval.knn`);
a manifold keeps one float32 copy of the real features.
"""
from __future__ import annotations

from typing import Optional

import torch

from eval.knn import (Embedded, as_points, dist_tiles, error_coef, kth_neighbour_sq_radii,
                      mean64, pair_sq_dists, pairs_below, round_up_f32, work_rows)

__all__ = ["RealManifold", "prdc"]


class RealManifold:
    """The real k-NN manifold: real features and their k-NN radii, computed once, scored against
    many fake sets.

    Args:
        real: (N, d) tensor or array; kept on ``device`` (default: its own device) in its dtype.
        k: neighbourhood size (the paper uses k = 5).
        chunk_bytes: memory budget per distance tile (default 256 MiB).
        device: where to compute (CPU or CUDA; the same code runs on both).

    Attributes: ``real`` (N, d); ``sq_radii`` (N,) float64 squared k-NN radii (units²).
    """

    def __init__(self, real, k: int = 5, *, chunk_bytes: Optional[int] = None, device=None):
        self.real = as_points(real, "real", device)
        self.k = int(k)
        self.chunk_bytes = chunk_bytes
        self.center = mean64(self.real, chunk_bytes)
        self._emb = Embedded(self.real, self.center, chunk_bytes)
        self.sq_radii = kth_neighbour_sq_radii(self.real, self.k, emb=self._emb,
                                               chunk_bytes=chunk_bytes)

    def _decide(self, real, fake, ii, jj, v, fake_sq_radii, nu_f, coef):
        """Exact membership of candidate pairs (real ii, fake jj) with screened squared distances
        v: (in the closed ball of real ii, in the open ball of real ii, in the closed ball of
        fake jj). Pairs farther than the error bound from the radii are decided by the screen;
        the rest in float64."""
        v = v.to(torch.float64)
        tau = coef * (self._emb.nu[ii] + nu_f[jj])
        r_a, r_b = self.sq_radii[ii], fake_sq_radii[jj]
        sure_a, sure_b, sure_open = v + tau <= r_a, v + tau <= r_b, v + tau < r_a
        need = ((sure_a != (v - tau <= r_a)) | (sure_b != (v - tau <= r_b))
                | (sure_open != (v - tau < r_a)))
        d2 = pair_sq_dists(real, fake, ii[need], jj[need], self.chunk_bytes)
        in_a, in_b, in_open = sure_a.clone(), sure_b.clone(), sure_open.clone()
        in_a[need], in_b[need], in_open[need] = d2 <= r_a[need], d2 <= r_b[need], d2 < r_a[need]
        return in_a, in_open, in_b

    def _fake_nu(self, fake: torch.Tensor) -> torch.Tensor:
        """(M,) float64 ‖y − real centre‖², in bounded chunks."""
        out = torch.empty(fake.shape[0], dtype=torch.float64, device=fake.device)
        step = work_rows(fake.shape[1], 16, self.chunk_bytes)
        for s in range(0, fake.shape[0], step):
            out[s:s + step] = (fake[s:s + step].to(torch.float64) - self.center).square().sum(1)
        return out

    @property
    def radii(self) -> torch.Tensor:
        """(N,) float64 k-NN radii (feature units)."""
        return self.sq_radii.sqrt()

    def score(self, fake) -> dict[str, float]:
        """Precision, recall, density, coverage of fake (M, d) against this manifold (floats)."""
        real, k, cb = self.real, self.k, self.chunk_bytes
        fake = as_points(fake, "fake", real.device)
        if fake.shape[1] != real.shape[1]:
            raise ValueError(f"fake has d={fake.shape[1]}, real has d={real.shape[1]}")
        n, m = real.shape[0], fake.shape[0]
        femb = Embedded(fake, mean64(fake, cb), cb)    # fake radii: centred on the fake mean
        fake_sq_radii = kth_neighbour_sq_radii(fake, k, emb=femb, chunk_bytes=cb)
        # Screening thresholds: every pair that may be inside (exactly) passes the float32 test.
        coef = error_coef(real.shape[1])
        nu_r, nu_f = self._emb.nu, self._fake_nu(fake)
        thr_real = round_up_f32(self.sq_radii + coef * (nu_r + nu_f.max()))             # (N,)
        thr_fake = round_up_f32(fake_sq_radii + coef * (nu_f + nu_r.max()))             # (M,)
        order = torch.argsort(thr_fake)  # fake columns by ball size: tight block maxima
        femb.fill(fake, self.center, cb, order=order)  # same buffer, real centre, sorted
        col_thr = torch.full((femb.a.shape[0],), -float("inf"), device=real.device)
        col_thr[:m] = thr_fake[order]

        dev = real.device
        in_real_ball = torch.zeros(m, dtype=torch.bool, device=dev)   # precision, per fake
        covered = torch.zeros(n, dtype=torch.bool, device=dev)        # coverage, per real
        in_fake_ball = torch.zeros(n, dtype=torch.bool, device=dev)   # recall, per real
        n_inside = torch.zeros((), dtype=torch.int64, device=dev)     # density numerator
        for i0, i1, tile in dist_tiles(self._emb, femb, chunk_bytes=cb):
            for ii, jj, v in pairs_below(tile, thr_real[i0:i1], col_thr, cb):
                ii, jj = ii + i0, order[jj]
                in_a, in_open, in_b = self._decide(real, fake, ii, jj, v, fake_sq_radii, nu_f,
                                                   coef)
                n_inside += in_open.sum()
                in_real_ball[jj[in_a]] = True            # fake j in the ball of real i
                covered[ii[in_a]] = True
                in_fake_ball[ii[in_b]] = True            # real i in the ball of fake j
        return {
            "precision": float(in_real_ball.double().mean()),
            "recall": float(in_fake_ball.double().mean()),
            "density": float(n_inside) / (k * m),
            "coverage": float(covered.double().mean()),
        }


def prdc(real, fake, k: int = 5, *, chunk_bytes: Optional[int] = None, device=None,
         ) -> dict[str, float]:
    """Precision, recall, density and coverage of fake (M, d) against real (N, d) features.

    Tensors or numpy arrays; returns ``{"precision", "recall", "density", "coverage"}`` as floats.
    Equivalent to ``RealManifold(real, k).score(fake)``; use :class:`RealManifold` directly to score
    several fake sets against one real set. Ties: ``<=`` (see module docstring).
    """
    return RealManifold(real, k, chunk_bytes=chunk_bytes, device=device).score(fake)
