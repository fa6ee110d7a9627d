"""WGAN-GP on images (Gulrajani et al. 2017), the GAN of the paper's MNIST loops (Alemohammad et
al. §3: a WGAN-GP retrained from scratch for 100 generations of a fully synthetic loop).

    m = WGANGPModel(latent_dim=128, width=64, steps=10_000)
    m.fit(x, generator)                           # x (N, C, H, W) in [0, 1], H = W, H % 4 == 0
    s = m.sample(n, bias=0.7, generator=g)        # (n, C, H, W) in [0, 1]

Networks (DCGAN-style, the layout of Gulrajani et al.'s MNIST model): the generator maps z ∈ R^d
through a linear layer to 4w channels at H/4 × W/4, then two 5×5 stride-2 transposed convolutions
(2w channels at H/2, then C at H) with ReLUs between and a sigmoid at the end; the critic is three
5×5 stride-2 convolutions (w, 2w, 4w channels; H → ⌈H/2⌉ → ⌈H/4⌉ → ⌈H/8⌉) with LeakyReLU(0.2)
and a linear layer to one score. Neither network normalises its activations: the critic must not
(batch statistics break the per-sample gradient penalty), and the generator does not because any
normalisation right after the latent (batch, group or layer statistics) would divide the
truncation factor λ back out of λ·z.

Training, per generator step: ``n_critic`` critic steps, each on a fresh real batch x and fake
batch x̃ = G(z), minimising  E[D(x̃)] − E[D(x)] + gp_weight · E[(‖∇_x̂ D(x̂)‖₂ − 1)²]  with
x̂ = εx + (1 − ε)x̃, ε ~ U(0, 1) per sample; then one generator step minimising −E[D(G(z))]. Both
use Adam (lr, β1 = 0, β2 = 0.9 by default). An optional EMA of the generator weights samples.

Sampling bias (truncation, paper §2.3): for λ ∈ (0, 1], z ~ N(0, I) and the generator gets
z' = λ·z. This is StyleGAN's truncation trick w' = w̄ + λ(w − w̄) applied to the Gaussian latent,
whose mean w̄ is 0: λ = 1 is unbiased, λ → 0 collapses onto G(0). (BigGAN's alternative,
resampling |z_i| > threshold, is not used.)

Every random draw (initial weights, batch order, latents, ε) comes from the ``generator`` given to
``fit``, so one seed gives one model; sampling draws its latents from the sampling generator only.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..errors import LoopError
from .base import FIT_STEPS, GenerativeModel, ProgressFn, fit_column
from .training import (EMA, ShuffledIndices, begin_sampling, check_float, check_int, freeze,
                       load_module, map_chunks, module_state, require_fitted, seeded)

#: generator steps between two checks that the losses are finite (each check syncs a GPU)
_CHECK_EVERY = 100


def check_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Validate an image shape (C, H, W) for the networks: square, side a multiple of 4."""
    c, h, w = (int(s) for s in shape)
    if h != w or h % 4 or h < 4:
        raise LoopError(f"WGANGPModel got {c}x{h}x{w} images",
                        "use square images whose side is a multiple of 4 (e.g. 28x28 MNIST, "
                        "32x32, 64x64): resize them in the data source")
    return c, h, w


class WGANGenerator(nn.Module):
    """z (B, latent_dim) → images (B, C, H, W) in [0, 1]; width w, H = W divisible by 4."""

    def __init__(self, latent_dim: int, width: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = check_image_shape(shape)
        self.base = (4 * width, h // 4, w // 4)
        self.fc = nn.Linear(latent_dim, math.prod(self.base))
        # k = 5, stride 2, padding 2, output_padding 1 doubles the side exactly
        self.up = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(4 * width, 2 * width, 5, 2, 2, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, c, 5, 2, 2, output_padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(self.fc(z).view(-1, *self.base)))


class WGANCritic(nn.Module):
    """Images (B, C, H, W) → scores (B,); no normalisation layers (see the module docstring)."""

    def __init__(self, width: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = check_image_shape(shape)
        side = lambda s: -(-s // 8)                  # noqa: E731  three ⌈s/2⌉ halvings
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 5, 2, 2), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 5, 2, 2), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 5, 2, 2), nn.LeakyReLU(0.2), nn.Flatten())
        self.out = nn.Linear(4 * width * side(h) * side(w), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x)).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Gulrajani et al.'s penalty, 0-dim: weight · mean_i (‖∇_x̂ D(x̂_i)‖₂ − 1)².

    real, fake: (B, ...) same shape; eps: (B,) in [0, 1]; x̂_i = ε_i real_i + (1 − ε_i) fake_i.
    The graph is kept (``create_graph``), so the result can be backpropagated into the critic.
    """
    e = eps.view(-1, *([1] * (real.ndim - 1))).to(real.dtype)
    x_hat = (e * real + (1 - e) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    norm = torch.linalg.vector_norm(grad.flatten(1), dim=1)                    # (B,)
    return weight * (norm - 1).pow(2).mean()


def critic_step(critic: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor,
                fake: torch.Tensor, eps: torch.Tensor, gp_weight: float) -> torch.Tensor:
    """One critic update on a real and a (detached) fake batch (B, C, H, W).

    Returns detached (3,): [critic loss, Wasserstein estimate E D(real) − E D(fake), weighted
    penalty]; critic loss = −Wasserstein + penalty."""
    d_real, d_fake = critic(torch.cat([real, fake])).chunk(2)
    w_dist = d_real.mean() - d_fake.mean()
    gp = gradient_penalty(critic, real, fake, eps, gp_weight)
    loss = gp - w_dist
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return torch.stack([loss, w_dist, gp]).detach()


def generator_step(gen: nn.Module, critic: nn.Module, opt: torch.optim.Optimizer,
                   z: torch.Tensor) -> torch.Tensor:
    """One generator update on latents z (B, latent_dim): minimise −E D(G(z)). The critic's
    weights get no gradient. Returns the detached 0-dim loss."""
    critic.requires_grad_(False)
    loss = -critic(gen(z)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    critic.requires_grad_(True)
    return loss.detach()


class WGANGPModel(GenerativeModel):
    """Unconditional WGAN-GP on images (N, C, H, W) in [0, 1], H = W divisible by 4.

    Args (Hydra keys of ``configs/model/wgan_gp.yaml``):
        latent_dim: size d of z ~ N(0, I_d).
        width: channels w of the first critic layer (the generator's widest layer has 4w).
        steps: generator steps per fit (each after ``n_critic`` critic steps).
        n_critic: critic steps per generator step (Gulrajani et al.: 5).
        batch_size: images per critic step and per generator step.
        lr, beta1, beta2: Adam for both networks (Gulrajani et al.: 1e-4, 0, 0.9).
        gp_weight: weight of the gradient penalty (Gulrajani et al.: 10).
        ema_decay: EMA decay of the sampling generator's weights, warmed up as
            min(decay, (1+s)/(10+s)); 0 samples from the trained generator itself.
        sample_batch_size: images per generator forward pass when sampling.

    Labels given to ``fit`` are ignored (unconditional, ``num_classes = 0``).
    """

    accepts = ("image",)
    fit_columns = (
        fit_column("critic_loss", "critic loss = gradient_penalty − wasserstein (mean, last 10% "
                   "of generator steps)", "critic output units"),
        fit_column("wasserstein", "E D(real) − E D(fake) (mean, last 10% of generator steps)",
                   "critic output units"),
        fit_column("gradient_penalty", "weighted gradient penalty (mean, last 10% of generator "
                   "steps)", "critic output units"),
        fit_column("generator_loss", "−E D(G(z)) (mean, last 10% of generator steps)",
                   "critic output units"),
        FIT_STEPS,
    )

    def __init__(self, latent_dim: int = 128, width: int = 64, steps: int = 10_000,
                 n_critic: int = 5, batch_size: int = 64, lr: float = 1e-4, beta1: float = 0.0,
                 beta2: float = 0.9, gp_weight: float = 10.0, ema_decay: float = 0.999,
                 sample_batch_size: int = 1000) -> None:
        self.latent_dim = check_int("WGAN-GP", "latent_dim", latent_dim)
        self.width = check_int("WGAN-GP", "width", width)
        self.steps = check_int("WGAN-GP", "steps", steps)
        self.n_critic = check_int("WGAN-GP", "n_critic", n_critic)
        self.batch_size = check_int("WGAN-GP", "batch_size", batch_size)
        self.sample_batch_size = check_int("WGAN-GP", "sample_batch_size", sample_batch_size)
        self.lr = check_float("WGAN-GP", "lr", lr, gt=0)
        self.gp_weight = check_float("WGAN-GP", "gp_weight", gp_weight, ge=0)
        self.betas = (check_float("WGAN-GP", "beta1", beta1, ge=0, lt=1),
                      check_float("WGAN-GP", "beta2", beta2, ge=0, lt=1))
        self.ema_decay = check_float("WGAN-GP", "ema_decay", ema_decay, ge=0, lt=1)
        self.net: Optional[WGANGenerator] = None       # the sampling generator, set by fit / load
        self.shape: Optional[tuple[int, int, int]] = None
        self.curves: Optional[torch.Tensor] = None     # (steps, 4) per generator step, CPU

    # -- training ------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Train from scratch on x (N, C, H, W) in [0, 1]; ``labels`` are ignored.

        Returns the means over the last 10% of generator steps of ``critic_loss``,
        ``wasserstein`` (E D(real) − E D(fake)), ``gradient_penalty`` (weighted, so critic_loss =
        gradient_penalty − wasserstein) and ``generator_loss`` (−E D(G(z))), all from the last
        critic step of each generator step, and ``steps``. Raises LoopError if a loss is not
        finite (the training diverged)."""
        if x.ndim != 4:
            raise LoopError(f"WGANGPModel got data of shape {tuple(x.shape)}",
                            "use images (N, C, H, W) in [0, 1] (e.g. data=mnist5k)")
        if x.shape[0] < 1 or not bool(torch.isfinite(x).all()):
            raise LoopError("WGANGPModel got no images or non-finite (NaN/inf) ones",
                            "check the data source or the previous generation's samples")
        self.shape = check_image_shape(tuple(x.shape[1:]))
        device = x.device
        with seeded(generator, device):                   # initial weights (on CPU, then moved)
            gen = WGANGenerator(self.latent_dim, self.width, self.shape).to(device)
            critic = WGANCritic(self.width, self.shape).to(device)
        curves = self._train(gen, critic, x.float(), generator, progress)
        self.curves = curves.cpu()
        last = self.curves[-max(1, self.steps // 10):].mean(0).tolist()
        return {"critic_loss": last[0], "wasserstein": last[1], "gradient_penalty": last[2],
                "generator_loss": last[3], "steps": float(self.steps)}

    def _train(self, gen: WGANGenerator, critic: WGANCritic, x: torch.Tensor,
               g: torch.Generator, progress: Optional[ProgressFn]) -> torch.Tensor:
        """``steps`` generator steps on x (N, C, H, W); sets ``self.net`` to the sampling
        generator (the EMA copy when ema_decay > 0). Returns (steps, 4) on x's device: critic
        loss, Wasserstein estimate, weighted penalty, generator loss."""
        device, gdev, n, b = x.device, g.device, x.shape[0], self.batch_size
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(gen.parameters(), self.lr, betas=self.betas, fused=fused)
        opt_d = torch.optim.Adam(critic.parameters(), self.lr, betas=self.betas, fused=fused)
        ema = EMA(gen, self.ema_decay) if self.ema_decay > 0 else None
        curves = torch.empty(self.steps, 4, device=device)
        order = ShuffledIndices(n, g, device)
        for step in range(self.steps):
            for _ in range(self.n_critic):
                idx = order.next(b)
                z = torch.randn((b, self.latent_dim), generator=g, device=gdev).to(device)
                eps = torch.rand(b, generator=g, device=gdev).to(device)
                with torch.no_grad():
                    fake = gen(z)
                curves[step, :3] = critic_step(critic, opt_d, x[idx], fake, eps, self.gp_weight)
            z = torch.randn((b, self.latent_dim), generator=g, device=gdev).to(device)
            curves[step, 3] = generator_step(gen, critic, opt_g, z)
            if ema is not None:
                ema.update(step)
            if (step + 1) % _CHECK_EVERY == 0 or step + 1 == self.steps:
                self._check_finite(curves[max(0, step + 1 - _CHECK_EVERY):step + 1], step + 1)
            if progress is not None:
                progress(step + 1, self.steps)
        self.net = freeze(ema.module if ema is not None else gen)
        return curves

    def _check_finite(self, recent: torch.Tensor, step: int) -> None:
        if not bool(torch.isfinite(recent).all()):
            raise LoopError(f"WGAN-GP training diverged (non-finite loss by generator step "
                            f"{step})", "lower model.lr (e.g. 1e-4) or raise model.gp_weight")

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, bias: float = 1.0, generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n images (n, C, H, W) float32 in [0, 1] from G(λ·z), z ~ N(0, I) (n, latent_dim).

        All n latents are drawn at once (so the samples do not depend on ``sample_batch_size``),
        then passed through the generator ``sample_batch_size`` rows at a time. ``labels`` are
        ignored (unconditional)."""
        bias, device, gdev = begin_sampling(self, self.net, bias, generator)
        z = torch.randn((int(n), self.latent_dim), generator=generator, device=gdev).to(device)
        return map_chunks(lambda zc: self.net(bias * zc), z, self.sample_batch_size)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Sampling generator weights under ``net.``, image shape (3,), latent_dim and width
        (int64 scalars); the critic is not kept."""
        state = module_state(require_fitted(self, self.net), "net")
        state.update({"image_shape": torch.tensor(self.shape, dtype=torch.int64),
                      "latent_dim": torch.tensor(self.latent_dim, dtype=torch.int64),
                      "width": torch.tensor(self.width, dtype=torch.int64)})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the generator from the saved shape and load its weights (on their device);
        the saved latent_dim and width override this instance's."""
        self.shape = tuple(int(s) for s in state["image_shape"].tolist())
        self.latent_dim, self.width = int(state["latent_dim"]), int(state["width"])
        self.net = load_module(WGANGenerator(self.latent_dim, self.width, self.shape), state,
                               "net")
