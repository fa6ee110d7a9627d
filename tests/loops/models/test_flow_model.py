"""FlowModel (RealNVP): likelihood against autograd Jacobians, invertibility, fitted moments against
the data's, the N(0, λI) latent bias, determinism, state round trip and error handling."""
from __future__ import annotations

import io
import math

import pytest
import torch

from loops.errors import LoopError
from loops.models.base import GenerativeModel
from loops.models.flow import FlowModel, standard_normal_log_prob

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEAN = torch.tensor([3.0, -1.0])
CHOL = torch.tensor([[2.0, 0.0], [1.2, 0.5]])      # Σ = L Lᵀ = [[4, 2.4], [2.4, 1.69]]: ρ = 0.92
N_SAMPLES = 20_000                                 # Monte-Carlo draws for moment checks


def gaussian_data(n: int = 4000, seed: int = 0) -> torch.Tensor:
    """Correlated 2-D Gaussian, float32 (n, 2)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) @ CHOL.T + MEAN


def random_flow(dim: int = 3, seed: int = 0) -> tuple[FlowModel, torch.Tensor]:
    """An untrained flow with random (non-identity) couplings and ActNorms on skewed 3-D data.

    One optimiser step sets the standardisation and data-initialises the ActNorms; every parameter
    is then perturbed, since the zero-initialised coupling outputs would make the couplings the
    identity. Returns the model (float64) and its data (200, dim) float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, dim, generator=g, dtype=torch.float64) * torch.arange(1.0, dim + 1)
    x = x + 0.3 * x[:, :1] ** 2                       # non-Gaussian, correlated
    m = FlowModel(n_layers=4, hidden=16, steps=1)
    m.fit(x, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in m.flow.parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=g))
    m.flow.double()
    return m, x


@pytest.fixture(scope="module")
def fitted():
    """Default flow fitted on the correlated Gaussian (400 steps), with its data and stats."""
    x = gaussian_data()
    m = FlowModel(steps=400)
    calls = []
    stats = m.fit(x, torch.Generator().manual_seed(1), progress=lambda s, t: calls.append((s, t)))
    return m, x, stats, calls


# -- exact likelihood and invertibility ---------------------------------------------------------
def test_log_prob_is_change_of_variables_with_autograd_jacobian():
    """log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|, the Jacobian from autograd (D = 3)."""
    m, x = random_flow()
    pts = x[:8]
    ref = []
    for xi in pts:
        jac = torch.autograd.functional.jacobian(lambda v: m.forward(v[None])[0][0], xi)
        z = m.forward(xi[None])[0]
        ref.append(standard_normal_log_prob(z)[0] + torch.linalg.slogdet(jac).logabsdet)
    ref = torch.stack(ref)
    torch.testing.assert_close(m.log_prob(pts), ref, rtol=1e-10, atol=1e-10)
    _, logdet = m.forward(pts)
    assert float(logdet.std()) > 0.1               # the couplings really depend on x
    assert m.nll(pts) == pytest.approx(-float(ref.mean()), rel=1e-10)


def test_inverse_undoes_forward(fitted):
    """To 1e-5 both for the random float64 flow and for the trained float32 one."""
    m, x = random_flow()
    torch.testing.assert_close(m.inverse(m.forward(x)[0]), x, rtol=0, atol=1e-5)
    m32, x32, _, _ = fitted
    torch.testing.assert_close(m32.inverse(m32.forward(x32)[0]), x32, rtol=0, atol=1e-5)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(m32.forward(m32.inverse(z))[0], z, rtol=0, atol=1e-5)


# -- fitting ------------------------------------------------------------------------------------
def test_fit_matches_gaussian_moments_and_likelihood(fitted):
    m, x, stats, calls = fitted
    assert isinstance(m, GenerativeModel)
    xd = x.double()
    mean, cov = xd.mean(0), torch.cov(xd.T)
    s = m.sample(N_SAMPLES, 1.0, torch.Generator().manual_seed(2))
    assert s.shape == (N_SAMPLES, 2) and s.dtype == torch.float32
    sd = s.double()
    sigma = cov.diagonal().sqrt()
    # Monte-Carlo s.e. of the sample mean is σ/√20000 = 0.007σ; 0.03σ leaves room for fit error.
    torch.testing.assert_close((sd.mean(0) - mean) / sigma, torch.zeros(2, dtype=torch.float64),
                               rtol=0, atol=0.03)
    # s.e. of a (co)variance entry is ≤ √(2/20000) = 1% of σ_i σ_j; allow 4%.
    torch.testing.assert_close(torch.cov(sd.T) / torch.outer(sigma, sigma),
                               cov / torch.outer(sigma, sigma), rtol=0, atol=0.04)
    # nll_first: the untrained flow is N(μ, diag σ²); nll: close to the full Gaussian's NLL
    diag_nll = 0.5 * 2 * math.log(2 * math.pi * math.e) + xd.std(0, correction=0).log().sum()
    gauss_nll = 0.5 * torch.logdet(2 * math.pi * math.e * cov)
    assert stats["nll_first"] == pytest.approx(float(diag_nll), abs=1e-4)
    assert stats["nll"] == pytest.approx(float(gauss_nll), abs=0.03)
    assert stats["steps"] == 400.0 and calls == [(i, 400) for i in range(1, 401)]
    assert stats["nll"] == pytest.approx(m.nll(x), abs=1e-6)


def test_bias_draws_latents_from_scaled_normal(fitted):
    """The forward map of λ = 0.5 samples is N(0, 0.5 I), and it is √λ times the latents of the
    λ = 1 samples drawn with the same generator seed."""
    m, _, _, _ = fitted
    s = m.sample(N_SAMPLES, 0.5, torch.Generator().manual_seed(4))
    z = m.forward(s)[0].double()
    # s.e.: mean √(0.5/20000) = 0.005, variance 0.5·√(2/20000) = 0.005; tolerance 4 s.e.
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(z.T), 0.5 * torch.eye(2, dtype=torch.float64),
                               rtol=0, atol=0.02)
    z1 = m.forward(m.sample(N_SAMPLES, 1.0, torch.Generator().manual_seed(4)))[0]
    torch.testing.assert_close(m.forward(s)[0], math.sqrt(0.5) * z1, rtol=0, atol=1e-4)


def test_identity_flow_samples_the_scaled_diagonal_gaussian(fitted):
    """With every coupling and ActNorm zeroed, the flow is x = μ + σ z, so a λ-biased sample is
    exactly μ + σ √λ z for the generator's normals z, and log p is the diagonal Gaussian's."""
    m, x, _, _ = fitted
    state = {k: torch.zeros_like(v) if k.startswith("flow.") else v
             for k, v in m.state_dict().items()}
    ident = FlowModel()
    ident.load_state_dict(state)
    mu, sigma = x.double().mean(0), x.double().std(0, correction=0)
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    s = ident.sample(1000, 0.3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(s.double(), mu + sigma * math.sqrt(0.3) * z.double(),
                               rtol=0, atol=1e-5)
    ref = torch.distributions.Normal(mu, sigma).log_prob(x.double()).sum(1)
    torch.testing.assert_close(ident.log_prob(x).double(), ref, rtol=0, atol=1e-4)


# -- reproducibility and state -----------------------------------------------------------------
def test_same_seed_same_model_other_seed_differs():
    x = gaussian_data(500, seed=6)
    runs = []
    for seed in (7, 7, 8):
        m = FlowModel(n_layers=4, hidden=16, steps=30, batch_size=64)
        stats = m.fit(x, torch.Generator().manual_seed(seed))
        runs.append((m.state_dict(), m.sample(50, 0.8, torch.Generator().manual_seed(9)), stats))
    (a, sa, st_a), (b, sb, st_b), (c, sc, _) = runs
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(sa, sb) and st_a == st_b
    assert not torch.equal(a["flow.couplings.0.net.0.weight"], c["flow.couplings.0.net.0.weight"])
    assert not torch.allclose(sa, sc)


def test_state_dict_round_trip_through_torch_save(fitted):
    m, x, _, _ = fitted
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = FlowModel(n_layers=2, hidden=4)          # the architecture comes from the state
    other.load_state_dict(state)
    g = lambda: torch.Generator().manual_seed(10)    # noqa: E731
    assert torch.equal(other.sample(300, 0.7, g()), m.sample(300, 0.7, g()))
    assert torch.equal(other.log_prob(x[:100]), m.log_prob(x[:100]))
    with pytest.raises(LoopError):
        FlowModel().load_state_dict({"mean": state["mean"]})


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"n_layers": 1}, {"hidden": 0}, {"depth": 0}, {"steps": 0}, {"batch_size": 1},
    {"steps": 2.5}, {"steps": "100"}, {"hidden": True}, {"lr": 0.0}, {"lr": -1e-3},
    {"lr": float("nan")}, {"lr": float("inf")}, {"weight_decay": -0.1}, {"scale_max": 0.0},
    {"grad_clip": -1.0}, {"sample_batch_size": 0}, {"schedule": "linear"}])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(LoopError, match="model\\."):
        FlowModel(**kwargs)


@pytest.mark.parametrize("bias", [0.0, -0.5, 1.01, float("nan")])
def test_bias_outside_unit_interval_raises(fitted, bias):
    with pytest.raises(LoopError, match="bias"):
        fitted[0].sample(10, bias)


def test_diverging_fit_raises_instead_of_returning_nan():
    x = gaussian_data(500)
    with pytest.raises(LoopError, match="model.lr") as info:
        FlowModel(lr=1e6, steps=200).fit(x, torch.Generator().manual_seed(0))
    assert "diverged" in info.value.problem


def test_refuses_images_and_bad_data():
    assert FlowModel.accepts == ("vector",)
    g = torch.Generator().manual_seed(0)
    bad = [torch.rand(20, 1, 4, 4), torch.randn(20, 1), torch.randn(1, 2),
           torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]),
           torch.stack([torch.ones(20), torch.randn(20)], 1)]       # a constant dimension
    for x in bad:
        with pytest.raises(LoopError):
            FlowModel(steps=1).fit(x, g)
    with pytest.raises(LoopError, match="not fitted"):
        FlowModel().sample(5)
