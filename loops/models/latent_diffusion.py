"""Latent diffusion (Rombach et al. 2022) at CPU size: a convolutional autoencoder with a spatial
latent, trained on the pool, then a DDPM (DDIM sampling) on its standardised latents, class-
conditional with classifier-free guidance when the pool has labels. Both stages are trained from
scratch every generation.

    m = LatentDiffusionModel(latent_channels=2, ae_levels=2, ae_steps=375, train_steps=1100)
    m.fit(x, generator, labels=y)      # x (N, C, H, W) in [0, 1]; y int64 (N,) or None
    s = m.sample(n, bias=0.7, generator=g, labels=ys)       # (n, C, H, W) in [0, 1]

Stage 1, the autoencoder (:class:`LatentAutoencoder`, the "KL-f4" shape for ``ae_levels=2``):
``ae_levels`` stride-2 4×4 convolutions (``ae_width`` · 2^i channels, SiLU, ``ae_blocks`` 3×3
residual blocks each) down to a grid of ``latent_channels`` × ⌈H/2^L⌉ × ⌈W/2^L⌉ (28×28 MNIST with
L = 2 and c = 2: 2 × 7 × 7), where a 3×3 convolution gives the posterior mean and log-variance of every
latent element; the decoder mirrors it with transposed convolutions. Sides that are not multiples
of 2^L are zero-padded inside and cropped back (the building blocks and the likelihoods are those
of :mod:`.vae`). Loss per image, in nats: the reconstruction NLL −log p(x | z) of one
reparameterised draw (``ae_likelihood``: ``bernoulli`` cross-entropy, or ``gaussian`` with a
learned pixel scale) plus ``kl_weight`` · KL(q(z | x) ‖ N(0, I)) summed over the latent grid: a
small KL weight keeps the latent close to deterministic and only regularises its scale, as the
KL-regularised autoencoders of the paper (which use 1e-6 of a summed L1 + perceptual loss).

Stage 2, the latent DDPM: the pool is encoded to posterior MEANS μ (N, c, h, w); they are
multiplied by ``latent_scale`` = 1 / std(μ) (one number over all elements, the paper's scale
factor, computed on this pool and kept in the state) and a :class:`~.ddpm.DDPMModel` — the same
schedule, ε-prediction UNet, label dropout, EMA, classifier-free guidance and DDIM sampler, via
its ``fit_scaled`` / ``sample_scaled`` — is trained on them with ``clip_denoised=False`` (latents
are not bounded). Its settings are the keys ``timesteps`` ... ``precision`` (same names and
meanings as ``model=ddpm``).

Sampling: the DDPM draws latents with guidance w = 1/λ − 1 (λ = 1/(1 + w) as for ``ddpm``; λ = 1
is plain conditional sampling), they are divided by ``latent_scale`` and decoded; the image is the
decoder mean E[x | z] ∈ [0, 1]. An unconditional model (no labels, or ``use_labels=false``)
refuses λ ≠ 1.

Every random draw — both stages' initial weights, batch orders, the reparameterisation noise,
the DDPM's timesteps, noise and label-dropout masks — comes from the ``generator`` given to
``fit``; sampling draws only from the sampling generator. Under torchrun the autoencoder is
wrapped in DDP and each rank takes its ``shard`` of every global batch (as :mod:`.vae`), and the
DDPM is distributed as in :mod:`.ddpm`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from madcore import dist

from ..errors import LoopError
from .base import GenerativeModel, ProgressFn, fit_column
from .ddpm import DDPMModel
from .training import (PRECISIONS, ShuffledIndices, autocast, autocast_dtype, begin_sampling,
                       check_choice, check_float, check_int, freeze, load_module, map_chunks,
                       module_state, require_fitted, seeded, wrap_ddp)
from .vae import (PaddedAutoencoder, decoder_mean, decoder_stages, encoder_stages, gaussian_kl,
                  padding, reconstruction_nll)

#: Values of ``ae_likelihood`` (see :func:`.vae.reconstruction_nll`).
AE_LIKELIHOODS = ("bernoulli", "gaussian")
_AE_ARCH = ("latent_channels", "width", "levels", "blocks")
_CHECK_EVERY = 100       # autoencoder steps between checks that the loss is finite


class LatentAutoencoder(PaddedAutoencoder):
    """Encoder and decoder between images of ``shape`` (C, H, W) and a spatial latent
    (latent_channels, ⌈H/2^levels⌉, ⌈W/2^levels⌉); see the module docstring.

    ``encode(x) -> (μ, logvar)`` each (B, c, h, w); ``decode(z) -> logits`` (B, C, H, W);
    ``forward(x, eps) -> (logits, μ, logvar)`` with z = μ + e^{½ logvar} · eps, eps (B, c, h, w).
    """

    def __init__(self, shape: tuple[int, int, int], latent_channels: int, width: int, levels: int,
                 blocks: int = 0, learn_scale: bool = False) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        m = 2 ** levels
        self.shape = (c, h, w)
        self.pad_h, self.pad_w = padding(h, m), padding(w, m)
        self.latent_shape = (latent_channels, (h + sum(self.pad_h)) // m,
                             (w + sum(self.pad_w)) // m)
        chans = [width * 2 ** i for i in range(levels)]
        self.encoder = nn.Sequential(*encoder_stages(c, chans, blocks),
                                     nn.Conv2d(chans[-1], 2 * latent_channels, 3, 1, 1))
        self.decoder = nn.Sequential(nn.Conv2d(latent_channels, chans[-1], 3, 1, 1),
                                     *decoder_stages(chans, c, blocks))
        # log s of the Gaussian likelihood, s = e^{log_scale}; starts at s = 0.1 of the pixel range
        self.log_scale = nn.Parameter(torch.tensor(math.log(0.1))) if learn_scale else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(self.pad(x)).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.crop(self.decoder(z.contiguous(memory_format=torch.channels_last)))


class LatentDiffusionModel(GenerativeModel):
    """Autoencoder + latent DDPM on images (N, C, H, W) in [0, 1]; see the module docstring.

    Args (Hydra keys of ``configs/model/latent_diffusion.yaml``):
        latent_channels: channels c of the latent grid.
        ae_width: channels of the first (stride-2) convolution; level i has ae_width · 2^i.
        ae_levels: stride-2 stages L (latent side ⌈side / 2^L⌉).
        ae_blocks: 3×3 residual blocks per level in encoder and decoder.
        ae_likelihood: ``bernoulli`` or ``gaussian`` (learned scale), p(x | z) per pixel.
        kl_weight: weight of KL(q(z | x) ‖ N(0, I)) (summed over the latent) in the loss.
        ae_steps: optimiser steps of the autoencoder per fit (a fixed count like the DDPM's
            ``train_steps``, so a small pool is not fitted in a few dozen steps).
        ae_batch_size, ae_lr: global batch and AdamW learning rate (cosine decay to 0).
        timesteps, beta_schedule, beta_start, beta_end, base_channels, channel_mult,
            num_res_blocks, attn_resolution, dropout, groups, train_steps, epochs, batch_size,
            lr, weight_decay, warmup_steps, grad_clip, ema_decay, label_dropout, num_classes,
            use_labels, sample_steps, ddim_eta: the latent DDPM, as in ``model=ddpm``
            (:class:`~.ddpm.DDPMModel`; ``epochs``, when set, overrides ``train_steps``).
        sample_batch_size: rows per DDPM sampling chunk and per decoder pass.
        precision: ``auto`` / ``bf16`` (bf16 autocast on CUDA, fp32 on the CPU) or ``fp32``.
    """

    accepts = ("image",)
    fit_columns = (
        fit_column("ae_reconstruction", "latent-diffusion autoencoder's reconstruction NLL "
                   "−log p(x | z), mean of its last 10% of steps", "nats/image"),
        fit_column("ae_kl", "latent-diffusion autoencoder's KL(q(z | x) ‖ N(0, I)) summed over "
                   "the latent grid (weighted by model.kl_weight in the loss), mean of its last "
                   "10% of steps", "nats/image"),
        fit_column("ae_steps", "latent-diffusion autoencoder's optimiser steps", "count"),
        fit_column("latent_scale", "factor 1/std of the pool's latent means that scales them to "
                   "unit variance before diffusion", "1 / latent units"),
        DDPMModel.fit_columns[0],                       # fit_loss: the latent DDPM's ε-MSE
        DDPMModel.fit_columns[1],                       # fit_loss_initial
        fit_column("diffusion_steps", "latent-diffusion DDPM's optimiser steps", "count"),
        DDPMModel.fit_columns[4],                       # fit_num_classes
    )

    def __init__(self, latent_channels: int = 2, ae_width: int = 16, ae_levels: int = 2,
                 ae_blocks: int = 0, ae_likelihood: str = "bernoulli", kl_weight: float = 1e-2,
                 ae_steps: int = 375, ae_batch_size: int = 64, ae_lr: float = 2e-3,
                 timesteps: int = 500, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, base_channels: int = 16,
                 channel_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 attn_resolution: int = 0, dropout: float = 0.0, groups: int = 8,
                 train_steps: int = 1100, epochs: Optional[float] = None, batch_size: int = 64,
                 lr: float = 2e-3, weight_decay: float = 0.0, warmup_steps: int = 100,
                 grad_clip: float = 1.0, ema_decay: float = 0.999, label_dropout: float = 0.1,
                 num_classes: Optional[int] = None, use_labels: bool = True,
                 sample_steps: int = 10, ddim_eta: float = 1.0, sample_batch_size: int = 1000,
                 precision: str = "auto") -> None:
        m = "latent_diffusion"
        self.ae_arch = {"latent_channels": check_int(m, "latent_channels", latent_channels),
                        "width": check_int(m, "ae_width", ae_width),
                        "levels": check_int(m, "ae_levels", ae_levels),
                        "blocks": check_int(m, "ae_blocks", ae_blocks, low=0)}
        self.ae_likelihood = check_choice(m, "ae_likelihood", ae_likelihood, AE_LIKELIHOODS)
        self.kl_weight = check_float(m, "kl_weight", kl_weight, ge=0)
        self.ae_steps = check_int(m, "ae_steps", ae_steps)
        self.ae_batch_size = check_int(m, "ae_batch_size", ae_batch_size)
        self.ae_lr = check_float(m, "ae_lr", ae_lr, gt=0)
        self.sample_batch_size = check_int(m, "sample_batch_size", sample_batch_size)
        self.precision = check_choice(m, "precision", precision, PRECISIONS)
        # the latent DDPM checks its own settings (its messages name the same model.<key>)
        self.diffusion = DDPMModel(
            timesteps=timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
            beta_end=beta_end, base_channels=base_channels, channel_mult=channel_mult,
            num_res_blocks=num_res_blocks, attn_resolution=attn_resolution, dropout=dropout,
            groups=groups, patch_size=1, train_steps=train_steps, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
            grad_clip=grad_clip, ema_decay=ema_decay, label_dropout=label_dropout,
            num_classes=num_classes, use_labels=use_labels, sample_steps=sample_steps,
            ddim_eta=ddim_eta, sample_batch_size=sample_batch_size, clip_denoised=False,
            precision=precision)
        self.ae: Optional[LatentAutoencoder] = None     # set by fit / load_state_dict
        self.shape: Optional[tuple[int, int, int]] = None
        self.latent_scale = 1.0
        self.curves: Optional[torch.Tensor] = None      # (ae_steps, 2) rec. NLL and KL, CPU

    @property
    def num_classes(self) -> int:                        # type: ignore[override]
        return self.diffusion.num_classes

    def _build(self, shape: tuple[int, int, int]) -> LatentAutoencoder:
        net = LatentAutoencoder(shape, **self.ae_arch,
                                learn_scale=self.ae_likelihood == "gaussian")
        return net.to(memory_format=torch.channels_last)

    def _check_shape(self, x: torch.Tensor) -> None:
        """Refuse data the two stages cannot take: not images, or a side so small that the
        latent grid cannot be halved by the latent UNet's len(channel_mult) − 1 downsamplings."""
        if x.ndim != 4:
            raise LoopError(f"LatentDiffusionModel got data of shape {tuple(x.shape)}",
                            "use images (N, C, H, W) in [0, 1] (e.g. data=mnist5k)")
        levels, down = self.ae_arch["levels"], len(self.diffusion.channel_mult) - 1
        need = 2 ** (levels + down)
        side = min(int(x.shape[2]), int(x.shape[3]))
        if side < need:
            fit = max(0, int(math.floor(math.log2(side))) - down)
            raise LoopError(f"latent_diffusion cannot take {side}-pixel image sides: "
                            f"model.ae_levels={levels} and {down + 1} latent UNet levels need "
                            f"sides >= {need}",
                            f"set model.ae_levels={fit}" if fit >= 1 else
                            "use larger images or set model.channel_mult=[1]")

    # -- training ------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Train the autoencoder, then the latent DDPM, from scratch on x (N, C, H, W) in [0, 1]
        (labels int64 (N,) make the DDPM conditional unless ``use_labels=false``).

        Returns ``ae_reconstruction`` and ``ae_kl`` (nats per image, mean of the autoencoder's
        last 10% of steps; the KL unweighted), ``ae_steps``, ``latent_scale``, the DDPM's ``loss``
        and ``loss_initial`` (ε-MSE on the scaled latents), ``diffusion_steps`` and
        ``num_classes``. Raises LoopError when either stage's loss is not finite."""
        self._check_shape(x)
        if x.shape[0] < 1 or not bool(torch.isfinite(x).all()):
            raise LoopError("LatentDiffusionModel got no images or non-finite (NaN/inf) ones",
                            "check the data source or the previous generation's samples")
        for key, b in (("ae_batch_size", self.ae_batch_size),
                       ("batch_size", self.diffusion.batch_size)):
            if b < dist.world_size():
                raise LoopError(f"model.{key}={b} < {dist.world_size()} ranks",
                                f"raise model.{key} (it is the global batch)")
        self.shape = tuple(int(s) for s in x.shape[1:])
        device, n = x.device, x.shape[0]
        ae_steps = self.ae_steps
        d = self.diffusion
        dm_steps = math.ceil(float(d.epochs) * n / d.batch_size) if d.epochs else d.train_steps
        total = ae_steps + dm_steps
        with seeded(generator, device):                  # initial weights (on CPU, then moved)
            net = self._build(self.shape).to(device)
        curves = self._train_ae(net, x.float(), ae_steps, generator,
                                None if progress is None else lambda s, _: progress(s, total))
        self.curves = curves.cpu()
        tail = max(1, ae_steps // 10)
        rec, kl = self.curves[-tail:].mean(0).tolist()
        mu = self._encode_means(x.float())
        std = float(mu.float().std(correction=0))
        if not (math.isfinite(std) and std > 0):
            raise LoopError(f"latent_diffusion's latents have std {std:g} (the autoencoder "
                            "collapsed or diverged)",
                            f"lower model.ae_lr (now {self.ae_lr:g}) or model.kl_weight "
                            f"(now {self.kl_weight:g})")
        self.latent_scale = 1.0 / std
        try:
            st = d.fit_scaled(mu * self.latent_scale, generator,
                              None if progress is None
                              else lambda s, _: progress(ae_steps + s, total), labels)
        except LoopError as e:
            raise LoopError(f"latent_diffusion DDPM: {e.problem}", e.fix) from e
        if not (math.isfinite(st["loss"]) and math.isfinite(st["loss_initial"])):
            raise LoopError(f"latent_diffusion's DDPM diverged (final loss {st['loss']:g})",
                            f"lower model.lr (now {d.lr:g}, e.g. to {d.lr / 4:g}) or set "
                            "model.grad_clip (e.g. 1)")
        return {"ae_reconstruction": rec, "ae_kl": kl, "ae_steps": float(ae_steps),
                "latent_scale": self.latent_scale, "loss": st["loss"],
                "loss_initial": st["loss_initial"], "diffusion_steps": st["steps"],
                "num_classes": st["num_classes"]}

    def _train_ae(self, net: LatentAutoencoder, x: torch.Tensor, steps: int, g: torch.Generator,
                  progress: Optional[ProgressFn]) -> torch.Tensor:
        """``steps`` AdamW steps (cosine decay) on x; sets ``self.ae``. Returns (steps, 2) on
        x's device: the batch-mean reconstruction NLL and KL per image (nats)."""
        device, gdev, n, b = x.device, g.device, x.shape[0], self.ae_batch_size
        model = wrap_ddp(net)
        opt = torch.optim.AdamW(net.parameters(), lr=self.ae_lr, fused=device.type == "cuda")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        amp = autocast_dtype(device, self.precision)
        order = ShuffledIndices(n, g, device)
        curves = torch.empty(steps, 2, device=device)
        world = dist.world_size()
        for step in range(steps):
            idx = order.next(b)
            eps = torch.randn((b, *net.latent_shape), generator=g, device=gdev).to(device)
            rows = dist.shard(b)
            batch = x[idx][rows]
            with autocast(device, amp):
                out, mu, logvar = model(batch, eps[rows])
            rec = reconstruction_nll(out, batch, self.ae_likelihood, net.log_scale)
            kl = gaussian_kl(mu.float().flatten(1), logvar.float().flatten(1))
            loss = (rec + self.kl_weight * kl).sum() * (world / b)   # DDP averages: global mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            curves[step] = dist.all_reduce_sum(torch.stack([rec.detach().sum(),
                                                            kl.detach().sum()]) / b)
            if (step + 1) % _CHECK_EVERY == 0 or step + 1 == steps:
                recent = curves[max(0, step + 1 - _CHECK_EVERY):step + 1]
                if not bool(torch.isfinite(recent).all()):
                    raise LoopError(f"latent_diffusion's autoencoder diverged (non-finite loss "
                                    f"by step {step + 1})",
                                    f"lower model.ae_lr (now {self.ae_lr:g}, e.g. to "
                                    f"{self.ae_lr / 4:g})")
            if progress is not None:
                progress(step + 1, steps)
        self.ae = freeze(net)
        return curves

    @torch.no_grad()
    def _encode_means(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means μ (N, c, h, w) float32 (contiguous) of the fitted encoder on x."""
        amp = autocast_dtype(x.device, self.precision)

        def encode(chunk: torch.Tensor) -> torch.Tensor:
            with autocast(x.device, amp):
                return self.ae.encode(chunk)[0].float().contiguous()

        return map_chunks(encode, x, self.sample_batch_size)

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, bias: float = 1.0, generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n images (n, C, H, W) float32 in [0, 1]: DDIM latents (guidance w = 1/λ − 1, given
        ``labels`` int64 (n,) or uniformly drawn ones when conditional) divided by
        ``latent_scale`` and decoded to the decoder mean. Raises LoopError for λ ≠ 1 on an
        unconditional model and for non-finite samples."""
        bias, device, _ = begin_sampling(self, self.ae, bias, generator)
        if not self.conditional and bias != 1.0:
            raise LoopError(f"sampling bias λ={bias:g} needs classifier-free guidance, which "
                            "needs class labels; this latent_diffusion was fitted without them",
                            "set loop.bias=1, or use labelled data (e.g. data=mnist5k) with "
                            "model.use_labels=true")
        x = self._decode(self.diffusion.sample_scaled(n, bias, generator, labels)
                         / self.latent_scale)
        if not bool(torch.isfinite(x).all()):
            raise LoopError("latent_diffusion produced non-finite samples (a stage diverged)",
                            f"lower model.lr (now {self.diffusion.lr:g}) and model.ae_lr (now "
                            f"{self.ae_lr:g})")
        return x

    @torch.no_grad()
    def regenerate(self, x: torch.Tensor, strength: float,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The diffusion regeneration attack (Zhao et al. 2023) with this model: encode x
        (N, C, H, W) in [0, 1] to its posterior-mean latent, scale it, noise it to the fraction
        ``strength`` ∈ (0, 1] of the diffusion's steps and denoise it back by DDIM without labels
        (:meth:`DDPMModel.regenerate_scaled`), then decode to the decoder mean. Returns
        (N, C, H, W) float32 in [0, 1]."""
        require_fitted(self, self.ae)
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise LoopError(f"latent_diffusion regenerate got images {tuple(x.shape[1:])}, "
                            f"fitted on {tuple(self.shape)}", "regenerate images of the fitted size")
        if not 0 < float(strength) <= 1:
            raise LoopError(f"latent_diffusion regeneration strength {strength} is outside "
                            "(0, 1]", "give fractions of the diffusion's steps, e.g. 0.1, 0.2, 0.4")
        device = next(self.ae.parameters()).device
        z = self._encode_means(x.to(device).float()) * self.latent_scale
        return self._decode(self.diffusion.regenerate_scaled(z, float(strength), generator)
                            / self.latent_scale)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means (n, C, H, W) float32 of unscaled latents z (n, c, h, w), in chunks of
        ``sample_batch_size``."""
        device, amp = z.device, autocast_dtype(z.device, self.precision)

        def decode(zc: torch.Tensor) -> torch.Tensor:
            with autocast(device, amp):
                out = self.ae.decode(zc)
            return decoder_mean(out, self.ae_likelihood).contiguous()

        return map_chunks(decode, z, self.sample_batch_size)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Autoencoder weights under ``ae.`` (encoder included), its architecture
        (``latent_channels``, ``width``, ``levels``, ``blocks``, int64), the image shape (3,),
        the index of the likelihood in :data:`AE_LIKELIHOODS`, ``latent_scale`` (float64) and
        the latent DDPM's state under ``diffusion.`` (see ``DDPMModel.state_dict``)."""
        state = module_state(require_fitted(self, self.ae), "ae")
        state["image_shape"] = torch.tensor(self.shape, dtype=torch.int64)
        state["ae_likelihood"] = torch.tensor(AE_LIKELIHOODS.index(self.ae_likelihood),
                                              dtype=torch.int64)
        state["latent_scale"] = torch.tensor(self.latent_scale, dtype=torch.float64)
        state.update({f"ae_arch.{k}": torch.tensor(v, dtype=torch.int64)
                      for k, v in self.ae_arch.items()})
        state.update({f"diffusion.{k}": v for k, v in self.diffusion.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild both stages from the saved shapes and load their weights (on their device);
        the saved architecture overrides this instance's, training and sampler settings stay."""
        keys = (*(f"ae_arch.{k}" for k in _AE_ARCH), "image_shape", "ae_likelihood",
                "latent_scale")
        missing = [k for k in keys if k not in state]
        if missing:
            raise LoopError(f"LatentDiffusionModel state lacks {missing}",
                            "load a state saved by LatentDiffusionModel")
        self.ae_arch = {k: int(state[f"ae_arch.{k}"]) for k in _AE_ARCH}
        self.ae_likelihood = AE_LIKELIHOODS[int(state["ae_likelihood"])]
        self.latent_scale = float(state["latent_scale"])
        self.shape = tuple(int(s) for s in state["image_shape"].tolist())
        self.ae = load_module(self._build(self.shape), state, "ae")
        cut = len("diffusion.")
        self.diffusion.load_state_dict({k[cut:]: v for k, v in state.items()
                                        if k.startswith("diffusion.")})
