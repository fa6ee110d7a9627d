"""RealNVP normalizing flow for vector data (Dinh et al. 2017): the paper's flow model.

Alemohammad et al. train GLOW on a 2-D density; for a normalizing flow the sampling bias
λ ∈ (0, 1] draws the latents from N(0, λI) (covariance λ, std √λ) and pushes them through the
inverse map, so λ = 1 is unbiased and λ < 1 concentrates samples on the high-density regions.

The map from data x (N, D) to latents z (N, D), every step invertible with a cheap log-det:

    u = (x − μ) / σ                       per-dimension mean / std of the training data (fixed)
    for k = 1..L:  h ← ActNorm_k(h);  h ← Coupling_k(h)
    z = h

    ActNorm:   h' = h · e^a + b                         log|det| = Σ_d a_d   (data-initialised)
    Coupling:  with a binary mask m (1 = passed through), alternating between layers,
               ŝ, t = MLP(m ⊙ h),  s = s_max · tanh(ŝ / s_max)   (bounded scale for stability)
               h' = m ⊙ h + (1 − m) ⊙ (h · e^s + t)      log|det| = Σ_d (1 − m_d) s_d

    log p(x) = log N(z; 0, I) + Σ log|det| − Σ_d log σ_d           (nats, change of variables)

The last layer of every coupling MLP starts at zero, so the untrained flow is the identity after
the data-initialised ActNorms: its likelihood is that of the diagonal Gaussian N(μ, diag σ²).
Training is AdamW on the mean negative log-likelihood of mini-batches (cosine learning-rate decay,
gradient-norm clipping). Every random draw (initial weights, batch order) comes from the
``generator`` given to ``fit``, so one seed gives one model.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..errors import LoopError
from .base import FIT_STEPS, GenerativeModel, ProgressFn, fit_column
from .training import (ShuffledIndices, begin_sampling, check_choice, check_float, check_int,
                       freeze, load_module, map_chunks, module_state, require_fitted, seeded)

_LOG_2PI = math.log(2 * math.pi)
_CHECK_EVERY = 50        # steps between finiteness checks of the loss (each one syncs a GPU)
_ARCH = ("dim", "n_layers", "hidden", "depth")


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) in nats, (N,) for z (N, D)."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


class ActNorm(nn.Module):
    """Per-dimension affine h · e^a + b (Kingma & Dhariwal 2018), initialised from data so its
    output has zero mean and unit variance per dimension."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def initialize(self, h: torch.Tensor) -> None:
        """Set a, b from the layer's input h (N, D)."""
        std = h.std(0, correction=0).clamp_min(1e-6)
        self.log_scale.copy_(-std.log())
        self.bias.copy_(-h.mean(0) / std)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h', log|det|) with h' (N, D) and log|det| a 0-dim tensor (the same for every row)."""
        return h * self.log_scale.exp() + self.bias, self.log_scale.sum()

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.bias) * (-self.log_scale).exp()


class AffineCoupling(nn.Module):
    """h' = m ⊙ h + (1 − m) ⊙ (h · e^s + t) with (ŝ, t) = MLP(m ⊙ h), s = s_max tanh(ŝ / s_max).

    ``mask`` (D,) float with 1 on the dimensions passed through unchanged (they condition the
    others). The MLP has ``depth`` hidden layers of ``hidden`` units (SiLU); its output layer is
    zero-initialised, so the coupling starts as the identity.
    """

    def __init__(self, mask: torch.Tensor, hidden: int, depth: int, scale_max: float) -> None:
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask, persistent=False)
        self.scale_max = scale_max
        layers, width = [], dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        out = nn.Linear(width, 2 * dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def _scale_shift(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounded log-scale s and shift t (N, D), both zero on the passed-through dimensions."""
        raw_s, t = self.net(h * self.mask).chunk(2, dim=-1)
        free = 1 - self.mask
        return free * self.scale_max * torch.tanh(raw_s / self.scale_max), free * t

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h', log|det|) with h' (N, D) and log|det| (N,)."""
        s, t = self._scale_shift(h)
        return h * s.exp() + t, s.sum(-1)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        s, t = self._scale_shift(h)          # the passed-through half is unchanged: same s, t
        return (h - t) * (-s).exp()


class RealNVP(nn.Module):
    """L blocks of ActNorm + affine coupling on R^D (D ≥ 2); the coupling masks alternate between
    the even and the odd dimensions, so consecutive layers transform complementary halves."""

    def __init__(self, dim: int, n_layers: int, hidden: int, depth: int,
                 scale_max: float) -> None:
        super().__init__()
        even = (torch.arange(dim) % 2 == 0).float()
        self.norms = nn.ModuleList(ActNorm(dim) for _ in range(n_layers))
        self.couplings = nn.ModuleList(
            AffineCoupling(even if k % 2 == 0 else 1 - even, hidden, depth, scale_max)
            for k in range(n_layers))

    @torch.no_grad()
    def initialize(self, h: torch.Tensor) -> None:
        """Data-dependent ActNorm initialisation from a batch h (N, D) of (standardised) data."""
        for norm, coupling in zip(self.norms, self.couplings):
            norm.initialize(h)
            h, _ = coupling(norm(h)[0])

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents z (N, D) and log|det ∂z/∂h| (N,)."""
        logdet = h.new_zeros(h.shape[0])
        for norm, coupling in zip(self.norms, self.couplings):
            h, ld_norm = norm(h)
            h, ld_coupling = coupling(h)
            logdet = logdet + ld_norm + ld_coupling
        return h, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Inputs h (N, D) with forward(h) = z."""
        for norm, coupling in zip(reversed(self.norms), reversed(self.couplings)):
            z = norm.inverse(coupling.inverse(z))
        return z


class FlowModel(GenerativeModel):
    """RealNVP flow on vectors (N, D), D ≥ 2; samples x = f⁻¹(z) with z ~ N(0, λI).

    Args (Hydra keys of ``configs/model/flow.yaml``):
        n_layers: ActNorm + coupling blocks L (≥ 2, so every dimension is transformed).
        hidden, depth: units and hidden layers of each coupling's MLP.
        scale_max: bound of the coupling log-scale |s| ≤ scale_max (tanh).
        steps, batch_size: optimiser steps per fit and rows per mini-batch.
        lr, weight_decay, grad_clip: AdamW learning rate, decoupled weight decay, max gradient
            norm (0 = off).
        schedule: ``cosine`` (learning rate decays to 0 over ``steps``) or ``constant``.
        sample_batch_size: rows per chunk when sampling or scoring.
    """

    accepts = ("vector",)
    fit_columns = (
        fit_column("nll", "final mean negative log-likelihood of the training data",
                   "nats per sample (data scale)"),
        fit_column("nll_first", "the same under the initial, data-initialised flow (a diagonal "
                   "Gaussian)", "nats per sample (data scale)"),
        FIT_STEPS,
    )

    def __init__(self, n_layers: int = 8, hidden: int = 64, depth: int = 2,
                 scale_max: float = 3.0, steps: int = 1000, batch_size: int = 512,
                 lr: float = 1e-2, weight_decay: float = 0.0, grad_clip: float = 10.0,
                 schedule: str = "cosine", sample_batch_size: int = 65_536) -> None:
        n_layers, hidden, depth = (check_int("flow", "n_layers", n_layers, 2),
                                   check_int("flow", "hidden", hidden),
                                   check_int("flow", "depth", depth))
        steps = check_int("flow", "steps", steps)
        batch_size = check_int("flow", "batch_size", batch_size, 2)
        sample_batch_size = check_int("flow", "sample_batch_size", sample_batch_size)
        scale_max = check_float("flow", "scale_max", scale_max, gt=0)
        lr = check_float("flow", "lr", lr, gt=0)
        weight_decay = check_float("flow", "weight_decay", weight_decay, ge=0)
        grad_clip = check_float("flow", "grad_clip", grad_clip, ge=0)
        schedule = check_choice("flow", "schedule", schedule, ("cosine", "constant"))
        self.arch = {"dim": 0, "n_layers": n_layers, "hidden": hidden, "depth": depth}
        self.scale_max, self.steps, self.batch_size = scale_max, steps, batch_size
        self.lr, self.weight_decay, self.grad_clip = lr, weight_decay, grad_clip
        self.schedule, self.sample_batch_size = schedule, sample_batch_size
        self.flow: Optional[RealNVP] = None        # set by fit / load_state_dict
        self._mean: Optional[torch.Tensor] = None  # (D,) float64, data mean μ
        self._std: Optional[torch.Tensor] = None   # (D,) float64, data std σ (divisor N)
        self._dtype = torch.get_default_dtype()
        self.loss_curve: Optional[torch.Tensor] = None  # (steps,) mini-batch NLL, standardised

    # -- the map ---------------------------------------------------------------------------------
    def _build(self) -> RealNVP:
        return RealNVP(self.arch["dim"], self.arch["n_layers"], self.arch["hidden"],
                       self.arch["depth"], self.scale_max)

    def _flow_dtype(self) -> torch.dtype:
        return next(self.flow.parameters()).dtype

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._flow_dtype()
        return (x.to(dtype) - self._mean.to(dtype)) / self._std.to(dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents z (N, D) of data x (N, D) and log|det ∂z/∂x| (N,), standardisation included;
        in the flow's dtype (float32 unless converted)."""
        self._require_fitted()
        z, logdet = self.flow(self._standardise(x))
        return z, logdet - self._std.log().sum().to(logdet.dtype)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Data x (N, D) with forward(x) = z, for latents z (N, D); in the flow's dtype."""
        self._require_fitted()
        dtype = self._flow_dtype()
        u = self.flow.inverse(z.to(dtype))
        return u * self._std.to(dtype) + self._mean.to(dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats (N,) for x (N, D), on the data's own scale (change of variables)."""
        z, logdet = self.forward(x)
        return standard_normal_log_prob(z) + logdet

    @torch.no_grad()
    def nll(self, x: torch.Tensor) -> float:
        """Mean negative log-likelihood of x (N, D) in nats per sample, scored in chunks."""
        total = sum(float(-self.log_prob(c).sum()) for c in x.split(self.sample_batch_size))
        return total / x.shape[0]

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Train from scratch on x (N, D). Returns ``nll`` (final mean NLL of the training data,
        nats per sample on the data's scale), ``nll_first`` (the same under the initial,
        data-initialised flow: the diagonal-Gaussian NLL), ``steps``."""
        self._check_shape(x)
        xd = x.to(torch.float64)
        mean, std = xd.mean(0), xd.std(0, correction=0)
        self._check_values(std)
        self._mean, self._std = mean, std
        device = x.device
        self._dtype = x.dtype
        self.arch["dim"] = int(x.shape[1])
        with seeded(generator, device):             # initial weights, built on the CPU
            self.flow = self._build().to(device)
        u = self._standardise(x)
        self.flow.initialize(u)
        nll_first = self.nll(x)
        self.loss_curve = self._train(u, generator, progress).cpu()
        freeze(self.flow)
        nll = self.nll(x)
        if not math.isfinite(nll):
            raise LoopError(f"flow training diverged (final NLL {nll})", self._diverged_fix())
        return {"nll": nll, "nll_first": nll_first, "steps": float(self.steps)}

    @staticmethod
    def _check_shape(x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] < 2:
            raise LoopError(f"FlowModel got data of shape {tuple(x.shape)}",
                            "use vector data (N, D) with D >= 2 (e.g. data=gmm2d)")
        if x.shape[0] < 2:
            raise LoopError(f"FlowModel needs at least 2 samples to fit, got {x.shape[0]}",
                            "raise the pool size (loop.n_real, loop.n_synthetic)")

    @staticmethod
    def _check_values(std: torch.Tensor) -> None:
        """Checks the per-dimension std (D,) of the data: NaN/inf data makes it non-finite."""
        if not bool(torch.isfinite(std).all()):
            raise LoopError("FlowModel got non-finite (NaN/inf) training data",
                            "check the data source or the previous generation's samples")
        if not bool((std > 0).all()):
            raise LoopError("FlowModel got data with a constant dimension (std 0)",
                            "drop the constant dimension, or raise loop.bias if a biased loop "
                            "collapsed the pool")

    def _train(self, u: torch.Tensor, g: torch.Generator,
               progress: Optional[ProgressFn]) -> torch.Tensor:
        """``steps`` AdamW steps on mini-batches of the standardised data u (N, D); returns the
        per-step mini-batch NLL (steps,) on the standardised scale."""
        flow, device, n = self.flow, u.device, u.shape[0]
        b = min(self.batch_size, n)
        opt = torch.optim.AdamW(flow.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                fused=True)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
                 if self.schedule == "cosine" else None)
        losses = torch.empty(self.steps, device=device)
        order = ShuffledIndices(n, g, device)
        for step in range(self.steps):
            z, logdet = flow(u[order.next(b)])
            loss = -(standard_normal_log_prob(z) + logdet).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(flow.parameters(), self.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            losses[step] = loss.detach()
            if (step + 1) % _CHECK_EVERY == 0 or step + 1 == self.steps:
                self._check_losses(losses[:step + 1])
            if progress is not None:
                progress(step + 1, self.steps)
        return losses

    def _check_losses(self, losses: torch.Tensor) -> None:
        bad = ~torch.isfinite(losses)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0]) + 1
            raise LoopError(f"flow training diverged (non-finite loss at step {first})",
                            self._diverged_fix())

    def _diverged_fix(self) -> str:
        return (f"lower model.lr (now {self.lr:g}, e.g. to {self.lr / 10:g}) or model.scale_max "
                f"(now {self.scale_max:g})")

    # -- sample ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, bias: float = 1.0,
               generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n samples (n, D) = f⁻¹(z), z ~ N(0, λI), in the dtype of the data last fitted."""
        lam, device, gdev = begin_sampling(self, self.flow, bias, generator)
        z = torch.randn((int(n), self.arch["dim"]), generator=generator, device=gdev,
                        dtype=self._flow_dtype()).to(device)
        z = z * math.sqrt(lam)
        return map_chunks(self.inverse, z, self.sample_batch_size).to(self._dtype)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flow weights under ``flow.``, ``mean`` / ``std`` (D,) float64, the architecture
        (``dim``, ``n_layers``, ``hidden``, ``depth`` int64) and ``scale_max`` (float64)."""
        state = module_state(require_fitted(self, self.flow), "flow")
        state.update({"mean": self._mean.clone(), "std": self._std.clone(),
                      "scale_max": torch.tensor(self.scale_max, dtype=torch.float64)})
        state.update({k: torch.tensor(v, dtype=torch.int64) for k, v in self.arch.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the flow from the saved architecture and load its weights (on their device).
        Training settings stay those of this instance; samples come back in float32 unless this
        instance was fitted on another dtype."""
        missing = [k for k in (*_ARCH, "mean", "std", "scale_max") if k not in state]
        if missing:
            raise LoopError(f"FlowModel state lacks {missing}", "load a state saved by FlowModel")
        self.arch = {k: int(state[k]) for k in _ARCH}
        self.scale_max = float(state["scale_max"])
        device = state["mean"].device
        self.flow = load_module(self._build(), state, "flow", device)
        self._mean = state["mean"].to(torch.float64)
        self._std = state["std"].to(device=device, dtype=torch.float64)

    def _require_fitted(self) -> None:
        require_fitted(self, self.flow)
