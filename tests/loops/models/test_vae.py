"""VAEModel: the ELBO's terms against closed forms and torch.distributions, the latent temperature
on the latent draw, determinism, state round trips, any image shape, settings and divergence
errors, and a short real training on scikit-learn's digits."""
from __future__ import annotations

import io
import math

import pytest
import torch
import configs  # noqa: F401  (registers the schemas the model yamls start from)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.distributions import (Bernoulli, ContinuousBernoulli, Normal, kl_divergence)

import loops.models.vae as vae_module
from loops.errors import LoopError
from loops.models.vae import (ConvVAE, VAEModel, decoder_mean, elbo_terms, gaussian_kl, imq_mmd,
                              padding, reconstruction_nll)
from tests.madmark.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a tiny VAE and latent flow: a fit of 64 8x8 images takes well under a second
SMALL = dict(latent_dim=4, width=4, epochs=2, batch_size=16, lr=3e-3, prior_layers=2,
             prior_hidden=8, prior_steps=20, prior_draws=1, sample_batch_size=7)


def blobs(n: int = 64, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    """(n, *shape) images in [0, 1]: a bright square at a random place on a dark background."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    x = torch.full((n, c, h, w), 0.05)
    r = torch.randint(0, max(1, h - 2), (n,), generator=g)
    s = torch.randint(0, max(1, w - 2), (n,), generator=g)
    for i in range(n):
        x[i, :, r[i]:r[i] + 3, s[i]:s[i] + 3] = 0.95
    return x


def fitted(seed: int = 0, x: torch.Tensor | None = None, **kw) -> VAEModel:
    m = VAEModel(**{**SMALL, **kw})
    m.fit(blobs() if x is None else x, torch.Generator().manual_seed(seed))
    return m


@pytest.fixture(scope="module")
def flow_model() -> VAEModel:
    return fitted()


@pytest.fixture(scope="module")
def normal_model() -> VAEModel:
    return fitted(prior="normal")


# -- the ELBO -----------------------------------------------------------------------------------
def test_kl_is_the_closed_form_of_diagonal_gaussians():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=g, dtype=torch.float64)
    want = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), want)
    # by hand for one point: μ = 1, σ² = e: ½ (1 + e − 1 − 1)
    got = gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    torch.testing.assert_close(got, torch.tensor([0.5 * (math.e - 1)]))
    assert float(gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4))) == 0.0


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_reconstruction_nll_is_the_distributions_log_prob(likelihood):
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(4, 2, 3, 3, generator=g)
    x = torch.rand(4, 2, 3, 3, generator=g)
    s = torch.tensor(-1.3)
    if likelihood == "bernoulli":         # soft targets: −[x log p + (1 − x) log(1 − p)]
        p = torch.sigmoid(logits)
        log_p = x * p.log() + (1 - x) * (1 - p).log()
    elif likelihood == "continuous_bernoulli":
        log_p = ContinuousBernoulli(logits=logits).log_prob(x)
    else:
        log_p = Normal(torch.sigmoid(logits), s.exp()).log_prob(x)
    got = reconstruction_nll(logits, x, likelihood, s)
    torch.testing.assert_close(got, -log_p.flatten(1).sum(1), atol=1e-4, rtol=1e-5)
    if likelihood == "bernoulli":         # binary data: exactly the Bernoulli log-likelihood
        xb = (x > 0.5).float()
        torch.testing.assert_close(reconstruction_nll(logits, xb, likelihood),
                                   -Bernoulli(logits=logits).log_prob(xb).flatten(1).sum(1))


def test_decoder_mean_is_the_likelihoods_mean():
    logits = torch.linspace(-6, 6, 13).view(1, 1, 1, 13)
    torch.testing.assert_close(decoder_mean(logits, "bernoulli"), torch.sigmoid(logits))
    torch.testing.assert_close(decoder_mean(logits, "gaussian"), torch.sigmoid(logits))
    cb = decoder_mean(logits, "continuous_bernoulli")
    torch.testing.assert_close(cb, ContinuousBernoulli(logits=logits).mean)
    assert float(cb.min()) > 0 and float(cb.max()) < 1 and bool((cb.diff() > 0).all())


def test_elbo_terms_of_a_tiny_net_against_a_hand_computation():
    """One draw z = μ + σ ε through a 2-level net: rec = −log Bernoulli(x; σ(decode(z))) and
    kl = KL(N(μ, σ²) ‖ N(0, I)), both recomputed from the encoder's outputs."""
    torch.manual_seed(0)
    net = ConvVAE((1, 8, 8), latent_dim=3, width=2, levels=2)
    x, eps = blobs(5), torch.randn(5, 3)
    out, mu, logvar = net(x, eps)
    rec, kl = elbo_terms(out, x, mu, logvar, "bernoulli")
    mu2, logvar2 = net.encode(x)
    z = mu2 + (0.5 * logvar2).exp() * eps
    p = torch.sigmoid(net.decode(z))
    want_rec = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    want_kl = kl_divergence(Normal(mu2, (0.5 * logvar2).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(rec, want_rec, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(kl, want_kl)
    assert out.shape == x.shape and mu.shape == logvar.shape == (5, 3)


def test_imq_mmd_against_a_hand_loop():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g,
                                                                            dtype=torch.float64)
    k = lambda u, v: 4.0 / (4.0 + float((u - v).pow(2).sum()))           # noqa: E731  C = 2d
    aa = sum(k(a[i], a[j]) for i in range(4) for j in range(4) if i != j) / 12
    bb = sum(k(b[i], b[j]) for i in range(3) for j in range(3) if i != j) / 6
    ab = sum(k(a[i], b[j]) for i in range(4) for j in range(3)) / 12
    assert float(imq_mmd(a, b)) == pytest.approx(aa + bb - 2 * ab, abs=1e-12)


# -- shapes -------------------------------------------------------------------------------------
def test_padding_brings_sides_to_a_multiple():
    assert padding(28, 4) == (0, 0) and padding(25, 4) == (1, 2) and padding(6, 4) == (1, 1)
    assert padding(1, 8) == (3, 4)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 6), (1, 25, 25), (2, 5, 7)])
def test_any_image_shape_fits_and_samples(shape):
    x = blobs(32, shape)
    m = VAEModel(**{**SMALL, "epochs": 1})
    stats = m.fit(x, torch.Generator().manual_seed(0))
    s = m.sample(9, 1.0, torch.Generator().manual_seed(1))
    assert s.shape == (9, *shape) and s.dtype == torch.float32
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())


# -- sampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [1.0, 0.5, 0.04])
def test_normal_prior_latents_have_std_sqrt_lambda(normal_model, lam, monkeypatch):
    seen, decode = [], normal_model.net.decode
    monkeypatch.setattr(normal_model.net, "decode", lambda z: (seen.append(z), decode(z))[1])
    s = normal_model.sample(20, bias=lam, generator=torch.Generator().manual_seed(7))
    z = torch.randn(20, SMALL["latent_dim"], generator=torch.Generator().manual_seed(7))
    assert [len(c) for c in seen] == [7, 7, 6]                       # sample_batch_size = 7
    torch.testing.assert_close(torch.cat(seen), math.sqrt(lam) * z)
    with torch.no_grad():
        torch.testing.assert_close(s, torch.sigmoid(decode(math.sqrt(lam) * z)))


@pytest.mark.parametrize("lam", [1.0, 0.25])
def test_flow_prior_base_latents_have_std_sqrt_lambda(flow_model, lam, monkeypatch):
    seen, inverse = [], flow_model.prior.inverse
    monkeypatch.setattr(flow_model.prior, "inverse", lambda u: (seen.append(u), inverse(u))[1])
    s = flow_model.sample(20, bias=lam, generator=torch.Generator().manual_seed(3))
    u = torch.randn(20, SMALL["latent_dim"], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.cat(seen), math.sqrt(lam) * u)
    with torch.no_grad():
        want = torch.sigmoid(flow_model.net.decode(inverse(math.sqrt(lam) * u)))
    torch.testing.assert_close(s, want)


@pytest.mark.parametrize("prior", ["flow", "normal"])
def test_small_lambda_lowers_sample_diversity(flow_model, normal_model, prior):
    m = flow_model if prior == "flow" else normal_model
    g = torch.Generator().manual_seed(5)
    spread = {lam: float(m.sample(200, lam, g).std(0).mean()) for lam in (1.0, 0.25, 1e-4)}
    assert spread[1e-4] < 0.05 * spread[1.0] and spread[0.25] < spread[1.0]


def test_samples_do_not_depend_on_the_chunking(flow_model):
    s = flow_model.sample(30, 0.8, torch.Generator().manual_seed(0))
    flow_model.sample_batch_size = 1000
    try:
        whole = flow_model.sample(30, 0.8, torch.Generator().manual_seed(0))
    finally:
        flow_model.sample_batch_size = SMALL["sample_batch_size"]
    torch.testing.assert_close(whole, s, atol=1e-6, rtol=0)
    assert flow_model.sample(0).shape == (0, 1, 8, 8)
    assert not flow_model.conditional


def test_bad_bias_and_unfitted_model_raise():
    with pytest.raises(LoopError, match="not fitted"):
        VAEModel().sample(3)
    with pytest.raises(LoopError, match="loop.bias"):
        fitted(epochs=0.25, prior="normal").sample(3, bias=0.0)


# -- training -----------------------------------------------------------------------------------
def test_same_seed_same_model_and_samples():
    a, b, c = fitted(seed=5), fitted(seed=5), fitted(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["net.from_latent.weight"], sc["net.from_latent.weight"])
    s1, s2 = (m.sample(9, 0.9, torch.Generator().manual_seed(2)) for m in (a, b))
    assert torch.equal(s1, s2)
    s3 = a.sample(9, 0.9, torch.Generator().manual_seed(3))
    assert not torch.equal(s1, s3)


def test_initial_weights_follow_the_fit_generator_not_the_global_rng():
    torch.manual_seed(123)
    a = fitted(seed=5, prior="normal").state_dict()
    torch.manual_seed(456)
    state = torch.random.get_rng_state()
    b = fitted(seed=5, prior="normal").state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)          # global stream untouched
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_labels_are_ignored():
    x = blobs(32)
    m, m2 = VAEModel(**SMALL), VAEModel(**SMALL)
    m.fit(x, torch.Generator().manual_seed(0), labels=torch.arange(32) % 2)
    m2.fit(x, torch.Generator().manual_seed(0))
    assert not m.conditional and m.num_classes == 0
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("likelihood, drop", [("gaussian", 0.5), ("bernoulli", 0.85)])
def test_loss_decreases_on_real_digits(likelihood, drop):
    """scikit-learn's 8x8 digits: three epochs take the negative ELBO well below its start
    (measured: Gaussian 487 -> 190 nats per image, Bernoulli 44 -> 37)."""
    from sklearn.datasets import load_digits
    x = torch.tensor(load_digits().images[:600], dtype=torch.float32).unsqueeze(1) / 16
    m = VAEModel(**{**SMALL, "latent_dim": 8, "width": 8, "epochs": 3, "batch_size": 32,
                    "likelihood": likelihood})
    calls = []
    stats = m.fit(x, torch.Generator().manual_seed(0), progress=lambda s, t: calls.append((s, t)))
    steps = math.ceil(3 * 600 / 32)
    assert stats["steps"] == steps and m.curves.shape == (steps, 2)
    total = steps + SMALL["prior_steps"]
    assert calls == [(s, total) for s in range(1, total + 1)]
    loss = m.curves[:, 0] + m.beta * m.curves[:, 1]
    assert float(loss[-5:].mean()) < drop * float(loss[:5].mean())
    assert stats["neg_elbo"] < stats["neg_elbo_initial"]
    assert stats["neg_elbo"] == pytest.approx(stats["reconstruction"] + m.beta * stats["kl"])
    assert 1 <= stats["active_units"] <= 8 and stats["prior_nll"] < stats["prior_nll_first"]


def test_gaussian_likelihood_learns_its_scale():
    m = VAEModel(**{**SMALL, "prior": "normal"})              # gaussian: the default
    stats = m.fit(blobs(), torch.Generator().manual_seed(0))
    scale = float(m.net.log_scale.exp())
    assert stats["scale"] == pytest.approx(scale) and abs(scale - 0.1) > 1e-3   # starts at 0.1
    assert m.sample(5).shape == (5, 1, 8, 8)
    assert fitted(prior="normal", likelihood="bernoulli").net.log_scale is None


def test_a_non_finite_loss_raises_naming_the_fix(monkeypatch):
    def diverged(out, x, mu, logvar, likelihood, log_scale=None):
        nan = torch.full((x.shape[0],), float("nan")) + 0 * out.sum()
        return nan, nan
    monkeypatch.setattr(vae_module, "elbo_terms", diverged)
    with pytest.raises(LoopError, match="diverged.*model.lr"):
        fitted(prior="normal")


# -- state --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", ["flow", "normal"])
def test_state_dict_round_trip_with_weights_only(flow_model, normal_model, prior):
    m = flow_model if prior == "flow" else normal_model
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = VAEModel(latent_dim=9, width=3, likelihood="bernoulli",      # config differs:
                     prior="normal" if prior == "flow" else "flow")       # the state wins
    fresh.load_state_dict(state)
    assert fresh.shape == (1, 8, 8) and fresh.latent_dim == 4 and fresh.prior_kind == prior
    assert fresh.likelihood == "gaussian"
    s1 = m.sample(12, 0.7, torch.Generator().manual_seed(4))
    s2 = fresh.sample(12, 0.7, torch.Generator().manual_seed(4))
    assert torch.equal(s1, s2)
    with pytest.raises(LoopError, match="lacks"):
        VAEModel().load_state_dict({k: v for k, v in state.items() if k != "prior"})


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(latent_dim=0), dict(latent_dim=-3), dict(width=0),
                                dict(levels=0), dict(blocks=-1), dict(likelihood="poisson"),
                                dict(beta=0.0), dict(beta=float("nan")), dict(epochs=0),
                                dict(batch_size=0), dict(lr=0.0), dict(weight_decay=-1.0),
                                dict(schedule="linear"), dict(grad_clip=-1.0),
                                dict(ema_decay=1.0), dict(mmd_weight=-1.0), dict(prior="vamp"),
                                dict(prior_layers=1), dict(prior_hidden=0), dict(prior_steps=0),
                                dict(prior_lr=0.0), dict(prior_draws=0),
                                dict(sample_batch_size=0), dict(precision="fp16"),
                                dict(width=2.5), dict(latent_dim="16")])
def test_bad_settings_raise_naming_the_key(kw):
    with pytest.raises(LoopError, match=f"model.{next(iter(kw))}"):
        VAEModel(**kw)


def test_flow_prior_needs_two_latent_dimensions():
    with pytest.raises(LoopError, match="model.latent_dim"):
        VAEModel(latent_dim=1)
    VAEModel(latent_dim=1, prior="normal")


@pytest.mark.parametrize("x, match", [(torch.rand(10, 64), "images"),
                                      (torch.full((4, 1, 8, 8), float("nan")), "non-finite"),
                                      (torch.rand(0, 1, 8, 8), "no images")])
def test_bad_data_raises(x, match):
    with pytest.raises(LoopError, match=match):
        VAEModel(**SMALL).fit(x, torch.Generator().manual_seed(0))


def test_latent_flow_errors_keep_their_fix():
    with pytest.raises(LoopError, match="VAE latent flow.*loop.n_real"):
        VAEModel(**SMALL).fit(blobs(1), torch.Generator().manual_seed(0))
    VAEModel(**{**SMALL, "prior": "normal"}).fit(blobs(1), torch.Generator().manual_seed(0))


# -- configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vae", "vae_tiny"])
def test_configs_build_the_model(name):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("config", overrides=[f"model={name}"])
    m = instantiate(cfg.model)
    assert isinstance(m, VAEModel) and m.prior_kind == "flow"
    if name == "vae":      # the yaml holds the defaults (the constructor has the same)
        assert m.arch == {"latent_dim": 16, "width": 16, "levels": 2, "blocks": 0}
        assert m.beta == 1.0 and m.epochs == 30 and m.likelihood == "gaussian"
        assert vars(m) == vars(VAEModel())
