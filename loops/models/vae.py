"""Convolutional variational autoencoder on images (Kingma & Welling 2014) with a learned latent
flow prior: a deep regenerator that makes real-looking digits on a CPU in about a minute per
generation.

    m = VAEModel(latent_dim=16, width=16, epochs=30)
    m.fit(x, generator)                           # x (N, C, H, W) in [0, 1], any H, W >= 1
    s = m.sample(n, bias=0.7, generator=g)        # (n, C, H, W) in [0, 1]: decoder means

Network. The encoder is ``levels`` stride-2 4×4 convolutions (w, 2w, 4w, ... channels, SiLU),
each followed by ``blocks`` 3×3 residual convolutions, then a linear layer to the posterior mean
and log-variance of z ∈ R^d; the decoder mirrors it (a linear layer to the top feature map, then
per level ``blocks`` 3×3 residual convolutions and a 4×4 stride-2 transposed convolution) and ends
in one output value per pixel and channel. No normalisation layers (batch statistics would make a
sample depend on its batch). Images whose sides are not multiples of 2^levels (25×25 faces, 8×6
crops) are zero-padded symmetrically inside the network and the decoder output is cropped back,
so the loss and the samples cover exactly the input pixels. Weights are kept channels-last
(about 25% faster convolutions on a CPU).

Likelihood p(x | z) (``likelihood``), decoder output ℓ per pixel and channel:
  * ``gaussian`` (default): N(x; σ(ℓ), s²) with one learned scale s shared by all pixels (the
    σ-VAE of Rybkin et al. 2021). A proper density for continuous pixels, grey or RGB, and the
    learned s calibrates the reconstruction/KL balance by itself, so β = 1 (the true ELBO) works.
    On mnist5k it gave the best FID and precision of the three at equal cost (configs/model/
    vae.yaml has the measurements).
  * ``bernoulli``: the binary cross-entropy −x log σ(ℓ) − (1 − x) log(1 − σ(ℓ)), the standard
    MNIST choice, unnormalised for grey values; it needs β ≈ 0.25 to be as sharp.
  * ``continuous_bernoulli`` (Loaiza-Ganem & Cunningham 2019): the Bernoulli with its normaliser,
    a proper density on [0, 1] (``torch.distributions.ContinuousBernoulli``); slower and, here,
    blurrier.

Loss: the negative ELBO per image in nats, −E_q[log p(x | z)] + β · KL(q(z | x) ‖ N(0, I)), one
reparameterised draw z = μ + e^{½ log σ²} · ε per image, minimised by AdamW with a cosine (or
constant) learning rate; an optional EMA of the weights decodes the samples, an optional MMD term
(InfoVAE, ``mmd_weight``) pulls the aggregate posterior towards N(0, I).

Prior (``prior``). With only a few thousand pool images the aggregate posterior q(z) = E_x q(z|x)
is far from N(0, I): latents drawn from N(0, I) fall between the pool's codes and decode to
blended, blurry digits (measured on mnist5k: FID 151 against 36 for decoding q(z) itself). So by
default (``flow``), after the VAE is trained, a RealNVP flow f (:class:`~.flow.FlowModel`) is
fitted on ``prior_draws`` posterior draws z ~ q(z | x) of every pool image (two-stage VAEs, Dai &
Wipf 2019, with a flow as the second stage): it maps q(z) to N(0, I). ``prior=normal`` keeps the
plain VAE, z ~ N(0, I).

Samples: the latent temperature λ scales the variance of the Gaussian latent: ``prior=normal``
draws z ~ N(0, λI); ``prior=flow`` draws u ~ N(0, λI) in the flow's base space and decodes
z = f⁻¹(u) (both: std √λ, as the flow model's latents). The image returned is the decoder MEAN
E[x | z] (σ(ℓ) for the Gaussian and Bernoulli likelihoods, the continuous-Bernoulli mean for
that one), not a draw from p(x | z): pixel noise would only blur the samples. λ = 1 is unbiased,
λ → 0 collapses every sample onto the decoding of the latent mode (z = 0, or f⁻¹(0)).

Every random draw (initial weights, batch order, the ε of the reparameterisation, the flow's
draws) comes from the ``generator`` given to ``fit``, so one seed gives one model; sampling draws
only from the sampling generator. Under torchrun the VAE is wrapped in DDP and each rank takes its
``shard`` of every batch (the same global batch and draws as one process; the MMD term, when on,
is taken per rank); the small latent flow is fitted identically on every rank.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from madcore import dist

from ..errors import LoopError
from .base import FIT_STEPS, GenerativeModel, ProgressFn, fit_column
from .flow import FlowModel
from .training import (EMA, PRECISIONS, ShuffledIndices, autocast, autocast_dtype,
                       begin_sampling, check_choice, check_float, check_int, freeze, load_module,
                       map_chunks, module_state, require_fitted, seeded, wrap_ddp)

#: Values of ``likelihood``.
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
SCHEDULES = ("cosine", "constant")
#: Values of ``prior``: the latent distribution samples are drawn from.
PRIORS = ("flow", "normal")
_LOG_2PI = math.log(2 * math.pi)
_CHECK_EVERY = 100       # optimiser steps between checks that the loss is finite (each syncs a GPU)
_ARCH = ("latent_dim", "width", "levels", "blocks")


# -- the ELBO's terms ---------------------------------------------------------------------------
def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^{logvar}) ‖ N(0, I)) in nats, (B,) for μ, logvar (B, d):
    ½ Σ_j (μ_j² + e^{logvar_j} − 1 − logvar_j)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def reconstruction_nll(out: torch.Tensor, x: torch.Tensor, likelihood: str,
                       log_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """−log p(x | z) in nats, (B,) summed over pixels, for decoder outputs ``out`` (logits ℓ) and
    images x, both (B, C, H, W) (x in [0, 1]). ``log_scale``: log s of the Gaussian (0-dim)."""
    out, x = out.float(), x.float()
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    elif likelihood == "continuous_bernoulli":
        nll = -torch.distributions.ContinuousBernoulli(logits=out, validate_args=False).log_prob(x)
    elif likelihood == "gaussian":
        s = log_scale.float()
        nll = 0.5 * ((x - torch.sigmoid(out)) * torch.exp(-s)).pow(2) + s + 0.5 * _LOG_2PI
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    return nll.flatten(1).sum(1)


def decoder_mean(out: torch.Tensor, likelihood: str) -> torch.Tensor:
    """E[x | z] in [0, 1] from decoder outputs (logits) ``out``."""
    out = out.float()
    if likelihood == "continuous_bernoulli":
        return torch.distributions.ContinuousBernoulli(logits=out, validate_args=False).mean
    return torch.sigmoid(out)


def elbo_terms(out: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               likelihood: str,
               log_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (B,) reconstruction NLL −log p(x | z) and KL(q(z | x) ‖ N(0, I)) for one draw
    z ~ q(z | x) decoded to ``out``; the β-weighted negative ELBO is rec + β · kl."""
    return (reconstruction_nll(out, x, likelihood, log_scale),
            gaussian_kl(mu.float(), logvar.float()))


def imq_mmd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate (0-dim) of MMD² between the samples a (n, d) and b (m, d) under the
    inverse multiquadratic kernel k(u, v) = C / (C + ‖u − v‖²), C = 2d (Tolstikhin et al. 2018's
    choice for a N(0, I_d) prior); n, m ≥ 2."""
    c = 2.0 * a.shape[1]
    k = lambda u, v: c / (c + torch.cdist(u, v).pow(2))       # noqa: E731
    n, m = a.shape[0], b.shape[0]
    kaa, kbb = k(a, a), k(b, b)
    return ((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
            + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1)) - 2 * k(a, b).mean())


# -- the network --------------------------------------------------------------------------------
def padding(side: int, multiple: int) -> tuple[int, int]:
    """(before, after) zero rows that bring ``side`` up to a multiple of ``multiple``."""
    extra = (-side) % multiple
    return extra // 2, extra - extra // 2


class Residual(nn.Module):
    """x + conv3×3(SiLU(conv3×3(SiLU(x)))), channels kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, 1, 1), nn.SiLU(),
                                  nn.Conv2d(channels, channels, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder_stages(channels: int, widths: list[int], blocks: int) -> list[nn.Module]:
    """Per width: a 4×4 stride-2 conv (halves the side), ``blocks`` residual blocks, SiLU."""
    out: list[nn.Module] = []
    for ch in widths:
        out += [nn.Conv2d(channels, ch, 4, 2, 1), *[Residual(ch) for _ in range(blocks)],
                nn.SiLU()]
        channels = ch
    return out


def decoder_stages(widths: list[int], channels: int, blocks: int) -> list[nn.Module]:
    """The mirror of :func:`encoder_stages`: per level from the top, ``blocks`` residual blocks,
    SiLU and a 4×4 stride-2 transposed conv (doubles the side), ending in ``channels``."""
    out: list[nn.Module] = []
    for i in reversed(range(len(widths))):
        out += [*[Residual(widths[i]) for _ in range(blocks)], nn.SiLU(),
                nn.ConvTranspose2d(widths[i], widths[i - 1] if i else channels, 4, 2, 1)]
    return out


class PaddedAutoencoder(nn.Module):
    """What the VAE and the latent-diffusion autoencoder share: images of ``shape`` (C, H, W)
    zero-padded to multiples of 2^levels on the way in (``pad``) and cropped back on the way out
    (``crop``), and ``forward(x, eps) -> (logits, μ, logvar)`` with z = μ + e^{½ logvar} · eps.
    Subclasses set ``shape``, ``pad_h``, ``pad_w`` and define ``encode`` and ``decode``."""

    shape: tuple[int, int, int]
    pad_h: tuple[int, int]
    pad_w: tuple[int, int]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = self.pad_h, self.pad_w
        return F.pad(x, (left, right, top, bottom)).contiguous(memory_format=torch.channels_last)

    def crop(self, out: torch.Tensor) -> torch.Tensor:
        (top, _), (left, _) = self.pad_h, self.pad_w
        _, h, w = self.shape
        return out[:, :, top:top + h, left:left + w]

    def forward(self, x: torch.Tensor,
                eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)
        return self.decode(z), mu, logvar


class ConvVAE(PaddedAutoencoder):
    """Encoder and decoder for images of ``shape`` (C, H, W); see the module docstring.

    ``encode(x) -> (μ, logvar)`` (B, d) each; ``decode(z) -> logits`` (B, C, H, W);
    ``forward(x, eps) -> (logits, μ, logvar)`` with z = μ + e^{½ logvar} · eps."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int, width: int, levels: int,
                 blocks: int = 0, learn_scale: bool = False) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        m = 2 ** levels
        self.shape, self.latent_dim = (c, h, w), latent_dim
        self.pad_h, self.pad_w = padding(h, m), padding(w, m)
        hp, wp = h + sum(self.pad_h), w + sum(self.pad_w)
        chans = [width * 2 ** i for i in range(levels)]
        self.encoder = nn.Sequential(*encoder_stages(c, chans, blocks), nn.Flatten())
        self.top = (chans[-1], hp // m, wp // m)
        feat = math.prod(self.top)
        self.to_posterior = nn.Linear(feat, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, feat)
        self.decoder = nn.Sequential(*decoder_stages(chans, c, blocks))
        # log s of the Gaussian likelihood, s = e^{log_scale}; starts at s = 0.1 of the pixel range
        self.log_scale = nn.Parameter(torch.tensor(math.log(0.1))) if learn_scale else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_posterior(self.encoder(self.pad(x))).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(-1, *self.top).contiguous(memory_format=torch.channels_last)
        return self.crop(self.decoder(h))


# -- the model ----------------------------------------------------------------------------------
class VAEModel(GenerativeModel):
    """Unconditional convolutional VAE on images (N, C, H, W) in [0, 1] of any size.

    Args (Hydra keys of ``configs/model/vae.yaml``):
        latent_dim: size d of z (the KL term's prior is N(0, I_d)).
        width: channels of the first (full-resolution) convolution; level i has width · 2^i.
        levels: stride-2 stages (each halves the side; sides are padded to multiples of
            2^levels inside the network).
        blocks: 3×3 residual blocks per level in the encoder and in the decoder (0 = none).
        likelihood: ``gaussian`` (learned scale), ``bernoulli`` or ``continuous_bernoulli``.
        beta: weight β of the KL term (1 = the ELBO).
        epochs: passes over the pool per fit; steps = ⌈epochs · N / batch_size⌉.
        batch_size: images per optimiser step (the global batch under torchrun).
        lr, weight_decay: AdamW.
        schedule: ``cosine`` (the learning rate decays to 0 over the fit) or ``constant``.
        grad_clip: max gradient norm; 0 = off.
        ema_decay: EMA decay of the decoding weights, warmed up as min(decay, (1+s)/(10+s));
            0 decodes with the trained weights themselves.
        mmd_weight: weight of an MMD(q(z), N(0, I)) term (inverse multiquadratic kernel); 0 = off.
        prior: ``flow`` (a RealNVP latent flow fitted after the VAE; λ acts on its base) or
            ``normal`` (z ~ N(0, λI)).
        prior_layers, prior_hidden, prior_steps, prior_lr: the flow's blocks, units per hidden
            layer, AdamW steps (batch 512, cosine decay) and learning rate.
        prior_draws: posterior draws z ~ q(z | x) per pool image the flow is fitted on.
        sample_batch_size: latents per decoder pass when sampling.
        precision: ``auto`` / ``bf16`` (bf16 autocast on CUDA, fp32 on the CPU) or ``fp32``.

    Labels given to ``fit`` are ignored (unconditional, ``num_classes = 0``).
    """

    accepts = ("image",)
    fit_columns = (
        fit_column("neg_elbo", "β-weighted negative ELBO, mean of the last 10% of steps",
                   "nats/image"),
        fit_column("reconstruction", "reconstruction NLL −E_q log p(x | z), mean of the last 10% "
                   "of steps", "nats/image"),
        fit_column("kl", "KL(q(z | x) ‖ N(0, I)), mean of the last 10% of steps", "nats/image"),
        fit_column("neg_elbo_initial", "β-weighted negative ELBO, mean of the first 10% of steps",
                   "nats/image"),
        fit_column("active_units", "latent dimensions whose posterior mean varies over the pool "
                   "(Var_x E[z_j | x] > 0.01)", "count"),
        fit_column("scale", "learned pixel scale s of the Gaussian likelihood (0 for the "
                   "Bernoulli likelihoods)", "[0, 1] pixel units"),
        FIT_STEPS,
        fit_column("prior_nll", "latent flow's final NLL of the posterior draws (NaN for "
                   "prior=normal)", "nats per latent vector"),
        fit_column("prior_nll_first", "the same under the flow's initial diagonal Gaussian (NaN "
                   "for prior=normal)", "nats per latent vector"),
    )

    def __init__(self, latent_dim: int = 16, width: int = 16, levels: int = 2, blocks: int = 0,
                 likelihood: str = "gaussian", beta: float = 1.0, epochs: float = 30,
                 batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 0.0,
                 schedule: str = "cosine", grad_clip: float = 0.0, ema_decay: float = 0.0,
                 mmd_weight: float = 0.0, prior: str = "flow", prior_layers: int = 8,
                 prior_hidden: int = 64, prior_steps: int = 1000, prior_lr: float = 1e-2,
                 prior_draws: int = 4, sample_batch_size: int = 1000,
                 precision: str = "auto") -> None:
        m = "VAE"
        self.arch = {"latent_dim": check_int(m, "latent_dim", latent_dim),
                     "width": check_int(m, "width", width),
                     "levels": check_int(m, "levels", levels),
                     "blocks": check_int(m, "blocks", blocks, low=0)}
        self.likelihood = check_choice(m, "likelihood", likelihood, LIKELIHOODS)
        self.beta = check_float(m, "beta", beta, gt=0)
        self.epochs = check_float(m, "epochs", epochs, gt=0)
        self.batch_size = check_int(m, "batch_size", batch_size)
        self.lr = check_float(m, "lr", lr, gt=0)
        self.weight_decay = check_float(m, "weight_decay", weight_decay, ge=0)
        self.schedule = check_choice(m, "schedule", schedule, SCHEDULES)
        self.grad_clip = check_float(m, "grad_clip", grad_clip, ge=0)
        self.ema_decay = check_float(m, "ema_decay", ema_decay, ge=0, lt=1)
        self.mmd_weight = check_float(m, "mmd_weight", mmd_weight, ge=0)
        self.prior_kind = check_choice(m, "prior", prior, PRIORS)
        if self.prior_kind == "flow" and self.arch["latent_dim"] < 2:
            raise LoopError(f"VAE prior=flow needs latent_dim >= 2, got {latent_dim}",
                            "set model.latent_dim to 2 or more, or model.prior=normal")
        self.prior_settings = {"n_layers": check_int(m, "prior_layers", prior_layers, 2),
                               "hidden": check_int(m, "prior_hidden", prior_hidden),
                               "steps": check_int(m, "prior_steps", prior_steps),
                               "lr": check_float(m, "prior_lr", prior_lr, gt=0)}
        self.prior_draws = check_int(m, "prior_draws", prior_draws)
        self.sample_batch_size = check_int(m, "sample_batch_size", sample_batch_size)
        self.precision = check_choice(m, "precision", precision, PRECISIONS)
        self.net: Optional[ConvVAE] = None           # the decoding network, set by fit / load
        self.shape: Optional[tuple[int, int, int]] = None
        self.curves: Optional[torch.Tensor] = None   # (steps, 2) reconstruction NLL and KL, CPU
        self.prior: Optional[FlowModel] = None       # the latent flow (prior=flow), set by fit

    @property
    def latent_dim(self) -> int:
        return self.arch["latent_dim"]

    def _build(self, shape: tuple[int, int, int]) -> ConvVAE:
        net = ConvVAE(shape, **self.arch, learn_scale=self.likelihood == "gaussian")
        return net.to(memory_format=torch.channels_last)     # ~25% faster convolutions on CPU

    # -- training ------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Train from scratch on x (N, C, H, W) in [0, 1]; ``labels`` are ignored.

        Returns, in nats per image and averaged over the last 10% of steps, ``neg_elbo`` (the
        β-weighted negative ELBO), ``reconstruction`` (−E log p(x | z)) and ``kl``;
        ``neg_elbo_initial``
        (the first 10% of steps), ``active_units`` (latent dimensions whose posterior mean varies
        across the pool, Var_x E[z_j | x] > 0.01: the rest collapsed onto the prior), ``scale``
        (the Gaussian's learned s; 0 for the other likelihoods) and ``steps``. Raises LoopError if
        the loss is not finite (the training diverged)."""
        if x.ndim != 4:
            raise LoopError(f"VAEModel got data of shape {tuple(x.shape)}",
                            "use images (N, C, H, W) in [0, 1] (e.g. data=mnist5k)")
        if x.shape[0] < 1 or not bool(torch.isfinite(x).all()):
            raise LoopError("VAEModel got no images or non-finite (NaN/inf) ones",
                            "check the data source or the previous generation's samples")
        if self.batch_size < dist.world_size():
            raise LoopError(f"model.batch_size={self.batch_size} < {dist.world_size()} ranks",
                            "raise model.batch_size (it is the global batch)")
        self.shape = tuple(int(s) for s in x.shape[1:])
        device, n = x.device, x.shape[0]
        steps = max(1, math.ceil(self.epochs * n / self.batch_size))
        prior_steps = self.prior_settings["steps"] if self.prior_kind == "flow" else 0
        total = steps + prior_steps
        with seeded(generator, device):                  # initial weights (on CPU, then moved)
            net = self._build(self.shape).to(device)
        curves = self._train(net, x.float(), steps, generator,
                             None if progress is None else lambda s, _: progress(s, total))
        self.curves = curves.cpu()
        tail = max(1, steps // 10)
        rec, kl = self.curves[-tail:].mean(0).tolist()
        rec0, kl0 = self.curves[:tail].mean(0).tolist()
        mu, logvar = self._posterior(x.float())
        scale = self.net.log_scale
        stats = {"neg_elbo": rec + self.beta * kl, "reconstruction": rec, "kl": kl,
                 "neg_elbo_initial": rec0 + self.beta * kl0,
                 "active_units": float((mu.var(0, correction=0) > 0.01).sum()) if n > 1 else 0.0,
                 "scale": float(scale.exp()) if scale is not None else 0.0,
                 "steps": float(steps)}
        self.prior = None
        stats.update({"prior_nll": math.nan, "prior_nll_first": math.nan})
        if self.prior_kind == "flow":
            stats.update(self._fit_prior(mu, logvar, generator,
                                         None if progress is None
                                         else lambda s, _: progress(steps + s, total)))
        return stats

    @torch.no_grad()
    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and log-variances (N, d) float32 of the fitted encoder on x."""
        amp = autocast_dtype(x.device, self.precision)

        def encode(c: torch.Tensor) -> torch.Tensor:
            with autocast(x.device, amp):
                return torch.cat(self.net.encode(c), 1).float()

        return map_chunks(encode, x, self.sample_batch_size).chunk(2, dim=1)

    def _fit_prior(self, mu: torch.Tensor, logvar: torch.Tensor, g: torch.Generator,
                   progress: Optional[ProgressFn]) -> dict[str, float]:
        """Fit the latent flow on ``prior_draws`` posterior draws z ~ q(z | x) per pool image
        (the aggregate posterior); returns its ``prior_nll`` and ``prior_nll_first`` (nats per
        latent, the latter under the diagonal Gaussian it starts from)."""
        reps = self.prior_draws
        eps = torch.randn((reps * mu.shape[0], mu.shape[1]), generator=g, device=g.device)
        z = mu.repeat(reps, 1) + torch.exp(0.5 * logvar).repeat(reps, 1) * eps.to(mu.device)
        self.prior = FlowModel(**self.prior_settings)
        try:
            st = self.prior.fit(z, g, progress)
        except LoopError as e:
            fix = (f"lower model.prior_lr (now {self.prior_settings['lr']:g}) or set "
                   "model.prior=normal" if "diverged" in e.problem else e.fix)
            raise LoopError(f"VAE latent flow: {e.problem}", fix) from e
        return {"prior_nll": st["nll"], "prior_nll_first": st["nll_first"]}

    def _train(self, net: ConvVAE, x: torch.Tensor, steps: int, g: torch.Generator,
               progress: Optional[ProgressFn]) -> torch.Tensor:
        """``steps`` AdamW steps on x; sets ``self.net`` (the EMA copy when ema_decay > 0).
        Returns (steps, 2) on x's device: the batch-mean reconstruction NLL and KL."""
        device, gdev, n, b = x.device, g.device, x.shape[0], self.batch_size
        ema = EMA(net, self.ema_decay) if self.ema_decay > 0 else None
        model = wrap_ddp(net)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                fused=device.type == "cuda")
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
                 if self.schedule == "cosine" else None)
        amp = autocast_dtype(device, self.precision)
        order = ShuffledIndices(n, g, device)
        curves = torch.empty(steps, 2, device=device)
        world = dist.world_size()
        for step in range(steps):
            idx = order.next(b)
            eps = torch.randn((b, self.latent_dim), generator=g, device=gdev).to(device)
            rows = dist.shard(b)
            batch = x[idx][rows]
            with autocast(device, amp):
                out, mu, logvar = model(batch, eps[rows])
            rec, kl = elbo_terms(out, batch, mu, logvar, self.likelihood, net.log_scale)
            loss = (rec + self.beta * kl).sum() * (world / b)    # DDP averages: global mean
            if self.mmd_weight > 0:
                prior = torch.randn((b, self.latent_dim), generator=g, device=gdev).to(device)
                z = (mu + torch.exp(0.5 * logvar) * eps[rows]).float()
                mmd = imq_mmd(z, prior[rows]) if z.shape[0] > 1 else z.sum() * 0
                loss = loss + self.mmd_weight * mmd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not None:
                ema.update(step)
            curves[step] = dist.all_reduce_sum(torch.stack([rec.detach().sum(),
                                                            kl.detach().sum()]) / b)
            if (step + 1) % _CHECK_EVERY == 0 or step + 1 == steps:
                self._check_finite(curves[max(0, step + 1 - _CHECK_EVERY):step + 1], step + 1)
            if progress is not None:
                progress(step + 1, steps)
        self.net = freeze(ema.module if ema is not None else net)
        return curves

    def _check_finite(self, recent: torch.Tensor, step: int) -> None:
        if not bool(torch.isfinite(recent).all()):
            raise LoopError(f"VAE training diverged (non-finite loss by step {step})",
                            f"lower model.lr (now {self.lr:g}, e.g. to {self.lr / 4:g}) or set "
                            "model.grad_clip (e.g. 10)")

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, bias: float = 1.0, generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n images (n, C, H, W) float32 in [0, 1]: decoder means E[x | z] of latents z drawn
        at temperature λ: ``prior=normal`` z ~ N(0, λI); ``prior=flow`` z = f⁻¹(u) with
        u ~ N(0, λI) in the latent flow's base space (both: one (n, latent_dim) standard normal
        draw from ``generator`` scaled by √λ).

        All n latents are drawn at once, so the samples do not depend on ``sample_batch_size``;
        the decoder then runs ``sample_batch_size`` latents at a time. ``labels`` are ignored
        (unconditional)."""
        lam, device, gdev = begin_sampling(self, self.net, bias, generator)
        if self.prior_kind == "flow":
            require_fitted(self, self.prior.flow if self.prior is not None else None)
            z = self.prior.sample(int(n), lam, generator).to(device)
        else:
            z = torch.randn((int(n), self.latent_dim), generator=generator, device=gdev)
            z = z.to(device) * math.sqrt(lam)
        return self._decode(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means E[x | z] (n, C, H, W) float32 of latents z (n, d), in chunks of
        ``sample_batch_size``."""
        device, amp = z.device, autocast_dtype(z.device, self.precision)

        def decode(zc: torch.Tensor) -> torch.Tensor:
            with autocast(device, amp):
                out = self.net.decode(zc)
            return decoder_mean(out, self.likelihood)

        return map_chunks(decode, z, self.sample_batch_size)

    @torch.no_grad()
    def regenerate(self, x: torch.Tensor, noise: float = 0.0,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The regeneration attack of Zhao et al. (2023) with this VAE: encode x (N, C, H, W) in
        [0, 1] to its posterior mean μ(x), add ``noise`` · ε (ε ~ N(0, I) from ``generator``, in
        latent units: the prior has unit scale) and return the decoder mean E[x | z], (N, C, H, W)
        float32 in [0, 1]. ``noise = 0`` is the plain reconstruction. The image shape must be the
        one the VAE was fitted on."""
        net = require_fitted(self, self.net)
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise LoopError(f"VAE regenerate got images {tuple(x.shape[1:])}, fitted on "
                            f"{tuple(self.shape)}", "regenerate images of the fitted size")
        noise = check_float("VAE", "noise", noise, ge=0)
        device = next(net.parameters()).device
        mu, _ = self._posterior(x.to(device).float())
        if noise > 0:
            gdev = generator.device if generator is not None else device
            eps = torch.randn(mu.shape, generator=generator, device=gdev).to(device)
            mu = mu + noise * eps
        return self._decode(mu)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Network weights (encoder included) under ``net.``, the image shape (3,), the
        architecture (``latent_dim``, ``width``, ``levels``, ``blocks``, int64), the indices of
        the likelihood in :data:`LIKELIHOODS` and of the prior in :data:`PRIORS` (int64), and for
        ``prior=flow`` the latent flow's state under ``prior.`` (see ``FlowModel.state_dict``)."""
        state = module_state(require_fitted(self, self.net), "net")
        state["image_shape"] = torch.tensor(self.shape, dtype=torch.int64)
        state["likelihood"] = torch.tensor(LIKELIHOODS.index(self.likelihood), dtype=torch.int64)
        state["prior"] = torch.tensor(PRIORS.index(self.prior_kind), dtype=torch.int64)
        state.update({k: torch.tensor(v, dtype=torch.int64) for k, v in self.arch.items()})
        if self.prior_kind == "flow":
            require_fitted(self, self.prior.flow if self.prior is not None else None)
            state.update({f"prior.{k}": v for k, v in self.prior.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the network (and latent flow) from the saved shape, architecture, likelihood
        and prior and load the weights (on their device); those override this instance's,
        training settings stay."""
        missing = [k for k in (*_ARCH, "image_shape", "likelihood", "prior") if k not in state]
        if missing:
            raise LoopError(f"VAEModel state lacks {missing}", "load a state saved by VAEModel")
        self.arch = {k: int(state[k]) for k in _ARCH}
        self.likelihood = LIKELIHOODS[int(state["likelihood"])]
        self.prior_kind = PRIORS[int(state["prior"])]
        self.shape = tuple(int(s) for s in state["image_shape"].tolist())
        self.net = load_module(self._build(self.shape), state, "net")
        self.prior = None
        if self.prior_kind == "flow":
            self.prior = FlowModel()
            self.prior.load_state_dict({k[6:]: v for k, v in state.items()
                                        if k.startswith("prior.")})
