"""Photos: random crops of the real photographs that ship with scikit-image, fully offline."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from madmark.data.base import DataSource, Splits
from madcore.errors import MadmarkError

# Images bundled inside the scikit-image wheel (no download). "cat" is the same photo as
# "chelsea", so the default list leaves it out; grayscale ones are repeated to 3 channels.
OFFLINE_IMAGES = ("astronaut", "coffee", "chelsea", "cat", "rocket", "immunohistochemistry",
                  "retina", "hubble_deep_field", "colorwheel", "logo", "camera", "coins",
                  "brick", "grass", "gravel", "moon", "page", "text")
DEFAULT_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
                  "hubble_deep_field")


def _rgb(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as uint8 ``(H, W, 3)``: grey repeated, alpha dropped."""
    import skimage.data

    try:  # all are bundled in scikit-image 0.26; an older version may try to download some
        img = np.asarray(getattr(skimage.data, name)())
    except Exception as err:
        raise MadmarkError(f"skimage photo '{name}' could not be loaded ({type(err).__name__})",
                           "drop it from data.images") from err
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)


def _spread(n: int, k: int) -> np.ndarray:
    """``n`` items over ``k`` bins as evenly as possible (the first bins get the remainder)."""
    return n // k + (np.arange(k) < n % k)


def _crops(img: np.ndarray, x_lo: int, x_hi: int, n: int, size: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``size``-square crops of ``img`` lying inside columns ``[x_lo, x_hi)``.

    Returns (crops uint8 (n, size, size, 3), top-left corners int64 (n, 2) as (y, x)).
    """
    ys = rng.integers(0, img.shape[0] - size + 1, n)
    xs = rng.integers(x_lo, x_hi - size + 1, n)
    r = np.arange(size)
    crops = img[ys[:, None, None] + r[None, :, None], xs[:, None, None] + r[None, None, :]]
    return crops, np.stack([ys, xs], axis=1)


class Photos(DataSource):
    """Random ``size`` x ``size`` RGB crops of real photos from ``skimage.data``.

    Train/reference disjointness is spatial: in every photo the right ``reference_fraction`` of
    the columns (default the right 20%) is held out. Reference crops lie entirely inside that strip
    and train crops entirely left of it, so no pixel of a photo appears in both splits. Crops
    within one split may overlap. Each split's crops are spread evenly over the photos.

    Images are float32 ``(N, 3, size, size)`` in [0, 1]; labels are int64 indices into ``images``.
    After :meth:`load`, ``crop_boxes[split]`` holds int64 ``(N, 3)`` rows (photo index, top, left)
    locating every crop, in pixels of the original photo.

    Args:
        seed: chooses the crops.
        size: crop side in pixels (default 32).
        n_train / n_reference: number of crops in each split (default 4,000 / 1,000).
        images: names of ``skimage.data`` photos (default: the seven distinct RGB photos).
        reference_fraction: share of each photo's width held out for reference crops.
    """

    name = "photos"

    def __init__(self, seed: int = 0, size: int = 32, n_train: int = 4000,
                 n_reference: int = 1000, images: Optional[Sequence[str]] = None,
                 reference_fraction: float = 0.2):
        self.seed = seed
        self.size = size
        self.n_train = n_train
        self.n_reference = n_reference
        self.images = list(DEFAULT_IMAGES if images is None else images)
        self.reference_fraction = reference_fraction
        self.crop_boxes: dict[str, np.ndarray] = {}

    def _check(self) -> None:
        for key in ("size", "n_train", "n_reference"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MadmarkError(f"data.{key}={v!r} is not a positive integer",
                                   f"set data.{key}=<int >= 1>")
        if not 0.0 < self.reference_fraction < 1.0:
            raise MadmarkError(f"data.reference_fraction={self.reference_fraction!r} is not in "
                               "(0, 1)", "set data.reference_fraction=0.2")
        unknown = [n for n in self.images if n not in OFFLINE_IMAGES]
        if unknown or not self.images:
            raise MadmarkError(f"data.images {unknown or '[]'} are not offline skimage photos",
                               f"choose data.images from {list(OFFLINE_IMAGES)}")

    def _load(self) -> Splits:
        self._check()
        size, rng = self.size, np.random.default_rng(self.seed)
        photos = [_rgb(name) for name in self.images]
        bounds = []
        for name, img in zip(self.images, photos):
            h, w = img.shape[:2]
            b = int(round(w * (1.0 - self.reference_fraction)))
            if h < size or b < size or w - b < size:
                raise MadmarkError(
                    f"photo '{name}' ({h}x{w}) is too small for {size}-pixel crops with "
                    f"reference_fraction={self.reference_fraction} (train strip {b}, reference "
                    f"strip {w - b} columns wide)",
                    "set a smaller data.size, or drop the photo from data.images")
            bounds.append((b, w))

        out = {}
        for split, n in (("train", self.n_train), ("reference", self.n_reference)):
            crops, boxes = [], []
            for i, (img, (b, w), k) in enumerate(zip(photos, bounds, _spread(n, len(photos)))):
                lo, hi = (0, b) if split == "train" else (b, w)
                c, yx = _crops(img, lo, hi, int(k), size, rng)
                crops.append(c)
                boxes.append(np.concatenate([np.full((len(yx), 1), i), yx], axis=1))
            x = torch.from_numpy(np.concatenate(crops)).permute(0, 3, 1, 2).float().div_(255.0)
            self.crop_boxes[split] = np.concatenate(boxes).astype(np.int64)
            out[split] = (x.contiguous(), torch.from_numpy(self.crop_boxes[split][:, 0].copy()))
        return Splits(train=out["train"][0], reference=out["reference"][0], kind="image",
                      train_labels=out["train"][1], reference_labels=out["reference"][1])
