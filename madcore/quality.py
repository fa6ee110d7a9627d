"""Image quality of a watermark or an attack: MSE, PSNR and SSIM, batched.

    psnr(x, y)          # (N,) dB per image, data range 1: 10 log10(1 / MSE); +inf where x == y
    pooled_psnr(x, y)   # one float, dB: the PSNR of the whole batch's pooled MSE
    ssim(x, y)          # (N,) mean SSIM over channels and the valid region (Gaussian window 11)

x, y: (N, C, H, W) float in [0, 1], same shape. SSIM follows Wang et al. 2004 as computed by
kornia.metrics.ssim with 'valid' padding, which equals scikit-image's
structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1).
"""
from __future__ import annotations

import math

import torch


def _pair(x: torch.Tensor, y: torch.Tensor, allow_empty: bool = False) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating (N, C, H, W) tensor, got "
                             f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
        if t.numel() == 0 and not allow_empty:
            raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error (N,), computed in float64."""
    _pair(x, y)
    return (x.double() - y.double()).square().flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (N,) float64: 10 log10(data_range^2 / MSE); +inf for identical images."""
    return 10 * torch.log10(data_range ** 2 / mse(x, y))


def pooled_psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of the MSE pooled over every pixel of the batch (data range 1; inf when equal).

    Not the mean of :func:`psnr`: one outlier image moves this less. Shapes as ``mse``; an empty
    batch gives NaN."""
    _pair(x, y, allow_empty=True)
    err = float((x.double() - y.double()).pow(2).mean())
    return math.inf if err == 0 else -10.0 * math.log10(err)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
         window_size: int = 11) -> torch.Tensor:
    """Per-image SSIM (N,) float32: Gaussian window (sigma 1.5), mean over channels and valid pixels.

    The window shrinks to the largest odd size that fits images smaller than `window_size`.
    """
    import kornia

    _pair(x, y)
    side = min(x.shape[-2:])
    win = min(window_size, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(x.shape[-2:])}")
    smap = kornia.metrics.ssim(x.float() / data_range, y.float() / data_range, win, max_val=1.0,
                               padding="valid")
    return smap.flatten(1).mean(1)
