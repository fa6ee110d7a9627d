"""Class-conditional DDPM with classifier-free guidance (Ho et al. 2020; Ho & Salimans 2022).

The paper's MNIST model (Alemohammad et al. §2.3): T = 500, 10% label dropout, guidance weight
w = 1/λ − 1 (λ = 1 → w = 0, plain conditional sampling). Each generation trains from scratch:

    m = DDPMModel(timesteps=500, base_channels=64, train_steps=10_000)
    m.fit(x, generator, labels=y)       # x (N, C, H, W) in [0, 1], y int64 (N,) or None
    s = m.sample(n, bias=0.66, generator=g, labels=ys)          # (n, C, H, W) in [0, 1]

Training: ε-prediction MSE on x scaled to [−1, 1], AdamW with linear warm-up, gradient clipping,
an EMA of the weights (sampling uses the EMA net), bf16 autocast on CUDA (fp32 master weights).
Every random draw — init, batch order, timesteps, noise, label-dropout mask, dropout — comes from
``generator``, so one seed gives one model. Sampling: DDIM with ``sample_steps`` steps and
``ddim_eta`` (``sample_steps = timesteps`` with ``ddim_eta = 1`` is ancestral DDPM sampling).

Distributed (same code under ``torchrun`` and plain python, via :mod:`madcore.dist`): every
rank draws the same GLOBAL batch (indices, t, noise, mask) from the same seed, and one training step

    ddpm_train_step(net, optimizer, x0, labels, t, noise, drop_mask, alphas_cumprod, *,
                    null_class=0, amp_dtype=None, grad_clip=0.0) -> loss (0-dim tensor)

takes that global batch (x0 (B, C, H, W) in [−1, 1]; labels int64 (B,) or None; t int64 (B,);
noise (B, C, H, W); drop_mask bool (B,) or None; alphas_cumprod (T,)), computes the loss on this
rank's rows ``shard(B)`` as Σ_local per-sample-MSE · world_size / B, so DDP's gradient average
equals the gradient of the mean loss over the global batch, steps ``optimizer`` and returns the
global mean loss (all-reduced). ``net`` is the UNet or its DDP wrapper. Initial weights are equal
on every rank (same seed; DDP broadcasts rank 0's anyway). Sampling splits each global chunk of
``sample_batch_size`` rows across ranks and concatenates them back (results do not depend on the
number of ranks).
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import torch
from torch import nn

from madcore import dist

from ..errors import LoopError
from .base import FIT_STEPS, GenerativeModel, ProgressFn, fit_column
from .training import (EMA, PRECISIONS, ShuffledIndices, autocast, autocast_dtype,
                       begin_sampling, check_bool, check_choice, check_float, check_int,
                       chunk_spans, load_module, module_state, require_fitted, seeded, wrap_ddp)
from .unet import UNet

_ARCH = ("base_channels", "num_res_blocks", "attn_resolution", "groups", "patch_size")


def make_betas(timesteps: int, schedule: str = "linear", beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """β_1..β_T as float64 (T,): ``linear`` from beta_start to beta_end (Ho et al.), or ``cosine``
    (Nichol & Dhariwal 2021, s = 0.008, β clipped at 0.999)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if schedule == "cosine":
        s = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise LoopError(f"unknown beta schedule {schedule!r}",
                    "set model.beta_schedule to linear or cosine")


def ddim_timesteps(timesteps: int, steps: int) -> torch.Tensor:
    """``steps`` timesteps, int64 ascending, evenly spaced over 0..T−1 and including both ends
    (steps = T gives every timestep)."""
    return torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long()


def ddim_step(x: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_prev: float, eta: float = 0.0,
              noise: Optional[torch.Tensor] = None, clip: bool = False) -> torch.Tensor:
    """One DDIM update x_t → x_prev (Song et al. 2021, eq. 12), x and eps (N, C, H, W).

    x̂0 = (x − √(1−ᾱ_t) ε) / √ᾱ_t (clamped to [−1, 1] when ``clip``, ε then re-derived from it),
    σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev),
    x_prev = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε + σ z.   ᾱ_prev = 1 at the last step (→ x̂0).
    """
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0 and noise is not None:
        out = out + sigma * noise
    return out


def guided_eps(net: nn.Module, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor],
               w: float, null_class: int) -> torch.Tensor:
    """Classifier-free guided noise estimate (N, C, H, W) float32:
    ε = (1 + w) ε(x, t, y) − w ε(x, t, ∅). Unconditional (y None) or w = 0: one plain forward pass;
    otherwise the conditional and null-class halves run as one batch of 2N."""
    if y is None or w == 0:
        return net(x, t, y).float()
    null = torch.full_like(y, null_class)
    cond, uncond = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).float().chunk(2)
    return (1 + w) * cond - w * uncond


def ddpm_train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
                    labels: Optional[torch.Tensor], t: torch.Tensor, noise: torch.Tensor,
                    drop_mask: Optional[torch.Tensor], alphas_cumprod: torch.Tensor, *,
                    null_class: int = 0, amp_dtype: Optional[torch.dtype] = None,
                    grad_clip: float = 0.0) -> torch.Tensor:
    """One optimiser step on the global batch; see the module docstring. Returns the global mean
    ε-MSE (0-dim, detached, identical on every rank)."""
    b = x0.shape[0]
    rows = dist.shard(b)
    x0, t, noise = x0[rows], t[rows], noise[rows]
    y = None
    if labels is not None:
        y = labels[rows]
        if drop_mask is not None:
            y = torch.where(drop_mask[rows], torch.full_like(y, null_class), y)
    ab = alphas_cumprod[t].to(x0.dtype).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    with autocast(x0.device, amp_dtype):
        eps = net(x_t, t, y)
    per_sample = (eps.float() - noise).pow(2).flatten(1).mean(1)                 # (B_local,)
    loss = per_sample.sum() * (dist.world_size() / b)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    return dist.all_reduce_sum(per_sample.detach().sum() / b)


class DDPMModel(GenerativeModel):
    """Conditional (or unconditional) DDPM on images (N, C, H, W) in [0, 1].

    Args (Hydra keys of ``configs/model/ddpm.yaml``):
        timesteps: diffusion steps T (paper: 500).
        beta_schedule: ``linear`` (β from beta_start to beta_end) or ``cosine``.
        beta_start, beta_end: ends of the linear schedule.
        base_channels, channel_mult, num_res_blocks, attn_resolution, dropout, groups,
            patch_size: the :class:`~loops.models.unet.UNet` (patch_size must divide H and W).
        train_steps: optimiser steps per fit; ``epochs`` (if set) overrides it with
            ceil(epochs · N / batch_size).
        batch_size: global batch (split across ranks under torchrun).
        lr, weight_decay, warmup_steps, grad_clip: AdamW, linear warm-up, max gradient norm
            (0 = off).
        ema_decay: EMA decay of the sampling weights (warmed up as min(decay, (1+s)/(10+s))).
        label_dropout: probability of replacing a label by the null class in training.
        num_classes: classes K of a conditional fit; null = max(labels) + 1.
        use_labels: false trains unconditionally even when labels are given.
        sample_steps, ddim_eta: DDIM sampler steps and η (0 = deterministic DDIM).
        sample_batch_size: global rows per sampling chunk.
        clip_denoised: clamp the predicted x̂0 to [−1, 1] at each sampling step.
        precision: ``auto`` / ``bf16`` (bf16 autocast on CUDA, fp32 on CPU) or ``fp32``.
    """

    accepts = ("image",)
    fit_columns = (
        fit_column("loss", "final ε-prediction MSE, EMA-smoothed (decay 0.98, bias-corrected)",
                   "MSE (unit-variance noise)"),
        fit_column("loss_initial", "mean ε-prediction MSE of the first 10% of steps",
                   "MSE (unit-variance noise)"),
        FIT_STEPS,
        fit_column("images_per_s", "training throughput over all ranks", "images/s",
                   "wall clock of the training steps"),
        fit_column("num_classes", "classes the model is conditioned on (0 = unconditional)",
                   "count"),
    )

    def __init__(self, timesteps: int = 500, beta_schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_resolution: int = 7, dropout: float = 0.1, groups: int = 32,
                 patch_size: int = 1, train_steps: int = 20_000, epochs: Optional[float] = None,
                 batch_size: int = 128,
                 lr: float = 2e-4, weight_decay: float = 0.0, warmup_steps: int = 500,
                 grad_clip: float = 1.0, ema_decay: float = 0.9995, label_dropout: float = 0.1,
                 num_classes: Optional[int] = None, use_labels: bool = True,
                 sample_steps: int = 50, ddim_eta: float = 0.0, sample_batch_size: int = 2000,
                 clip_denoised: bool = True, precision: str = "auto") -> None:
        m = "DDPM"
        self.timesteps = check_int(m, "timesteps", timesteps)
        self.sample_steps = check_int(m, "sample_steps", sample_steps)
        if self.sample_steps > self.timesteps:
            raise LoopError(f"DDPM timesteps={timesteps}, sample_steps={sample_steps}",
                            "set model.timesteps >= 1 and 1 <= model.sample_steps <= timesteps")
        self.label_dropout = check_float(m, "label_dropout", label_dropout, ge=0, lt=1)
        self.precision = check_choice(m, "precision", precision, PRECISIONS)
        self.train_steps, self.batch_size, self.sample_batch_size = (
            check_int(m, "train_steps", train_steps), check_int(m, "batch_size", batch_size),
            check_int(m, "sample_batch_size", sample_batch_size))
        beta_start = check_float(m, "beta_start", beta_start, gt=0, lt=1)
        beta_end = check_float(m, "beta_end", beta_end, gt=0, lt=1)
        self.betas = make_betas(self.timesteps, beta_schedule, beta_start, beta_end)
        ab_last = float(self.alphas_cumprod[-1])
        if ab_last > 0.05:          # x_T keeps √ᾱ_T of the image: sampling from N(0, I) misfits
            raise LoopError(f"DDPM schedule ends at ᾱ_T={ab_last:.3f}: x_T is far from N(0, I)",
                            "raise model.beta_end or model.timesteps, or use beta_schedule=cosine "
                            "(linear 1e-4..0.02 suits T >= 300; below, scale both ends by 500/T)")
        self.arch = {"base_channels": check_int(m, "base_channels", base_channels),
                     "num_res_blocks": check_int(m, "num_res_blocks", num_res_blocks, 0),
                     "attn_resolution": check_int(m, "attn_resolution", attn_resolution, 0),
                     "groups": check_int(m, "groups", groups),
                     "patch_size": check_int(m, "patch_size", patch_size)}
        self.channel_mult = tuple(check_int(m, "channel_mult", v) for v in channel_mult)
        self.dropout = check_float(m, "dropout", dropout, ge=0, lt=1)
        self.epochs = None if epochs is None else check_float(m, "epochs", epochs, ge=0)
        self.lr = check_float(m, "lr", lr, gt=0)
        self.weight_decay = check_float(m, "weight_decay", weight_decay, ge=0)
        self.warmup_steps = check_int(m, "warmup_steps", warmup_steps, 0)
        self.grad_clip = check_float(m, "grad_clip", grad_clip, ge=0)
        self.ema_decay = check_float(m, "ema_decay", ema_decay, ge=0, lt=1)
        self.use_labels = check_bool(m, "use_labels", use_labels)
        self.num_classes_cfg = (None if num_classes is None
                                else check_int(m, "num_classes", num_classes, 0))
        self.ddim_eta = check_float(m, "ddim_eta", ddim_eta, ge=0)
        self.clip_denoised = check_bool(m, "clip_denoised", clip_denoised)
        self.net: Optional[UNet] = None                  # the EMA network, set by fit / load
        self.shape: Optional[tuple[int, int, int]] = None
        self.num_classes = 0
        self.loss_curve: Optional[torch.Tensor] = None   # (steps,) per-step training loss, CPU

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t = Π_{s ≤ t} (1 − β_s), float64 (T,) on the CPU."""
        return torch.cumprod(1 - self.betas, 0)

    # -- training ------------------------------------------------------------------------------
    def _build(self, num_classes: int) -> UNet:
        return UNet(in_channels=self.shape[0], channel_mult=self.channel_mult,
                    num_classes=num_classes, dropout=self.dropout, image_size=self.shape[1:],
                    **self.arch)

    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Train from scratch; returns ``loss`` (EMA-smoothed final ε-MSE), ``loss_initial`` (mean
        of the first 10% of steps), ``steps``, ``images_per_s`` (global), ``num_classes``."""
        if x.ndim != 4:
            raise LoopError(f"DDPMModel got data of shape {tuple(x.shape)}",
                            "use images (N, C, H, W) in [0, 1] (e.g. data=mnist5k)")
        if not bool(torch.isfinite(x).all()):
            raise LoopError("DDPMModel got non-finite (NaN/inf) training data",
                            "check the data source or the previous generation's samples")
        p = self.arch["patch_size"]
        if x.shape[2] % p or x.shape[3] % p:
            raise LoopError(f"model.patch_size={p} does not divide the image size "
                            f"{tuple(x.shape[2:])}", "set model.patch_size to 1 or a divisor")
        if self.batch_size < dist.world_size():
            raise LoopError(f"model.batch_size={self.batch_size} < {dist.world_size()} ranks",
                            "raise model.batch_size (it is the global batch)")
        return self.fit_scaled(x.float() * 2 - 1, generator, progress, labels)

    def fit_scaled(self, x0: torch.Tensor, generator: torch.Generator,
                   progress: Optional[ProgressFn] = None,
                   labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """:meth:`fit` on data already in the diffusion's space: x0 (N, C, H, W) float32, the
        images scaled to [−1, 1] (what ``fit`` passes) or any roughly unit-scale tensor, such as
        the standardised latents of :class:`~.latent_diffusion.LatentDiffusionModel`. Same
        statistics and draws as ``fit``; no checks on x0 beyond those ``fit`` makes."""
        n, device = x0.shape[0], x0.device
        y, k = None, 0
        if self.use_labels and labels is not None:
            y, k = self._labels(labels, n, device)
        self.shape, self.num_classes = tuple(int(s) for s in x0.shape[1:]), k
        steps = (math.ceil(float(self.epochs) * n / self.batch_size) if self.epochs
                 else self.train_steps)
        with seeded(generator, device):                   # init (on CPU, then moved) and dropout
            net = self._build(k).to(device)
            losses, images_per_s = self._train(net, x0, y, steps, generator, progress)
        self.loss_curve = losses.cpu()
        smooth, d = 0.0, 0.98
        for v in self.loss_curve.tolist():                      # bias-corrected EMA of the loss
            smooth = d * smooth + (1 - d) * v
        smooth /= 1 - d ** len(self.loss_curve)
        first = self.loss_curve[: max(1, steps // 10)].mean()
        return {"loss": smooth, "loss_initial": float(first), "steps": float(steps),
                "images_per_s": images_per_s, "num_classes": float(k)}

    def _labels(self, labels: torch.Tensor, n: int,
                device: torch.device) -> tuple[torch.Tensor, int]:
        """Validated labels int64 (n,) on ``device`` and the class count K."""
        if labels.shape != (n,) or labels.dtype.is_floating_point:
            raise LoopError(f"DDPM labels of shape {tuple(labels.shape)}, dtype {labels.dtype}",
                            f"pass int64 labels of shape ({n},)")
        k = self.num_classes_cfg or int(labels.max()) + 1
        if int(labels.min()) < 0 or int(labels.max()) >= k:
            raise LoopError(f"DDPM labels outside [0, {k})", "set model.num_classes to cover them")
        return labels.to(device=device, dtype=torch.long), k

    def _train(self, net: UNet, x0: torch.Tensor, y: Optional[torch.Tensor], steps: int,
               g: torch.Generator, progress: Optional[ProgressFn]) -> tuple[torch.Tensor, float]:
        """``steps`` optimiser steps on x0 (N, C, H, W) in [−1, 1]; sets ``self.net`` to the EMA
        net; returns the per-step losses (steps,) and the global training images/s."""
        device, gdev, n, b = x0.device, g.device, x0.shape[0], self.batch_size
        ema = EMA(net, self.ema_decay)
        model = wrap_ddp(net)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                fused=device.type == "cuda")
        ab = self.alphas_cumprod.float().to(device)
        amp = autocast_dtype(device, self.precision)
        losses = torch.empty(steps, device=device)
        order = ShuffledIndices(n, g, device)
        t0 = time.perf_counter()
        for step in range(steps):
            idx = order.next(b)
            t = torch.randint(0, self.timesteps, (b,), generator=g, device=gdev).to(device)
            noise = torch.randn((b, *self.shape), generator=g, device=gdev).to(device)
            drop = None
            if y is not None:
                drop = (torch.rand(b, generator=g, device=gdev) < self.label_dropout).to(device)
            for group in opt.param_groups:
                group["lr"] = self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))
            losses[step] = ddpm_train_step(model, opt, x0[idx], None if y is None else y[idx], t,
                                           noise, drop, ab, null_class=self.num_classes,
                                           amp_dtype=amp, grad_clip=self.grad_clip)
            ema.update(step)
            if progress is not None:
                progress(step + 1, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.net = ema.module
        return losses, steps * b / max(time.perf_counter() - t0, 1e-9)

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, bias: float = 1.0, generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n images (n, C, H, W) float32 in [0, 1] from the EMA net by DDIM, guidance w = 1/λ − 1.

        Conditional models use ``labels`` int64 (n,) or draw them uniformly from ``generator``.
        """
        bias = begin_sampling(self, self.net, bias, generator).bias
        if not self.conditional and bias != 1.0:
            raise LoopError(f"sampling bias λ={bias} needs classifier-free guidance, which needs "
                            "class labels; the DDPM was fitted on data without labels",
                            "set loop.bias=1 or use labelled data")
        out = self.sample_scaled(n, bias, generator, labels)
        return ((out + 1) / 2).clamp(0.0, 1.0)           # clamp keeps NaN: the engine sees it

    @torch.no_grad()
    def sample_scaled(self, n: int, bias: float = 1.0,
                      generator: Optional[torch.Generator] = None,
                      labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`sample` in the diffusion's space: the DDIM output x̂0 (n, C, H, W) float32 as
        the net was trained on (``fit_scaled``'s x0), not mapped to [0, 1] nor clamped (only the
        per-step x̂0 clamp of ``clip_denoised`` applies). Guidance w = 1/λ − 1; an unconditional
        model runs with w = 0 whatever λ (callers refuse λ ≠ 1 there)."""
        bias, device, gdev = begin_sampling(self, self.net, bias, generator)
        n, w, k = int(n), 1.0 / bias - 1.0, self.num_classes
        if self.conditional:
            if labels is None:
                labels = torch.randint(0, k, (n,), generator=generator, device=gdev)
            elif labels.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= k:
                raise LoopError(f"DDPM sample labels must be int64 ({n},) in [0, {k})",
                                "pass one class index per sample")
            labels = labels.to(device=device, dtype=torch.long)
        ts, ab = ddim_timesteps(self.timesteps, self.sample_steps).tolist(), self.alphas_cumprod
        ctx = autocast(device, autocast_dtype(device, self.precision))
        chunks = []
        for start, m in chunk_spans(n, self.sample_batch_size):
            rows = dist.shard(m)
            x = torch.randn((m, *self.shape), generator=generator, device=gdev).to(device)[rows]
            y = labels[start:start + m][rows] if self.conditional else None
            for i in reversed(range(len(ts))):
                z = None
                if self.ddim_eta > 0 and i > 0:
                    z = torch.randn((m, *self.shape), generator=generator, device=gdev)
                    z = z.to(device)[rows]
                if x.shape[0] == 0:
                    continue
                with ctx:
                    tt = torch.full((x.shape[0],), ts[i], device=device, dtype=torch.long)
                    eps = guided_eps(self.net, x, tt, y, w, k)
                ab_prev = float(ab[ts[i - 1]]) if i > 0 else 1.0
                x = ddim_step(x, eps, float(ab[ts[i]]), ab_prev, self.ddim_eta, z,
                              self.clip_denoised)
            chunks.append(dist.all_gather_cat(x))
        return torch.cat(chunks) if chunks else torch.empty((0, *self.shape), device=device)

    @torch.no_grad()
    def regenerate_scaled(self, x0: torch.Tensor, strength: float,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Noise, then denoise (SDEdit, Meng et al. 2022; the diffusion regeneration attack of
        Zhao et al. 2023) in the diffusion's space: x0 (N, C, H, W) as ``fit_scaled``'s is noised
        by the forward process to t* = round(strength · (T − 1)), x_t* = √ᾱ x0 + √(1 − ᾱ) ε,
        then taken back to t = 0 by DDIM over the ``sample_steps`` grid's timesteps below t*
        (t* itself first), without labels (the null class of a conditional model). ``strength``
        in (0, 1]; 1 starts from (almost) pure noise. Returns x̂0 (N, C, H, W) float32."""
        net = require_fitted(self, self.net)
        device = next(net.parameters()).device
        gdev = generator.device if generator is not None else device
        t_star = round(float(strength) * (self.timesteps - 1))
        grid = [t for t in ddim_timesteps(self.timesteps, self.sample_steps).tolist() if t < t_star]
        ts, ab = [*grid, t_star], self.alphas_cumprod
        noise = torch.randn(x0.shape, generator=generator, device=gdev).to(device)
        x = math.sqrt(float(ab[t_star])) * x0.to(device).float() + math.sqrt(
            1 - float(ab[t_star])) * noise
        y = (torch.full((x.shape[0],), self.num_classes, device=device, dtype=torch.long)
             if self.conditional else None)
        ctx = autocast(device, autocast_dtype(device, self.precision))
        for i in reversed(range(len(ts))):
            z = None
            if self.ddim_eta > 0 and i > 0:
                z = torch.randn(x.shape, generator=generator, device=gdev).to(device)
            with ctx:
                tt = torch.full((x.shape[0],), ts[i], device=device, dtype=torch.long)
                eps = net(x, tt, y).float()
            ab_prev = float(ab[ts[i - 1]]) if i > 0 else 1.0
            x = ddim_step(x, eps, float(ab[ts[i]]), ab_prev, self.ddim_eta, z, self.clip_denoised)
        return x

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """EMA weights under ``net.``, β schedule (float64), image shape, classes, UNet shape."""
        state = module_state(require_fitted(self, self.net), "net")
        state.update({"betas": self.betas.clone(),
                      "image_shape": torch.tensor(self.shape, dtype=torch.int64),
                      "num_classes": torch.tensor(self.num_classes, dtype=torch.int64),
                      "channel_mult": torch.tensor(self.channel_mult, dtype=torch.int64),
                      "dropout": torch.tensor(self.dropout, dtype=torch.float64)})
        state.update({k: torch.tensor(v, dtype=torch.int64) for k, v in self.arch.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the UNet from the saved shape info and load the EMA weights (on their device).
        The sampler settings (sample_steps, ddim_eta, ...) stay those of this instance."""
        self.betas = state["betas"].detach().cpu().to(torch.float64)
        self.timesteps = len(self.betas)
        self.sample_steps = min(self.sample_steps, self.timesteps)
        self.shape = tuple(int(s) for s in state["image_shape"].tolist())
        self.num_classes = int(state["num_classes"])
        self.channel_mult = tuple(int(m) for m in state["channel_mult"].tolist())
        self.dropout = float(state["dropout"])
        self.arch = {k: int(state[k]) for k in _ARCH}
        self.net = load_module(self._build(self.num_classes), state, "net")
