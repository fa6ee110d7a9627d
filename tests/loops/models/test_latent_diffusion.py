"""LatentDiffusionModel: the autoencoder's shapes, the latent scale, the sampling chain (DDPM
latents → ÷ scale → decoder mean), classifier-free guidance and its refusal without labels,
determinism, state round trips, settings and divergence errors."""
from __future__ import annotations

import io
import math

import pytest
import torch

import loops.models.ddpm as ddpm_module
import loops.models.latent_diffusion as ld_module
from loops.errors import LoopError
from loops.models import DDPMModel
from loops.models.latent_diffusion import LatentAutoencoder, LatentDiffusionModel
from loops.models.vae import decoder_mean
from tests.loops.models.test_vae import blobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: two tiny stages: a fit of 64 8×8 images takes a fraction of a second
SMALL = dict(latent_channels=2, ae_width=4, ae_levels=2, ae_steps=8, ae_batch_size=16,
             timesteps=100, beta_start=5e-4, beta_end=0.1, base_channels=8, channel_mult=(1, 2),
             groups=4, train_steps=8, batch_size=16, warmup_steps=2, ema_decay=0.9,
             sample_steps=3, sample_batch_size=7)


def labels_of(n: int = 64, k: int = 3) -> torch.Tensor:
    return torch.arange(n) % k


def fitted(seed: int = 0, x: torch.Tensor | None = None, labels=None, **kw):
    m = LatentDiffusionModel(**{**SMALL, **kw})
    stats = m.fit(blobs() if x is None else x, torch.Generator().manual_seed(seed), labels=labels)
    return m, stats


@pytest.fixture(scope="module")
def conditional():
    return fitted(labels=labels_of())


@pytest.fixture(scope="module")
def unconditional():
    return fitted()


# -- the autoencoder ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape, levels, latent", [((1, 28, 28), 2, (4, 7, 7)),
                                                    ((3, 25, 25), 2, (4, 7, 7)),
                                                    ((1, 8, 6), 1, (4, 4, 3)),
                                                    ((1, 28, 28), 3, (4, 4, 4))])
def test_the_latent_grid_is_the_padded_side_over_2_to_the_levels(shape, levels, latent):
    net = LatentAutoencoder(shape, latent_channels=4, width=4, levels=levels, blocks=1)
    x = torch.rand(3, *shape)
    mu, logvar = net.encode(x)
    assert net.latent_shape == latent and mu.shape == logvar.shape == (3, *latent)
    out, mu2, _ = net(x, torch.zeros(3, *latent))
    assert out.shape == x.shape                           # cropped back to the input pixels
    torch.testing.assert_close(out, net.decode(mu2))      # eps = 0 decodes the mean


@pytest.mark.parametrize("shape, likelihood", [((3, 12, 10), "gaussian"), ((1, 8, 6), "bernoulli"),
                                               ((1, 25, 25), "bernoulli")])
def test_any_image_shape_large_enough_fits_and_samples(shape, likelihood):
    m, stats = fitted(x=blobs(32, shape), ae_levels=1, channel_mult=(1, 2),
                      ae_likelihood=likelihood)
    s = m.sample(5, 1.0, torch.Generator().manual_seed(1))
    assert s.shape == (5, *shape) and s.dtype == torch.float32
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert ("ae.log_scale" in m.state_dict()) == (likelihood == "gaussian")   # learned pixel s


# -- the two stages -----------------------------------------------------------------------------
def test_the_ddpm_is_trained_on_latent_means_scaled_to_unit_variance(monkeypatch):
    seen = {}
    fit_scaled = DDPMModel.fit_scaled

    def spy(self, x0, *args, **kw):
        seen["x0"] = x0.clone()
        return fit_scaled(self, x0, *args, **kw)

    monkeypatch.setattr(DDPMModel, "fit_scaled", spy)
    x = blobs()
    m, stats = fitted(x=x)
    mu = m.ae.encode(x)[0]
    torch.testing.assert_close(seen["x0"], mu * m.latent_scale)
    assert float(seen["x0"].std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    assert stats["latent_scale"] == pytest.approx(1 / float(mu.std(correction=0)), rel=1e-5)
    assert m.diffusion.shape == (2, 2, 2) and not m.diffusion.clip_denoised
    assert stats["ae_steps"] == 8.0 and stats["diffusion_steps"] == 8.0


def test_samples_are_the_decoder_mean_of_the_ddpm_latents_over_the_scale(unconditional,
                                                                          monkeypatch):
    m, _ = unconditional
    z = torch.randn(6, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(m.diffusion, "sample_scaled", lambda n, bias, g, labels: z.clone())
    s = m.sample(6, 1.0, torch.Generator().manual_seed(0))
    want = decoder_mean(m.ae.decode(z / m.latent_scale), "bernoulli")
    torch.testing.assert_close(s, want)


def test_conditional_fit_guides_with_w_from_lambda(conditional, monkeypatch):
    m, stats = conditional
    assert m.conditional and m.num_classes == 3 and stats["num_classes"] == 3.0
    ws, guided = [], ddpm_module.guided_eps

    def spy(net, x, t, y, w, null):
        ws.append(w)
        return guided(net, x, t, y, w, null)

    monkeypatch.setattr(ddpm_module, "guided_eps", spy)
    y = labels_of(6)
    a = m.sample(6, 0.5, torch.Generator().manual_seed(1), labels=y)
    assert set(ws) == {1.0}                                # w = 1/λ − 1
    b = m.sample(6, 1.0, torch.Generator().manual_seed(1), labels=y)
    assert set(ws) == {1.0, 0.0} and not torch.equal(a, b)


def test_unconditional_model_refuses_lambda_below_1(unconditional):
    m, stats = unconditional
    assert not m.conditional and stats["num_classes"] == 0.0
    with pytest.raises(LoopError) as e:
        m.sample(4, 0.7, torch.Generator().manual_seed(0))
    assert "loop.bias=1" in e.value.fix and "\n" not in str(e.value)
    m2, _ = fitted(labels=labels_of(), use_labels=False)
    assert not m2.conditional
    with pytest.raises(LoopError, match="classifier-free guidance"):
        m2.sample(4, 0.7, torch.Generator().manual_seed(0))


# -- determinism and state ----------------------------------------------------------------------
def test_one_seed_one_model_and_samples(conditional):
    m, stats = conditional
    m2, stats2 = fitted(labels=labels_of())
    assert stats == stats2
    a, b = m.state_dict(), m2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    g = lambda: torch.Generator().manual_seed(5)                  # noqa: E731
    torch.testing.assert_close(m.sample(9, 0.8, g()), m2.sample(9, 0.8, g()), rtol=0, atol=0)
    m3, _ = fitted(seed=1, labels=labels_of())
    assert not torch.equal(m3.state_dict()["ae.decoder.0.weight"], a["ae.decoder.0.weight"])


def test_state_round_trip_through_a_safe_load(conditional):
    m, _ = conditional
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = LatentDiffusionModel(latent_channels=7, ae_width=3, base_channels=16,
                                 sample_steps=3, sample_batch_size=7)
    other.load_state_dict(state)
    assert other.conditional and other.latent_scale == m.latent_scale
    g = lambda: torch.Generator().manual_seed(2)                  # noqa: E731
    y = labels_of(8)
    assert torch.equal(m.sample(8, 0.6, g(), labels=y), other.sample(8, 0.6, g(), labels=y))
    with pytest.raises(LoopError, match="lacks"):
        LatentDiffusionModel().load_state_dict({"ae.x": torch.zeros(1)})


def test_unfitted_model_says_so():
    with pytest.raises(LoopError, match="not fitted"):
        LatentDiffusionModel().sample(2)


# -- bad settings and divergence ----------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("latent_channels", 0), ("latent_channels", -2),
                                        ("ae_width", 0), ("ae_levels", 0), ("kl_weight", -1.0),
                                        ("ae_likelihood", "laplace"), ("ae_steps", 0),
                                        ("timesteps", 0), ("sample_steps", 0)])
def test_bad_settings_name_their_key(key, value):
    with pytest.raises(LoopError) as e:
        LatentDiffusionModel(**{key: value})
    assert f"model.{key}" in e.value.fix


def test_an_image_side_too_small_for_the_downsamplings_names_the_fix():
    m = LatentDiffusionModel(**{**SMALL, "ae_levels": 3})
    with pytest.raises(LoopError) as e:                  # 8 px: 3 AE + 1 UNet halvings need 16
        m.fit(blobs(), torch.Generator().manual_seed(0))
    assert "model.ae_levels=2" in e.value.fix
    with pytest.raises(LoopError, match="images"):
        m.fit(torch.rand(10, 4), torch.Generator().manual_seed(0))


def test_a_diverged_autoencoder_stops_with_the_fix(monkeypatch):
    monkeypatch.setattr(ld_module, "reconstruction_nll",
                        lambda out, x, *a: torch.full((x.shape[0],), math.nan) + 0 * out.sum())
    with pytest.raises(LoopError) as e:
        fitted()
    assert "diverged" in e.value.problem and "model.ae_lr" in e.value.fix


def test_non_finite_samples_stop_with_the_fix(unconditional, monkeypatch):
    m, _ = unconditional
    monkeypatch.setattr(m.diffusion, "sample_scaled",
                        lambda n, bias, g, labels: torch.full((n, 2, 2, 2), math.nan))
    with pytest.raises(LoopError) as e:
        m.sample(3, 1.0, torch.Generator().manual_seed(0))
    assert "non-finite" in e.value.problem and "model.lr" in e.value.fix
