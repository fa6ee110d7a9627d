"""Regeneration attacks: a VAE fitted once on the clean train split, cached, reloaded to the same
numbers; the regenerate() it runs is encode → posterior mean (+ noise) → decoder mean; eval-watermark
appends one row per regenerator × strength; bad settings are one line, exit 2."""
import pytest
import torch
from omegaconf import OmegaConf

from loops.models.vae import VAEModel, decoder_mean
from madcore.errors import MadmarkError
from madmark.data.base import Splits
from madmark.regeneration import (VAEReconstruction, build_regenerators, load_or_fit,
                                  training_regenerator)
from madmark.rundir import read_csv
from watermark import ATTACK_GRID

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_VAE = {"_target_": "loops.models.vae.VAEModel", "latent_dim": 4, "width": 4, "epochs": 2,
            "batch_size": 32, "lr": 1e-2, "prior": "normal"}


def splits(n: int = 96, side: int = 12) -> Splits:
    g = torch.Generator().manual_seed(0)
    blobs = torch.rand(n, 1, side, side, generator=g).pow(3)
    return Splits(train=blobs, reference=blobs[:8].flip(-1), kind="image")


def test_fitted_once_then_loaded_from_the_cache_with_identical_outputs(tmp_path):
    cfg, data = OmegaConf.create(TINY_VAE), splits()
    first = load_or_fit("regen_vae", cfg, data, "blobs", tmp_path, 3, torch.device("cpu"))
    second = load_or_fit("regen_vae", cfg, data, "blobs", tmp_path, 3, torch.device("cpu"))
    assert not first.info["cached"] and second.info["cached"]
    assert first.info["cache_path"] == second.info["cache_path"]
    x = data.reference
    for strength in (0.0, 0.7):
        a = first(x, strength, torch.Generator().manual_seed(1))
        b = second(x, strength, torch.Generator().manual_seed(1))
        assert a.shape == x.shape and torch.equal(a, b)
        assert 0 <= float(a.min()) and float(a.max()) <= 1
    # another config or another seed is another entry, fitted anew
    other = load_or_fit("regen_vae", OmegaConf.create({**TINY_VAE, "width": 8}), data, "blobs",
                        tmp_path, 3, torch.device("cpu"))
    reseeded = load_or_fit("regen_vae", cfg, data, "blobs", tmp_path, 4, torch.device("cpu"))
    assert not other.info["cached"] and not reseeded.info["cached"]
    assert len({first.info["cache_path"], other.info["cache_path"],
                reseeded.info["cache_path"]}) == 3


def test_vae_regenerate_is_the_decoded_posterior_mean_plus_latent_noise():
    data = splits()
    m = VAEModel(**{k: v for k, v in TINY_VAE.items() if k != "_target_"})
    m.fit(data.train, torch.Generator().manual_seed(0))
    x = data.reference
    with torch.no_grad():
        mu, _ = m.net.encode(x)
        clean = decoder_mean(m.net.decode(mu), m.likelihood)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
        noisy = decoder_mean(m.net.decode(mu + 0.5 * eps), m.likelihood)
    torch.testing.assert_close(m.regenerate(x, 0.0), clean)
    torch.testing.assert_close(m.regenerate(x, 0.5, torch.Generator().manual_seed(5)), noisy)
    assert not torch.allclose(clean, noisy)
    with pytest.raises(MadmarkError, match="fitted on"):
        m.regenerate(torch.rand(2, 1, 10, 12), 0.0)
    with pytest.raises(MadmarkError, match="noise"):
        m.regenerate(x, -1.0)


def test_bad_regeneration_settings_name_the_fix(tmp_path):
    base = {"attacks": ["regen_vae"], "strengths": {"regen_vae": [0.0]}, "seed": 0,
            "cache_dir": str(tmp_path), "vae": TINY_VAE}
    with pytest.raises(MadmarkError, match="unknown regeneration attack 'regen_gan'"):
        build_regenerators(OmegaConf.create({**base, "attacks": ["regen_gan"]}), splits(), "b",
                           torch.device("cpu"))
    with pytest.raises(MadmarkError, match="strengths.regen_vae is empty"):
        build_regenerators(OmegaConf.create({**base, "strengths": {"regen_vae": []}}), splits(),
                           "b", torch.device("cpu"))
    with pytest.raises(MadmarkError, match="has no regenerate"):
        build_regenerators(OmegaConf.create(
            {**base, "vae": {"_target_": "loops.models.GaussianModel"}}), splits(), "b",
            torch.device("cpu"))
    vectors = Splits(train=torch.rand(20, 3), reference=torch.rand(5, 3), kind="vector")
    with pytest.raises(MadmarkError, match="needs images"):
        build_regenerators(OmegaConf.create(base), vectors, "b", torch.device("cpu"))


def test_training_regenerator_is_regen_vae_at_strength_0_with_gradients_and_frozen_weights(tmp_path):
    """train-watermark's regenerator: the cached regen_vae's reconstruction, as a module whose
    output is regenerate(x, 0) and whose input gradient flows (regenerate() runs under no_grad),
    with frozen weights that stay in eval mode."""
    data = splits()
    cfg = OmegaConf.create({"attack": "regen_vae", "vae": TINY_VAE, "seed": 3,
                            "cache_dir": str(tmp_path)})
    module = training_regenerator(cfg, data, "blobs", torch.device("cpu"))
    assert isinstance(module, VAEReconstruction)
    cached = load_or_fit("regen_vae", cfg.vae, data, "blobs", tmp_path, 3, torch.device("cpu"))
    assert cached.info["cached"]                       # the same entry eval-watermark would use
    x = data.reference.clone().requires_grad_(True)
    out = module(x)
    torch.testing.assert_close(out.detach(), cached(data.reference, 0.0))
    out.square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    module.train()
    assert not module.training and not module.net.training
    with pytest.raises(MadmarkError, match="cannot be trained through"):
        training_regenerator(OmegaConf.merge(cfg, {"attack": "regen_diffusion"}), data, "blobs",
                             torch.device("cpu"))
    with pytest.raises(MadmarkError, match="fitted on"):
        module(torch.rand(2, 1, 10, 12))


def test_eval_watermark_appends_the_regeneration_rows(cli, tmp_path):
    code, out, err = cli("eval-watermark", "data=mnist5k", "n_images=16",
                         "regeneration.attacks=[regen_vae]", "regeneration.strengths.regen_vae=[0,1]",
                         "regeneration.vae.epochs=2", "regeneration.vae.prior_steps=20",
                         "regeneration.vae.width=4", f"regeneration.cache_dir={tmp_path / 'cache'}",
                         f"out_dir={tmp_path / 'outputs'}")
    assert code == 0, err
    (metrics,) = (tmp_path / "outputs").rglob("metrics.csv")
    rows = read_csv(metrics)
    assert [(r["attack"], r["strength"]) for r in rows][len(ATTACK_GRID) + 1:] == [
        ("regen_vae", "0.0"), ("regen_vae", "1.0")]
    assert all(r["applicable"] == "True" for r in rows[-2:])
    assert "| regen_vae 1.0 |" in (metrics.parent / "comparison.md").read_text()
    code, _, err = cli("eval-watermark", "data=mnist5k", "regeneration.attacks=[regen_gan]",
                       f"out_dir={tmp_path / 'outputs2'}")
    assert code == 2 and "unknown regeneration attack 'regen_gan'" in err


@pytest.mark.parametrize("conditional", [True, False])
def test_latent_diffusion_regenerate_noises_then_denoises(conditional):
    from tests.loops.models.test_latent_diffusion import blobs, fitted, labels_of

    m, _ = fitted(labels=labels_of() if conditional else None)
    assert m.conditional == conditional
    x = blobs()[:6]
    g = lambda: torch.Generator().manual_seed(3)                         # noqa: E731
    light, heavy = m.regenerate(x, 0.02, g()), m.regenerate(x, 1.0, g())
    assert light.shape == heavy.shape == x.shape
    assert 0 <= float(light.min()) and float(heavy.max()) <= 1
    torch.testing.assert_close(m.regenerate(x, 0.02, g()), light)      # one generator, one output
    # a light touch stays near the autoencoder's reconstruction; the full chain forgets x
    recon = m.regenerate(x, 1e-9, g())
    assert (light - recon).pow(2).mean() < (heavy - recon).pow(2).mean()
    with pytest.raises(MadmarkError, match=r"outside \(0, 1\]"):
        m.regenerate(x, 0.0)
    with pytest.raises(MadmarkError, match="fitted on"):
        m.regenerate(torch.rand(2, *x.shape[1:-1], x.shape[-1] + 4), 0.5)
