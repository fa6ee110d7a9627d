"""eval.idempotence against closed forms: an additive mark adds a full layer, a projection none,
a contraction halfway."""
import math

import pytest
import torch

from eval.idempotence import idempotence


def images(n=10, seed=0):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.5 + 0.25


def test_an_additive_mark_adds_one_layer_at_its_own_psnr():
    pattern = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.01
    out = idempotence(lambda x: x + pattern, images(), batch_size=3)
    assert out["idem_layers"] == pytest.approx(1.0, abs=1e-6)
    assert out["idem_psnr_db"] == pytest.approx(-10 * math.log10(pattern.square().mean().item()),
                                                abs=1e-4)


def test_a_projection_adds_nothing():
    target = torch.full((3, 8, 8), 0.6)
    out = idempotence(lambda x: torch.maximum(x, target), images())
    assert out == {"idem_layers": 0.0, "idem_psnr_db": math.inf}


def test_a_contraction_halfway_adds_half_a_layer():
    m = torch.full((3, 8, 8), 0.9)
    x = images()
    out = idempotence(lambda y: (y + m) / 2, x, batch_size=4)
    assert out["idem_layers"] == pytest.approx(0.5, abs=1e-6)
    mse = ((m - x) / 4).square().mean().item()
    assert out["idem_psnr_db"] == pytest.approx(-10 * math.log10(mse), abs=1e-4)


def test_no_images_is_refused():
    with pytest.raises(ValueError, match="N >= 1"):
        idempotence(lambda x: x, torch.zeros(0, 1, 4, 4))
