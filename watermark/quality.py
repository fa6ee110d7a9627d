"""Image quality of a watermark or an attack: per-image PSNR and SSIM, batched.

    psnr(x, y)  # (N,) dB, data range 1: 10 log10(1 / MSE); +inf where x == y
    ssim(x, y)  # (N,) mean SSIM over channels and the valid region (Gaussian window 11, sigma 1.5)

x, y: (N, C, H, W) float in [0, 1], same shape. SSIM follows Wang et al. 2004 as computed by
kornia.metrics.ssim with 'valid' padding, which equals scikit-image's
structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1).
"""
from __future__ import annotations

import kornia
import torch

from .base import check_images


def _pair(x: torch.Tensor, y: torch.Tensor) -> None:
    check_images(x, "x")
    check_images(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error (N,), computed in float64."""
    _pair(x, y)
    return (x.double() - y.double()).square().flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (N,) float64: 10 log10(data_range^2 / MSE); +inf for identical images."""
    return 10 * torch.log10(data_range ** 2 / mse(x, y))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11) -> torch.Tensor:
    """Per-image SSIM (N,) float32: Gaussian window (sigma 1.5), mean over channels and valid pixels.

    The window shrinks to the largest odd size that fits images smaller than `window_size`.
    """
    _pair(x, y)
    side = min(x.shape[-2:])
    win = min(window_size, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(x.shape[-2:])}")
    smap = kornia.metrics.ssim(x.float() / data_range, y.float() / data_range, win, max_val=1.0,
                               padding="valid")
    return smap.flatten(1).mean(1)
