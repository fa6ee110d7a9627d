"""WGANGPModel: the gradient penalty against hand computations, truncation through a hook on the
generator, a short real training on a known image distribution, determinism, state and errors."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import configs  # noqa: F401  (registers the schemas the model yamls start from)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from loops.errors import LoopError
from loops.models.wgan import (WGANCritic, WGANGenerator, WGANGPModel, generator_step,
                               gradient_penalty)

SMALL = dict(latent_dim=16, width=8, n_critic=2, batch_size=16, lr=1e-3, ema_decay=0.9,
             sample_batch_size=7)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bright_images(n: int = 256, value: float = 0.8, seed: int = 0) -> torch.Tensor:
    """(n, 1, 8, 8) images of constant ``value`` plus pixel noise of std 0.02, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (value + 0.02 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)


def fitted(steps: int = 4, seed: int = 0, **kw) -> WGANGPModel:
    m = WGANGPModel(**{**SMALL, "steps": steps, **kw})
    m.fit(bright_images(64), torch.Generator().manual_seed(seed))
    return m


@pytest.fixture(scope="module")
def small_model() -> WGANGPModel:
    return fitted()


# -- gradient penalty ---------------------------------------------------------------------------
class LinearCritic(nn.Module):
    """D(x) = ⟨w, x⟩ + b: ∇_x D = w everywhere, so the penalty is weight · (‖w‖ − 1)²."""

    def __init__(self, w: torch.Tensor, b: float = 0.3):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), b

    def forward(self, x):
        return x.flatten(1) @ self.w + self.b


@pytest.mark.parametrize("norm", [0.3, 1.0, 2.5])
def test_penalty_of_a_linear_critic_is_the_closed_form(norm):
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(2 * 3 * 3, generator=g, dtype=torch.float64)
    w = direction / direction.norm() * norm
    critic = LinearCritic(w)
    real, fake = (torch.rand(5, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    gp = gradient_penalty(critic, real, fake, torch.rand(5, generator=g), weight=10.0)
    torch.testing.assert_close(gp, torch.tensor(10.0 * (norm - 1) ** 2, dtype=torch.float64))
    gp.backward()                         # kept graph: d/dw 10 (‖w‖ − 1)² = 20 (‖w‖ − 1) w / ‖w‖
    torch.testing.assert_close(critic.w.grad, 20.0 * (norm - 1) * w / norm)


def test_penalty_is_taken_at_the_per_sample_interpolates():
    """D(x) = ½‖x‖²: ∇D(x̂) = x̂, so the penalty is mean_i (‖ε_i x_i + (1 − ε_i) x̃_i‖ − 1)²."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(6, 1, 4, 4, generator=g), -torch.rand(6, 1, 4, 4, generator=g)
    eps = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.9, 1.0])
    gp = gradient_penalty(lambda x: 0.5 * x.pow(2).flatten(1).sum(1), real, fake, eps, 3.0)
    norms = torch.stack([(e * r + (1 - e) * f).norm() for e, r, f in zip(eps, real, fake)])
    torch.testing.assert_close(gp, 3.0 * ((norms - 1) ** 2).mean())


def test_generator_step_leaves_the_critic_untouched():
    torch.manual_seed(0)
    gen, critic = WGANGenerator(4, 2, (1, 8, 8)), WGANCritic(2, (1, 8, 8))
    before = [p.detach().clone() for p in critic.parameters()]
    g_before = [p.detach().clone() for p in gen.parameters()]
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    loss = generator_step(gen, critic, opt, torch.randn(5, 4))
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    assert all(p.grad is None and p.requires_grad for p in critic.parameters())
    assert all(torch.equal(p, q) for p, q in zip(critic.parameters(), before))
    assert any(not torch.equal(p, q) for p, q in zip(gen.parameters(), g_before))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 4, 4), (1, 12, 12)])
def test_networks_take_any_square_side_divisible_by_4(shape):
    torch.manual_seed(0)
    gen, critic = WGANGenerator(8, 4, shape), WGANCritic(4, shape)
    with torch.no_grad():
        x = gen(torch.randn(3, 8))
    assert x.shape == (3, *shape) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert critic(x).shape == (3,)


# -- sampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [1.0, 0.7, 0.25])
def test_sample_feeds_the_generator_lambda_times_z(small_model, lam):
    seen = []
    hook = small_model.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        s = small_model.sample(20, bias=lam, generator=torch.Generator().manual_seed(7))
    finally:
        hook.remove()
    z = torch.randn(20, SMALL["latent_dim"], generator=torch.Generator().manual_seed(7))
    assert [len(c) for c in seen] == [7, 7, 6]                      # sample_batch_size = 7
    assert torch.equal(torch.cat(seen), lam * z)
    with torch.no_grad():
        torch.testing.assert_close(s, small_model.net(lam * z), atol=1e-6, rtol=0)


def test_small_lambda_collapses_onto_the_image_of_zero(small_model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        center = small_model.net(torch.zeros(1, SMALL["latent_dim"]))
    spread = {lam: float((small_model.sample(50, lam, g) - center).abs().max())
              for lam in (1.0, 1e-4)}
    assert spread[1e-4] < 1e-3 < spread[1.0]


def test_samples_have_shape_range_and_do_not_depend_on_the_chunking(small_model):
    s = small_model.sample(30, 0.8, torch.Generator().manual_seed(0))
    assert s.shape == (30, 1, 8, 8) and s.dtype == torch.float32
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    small_model.sample_batch_size = 1000
    try:
        whole = small_model.sample(30, 0.8, torch.Generator().manual_seed(0))
    finally:
        small_model.sample_batch_size = SMALL["sample_batch_size"]
    torch.testing.assert_close(whole, s, atol=1e-6, rtol=0)
    assert small_model.sample(0).shape == (0, 1, 8, 8)
    assert not small_model.conditional


# -- training -----------------------------------------------------------------------------------
def test_training_moves_samples_to_the_data():
    """Constant 0.8 images: the untrained generator's mean is ~0.5; 150 steps bring it to 0.8."""
    x = bright_images(256)
    m = WGANGPModel(**{**SMALL, "steps": 150, "n_critic": 5, "batch_size": 32, "beta1": 0.5,
                       "ema_decay": 0.95})       # β1 0.5 and the EMA damp the GAN's oscillation
    calls = []
    stats = m.fit(x, torch.Generator().manual_seed(0), progress=lambda s, t: calls.append((s, t)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = WGANGenerator(SMALL["latent_dim"], SMALL["width"], (1, 8, 8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = float(init(torch.randn(500, SMALL["latent_dim"], generator=g)).mean())
    after = m.sample(500, generator=g)
    assert abs(after.mean() - 0.8) < 0.05 and abs(after.mean() - 0.8) < 0.25 * abs(before - 0.8)
    assert float((after.mean((1, 2, 3)) - 0.8).abs().max()) < 0.2        # every sample, not one
    assert calls == [(s, 150) for s in range(1, 151)]
    assert set(stats) == {"critic_loss", "wasserstein", "gradient_penalty", "generator_loss",
                          "steps"} and stats["steps"] == 150.0
    assert all(isinstance(v, float) for v in stats.values())
    assert stats["critic_loss"] == pytest.approx(stats["gradient_penalty"] - stats["wasserstein"],
                                                 abs=1e-5)
    w = m.curves[:, 1]                                  # the critic first separates, then less
    assert m.curves.shape == (150, 4) and float(w[-15:].mean()) < 0.5 * float(w[:30].max())


def test_same_seed_same_model_and_samples():
    a, b, c = fitted(seed=5), fitted(seed=5), fitted(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["net.fc.weight"], sc["net.fc.weight"])
    s1, s2 = (m.sample(9, 0.9, torch.Generator().manual_seed(2)) for m in (a, b))
    assert torch.equal(s1, s2)


def test_initial_weights_follow_the_fit_generator_not_the_global_rng():
    """With lr 1e-12 the fitted weights are the initial ones (to ~1e-12)."""
    torch.manual_seed(123)
    a = fitted(steps=1, lr=1e-12, seed=5).state_dict()
    torch.manual_seed(456)
    state = torch.random.get_rng_state()
    b = fitted(steps=1, lr=1e-12, seed=5).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)          # global stream untouched
    c = fitted(steps=1, lr=1e-12, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float((a["net.fc.weight"] - c["net.fc.weight"]).abs().max()) > 1e-3


def test_labels_are_ignored():
    x = bright_images(32)
    m = WGANGPModel(**{**SMALL, "steps": 2})
    m.fit(x, torch.Generator().manual_seed(0), labels=torch.arange(32) % 2)
    m2 = WGANGPModel(**{**SMALL, "steps": 2})
    m2.fit(x, torch.Generator().manual_seed(0))
    assert not m.conditional and m.num_classes == 0
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())


def test_state_dict_round_trip_with_weights_only(small_model):
    buf = io.BytesIO()
    torch.save(small_model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = WGANGPModel(latent_dim=32, width=4)                    # config differs: state wins
    fresh.load_state_dict(state)
    assert fresh.shape == (1, 8, 8) and fresh.latent_dim == 16 and fresh.width == 8
    s1 = small_model.sample(12, 0.7, torch.Generator().manual_seed(4))
    s2 = fresh.sample(12, 0.7, torch.Generator().manual_seed(4))
    assert torch.equal(s1, s2)


def test_without_ema_the_trained_generator_samples():
    m = fitted(steps=3, ema_decay=0.0)
    assert m.net is not None and not any(p.requires_grad for p in m.net.parameters())
    assert m.sample(4).shape == (4, 1, 8, 8)


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(latent_dim=0), dict(width=0), dict(steps=0), dict(n_critic=0),
                                dict(batch_size=0), dict(sample_batch_size=0), dict(steps=2.5),
                                dict(width=float("inf")), dict(n_critic="5"),
                                dict(lr=0.0), dict(lr=float("nan")), dict(gp_weight=-1.0),
                                dict(ema_decay=1.0), dict(beta1=-0.1), dict(beta2=1.0)])
def test_bad_hyperparameters_raise(kw):
    with pytest.raises(LoopError, match=f"model.{next(iter(kw))}"):
        WGANGPModel(**kw)


@pytest.mark.parametrize("lam", [0.0, -0.5, 1.01])
def test_bias_outside_the_unit_interval_raises(small_model, lam):
    with pytest.raises(LoopError, match=r"outside \(0, 1\]"):
        small_model.sample(3, lam)


@pytest.mark.parametrize("x", [torch.rand(10, 4), torch.rand(4, 1, 8, 6), torch.rand(4, 3, 30, 30),
                               torch.rand(4, 1, 2, 2)])
def test_vectors_and_unsupported_sizes_raise(x):
    with pytest.raises(LoopError, match="multiple of 4|images"):
        WGANGPModel(**SMALL).fit(x, torch.Generator())


def test_non_finite_data_and_unfitted_model_raise():
    x = bright_images(8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(LoopError, match="non-finite"):
        WGANGPModel(**SMALL).fit(x, torch.Generator())
    with pytest.raises(LoopError, match="not fitted"):
        WGANGPModel(**SMALL).sample(2)


def test_divergence_raises():
    with pytest.raises(LoopError, match="diverged") as info:
        fitted(steps=5, lr=1e9)
    assert "model.lr" in info.value.fix


# -- configs and devices ------------------------------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize("model", ["wgan_gp", "wgan_gp_tiny"])
def test_experiment_config_composes_and_builds_the_model(model):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mad_wgan_mnist", f"model={model}"])
    assert cfg.loop.family == "fully_synthetic" and cfg.loop.history == "replace"
    assert cfg.loop.generations == 100 and cfg.loop.bias == 1.0
    assert cfg.data._target_ == "madmark.data.MNIST5k"
    m = instantiate(cfg.model)
    assert isinstance(m, WGANGPModel) and m.accepts == ("image",)
    assert m.n_critic == 5 and m.gp_weight == 10.0 and m.betas == (0.0, 0.9)
    assert (m.width == 64) == (model == "wgan_gp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_is_deterministic_and_samples_on_the_device():
    x = bright_images(64).cuda()
    runs = []
    for _ in range(2):
        m = WGANGPModel(**{**SMALL, "steps": 4})
        m.fit(x, torch.Generator("cuda").manual_seed(0))
        runs.append(m.sample(10, 0.7, torch.Generator("cuda").manual_seed(1)))
    assert runs[0].device.type == "cuda" and runs[0].shape == (10, 1, 8, 8)
    torch.testing.assert_close(runs[0], runs[1])
