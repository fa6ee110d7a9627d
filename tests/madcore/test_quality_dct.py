"""madcore.quality and madcore.dct against closed forms, scikit-image and scipy."""
import math

import numpy as np
import pytest
import scipy.fft
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from madcore.dct import dct2, idct2
from madcore.quality import pooled_psnr, psnr, ssim


def _noisy(x, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_psnr_closed_form_and_skimage(photos256):
    x = photos256[:4, :, :96, :128]
    y = _noisy(x, 0.03)
    got = psnr(x, y)
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1)
    assert torch.allclose(got, 10 * torch.log10(1 / mse))
    for i in range(4):
        ref = peak_signal_noise_ratio(x[i].double().numpy(), y[i].double().numpy(), data_range=1)
        assert got[i].item() == pytest.approx(ref, abs=1e-9)
    assert math.isinf(psnr(x, x)[0].item())


@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_matches_skimage_gaussian(photos256, channels):
    x = photos256[:3, :channels, 40:120, 30:130]
    for sigma in (0.01, 0.05, 0.2):
        y = _noisy(x, sigma, seed=int(sigma * 100))
        got = ssim(x, y)
        for i in range(x.shape[0]):
            ref = structural_similarity(
                x[i].permute(1, 2, 0).double().numpy(), y[i].permute(1, 2, 0).double().numpy(),
                channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                data_range=1)
            assert got[i].item() == pytest.approx(ref, abs=1e-4)
    assert torch.allclose(ssim(x, x), torch.ones(x.shape[0]), atol=1e-5)


def test_quality_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        psnr(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 9))
    with pytest.raises(ValueError):
        ssim(torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("size", [8, 28, 64])
def test_dct2_is_scipy_orthonormal_dct_and_inverts(size):
    x = torch.rand(3, size, size, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    assert np.allclose(dct2(x).numpy(), ref, atol=1e-10)
    assert torch.allclose(idct2(dct2(x)), x, atol=1e-10)
    assert torch.allclose(dct2(x).square().sum((1, 2)), x.square().sum((1, 2)))


def test_dct2_of_rectangular_blocks_matches_scipy():
    x = torch.randn(2, 3, 9, 14, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x).numpy(), ref, atol=1e-12)
    assert torch.allclose(idct2(dct2(x)), x, atol=1e-12)


def test_pooled_psnr_is_the_psnr_of_the_pooled_mse():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=g)
    y = (x + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    mse = float(((x.double() - y.double()) ** 2).mean())
    assert pooled_psnr(x, y) == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert math.isinf(pooled_psnr(x, x))
    assert math.isnan(pooled_psnr(x[:0], y[:0]))
