"""The training scaffold shared by the neural generative models (DDPM, flow, WGAN-GP; next a VAE
and a latent diffusion model): settings checks, seeded initial weights, the data order, an EMA of
the weights, bf16 autocast, DDP wrapping, the start of ``sample()`` and model-state tensors.

Each piece is what the models did inline before, draw for draw: a model built on it takes the same
random numbers from its ``generator`` in the same order. A new model reads, in outline:

    from .training import (EMA, ShuffledIndices, autocast, autocast_dtype, begin_sampling,
                           check_choice, check_float, check_int, load_module, map_chunks,
                           module_state, require_fitted, seeded, wrap_ddp)

    class VAEModel(GenerativeModel):
        def __init__(self, latent_dim=16, steps=1000, batch_size=64, lr=1e-3, ema_decay=0.999,
                     precision="auto", sample_batch_size=1000):
            self.latent_dim = check_int("VAE", "latent_dim", latent_dim)      # >= 1
            self.lr = check_float("VAE", "lr", lr, gt=0)
            self.ema_decay = check_float("VAE", "ema_decay", ema_decay, ge=0, lt=1)
            self.precision = check_choice("VAE", "precision", precision, PRECISIONS)
            ...

        def fit(self, x, generator, progress=None, labels=None):
            device = x.device
            with seeded(generator, device):               # initial weights from the fit seed
                net = VAE(self.latent_dim, x.shape[1:]).to(device)
            ema, order = EMA(net, self.ema_decay), ShuffledIndices(x.shape[0], generator, device)
            model = wrap_ddp(net)                         # DDP under torchrun, in train mode
            amp = autocast_dtype(device, self.precision)  # bf16 on CUDA, None (fp32) on CPU
            for step in range(self.steps):
                batch = x[order.next(self.batch_size)]
                with autocast(device, amp):
                    loss = model(batch, ...)
                ...                                       # backward, optimiser step
                ema.update(step)
            self.net = ema.module                         # frozen, eval mode

        @torch.no_grad()
        def sample(self, n, bias=1.0, generator=None, labels=None):
            bias, device, gdev = begin_sampling(self, self.net, bias, generator)
            z = torch.randn((int(n), self.latent_dim), generator=generator, device=gdev)
            return map_chunks(self.net.decode, bias * z.to(device), self.sample_batch_size)

        def state_dict(self):
            return {**module_state(require_fitted(self, self.net), "net"), ...}

        def load_state_dict(self, state):
            self.net = load_module(VAE(...), state, "net")        # on the weights' device
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import nn

from madcore import dist

from ..errors import LoopError, check_bias, check_int

__all__ = ["check_int", "check_float", "check_choice", "check_bool", "seeded", "ShuffledIndices",
           "EMA", "PRECISIONS", "autocast_dtype", "autocast", "wrap_ddp", "unwrap_ddp", "freeze",
           "require_fitted", "Sampling", "begin_sampling", "chunk_spans", "map_chunks",
           "module_state", "load_module"]

#: Values of a model's ``precision`` setting (see :func:`autocast_dtype`).
PRECISIONS = ("auto", "bf16", "fp32")


# -- settings checks (each names ``model.<key>`` in its fix; ``check_int`` is loops.errors') ----
def check_float(model: str, key: str, value, *, gt: Optional[float] = None,
                ge: Optional[float] = None, lt: Optional[float] = None,
                le: Optional[float] = None) -> float:
    """``value`` as a float: a finite int or float (not a bool, not a string) within the given
    bounds (``gt`` >, ``ge`` >=, ``lt`` <, ``le`` <=), else a LoopError naming ``model.<key>``."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (gt is None or value > gt) and (ge is None or value >= ge)
          and (lt is None or value < lt) and (le is None or value <= le))
    if not ok:
        low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
        if low is not None and high is not None:
            cond = (f" in {'(' if gt is not None else '['}{low:g}, {high:g}"
                    f"{')' if lt is not None else ']'}")
        else:
            cond = "".join(f" {op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<", lt),
                                                        ("<=", le)) if b is not None)
        raise LoopError(f"{model} {key}={value!r} must be a finite number{cond}",
                        f"set model.{key} to a finite number{cond}")
    return float(value)


def check_choice(model: str, key: str, value, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a LoopError naming ``model.<key>``."""
    if not isinstance(value, str) or value not in choices:
        raise LoopError(f"unknown {model} {key} {value!r}",
                        f"set model.{key} to {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def check_bool(model: str, key: str, value) -> bool:
    """``value`` if it is a bool (``"false"`` or 0 are refused), else a LoopError."""
    if not isinstance(value, bool):
        raise LoopError(f"{model} {key}={value!r} is not a boolean",
                        f"set model.{key} to true or false")
    return value


# -- training -------------------------------------------------------------------------------------
@contextmanager
def seeded(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Draw one seed from ``generator`` (one int64 draw on its device) and run the block with the
    global torch RNG seeded by it: the CPU stream, and ``device``'s CUDA stream when it is a GPU.
    Module construction inside (``nn.Linear`` init, on the CPU, then ``.to(device)``) and any
    global-RNG use (dropout) are reproducible from the fit seed; the global streams outside are
    left as they were (``torch.random.fork_rng``)."""
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.manual_seed(seed)
        yield


class ShuffledIndices:
    """Mini-batches of row indices of ``range(n)`` in epochs: consecutive random permutations
    (``torch.randperm`` on the generator's device, drawn only when the current one runs short, so
    the draws interleave with the caller's), a batch spanning the end of one and the start of the
    next. Every row appears once per epoch. ``next(b)`` returns int64 (b,) on ``device``."""

    def __init__(self, n: int, generator: torch.Generator, device: torch.device) -> None:
        self.n, self.generator, self.device = n, generator, device
        self._order = torch.empty(0, dtype=torch.long, device=generator.device)

    def next(self, b: int) -> torch.Tensor:
        g = self.generator
        while self._order.numel() < b:
            self._order = torch.cat([self._order, torch.randperm(self.n, generator=g,
                                                                 device=g.device)])
        idx, self._order = self._order[:b].to(self.device), self._order[b:]
        return idx


class EMA:
    """Exponential moving average of ``net``'s parameters in a frozen eval-mode copy ``module``
    (made at construction; buffers are copied once, not averaged). ``update(step)`` (step 0, 1,
    ...) after each optimiser step: ema ← ema + (1 − d)(θ − ema), d = min(decay, (1+s)/(10+s))."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(net).requires_grad_(False).eval()
        self._params, self._ema = list(net.parameters()), list(self.module.parameters())

    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._ema, [p.detach() for p in self._params], 1 - decay)


def autocast_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """torch.bfloat16 on CUDA unless ``precision == "fp32"``; None (plain fp32) on the CPU."""
    return torch.bfloat16 if device.type == "cuda" and precision != "fp32" else None


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` on ``device``'s type with ``dtype``, or a no-op context when None."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def wrap_ddp(net: nn.Module) -> nn.Module:
    """``net`` in train mode, inside DistributedDataParallel under torchrun (madcore.dist)."""
    return dist.wrap(net).train()


def unwrap_ddp(module: nn.Module) -> nn.Module:
    """The network inside a :func:`wrap_ddp` wrapper (or the module itself)."""
    return dist.unwrap(module)


def freeze(net: nn.Module) -> nn.Module:
    """``net`` without gradients, in eval mode (what a fitted model samples with)."""
    return net.requires_grad_(False).eval()


# -- sampling -------------------------------------------------------------------------------------
def require_fitted(model: object, net: Optional[nn.Module]) -> nn.Module:
    """``net``, or a LoopError saying ``model`` is not fitted when it is None."""
    if net is None:
        raise LoopError(f"{type(model).__name__} is not fitted",
                        "call fit() or load_state_dict() first")
    return net


class Sampling(NamedTuple):
    bias: float            #: λ ∈ (0, 1], checked
    device: torch.device   #: where the fitted weights are (and the samples go)
    gdev: torch.device     #: where the sampling generator draws (``device`` when it is None)


def begin_sampling(model: object, net: Optional[nn.Module], bias: float,
                   generator: Optional[torch.Generator]) -> Sampling:
    """The start of every ``sample()``: ``model`` is fitted (``net`` set), λ is valid, and the
    devices of the weights and of the draws."""
    require_fitted(model, net)
    bias = check_bias(bias)
    device = next(net.parameters()).device
    return Sampling(bias, device, generator.device if generator is not None else device)


def chunk_spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, rows) of consecutive chunks of at most ``size`` rows covering ``range(n)``."""
    for start in range(0, n, size):
        yield start, min(size, n - start)


def map_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               size: int) -> torch.Tensor:
    """``fn`` applied to ``x`` ``size`` rows at a time, concatenated (0 rows: one empty chunk)."""
    parts = [fn(c) for c in x.split(size)]
    return torch.cat(parts) if parts else fn(x)


# -- model state ----------------------------------------------------------------------------------
def module_state(net: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``net``'s state as detached copies under ``<prefix>.<name>``."""
    return {f"{prefix}.{k}": v.detach().clone() for k, v in net.state_dict().items()}


def load_module(net: nn.Module, state: dict[str, torch.Tensor], prefix: str,
                device: Optional[torch.device] = None) -> nn.Module:
    """Load the ``<prefix>.*`` entries of ``state`` into ``net`` (strict), move it to ``device``
    (default: that of the first weight) and :func:`freeze` it."""
    cut = len(prefix) + 1
    weights = {k[cut:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    net.load_state_dict(weights)
    return freeze(net.to(device if device is not None else next(iter(weights.values())).device))
