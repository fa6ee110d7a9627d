"""Orthonormal 2-D DCT-II by matrix multiplication, and the small image helpers around it.

The DCT of an (..., R, R) block is `D @ x @ D.T` with the orthonormal DCT-II matrix D (R, R):
D[k, n] = sqrt(2/R) cos(pi (2n + 1) k / (2R)), row 0 scaled by 1/sqrt(2). D is orthogonal, so the
inverse is `D.T @ X @ D` and energy is preserved (sum x^2 = sum X^2). Matrices are cached per
(size, device, dtype).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, the Y of YCbCr (kornia.color.rgb_to_ycbcr uses the same).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@lru_cache(maxsize=32)
def dct_matrix(size: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix (size, size), computed in float64 then cast; cached."""
    n = torch.arange(size, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size)) * math.sqrt(2.0 / size)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def _mat(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dct2 expects square (..., R, R) blocks, got {tuple(x.shape)}")
    return dct_matrix(x.shape[-1], str(x.device), x.dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II of square blocks (..., R, R) -> (..., R, R)."""
    d = _mat(x)
    return d @ x @ d.T


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct2` (..., R, R) -> (..., R, R)."""
    d = _mat(c)
    return d.T @ c @ d


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
