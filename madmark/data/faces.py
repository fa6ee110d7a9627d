"""Faces: the real LFW face crops that ship with scikit-image, fully offline."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from madmark.data.base import DataSource, Splits
from madmark.data.splitting import split_pool
from madcore.errors import MadmarkError


class Faces(DataSource):
    """Real 25x25 grayscale faces from ``skimage.data.lfw_subset()``.

    ``lfw_subset`` holds 200 crops: the first 100 are faces, the other 100 are background patches
    ("non-faces"). By default only the 100 faces are used, since a face model should not learn
    background patches; ``include_non_faces=True`` uses all 200. Labels are int64, 1 = face and
    0 = non-face; the split is seeded and stratified by that label.

    Images are float32 ``(N, 1, size, size)`` in [0, 1]; ``size`` (default None = 25) resizes with
    bilinear, antialiased interpolation.

    Args:
        seed: chooses the split.
        n_reference: size of the held-out reference split (default 20, i.e. 20% of the faces).
        size: output side in pixels, or None for the native 25.
        include_non_faces: also use the 100 background crops.
    """

    name = "faces"

    def __init__(self, seed: int = 0, n_reference: int = 20, size: Optional[int] = None,
                 include_non_faces: bool = False):
        self.seed = seed
        self.n_reference = n_reference
        self.size = size
        self.include_non_faces = include_non_faces

    def _load(self) -> Splits:
        from skimage.data import lfw_subset

        crops = np.asarray(lfw_subset(), dtype=np.float32)  # (200, 25, 25), faces first
        labels = (np.arange(len(crops)) < 100).astype(np.int64)
        if not self.include_non_faces:
            crops, labels = crops[:100], labels[:100]
        images = crops[:, None]
        if self.size is not None and self.size != images.shape[-1]:
            if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
                raise MadmarkError(f"data.size={self.size!r} is not a positive integer",
                                   "set data.size=<pixels> or data.size=null for 25")
            resized = F.interpolate(torch.from_numpy(images), size=(self.size, self.size),
                                    mode="bilinear", align_corners=False, antialias=True)
            images = resized.clamp_(0.0, 1.0).numpy()
        return split_pool(images, labels, self.n_reference, self.seed, self.name)
