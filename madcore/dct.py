"""Orthonormal 2-D DCT-II by matrix multiplication.

The DCT of an (..., H, W) block is ``D_H @ x @ D_W.T`` with the orthonormal DCT-II matrices
D_n[k, j] = sqrt(2/n) cos(pi (2j + 1) k / (2n)), row 0 scaled by 1/sqrt(2) (scipy's
``dctn(x, type=2, norm="ortho", axes=(-2, -1))``). D is orthogonal, so the inverse is
``D_H.T @ X @ D_W`` and energy is preserved (sum x^2 = sum X^2). Matrices are computed in float64,
cast, and cached per (size, device, dtype).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch


@lru_cache(maxsize=32)
def dct_matrix(size: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix (size, size); cached."""
    n = torch.arange(size, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size)) * math.sqrt(2.0 / size)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def _matrices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 2:
        raise ValueError(f"dct2 expects (..., H, W) blocks, got shape {tuple(x.shape)}")
    device = str(x.device)
    return (dct_matrix(x.shape[-2], device, x.dtype), dct_matrix(x.shape[-1], device, x.dtype))


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two dims (..., H, W) -> (..., H, W)."""
    dh, dw = _matrices(x)
    return dh @ x @ dw.T


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2`, (..., H, W) -> (..., H, W)."""
    dh, dw = _matrices(c)
    return dh.T @ c @ dw
