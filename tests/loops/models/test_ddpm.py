"""DDPMModel: schedule and DDIM math against closed forms (numpy), guidance against a hand
computation on stub networks, and tiny real trainings for conditioning, determinism and state."""
from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import configs  # noqa: F401  (registers the schemas the model yamls start from)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from loops.errors import LoopError
from loops.models import DDPMModel
from loops.models.ddpm import (ddim_step, ddim_timesteps, ddpm_train_step, guided_eps,
                               make_betas)
from loops.models.unet import UNet
from tests.loops.models.two_ranks import on_two_gloo_ranks

TINY = dict(timesteps=50, beta_start=2e-3, beta_end=0.2, base_channels=8, channel_mult=(1, 2),
            num_res_blocks=1, attn_resolution=0, groups=8, batch_size=32, lr=3e-3,
            warmup_steps=10, ema_decay=0.9, sample_steps=10, sample_batch_size=48,
            dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_class_images(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 8, 8) images: class 0 dark (0.2), class 1 bright (0.8), pixel noise 0.03."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.where(y == 0, 0.2, 0.8)[:, None, None, None] * torch.ones(n, 1, 8, 8)
    return (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def two_class_model():
    x, y = two_class_images()
    m = DDPMModel(**{**TINY, "train_steps": 350})
    calls = []
    stats = m.fit(x, torch.Generator().manual_seed(0), progress=lambda s, t: calls.append((s, t)),
                  labels=y)
    return m, stats, calls


# -- schedule and sampler math ----------------------------------------------------------------
def test_schedules_match_closed_forms():
    betas = make_betas(500)
    np.testing.assert_allclose(betas.numpy(), np.linspace(1e-4, 0.02, 500), rtol=1e-12)
    np.testing.assert_allclose(DDPMModel(timesteps=500).alphas_cumprod.numpy(),
                               np.cumprod(1 - np.linspace(1e-4, 0.02, 500)), rtol=1e-12)
    t = np.arange(101) / 100                        # Nichol & Dhariwal eq. 17, s = 0.008
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    cos = make_betas(100, "cosine").numpy()
    np.testing.assert_allclose(np.cumprod(1 - cos)[:-1], f[1:-1] / f[0], rtol=1e-9)
    assert cos[-1] == 0.999                          # β_T clipped (ᾱ_T would be 0)
    assert ddim_timesteps(500, 500).tolist() == list(range(500))
    ts = ddim_timesteps(500, 50)
    assert ts[0] == 0 and ts[-1] == 499 and len(set(ts.tolist())) == 50


def test_ddim_eta0_step_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 1, 3, 3, generator=g)
    a, ap = 0.3, 0.7
    ref = math.sqrt(ap) * (x - math.sqrt(1 - a) * eps) / math.sqrt(a) + math.sqrt(1 - ap) * eps
    torch.testing.assert_close(ddim_step(x, eps, a, ap, 0.0), ref)
    torch.testing.assert_close(ddim_step(x, eps, a, 1.0, 0.0),              # last step → x̂0
                               (x - math.sqrt(1 - a) * eps) / math.sqrt(a))


def test_ddim_eta1_on_consecutive_steps_is_the_ddpm_posterior():
    """η = 1, t → t−1: mean μ̃_t (Ho et al. eq. 7) and variance β̃_t."""
    ab = DDPMModel(timesteps=100, beta_start=1e-3, beta_end=0.1).alphas_cumprod.numpy()
    betas = 1 - ab[1:] / ab[:-1]
    g = torch.Generator().manual_seed(1)
    x, eps, z = (torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (1, 40, 99):
        a, ap, b = ab[t], ab[t - 1], betas[t - 1]
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        mean = np.sqrt(ap) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - ap) / (1 - a) * x
        var = (1 - ap) / (1 - a) * b
        torch.testing.assert_close(ddim_step(x, eps, a, ap, 1.0, z), mean + np.sqrt(var) * z)


class PointMassEps(nn.Module):
    """The exact ε of data concentrated at x0 = c: ε = (x_t − √ᾱ_t c) / √(1 − ᾱ_t)."""

    def __init__(self, alphas_cumprod: torch.Tensor, c: float):
        super().__init__()
        self.ab, self.c = alphas_cumprod.float(), c
        self.anchor = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        a = self.ab[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.c) / (1 - a).sqrt()


def stub_model(num_classes: int, c: float = -0.5, **kw) -> DDPMModel:
    m = DDPMModel(**{**TINY, **kw})
    m.net, m.shape, m.num_classes = PointMassEps(m.alphas_cumprod, c), (1, 4, 4), num_classes
    return m


@pytest.mark.parametrize("steps,eta", [(10, 0.0), (50, 1.0)])
def test_sampler_recovers_a_point_mass(steps, eta):
    m = stub_model(0, c=-0.5, sample_steps=steps, ddim_eta=eta, clip_denoised=False)
    s = m.sample(70, generator=torch.Generator().manual_seed(0))    # 2 chunks of 48
    assert s.shape == (70, 1, 4, 4) and s.dtype == torch.float32
    torch.testing.assert_close(s, torch.full_like(s, 0.25), atol=1e-4, rtol=0)   # (−0.5 + 1) / 2


# -- guidance ---------------------------------------------------------------------------------
class LabelEps(nn.Module):
    """ε = x · (y + 1) + t / 100: easy to compute by hand; the null class K gives x · (K + 1)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, y):
        self.calls += 1
        return x * (y.float() + 1).view(-1, 1, 1, 1) + t.float().view(-1, 1, 1, 1) / 100


@pytest.mark.parametrize("lam", [1.0, 0.8, 0.66, 0.5])
def test_guided_eps_is_the_cfg_combination(lam):
    net, k = LabelEps(), 10
    x = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y, t = torch.tensor([0, 1, 2, 3, 4, 9]), torch.full((6,), 7)
    w = 1 / lam - 1
    cond = x * (y.float() + 1).view(-1, 1, 1, 1) + 0.07
    uncond = x * (k + 1) + 0.07
    torch.testing.assert_close(guided_eps(net, x, t, y, w, k), (1 + w) * cond - w * uncond)
    assert net.calls == 1                        # λ = 1: one conditional pass; else one 2N batch
    if lam == 1.0:
        torch.testing.assert_close(guided_eps(net, x, t, y, w, k), cond)


def test_sample_uses_null_class_only_when_guided():
    m = stub_model(num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    m.sample(4, 1.0, torch.Generator().manual_seed(0), labels=labels)
    assert all(torch.equal(y, labels) for y in m.net.seen)
    m.net.seen.clear()
    m.sample(4, 0.5, torch.Generator().manual_seed(0), labels=labels)
    assert all(torch.equal(y, torch.cat([labels, torch.full((4,), 3)])) for y in m.net.seen)
    m.net.seen.clear()
    m.sample(200, 1.0, torch.Generator().manual_seed(0))          # labels drawn uniformly
    drawn = torch.cat([y for y in m.net.seen[::m.sample_steps]])
    assert set(drawn.tolist()) == {0, 1, 2}


def test_unconditional_model_refuses_guidance():
    m = stub_model(num_classes=0)
    with pytest.raises(LoopError, match="loop.bias=1"):
        m.sample(4, 0.8, torch.Generator().manual_seed(0))
    with pytest.raises(LoopError, match="outside"):
        m.sample(4, 0.0)
    x, _ = two_class_images(16)
    fitted = DDPMModel(**{**TINY, "train_steps": 2})
    assert fitted.fit(x, torch.Generator().manual_seed(0))["num_classes"] == 0
    assert not fitted.conditional
    with pytest.raises(LoopError, match="class labels"):
        fitted.sample(2, 0.66)


# -- training ---------------------------------------------------------------------------------
def test_train_step_gradient_is_the_mean_loss_gradient():
    """With SGD (lr 1) the step moves the weights by −∇ of the batch-mean ε-MSE computed here."""
    torch.manual_seed(0)
    net = UNet(base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolution=0,
               num_classes=2, image_size=4)
    ref = UNet(base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolution=0,
               num_classes=2, image_size=4)
    ref.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    t, y = torch.tensor([0, 5, 10, 20, 30, 49]), torch.tensor([0, 1, 1, 0, 1, 0])
    drop = torch.tensor([False, True, False, False, True, False])
    ab = torch.cumprod(1 - make_betas(50, "linear", 2e-3, 0.2), 0).float()
    sgd = torch.optim.SGD(net.parameters(), lr=1.0)
    loss = ddpm_train_step(net, sgd, x0, y, t, noise, drop, ab, null_class=2)
    a = ab[t].view(-1, 1, 1, 1)
    y_in = torch.where(drop, 2, y)
    ref_loss = ((ref(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y_in) - noise) ** 2).mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss.detach())
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - q.grad, atol=1e-6, rtol=1e-5)


def test_fit_stats_progress_and_loss_decrease(two_class_model):
    m, stats, calls = two_class_model
    assert calls == [(s, 350) for s in range(1, 351)]
    assert set(stats) >= {"loss", "loss_initial", "steps", "images_per_s", "num_classes"}
    assert stats["steps"] == 350 and stats["num_classes"] == 2 and m.conditional
    curve = m.loss_curve
    assert curve.shape == (350,) and bool(torch.isfinite(curve).all())
    assert curve[-35:].mean() < 0.3 * curve[:35].mean()
    assert stats["loss"] < 0.3 * stats["loss_initial"]


def test_labels_steer_the_samples_and_guidance_sharpens_them(two_class_model):
    """Dark class 0 (0.2) and bright class 1 (0.8): each label yields its own brightness, and
    guidance (λ = 0.5, w = 1) narrows each class's spread of brightness (paper §2.3)."""
    m = copy.copy(two_class_model[0])
    m.ddim_eta = 1.0                             # ancestral-like steps forgive a 350-step model
    spread = {}
    for lam in (1.0, 0.5):
        g = torch.Generator().manual_seed(3)
        dark = m.sample(48, lam, g, labels=torch.zeros(48, dtype=torch.long)).mean((1, 2, 3))
        bright = m.sample(48, lam, g, labels=torch.ones(48, dtype=torch.long)).mean((1, 2, 3))
        assert abs(float(dark.mean()) - 0.2) < 0.1 and abs(float(bright.mean()) - 0.8) < 0.1
        assert float((dark < 0.5).float().mean()) > 0.95
        assert float((bright > 0.5).float().mean()) > 0.95
        spread[lam] = (float(dark.std()), float(bright.std()))
    assert spread[0.5][0] < spread[1.0][0] and spread[0.5][1] < spread[1.0][1]


def test_samples_have_shape_range_and_drawn_labels(two_class_model):
    m, _, _ = two_class_model
    s = m.sample(50, 0.66, torch.Generator().manual_seed(0))
    assert s.shape == (50, 1, 8, 8) and s.dtype == torch.float32
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    with pytest.raises(LoopError, match="labels"):
        m.sample(3, 1.0, labels=torch.tensor([0, 1, 2]))


def test_same_seed_same_model_and_samples():
    x, y = two_class_images(64)
    fits = [DDPMModel(**{**TINY, "train_steps": 6}) for _ in range(3)]
    for m, seed in zip(fits, (5, 5, 6)):
        m.fit(x, torch.Generator().manual_seed(seed), labels=y)
    a, b, c = (m.state_dict() for m in fits)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.conv_in.weight"], c["net.conv_in.weight"])
    s1, s2 = (m.sample(10, 0.8, torch.Generator().manual_seed(9)) for m in fits[:2])
    assert torch.equal(s1, s2)


def test_state_dict_round_trip_with_weights_only(two_class_model):
    m, _, _ = two_class_model
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = DDPMModel(**{**TINY, "base_channels": 32, "timesteps": 500, "beta_start": 1e-4,
                         "beta_end": 0.02})                     # config differs: state wins
    fresh.load_state_dict(state)
    assert fresh.num_classes == 2 and fresh.shape == (1, 8, 8) and fresh.timesteps == 50
    labels = torch.tensor([0, 1, 1, 0])
    s1 = m.sample(4, 0.5, torch.Generator().manual_seed(2), labels=labels)
    s2 = fresh.sample(4, 0.5, torch.Generator().manual_seed(2), labels=labels)
    assert torch.equal(s1, s2)


def test_bad_inputs_and_configs_raise():
    with pytest.raises(LoopError, match="images"):
        DDPMModel(**TINY).fit(torch.rand(10, 4), torch.Generator())
    with pytest.raises(LoopError, match="labels"):
        DDPMModel(**TINY).fit(torch.rand(4, 1, 8, 8), torch.Generator(), labels=torch.zeros(3))
    with pytest.raises(LoopError, match="ᾱ_T"):
        DDPMModel(timesteps=100)                        # 1e-4..0.02 is too short a walk at T=100
    with pytest.raises(LoopError, match="sample_steps"):
        DDPMModel(timesteps=50, beta_end=0.2, sample_steps=60)
    with pytest.raises(LoopError, match="not fitted"):
        DDPMModel(**TINY).sample(2)


def test_unet_shapes_odd_sizes_attention_and_patches():
    g = torch.Generator().manual_seed(0)
    for kw, size in [(dict(channel_mult=(1, 2, 2), attn_resolution=7), 28),
                     (dict(channel_mult=(1, 2, 2, 2), attn_resolution=4), 28),       # 7 → 4 → 7
                     (dict(channel_mult=(1, 2), patch_size=2), 28),
                     (dict(channel_mult=(1, 2)), 8)]:
        net = UNet(in_channels=3, base_channels=8, num_res_blocks=1, num_classes=10,
                   image_size=size, **kw)
        x = torch.randn(2, 3, size, size, generator=g)
        out = net(x, torch.tensor([0, 99]), torch.tensor([3, 10]))
        assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert UNet(base_channels=8, num_classes=0).class_emb is None


# -- configs and distributed ------------------------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize("model", ["ddpm", "ddpm_tiny"])
def test_experiment_config_composes_and_builds_the_model(model):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mad_ddpm_mnist", f"model={model}"])
    assert cfg.loop.family == "fully_synthetic" and cfg.loop.bias == 1.0
    assert cfg.data._target_ == "madmark.data.MNIST5k"
    m = instantiate(cfg.model)
    assert isinstance(m, DDPMModel) and m.accepts == ("image",)
    assert m.label_dropout == 0.1 and (m.timesteps == 500) == (model == "ddpm")
    assert float(m.alphas_cumprod[-1]) < 0.01       # x_T ≈ N(0, I) in both


def _fit_and_sample() -> dict:
    x, y = two_class_images(40)
    m = DDPMModel(**{**TINY, "train_steps": 5, "batch_size": 16, "sample_batch_size": 7,
                     "ddim_eta": 1.0})
    m.fit(x, torch.Generator().manual_seed(3), labels=y)
    return {"state": m.state_dict(), "samples": m.sample(19, 0.5, torch.Generator().manual_seed(4))}


@pytest.mark.slow
def test_two_gloo_ranks_fit_and_sample_like_one_process(tmp_path):
    """Global batches sharded over 2 DDP ranks give the single-process model and samples."""
    two, one = on_two_gloo_ranks(_fit_and_sample, tmp_path), _fit_and_sample()
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, atol=1e-5, rtol=1e-4)
    assert two["samples"].shape == (19, 1, 8, 8)
    torch.testing.assert_close(two["samples"], one["samples"], atol=1e-4, rtol=0)
