"""watermark.attacks and watermark.attack_layer: the grid runs and stays in [0, 1], attack strengths
order as they should, sizes are as documented, and the training layer is differentiable."""
import math

import pytest
import torch

from watermark import ATTACK_GRID, ATTACKS, DEFAULT_RANGES, AttackLayer, apply_attack, psnr, ssim

REQUIRED = {("jpeg_pil", 90), ("jpeg_pil", 70), ("jpeg_pil", 50), ("jpeg_pil", 30), ("crop", 0.9), ("crop", 0.7),
            ("crop", 0.5), ("resize", 0.75), ("resize", 0.5), ("resize", 0.25), ("blur", 1.0),
            ("blur", 2.0), ("noise", 0.02), ("noise", 0.05), ("rotation", 5), ("rotation", 15)}


def _expected_size(name, strength, h, w):
    for part, s in zip(name.split("+"), strength if "+" in name else (strength,)):
        if part == "crop":
            h, w = round(h * math.sqrt(s)), round(w * math.sqrt(s))
        elif part == "resize":
            h, w = round(h * s), round(w * s)
    return h, w


def test_grid_covers_the_table():
    assert REQUIRED <= set(ATTACK_GRID)
    names = [n for n, _ in ATTACK_GRID]
    assert {"brightness", "contrast"} <= set(names)
    assert sorted(s for n, s in ATTACK_GRID if n == "brightness") == [-0.2, 0.2]
    assert sorted(s for n, s in ATTACK_GRID if n == "contrast") == [0.7, 1.3]
    assert sum("+" in n for n in names) >= 2
    assert len(ATTACK_GRID) == len(set(ATTACK_GRID))


@pytest.mark.parametrize("shape", [(3, 3, 64, 64), (2, 1, 28, 28), (2, 3, 50, 37)])
def test_every_grid_entry_runs_in_range(shape, photos256):
    n, c, h, w = shape
    x = photos256[:n, :c, :h, :w].contiguous()
    for name, strength in ATTACK_GRID:
        y = apply_attack(x, name, strength, generator=torch.Generator().manual_seed(0))
        assert y.shape[:2] == (n, c), name
        assert tuple(y.shape[-2:]) == _expected_size(name, strength, h, w), name
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, name
        if tuple(y.shape) == tuple(x.shape) and name != "noise":
            assert not torch.equal(y, x), name


def test_jpeg_quality_orders_distortion(photos256):
    x = photos256[:6]
    for codec in ("jpeg", "jpeg_pil"):
        scores = [psnr(x, apply_attack(x, codec, q)).mean().item() for q in (90, 70, 50, 30)]
        assert scores == sorted(scores, reverse=True), (codec, scores)
    # kornia's differentiable codec tracks real libjpeg closely
    for q in (90, 50):
        assert abs(psnr(x, ATTACKS["jpeg"](x, q)).mean() - psnr(x, ATTACKS["jpeg_pil"](x, q)).mean()) < 1.5


def test_other_strengths_order_and_semantics(photos256):
    x = photos256[:4]
    for name, weak, strong in [("blur", 1.0, 2.0), ("noise", 0.02, 0.05), ("rotation", 5, 15)]:
        g = torch.Generator().manual_seed(1)
        assert ssim(x, apply_attack(x, name, weak, g)).mean() > ssim(x, apply_attack(x, name, strong, g)).mean()
    c = apply_attack(x, "crop", 0.5)
    assert torch.equal(c, x[..., 37:218, 37:218])          # centred, side 256 * sqrt(0.5) = 181
    assert torch.allclose(apply_attack(x * 0.5, "brightness", 0.2), x * 0.5 + 0.2, atol=1e-6)
    low = apply_attack(x, "contrast", 0.7)
    assert low.std() < x.std() and abs(low.mean() - x.mean()) < 0.01
    a = apply_attack(x, "noise", 0.05, generator=torch.Generator().manual_seed(3))
    b = apply_attack(x, "noise", 0.05, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_apply_attack_errors():
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(KeyError):
        apply_attack(x, "sharpen", 1.0)
    with pytest.raises(ValueError):
        apply_attack(x, "jpeg+crop", 50)
    with pytest.raises(ValueError):
        apply_attack(x, "crop", 1.5)


@pytest.mark.parametrize("name", list(DEFAULT_RANGES))
def test_attack_layer_is_differentiable(name):
    for shape in [(2, 3, 48, 48), (2, 1, 28, 28)]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).mul(0.8).add(0.1)
        x.requires_grad_(True)
        layer = AttackLayer([name], max_chain=1, seed=0)
        y = layer(x)
        assert y.shape == x.shape and layer.last[0][0] == name
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name


def test_attack_layer_on_rows_of_a_batch_gives_those_rows_of_the_whole_batch():
    """Split 4 / 3 as under DDP: each part, attacked as rows of the batch of 7 by a layer seeded
    alike, is its rows of the whole batch's result (noise drawn for all 7 images), with the same
    draw; drawing the noise for the part alone would differ."""
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    seen = set()
    for seed in range(12):
        whole_layer = AttackLayer({"noise": (0.05, 0.1), "jpeg": (50.0, 90.0), "resize": (0.5, 1.0)},
                                  max_chain=3, seed=seed)
        whole = whole_layer(x)
        seen.update(name for name, _ in whole_layer.last)
        for rows in (slice(0, 4), slice(4, 7)):
            part_layer = AttackLayer(whole_layer.ranges, max_chain=3, seed=seed)
            part = part_layer(x[rows], rows=rows, batch_size=7)
            assert part_layer.last == whole_layer.last
            assert torch.allclose(part, whole[rows], rtol=0, atol=1e-6), (seed, whole_layer.last)
    assert seen == {"noise", "jpeg", "resize"}
    g = torch.Generator().manual_seed(0)
    alone = ATTACKS["noise"](x[4:], 0.1, generator=g)
    assert not torch.allclose(alone, ATTACKS["noise"](x, 0.1, generator=g.manual_seed(0))[4:])
    with pytest.raises(ValueError):
        AttackLayer(["noise"], seed=0)(x[4:], rows=slice(4, 7))


def test_attack_layer_chains_and_is_reproducible():
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    a, b = AttackLayer(seed=5), AttackLayer(seed=5)
    lengths = set()
    for _ in range(12):
        ya, yb = a(x), b(x)
        assert torch.equal(ya, yb) and a.last == b.last and ya.shape == x.shape
        lengths.add(len(a.last))
        assert len({n for n, _ in a.last}) == len(a.last)
    assert lengths == {1, 2}
    ranged = AttackLayer({"jpeg": (50.0, 60.0)}, seed=0)
    ranged(x)
    assert 50 <= ranged.last[0][1] <= 60
    with pytest.raises(ValueError):
        AttackLayer(["jpeg_pil"])
    with pytest.raises(KeyError):
        AttackLayer(["sharpen"])
