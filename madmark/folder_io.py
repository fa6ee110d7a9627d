"""Reading and writing image folders for the practitioner commands (embed, detect).

Inputs are only read. Unreadable files are reported with the reason and skipped, never fatal.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from loops.checkpoint import atomic_write_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden entries skipped), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


@dataclass
class LoadedImage:
    path: Path
    image: Optional[torch.Tensor]   # (C, H, W) float32 in [0, 1], C = 1 or 3; None if unreadable
    error: str = ""


def read_image(path: Path) -> LoadedImage:
    """One image as (C, H, W) in [0, 1] (grey stays 1 channel, alpha is dropped)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
            array = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        return LoadedImage(path, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    tensor = torch.from_numpy(array.copy())
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return LoadedImage(path, tensor.contiguous())


def write_png(path: Path, image: torch.Tensor) -> None:
    """Save (C, H, W) in [0, 1] as an 8-bit lossless PNG, atomically."""
    from PIL import Image

    array = image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def group_by_shape(images: list[LoadedImage]) -> dict[tuple[int, ...], list[int]]:
    """Indices of the readable images, grouped by (C, H, W) so each group runs as one batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(images):
        if item.image is not None:
            groups.setdefault(tuple(item.image.shape), []).append(i)
    return groups
