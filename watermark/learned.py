"""A learned (HiDDeN / VideoSeal-class) watermarker: a small UNet embedder and a conv extractor.

    wm = LearnedWatermarker(num_bits=32, work_size=64, alpha=0.02, channels=3)
    x_w = wm.embed(x, msg)        # x: (N, C, H, W) in [0, 1], msg: (N, K) {0, 1} -> (N, C, H, W)
    logits = wm.decode(x_w)       # (N, K), positive => bit 1
    wm.save("model.safetensors"); wm2 = LearnedWatermarker.load("model.safetensors", **hparams)

Geometry (VideoSeal's recipe). Both networks work at a fixed resolution R (`work_size`) on luma Y
(BT.601; gray images are their own luma), so their cost does not depend on the image size:
  * Embedder: Y resized (antialiased) to R x R; the message processor maps bits to symbols +-1 and a
    linear layer to a spatial map (msg_dim x 8 x 8, resized to each feature map), concatenated to the
    features at both UNet levels (HiDDeN / VideoSeal style). A two-level UNet predicts a residual d in [-1, 1] (tanh) at R,
    which is upsampled bilinearly to H x W and added to every channel with strength alpha:
    x_w = clamp(x + alpha m d, 0, 1). Adding d to R, G and B adds d to Y and leaves Cb, Cr unchanged,
    i.e. it is the YCbCr round trip with the residual on Y.
  * JND mask m (option `jnd`): local luma standard deviation over a 5 x 5 window, normalised by its
    image mean, mask = clamp((s + c) / (mean(s) + c), 0.25, 2) with c = 0.02 -- a texture-masking
    heuristic: more residual in busy regions, less in flat ones, about the same total energy. The mask
    is computed at the image's size and is differentiable (it depends on x only).
  * Extractor: any input is resized to R x R (antialiased when shrinking), its luma goes through a
    conv stack (two stride-2 stages), average pooling to a `pool` x `pool` grid and a linear layer to
    K logits. Default pool = R // 4 (the whole feature grid: a spatial readout); pool = 1 is global
    pooling (HiDDeN), which on CPU budgets of a few hundred steps did not leave chance (32-bit digits,
    200 steps: 0.51 with pool = 1; 0.99 after 240 steps with pool = R // 4).
  * The message processor gives each bit a learned spatial map (linear K -> msg_dim x 8 x 8, resized to
    the feature maps); with HiDDeN's spatially constant map (16-bit digits, 200 steps) bit accuracy was
    0.75 instead of 0.998: convolutions of a constant map have no position to work from on flat images.

Strength: alpha bounds the residual, |x_w - x| <= alpha (2 alpha with `jnd`) before clamping, so the
PSNR is at least -20 log10(alpha) dB without the mask (alpha = 0.01 -> >= 40 dB); the quality loss
of training pushes it higher. Weights are stored with safetensors only (no pickle).
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from madcore.files import atomic_write_with

from .base import Watermarker, check_images, check_message
from .imageops import luma, resize


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """conv 3x3 -> GroupNorm -> GELU (GroupNorm: no batch statistics, same in train and eval)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.GELU())


def jnd_mask(x: torch.Tensor, window: int = 5, c: float = 0.02) -> torch.Tensor:
    """Texture mask (N, 1, H, W) in [0.25, 2] for images x (N, C, H, W): local luma std normalised."""
    y = luma(x)
    pad = window // 2
    yp = F.pad(y, (pad, pad, pad, pad), mode="replicate")
    mean = F.avg_pool2d(yp, window, 1)
    var = (F.avg_pool2d(yp.square(), window, 1) - mean.square()).clamp_min(0)
    s = (var + 1e-8).sqrt()
    return ((s + c) / (s.mean((2, 3), keepdim=True) + c)).clamp(0.25, 2.0)


class MessageProcessor(nn.Module):
    """Bits (N, K) {0, 1} -> symbols +-1 -> linear -> spatial map (N, msg_dim, g, g) -> resized to (h, w).

    The linear layer gives every bit a learned spatial pattern on a g x g grid (a learned carrier), which
    the UNet can place and shape; a spatially constant map (HiDDeN) gives the convolutions no position
    to work from on flat images and learns far more slowly.
    """

    def __init__(self, num_bits: int, msg_dim: int, grid: int = 8):
        super().__init__()
        self.msg_dim, self.grid = msg_dim, grid
        self.linear = nn.Linear(num_bits, msg_dim * grid * grid)

    def forward(self, msg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        z = self.linear(2 * msg - 1).view(-1, self.msg_dim, self.grid, self.grid)
        return F.interpolate(z, size=tuple(size), mode="bilinear", align_corners=False)


class Embedder(nn.Module):
    """Luma at R x R (N, 1, R, R) + message (N, K) -> residual (N, 1, R, R) in [-1, 1].

    Two-level UNet, widths (w, 2w); the message map is concatenated at R/2 (bottleneck) and at R.
    """

    def __init__(self, num_bits: int, width: int = 32, msg_dim: int = 32):
        super().__init__()
        w = width
        self.msg = MessageProcessor(num_bits, msg_dim)
        self.enc1 = nn.Sequential(_block(1, w), _block(w, w))
        self.enc2 = _block(w, 2 * w, stride=2)
        self.mid = nn.Sequential(_block(2 * w + msg_dim, 2 * w), _block(2 * w, 2 * w))
        self.dec1 = nn.Sequential(_block(2 * w + w + msg_dim, w), _block(w, w))
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, y: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """`unfolded` when training or recording gradients, else `folded` (same function)."""
        if self.training or torch.is_grad_enabled():
            return self.unfolded(y, msg)
        return self.folded(y, msg)

    def unfolded(self, y: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """The differentiable forward: message maps built and concatenated at both levels."""
        e1 = self.enc1(y - 0.5)
        e2 = self.enc2(e1)
        m = self.mid(torch.cat([e2, self.msg(msg, e2.shape[-2:])], 1))
        up = F.interpolate(m, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        d = self.dec1(torch.cat([up, e1, self.msg(msg, e1.shape[-2:])], 1))
        return torch.tanh(self.out(d))

    def folded(self, y: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """Inference forward, equal to `unfolded` up to float rounding, and cheaper.

        The message enters each level only through the first conv's message input channels, and
        linear -> bilinear resize -> conv (zero padding) is affine in the symbols s = 2 msg - 1: that
        conv's message part is [s, 1] @ P, P (K + 1, h w cout) precomputed by running the resize and
        the conv on the K columns of the linear layer and on its bias (the conv's bias added to the
        last row). One small matmul accumulated into the conv's output per level, instead of
        building, concatenating and convolving msg_dim channels: a quarter of the embedder's FLOPs
        and most of its memory traffic. Runs channels-last (oneDNN's native layout)."""
        n = y.shape[0]
        s = torch.cat([2 * msg - 1, msg.new_ones(n, 1)], 1)
        x = torch.empty_strided(y.shape, (y[0].numel(), 1, y.shape[-1], 1), dtype=y.dtype, device=y.device)
        e1 = self.enc1(torch.sub(y, 0.5, out=x))                  # C = 1: channels-last is a stride change
        e2 = self.enc2(e1)
        (mid_w, mid_p), (dec_w, dec_p) = self._folded(tuple(e2.shape[-2:]), tuple(e1.shape[-2:]))
        m = self.mid[1](self._conv_plus_message(self.mid[0], e2, mid_w, s, mid_p))
        up = F.interpolate(m, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        d = self.dec1[1](self._conv_plus_message(self.dec1[0], torch.cat([up, e1], 1), dec_w, s, dec_p))
        return torch.tanh(self.out(d)).contiguous()

    @staticmethod
    def _conv_plus_message(block: nn.Sequential, x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor,
                           p: torch.Tensor) -> torch.Tensor:
        """A `_block` whose conv sees x (channels-last) and, folded, the message channels after it."""
        conv, norm, act = block
        h = F.conv2d(x, weight, None, conv.stride, conv.padding).contiguous(memory_format=torch.channels_last)
        h.permute(0, 2, 3, 1).view(h.shape[0], -1).addmm_(s, p)    # NHWC rows += [s, 1] @ P
        return act(norm(h))

    def _folded(self, mid_size: tuple[int, int], dec_size: tuple[int, int]):
        """(weight without the message channels, P) of the mid and dec1 first convs, cached until a
        parameter changes (its version counter: optimiser steps, load_state_dict) or moves."""
        key = (mid_size, dec_size, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters()))
        if getattr(self, "_fold_key", None) != key:
            lin, k = self.msg.linear, self.msg.linear.in_features
            basis = torch.cat([lin.weight.t(), lin.bias[None]]).reshape(k + 1, self.msg.msg_dim, self.msg.grid,
                                                                         self.msg.grid)
            folds = []
            for conv, size in ((self.mid[0][0], mid_size), (self.dec1[0][0], dec_size)):
                skip = conv.in_channels - self.msg.msg_dim
                maps = F.interpolate(basis, size=size, mode="bilinear", align_corners=False)
                p = F.conv2d(maps, conv.weight[:, skip:], None, conv.stride, conv.padding)
                p[k] += conv.bias[:, None, None]
                folds.append((conv.weight[:, :skip].contiguous(), p.permute(0, 2, 3, 1).reshape(k + 1, -1)))
            self._fold_key, self._fold = key, tuple(folds)
        return self._fold


class Extractor(nn.Module):
    """Luma at R x R (N, 1, R, R) -> bit logits (N, K): conv stack, pool to pool x pool, linear."""

    def __init__(self, num_bits: int, width: int = 32, pool: int = 1):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(1, w), _block(w, w), _block(w, 2 * w, stride=2),
                                      _block(2 * w, 2 * w), _block(2 * w, 4 * w, stride=2),
                                      _block(4 * w, 4 * w))
        self.pool = pool
        self.head = nn.Linear(4 * w * pool * pool, num_bits)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        f = F.adaptive_avg_pool2d(self.features(y - 0.5), self.pool)
        return self.head(f.flatten(1))


class LearnedWatermarker(Watermarker):
    """Embedder + Extractor at working resolution R; see the module docstring.

    Args:
        num_bits: K.
        work_size: R, the side of the square working resolution of both networks.
        alpha: residual strength (max |residual| in pixel units on [0, 1], times the JND mask).
        channels: C of the images it is meant for (1 or 3); recorded, both work on luma.
        width: base width w of both networks; msg_dim: message features; pool: extractor grid side
            (default R // 4, the feature grid: a spatial readout learns far faster than global pooling).
        jnd: attenuate the residual with the texture mask `jnd_mask`.
        device: where the networks live; inputs are moved there and results moved back.
    """

    name = "learned"

    def __init__(self, num_bits: int = 32, work_size: int = 64, alpha: float = 0.02, channels: int = 3,
                 width: int = 32, msg_dim: int = 32, pool: int | None = None, jnd: bool = False,
                 device: str | torch.device = "cpu"):
        if num_bits < 1 or work_size < 8 or alpha <= 0 or channels not in (1, 3):
            raise ValueError("need num_bits >= 1, work_size >= 8, alpha > 0 and channels in (1, 3)")
        self.num_bits, self.work_size, self.alpha, self.channels = int(num_bits), int(work_size), float(alpha), int(channels)
        pool = work_size // 4 if pool is None else pool
        self.width, self.msg_dim, self.pool, self.jnd = int(width), int(msg_dim), int(pool), bool(jnd)
        self.embedder = Embedder(num_bits, width, msg_dim)
        self.extractor = Extractor(num_bits, width, pool)
        self.to(device)

    # ---- configuration and weights ----------------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments (without device) that rebuild this architecture."""
        return dict(num_bits=self.num_bits, work_size=self.work_size, alpha=self.alpha,
                    channels=self.channels, width=self.width, msg_dim=self.msg_dim, pool=self.pool,
                    jnd=self.jnd)

    def to(self, device: str | torch.device) -> "LearnedWatermarker":
        self.device = torch.device(device)
        self.embedder.to(self.device)
        self.extractor.to(self.device)
        return self

    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"embedder": self.embedder, "extractor": self.extractor})

    def parameters(self):
        return self.modules().parameters()

    def train(self, mode: bool = True) -> "LearnedWatermarker":
        self.embedder.train(mode)
        self.extractor.train(mode)
        return self

    def eval(self) -> "LearnedWatermarker":
        return self.train(False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat {"embedder.*", "extractor.*": tensor} on CPU, contiguous (safetensors-ready)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.modules().state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.modules().load_state_dict(state, strict=True)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                        **hparams) -> "LearnedWatermarker":
        wm = cls(device=device, **hparams)
        wm.load_state_dict(state)
        return wm.eval()

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights as safetensors, atomically (madcore.files)."""
        metadata = {k: str(v) for k, v in self.hparams().items()}
        atomic_write_with(path, lambda tmp: save_file(self.state_dict(), str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **hparams) -> "LearnedWatermarker":
        """Read safetensors weights written by `save`; `hparams` must match the architecture."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no weights file at {os.fspath(path)!r}")
        return cls.from_state_dict(load_file(os.fspath(path)), device=device, **hparams)

    # ---- differentiable forward passes (training) -------------------------------------------------
    def embed_train(self, x: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """Differentiable embed: x (N, C, H, W) on the model's device, msg (N, K) float {0, 1}."""
        r = self.work_size
        d = self.embedder(resize(luma(x), (r, r)), msg)
        d = F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.jnd:
            d = d * jnd_mask(x)
        return (x + self.alpha * d).clamp(0, 1)

    def decode_train(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable decode: logits (N, K) for x (N, C, H, W) of any size."""
        r = self.work_size
        return self.extractor(resize(luma(x), (r, r)))

    # ---- Watermarker interface (inference) ---------------------------------------------------------
    #: images per pass of the pixel-level work of `embed` / `decode` (luma, resizing, adding the
    #: residual) and of the networks (None: the whole batch). Small passes keep the full-size
    #: temporaries a few MB, which the allocator reuses; a 64-image 256 x 256 batch's are tens of
    #: MB, fresh memory each time, page-faulted in (~2 ms per MB on the 2-core VM of
    #: docs/performance.md). The networks take the whole batch: split, their many small parallel
    #: regions cost more than the faults they save when OpenMP's threads spin on a loaded machine.
    chunk: int | None = 16
    net_chunk: int | None = None

    @staticmethod
    def _passes(n: int, size: int | None) -> list[slice]:
        size = n if size is None else max(1, int(size))
        return [slice(i, i + size) for i in range(0, n, size)]

    def _work_luma(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, R, R) float32 on the model's device: luma resized to the working resolution."""
        r = self.work_size
        y = torch.empty(x.shape[0], 1, r, r, device=self.device)
        for s in self._passes(x.shape[0], self.chunk):
            y[s] = resize(luma(x[s].to(self.device, torch.float32)), (r, r))
        return y

    @torch.no_grad()
    def embed(self, x: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        check_images(x)
        m = check_message(msg, x.shape[0], self.num_bits).to(self.device)
        self.eval()
        y = self._work_luma(x)
        d = torch.cat([self.embedder(y[s], m[s]) for s in self._passes(x.shape[0], self.net_chunk)])
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        direct = out.device == self.device and out.dtype == torch.float32
        for s in self._passes(x.shape[0], self.chunk):
            xc = x[s].to(self.device, torch.float32)
            dc = F.interpolate(d[s], size=xc.shape[-2:], mode="bilinear", align_corners=False)
            if self.jnd:
                dc.mul_(jnd_mask(xc))
            dc.mul_(self.alpha)                         # as embed_train: (x + alpha d).clamp(0, 1)
            o = torch.add(xc, dc, out=out[s] if direct else None).clamp_(0, 1)
            if not direct:
                out[s].copy_(o)
        return out

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        self.eval()
        y = self._work_luma(x)
        logits = [self.extractor(y[s]) for s in self._passes(x.shape[0], self.net_chunk)]
        return torch.cat(logits).float().to(x.device)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hparams().items())
        return f"LearnedWatermarker({hp})"
