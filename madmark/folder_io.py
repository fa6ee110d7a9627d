"""Image folders for the practitioner commands (embed, detect, filter).

Inputs are only read, through the one reader :func:`madcore.images.read_image` (the loop's
``data=imagefolder`` uses it too, so a file reads the same everywhere). Unreadable files are
reported with the reason and skipped, never fatal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from madcore import images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden entries skipped), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


@dataclass
class LoadedImage:
    """One file of a folder command: the image as a tensor, or why there is none."""

    path: Path
    image: Optional[torch.Tensor]   # (C, H, W) float32 in [0, 1], C = 1 or 3; None if unreadable
    error: str = ""
    alpha: Optional[torch.Tensor] = None   # (1, H, W) in [0, 1] when the file has transparency
    notes: list[str] = field(default_factory=list)


def read_image(path: Path) -> LoadedImage:
    """One file through :func:`madcore.images.read_image`, as tensors."""
    read = images.read_image(path)
    as_tensor = (lambda a: None if a is None else torch.from_numpy(a))
    return LoadedImage(path, as_tensor(read.image), read.reason, as_tensor(read.alpha), read.notes)


def group_by_shape(images: list[LoadedImage]) -> dict[tuple[int, ...], list[int]]:
    """Indices of the readable images, grouped by (C, H, W) so each group runs as one batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(images):
        if item.image is not None:
            groups.setdefault(tuple(item.image.shape), []).append(i)
    return groups
