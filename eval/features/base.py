"""The one interface every feature extractor follows, and the image helpers they share.

A feature extractor maps images ``(N, C, H, W)`` float in [0, 1] (or vectors ``(N, D)`` for
``raw``) to features ``(N, d)`` float32. :meth:`FeatureExtractor.extract` runs batched under
``torch.no_grad()`` on a chosen device and always returns a CPU float32 tensor.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureUnavailable", "FeatureExtractor", "CONFIG_PREFIX", "as_float_images",
           "fit_channels", "resize"]

#: where the feature settings live in the Hydra config; error messages name keys under it
CONFIG_PREFIX = "eval.features"


class FeatureUnavailable(ValueError):
    """A feature extractor cannot be built here (e.g. pretrained weights missing offline).

    The message is one line naming the config key to set, e.g.
    ``"... — set eval.features.weights_path=<path to ...pth>"``.
    """


class FeatureExtractor(nn.Module):
    """Base class: ``forward`` maps one batch (on the module's device) to ``(B, dim)`` features.

    Attributes:
        name: registry name ("raw", "random_cnn", "lenet", "inception", "dinov2").
        dim: feature dimension d (None for ``raw`` until it has seen data).

    Subclasses implement :meth:`forward` (preprocessing included: resizing, channels, scaling)
    and :meth:`describe`.
    """

    name: str = "features"
    dim: Optional[int] = None
    #: samples per forward pass when ``extract`` is not given one (smaller for big networks)
    default_batch_size: int = 256

    def describe(self) -> str:
        """A short label for results tables, e.g. ``"random_cnn(seed=0, d=256)"``."""
        return f"{self.name}(d={self.dim})"

    def _device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        if p is None:
            p = next(iter(self.buffers()), None)
        return p.device if p is not None else torch.device("cpu")

    def extract(self, x: Union[torch.Tensor, np.ndarray], batch_size: Optional[int] = None,
                device: Union[str, torch.device, None] = None) -> torch.Tensor:
        """Features of all of ``x``, computed ``batch_size`` samples at a time.

        Args:
            x: ``(N, C, H, W)`` images in [0, 1] (uint8 0..255 is accepted and divided by 255),
                or ``(N, D)`` vectors for ``raw``. A tensor or numpy array, on any device.
            batch_size: samples per forward pass; None = ``default_batch_size``.
            device: where to run ("cpu", "cuda", ...); None = where the module already is.
                The module is moved there and stays there.

        Returns:
            ``(N, dim)`` float32 CPU tensor.
        """
        x = torch.as_tensor(x)
        batch_size = batch_size or self.default_batch_size
        if x.ndim < 2:
            raise ValueError(f"{self.name}: expected a batch (N, ...), got shape {tuple(x.shape)}")
        if batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        dev = torch.device(device) if device is not None else self._device()
        self.to(dev)
        self.eval()
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                f = self(x[i:i + batch_size].to(dev))
                outs.append(f.reshape(f.shape[0], -1).float().cpu())
        if not outs:
            return torch.zeros(0, self.dim or 0, dtype=torch.float32)
        return torch.cat(outs).contiguous()


def as_float_images(x: torch.Tensor, who: str) -> torch.Tensor:
    """Check ``x`` is ``(N, C, H, W)`` and return it as float32 clamped to [0, 1].

    uint8 input is divided by 255. Float input far outside [0, 1] (e.g. 0..255 pixels or
    [-1, 1] data) triggers a warning, since the clamp would then destroy the images.
    """
    if x.ndim != 4:
        raise ValueError(f"{who}: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if x.numel() and (x.min() < -0.5 or x.max() > 1.5):
        warnings.warn(f"{who}: image values span [{x.min().item():.3g}, {x.max().item():.3g}]; "
                      "expected [0, 1] — they are clamped", stacklevel=3)
    return x.clamp(0.0, 1.0)


def fit_channels(x: torch.Tensor, channels: int, who: str) -> torch.Tensor:
    """Adapt ``(N, C, H, W)`` to ``channels`` channels.

    1 → 3: the gray channel is repeated; 3 → 1: the mean of R, G, B; 4 → 3: alpha dropped;
    anything else must already match.
    """
    c = x.shape[1]
    if c == channels:
        return x
    if c == 4 and channels in (1, 3):
        x, c = x[:, :3], 3
        if channels == 3:
            return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        return x.mean(1, keepdim=True)
    raise ValueError(f"{who}: cannot map {c}-channel images to the {channels} channels it expects")


def resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, C, size, size)``; antialiased when shrinking; no-op if equal."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
