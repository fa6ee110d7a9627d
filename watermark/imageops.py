"""The pixel helpers the watermarkers share: BT.601 luma and bilinear resizing of batches.
(The DCT they code in is :mod:`madcore.dct`.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, the Y of YCbCr (kornia.color.rgb_to_ycbcr uses the same).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Y channel (N, 1, H, W) of RGB (N, 3, H, W) images (BT.601); gray (N, 1, H, W) passes through."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to (N, C, *size); antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
