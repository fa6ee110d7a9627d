"""Gaussian laws of self-consuming loops (Alemohammad et al. §3.1, App. A), by batched simulation.

Many independent chains run at once through :class:`GaussianModel` (fit on (B, n, D), sample
(B, n, D)), in float64 on the CPU.

Convention ("generation t"), fully synthetic loop, t = 1, 2, …:
  * generation 1 fits (μ̂_1, Σ̂_1) — unbiased, divisor n − 1 — to n real samples of N(0, Σ_0),
    Σ_0 = I, μ_0 = 0;
  * generation t ≥ 2 fits (μ̂_t, Σ̂_t) to n samples of generation t − 1, i.e. of N(μ̂_{t−1}, λΣ̂_{t−1});
  * μ_t := μ̂_t and Σ_t := λΣ̂_t, the covariance of the distribution generation t *samples from*.
This is the paper's convention, E[Σ_t | Σ_{t−1}] = λΣ_{t−1} and E tr Σ_t = λ^t tr Σ_0: Σ_t involves
t fits and t biased samplings. Since (n − 1)Σ̂_t ~ Wishart(Σ_{t−1}, n − 1), in 1-D
ln σ²_t = t ln λ + Σ_{k≤t} ln(χ²_{n−1,k}/(n − 1)), hence E ln σ²_t = t(ln λ + ψ((n−1)/2) + ln(2/(n−1))).
(The fitted variance σ̂²_t = σ²_t/λ would carry λ^{t−1}; tests below check that this and other
wrong laws are rejected by the same tolerance, so the tolerances are discriminative.)
"""
from __future__ import annotations

import math

import pytest
import torch
from scipy.special import digamma

from loops.models import GaussianModel

F64 = torch.float64


def run_fully_synthetic(n_chains: int, n: int, d: int, generations: int, lam: float,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns μ_T (B, d) and Σ_T = λΣ̂_T (B, d, d) after T = ``generations`` fits."""
    g = torch.Generator().manual_seed(seed)
    model = GaussianModel()
    x = torch.randn(n_chains, n, d, generator=g, dtype=F64)           # generation 1: real data
    for t in range(1, generations + 1):
        model.fit(x, g)
        if t < generations:
            x = model.sample(n, lam, g)                                # (B, n, d)
    mu, cov = model.moments()
    return mu, lam * cov


def log_var_step(n: int) -> float:
    """E ln(χ²_{n−1}/(n−1)) = ψ((n−1)/2) + ln(2/(n−1))."""
    return float(digamma((n - 1) / 2) + math.log(2 / (n - 1)))


@pytest.mark.parametrize("n,lam,n_chains,seed", [(10, 1.0, 50_000, 11), (10, 0.8, 50_000, 12),
                                                 (100, 1.0, 20_000, 13), (100, 0.8, 20_000, 14)])
def test_geometric_mean_variance_law(n, lam, n_chains, seed):
    """Geometric mean over chains of σ²_10 ≈ λ^t exp(t(ψ((n−1)/2) + ln(2/(n−1)))) within 5%."""
    t = 10
    _, cov = run_fully_synthetic(n_chains, n, 1, t, lam, seed)
    geo = float(cov[:, 0, 0].log().mean().exp())
    law = lam ** t * math.exp(t * log_var_step(n))
    assert abs(geo / law - 1) < 0.05, (geo, law)
    # The same tolerance rejects wrong laws: no ψ term (σ² = λ^t), and λ^{t−1}.
    assert abs(geo / lam ** t - 1) > 0.05
    if lam < 1:
        assert abs(geo / (law / lam) - 1) > 0.05


def test_mean_drift_law():
    """E‖μ_t − μ_0‖² = t·tr Σ_0 / n at λ = 1 (a martingale with increments of covariance Σ_{t−1}/n)."""
    t, n, d = 10, 32, 8
    mu, _ = run_fully_synthetic(10_000, n, d, t, 1.0, seed=21)
    msd = float(mu.square().sum(-1).mean())
    law = t * d / n
    assert abs(msd / law - 1) < 0.05, (msd, law)
    assert abs(msd / ((t - 1) * d / n) - 1) > 0.05                    # off-by-one is rejected


@pytest.mark.parametrize("lam,seed", [(1.0, 31), (0.8, 32)])
def test_logdet_drift_law(lam, seed):
    """Per-generation drift of ln det Σ_t ≈ d ln λ + Σ_{i=1..d}[ψ((n−i)/2) + ln(2/(n−1))], d = 8,
    n = 50, measured as E[ln det Σ_T − ln det Σ_0] / T with ln det Σ_0 = 0, within 3%."""
    t, n, d = 10, 50, 8
    _, cov = run_fully_synthetic(8_000, n, d, t, lam, seed)
    drift = float(torch.linalg.slogdet(cov)[1].mean()) / t
    law = d * math.log(lam) + sum(float(digamma((n - i) / 2)) + math.log(2 / (n - 1))
                                  for i in range(1, d + 1))
    assert abs(drift / law - 1) < 0.03, (drift, law)
    if lam == 1.0:  # the first-order approximation −d(d+1)/(2(n−1)) is 6% off: rejected
        assert abs(drift / (-d * (d + 1) / (2 * (n - 1))) - 1) > 0.03


def test_fresh_data_stationary_variance():
    """1-D fresh-data loop: generation 1 fits n_r real samples; generation t ≥ 2 fits n_r new real
    samples of N(0, 1) plus n_s samples of N(μ̂_{t−1}, λσ̂²_{t−1}). The fitted variance σ̂²_t obeys
    E σ̂²_t ≈ p + (1 − p)λ E σ̂²_{t−1}, p = n_r/(n_r + n_s), so its stationary value is
    p / (p + (1 − p)(1 − λ)) (n_r = 100, n_s = 900, λ = 0.8 → 0.357). Averaged over chains and
    over generations 31..60 (after burn-in; the transient decays as 0.72^t), within 2%."""
    n_r, n_s, lam, n_chains, generations, burn_in = 100, 900, 0.8, 500, 60, 30
    g = torch.Generator().manual_seed(41)
    model = GaussianModel()
    model.fit(torch.randn(n_chains, n_r, 1, generator=g, dtype=F64), g)
    kept = []
    for t in range(2, generations + 1):
        real = torch.randn(n_chains, n_r, 1, generator=g, dtype=F64)
        model.fit(torch.cat([real, model.sample(n_s, lam, g)], dim=1), g)
        if t > burn_in:
            kept.append(model.moments()[1][:, 0, 0])
    var = float(torch.stack(kept).mean())
    p = n_r / (n_r + n_s)
    law = p / (p + (1 - p) * (1 - lam))
    assert abs(law - 0.357) < 1e-3
    assert abs(var / law - 1) < 0.02, (var, law)
    assert abs(var / (lam * law) - 1) > 0.02                           # not the sampled variance
