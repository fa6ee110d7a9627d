"""The `Watermarker` interface and the input checks every method shares.

A watermarker hides a K-bit message in a batch of images and reads it back:

    x_w = wm.embed(x, msg)     # x: (N, C, H, W) float in [0, 1], msg: (N, K) or (K,) in {0, 1}
    logits = wm.decode(x_w)    # (N, K) float; positive => bit 1
    bits = wm.decode_bits(x_w) # (N, K) {0, 1} (same dtype as a message: float32)

Images of any size are accepted (C = 1 or 3); subclasses may state a minimum size or a channel
count and raise an `UnsupportedImageError` (a `ValueError`) naming it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


def check_images(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Validate an image batch: a floating (N, C, H, W) tensor, C in {1, 3}, no NaN/inf.

    Values are expected in [0, 1]; they are not clamped here (attacks may overshoot a little and
    callers decide). Returns `x` unchanged.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch (N, C, H, W); got {x.ndim} dims, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor in [0, 1], got dtype {x.dtype}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got C = {x.shape[1]}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not torch.isfinite(torch.stack(torch.aminmax(x))).all():   # one pass; NaN propagates to both
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_message(msg: torch.Tensor, n: int, num_bits: int) -> torch.Tensor:
    """Validate a message and broadcast it to (n, num_bits) float32 {0, 1}.

    Accepts (K,) (one message for the whole batch) or (n, K); bool, integer or float tensors whose
    entries are exactly 0 or 1.
    """
    if not isinstance(msg, torch.Tensor):
        raise TypeError(f"msg must be a torch.Tensor, got {type(msg).__name__}")
    if msg.ndim == 1:
        msg = msg.unsqueeze(0).expand(n, -1)
    if msg.ndim != 2:
        raise ValueError(f"msg must be (N, K) or (K,); got shape {tuple(msg.shape)}")
    if msg.shape[1] != num_bits:
        raise ValueError(f"msg has {msg.shape[1]} bits, this watermarker carries K = {num_bits}")
    if msg.shape[0] != n:
        raise ValueError(f"msg has {msg.shape[0]} rows for a batch of {n} images")
    m = msg.float()
    if torch.isnan(m).any():
        raise ValueError("msg contains NaN")
    if not ((m == 0) | (m == 1)).all():
        raise ValueError("msg must be binary: every entry 0 or 1")
    return m


class UnsupportedImageError(ValueError):
    """Images a method cannot read or mark at all: below its minimum size, or with a channel count
    it does not handle (e.g. invisible-watermark needs RGB of at least 256 x 256 pixels). The
    robustness table records an attack that makes images so as not applicable to the method; the
    folder commands skip such images with the reason."""


class Watermarker(ABC):
    """A method that embeds K bits in images and decodes them as logits.

    Attributes:
        name: short identifier used in result tables (e.g. "spread_spectrum", "dwtdct").
        num_bits: K, the message length.
    """

    name: str = "watermarker"
    num_bits: int

    @abstractmethod
    def embed(self, x: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """Mark `x` (N, C, H, W) in [0, 1] with `msg` ((N, K) or (K,) {0, 1}).

        Returns a tensor of the same shape, dtype and device as `x`, in [0, 1].
        """

    @abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Bit logits (N, K) float32 for images `x` (N, C, H, W); positive means bit 1."""

    def decode_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Hard decisions (N, K) float32 in {0, 1}: `decode(x) > 0`."""
        return (self.decode(x) > 0).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_bits={self.num_bits})"
