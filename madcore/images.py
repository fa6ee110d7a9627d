"""One image reader for every path that opens a user's file (the loop's image folders, embed,
detect, filter), and the PNG writer of the folder commands.

    read = read_image(path)               # ImageRead: .image (C, H, W) float32 in [0, 1] or None
    if read.image is None: print(read.reason)
    write_png(out_path, image, alpha=read.alpha)

Mode policy (Pillow modes), the same wherever a file is read:
- grey modes ("1", "L", "LA", "La", "I", "I;16*", "F") give C = 1, colour modes C = 3 (palette
  images by their palette, CMYK / YCbCr / LAB converted to RGB);
- 8-bit values are divided by 255; 16-bit and 32-bit integer grey by 65535 (PNG's 16-bit range);
  float ("F") images are taken as they are; everything is clipped to [0, 1];
- EXIF orientation is applied;
- transparency (RGBA, LA, PA, or a palette's transparent index) is returned separately as
  ``alpha`` (1, H, W) and never mixed into the colour channels;
- an animated file gives its first frame (said in ``notes``).
A file Pillow cannot decode gives ``image=None`` and a one-line ``reason``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from madcore.files import atomic_write_bytes

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_WIDE_GREY = GREY_MODES - {"1", "L", "LA", "La"}           # read as float, then scaled
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass
class ImageRead:
    """What :func:`read_image` found in one file.

    Attributes:
        path: the file.
        image: (C, H, W) float32 in [0, 1], C = 1 (grey) or 3 (colour); None if unreadable.
        alpha: (1, H, W) float32 in [0, 1] when the file has transparency, else None.
        reason: why ``image`` is None ("" when it was read).
        mode: the Pillow mode of the file ("" when it could not be opened).
        notes: what the reading changed or noticed, e.g. "16-bit", "alpha kept apart",
            "EXIF-rotated", "animated: first of 12 frames".
    """

    path: Path
    image: Optional[np.ndarray]
    alpha: Optional[np.ndarray] = None
    reason: str = ""
    mode: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.image is not None


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _alpha(im, size: Optional[tuple[int, int]]) -> Optional[np.ndarray]:
    """The transparency of ``im`` as (1, H, W) in [0, 1], or None if it has none."""
    from PIL import Image

    if im.mode in _ALPHA_MODES:
        channel = im.getchannel("A")
    elif im.mode == "P" and "transparency" in im.info:
        channel = im.convert("RGBA").getchannel("A")
    else:
        return None
    if size is not None and channel.size != (size[1], size[0]):
        channel = channel.resize((size[1], size[0]), Image.BILINEAR)
    return (np.asarray(channel, dtype=np.float32) / 255.0)[None]


def read_image(path: str | Path, size: Optional[tuple[int, int]] = None) -> ImageRead:
    """Read one image file under the module's mode policy, resized (bilinear, on the decoded
    image) to ``size`` = (H, W) if given. Never raises for a bad file: see ``reason``."""
    from PIL import Image, ImageOps

    path = Path(path)
    notes: list[str] = []
    mode = ""
    try:
        with Image.open(path) as im:
            mode = im.mode
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                notes.append(f"animated: first of {frames} frames")
            oriented = ImageOps.exif_transpose(im)
            if oriented is not im and im.getexif().get(0x0112, 1) != 1:
                notes.append("EXIF-rotated")
            im = oriented
            alpha = _alpha(im, size)
            if alpha is not None:
                notes.append("alpha kept apart")
            if im.mode in _WIDE_GREY:
                scale = 1.0 if im.mode == "F" else 65535.0
                if im.mode != "F":
                    notes.append("16-bit")
                im = im.convert("F")
            else:
                scale = 255.0
                im = im.convert("L" if im.mode in GREY_MODES else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.clip(np.asarray(im, dtype=np.float32) / scale, 0.0, 1.0)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        return ImageRead(path, None, reason=_reason(err), mode=mode, notes=notes)
    image = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return ImageRead(path, np.ascontiguousarray(image), alpha, mode=mode, notes=notes)


def encode_png(image, alpha=None) -> bytes:
    """PNG bytes (8 bits per channel) of ``image`` (C, H, W) in [0, 1], C in {1, 3}, with the
    transparency ``alpha`` (1, H, W) in [0, 1] as a fourth (or second) channel when given.
    Accepts numpy arrays or torch tensors."""
    from PIL import Image

    def to_uint8(a) -> np.ndarray:
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        return np.round(np.clip(a.astype(np.float32), 0, 1) * 255).astype(np.uint8)

    planes = to_uint8(image)
    if alpha is not None:
        planes = np.concatenate([planes, to_uint8(alpha)], axis=0)
    array = planes.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | Path, image, alpha=None) -> None:
    """:func:`encode_png` written to ``path`` atomically."""
    atomic_write_bytes(path, encode_png(image, alpha))
