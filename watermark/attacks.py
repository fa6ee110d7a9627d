"""Attacks on marked images: a registry of batched functions and the evaluation grid.

Every attack is `attack(x, strength, generator=None) -> x'` with x: (N, C, H, W) float in [0, 1]
(C = 1 or 3) and x' in [0, 1]. All but `jpeg_pil` are kornia/torch ops, differentiable in x, and run on
x's device. `crop` and `resize` return smaller images; decoders must handle the size change.

    name         strength                       what it does
    jpeg         quality in (0, 100]            kornia's differentiable JPEG codec (4:2:0 chroma)
    jpeg_pil     quality                        real libjpeg through Pillow (per image; the grid's JPEG)
    crop         kept fraction of the area      centred crop, side scaled by sqrt(fraction)
    resize       scale < 1                      antialiased bilinear downscale
    blur         sigma in pixels                Gaussian blur, kernel 2 ceil(3 sigma) + 1, reflect
    noise        sigma                          additive N(0, sigma^2), from `generator`
    brightness   delta                          x + delta
    contrast     factor                         (x - mean luma) * factor + mean luma (PIL's contrast)
    rotation     degrees (counter-clockwise)    about the centre, bilinear, black corners

A name "a+b" applies a then b with strength (strength_a, strength_b): see `apply_attack`.
`ATTACK_GRID` lists the (name, strength) pairs of the standard robustness table; its JPEG is the real
codec (`jpeg_pil`), not the differentiable approximation the training layer uses.
`PER_IMAGE_RANDOM` names the attacks that draw random numbers per image (`noise`); they also take
`rows=, batch_size=` (x holds rows `rows` of a batch of `batch_size`): they draw for the whole batch
and keep those rows, so a batch split across processes is attacked as if it were attacked whole.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .base import check_images

Attack = Callable[..., torch.Tensor]
ATTACKS: dict[str, Attack] = {}
#: attacks whose randomness is per image; they accept ``rows=`` and ``batch_size=`` (module docstring)
PER_IMAGE_RANDOM = frozenset({"noise"})


def register(name: str) -> Callable[[Attack], Attack]:
    """Decorator adding an attack to `ATTACKS` under `name` (no '+' allowed)."""
    if "+" in name:
        raise ValueError("'+' is reserved for combinations")

    def deco(fn: Attack) -> Attack:
        ATTACKS[name] = fn
        return fn
    return deco


@register("jpeg")
def jpeg(x: torch.Tensor, quality: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable JPEG at `quality`; pads (replicate) to multiples of 16 and crops back.
    Gray images go through the codec as RGB and come back as the channel mean."""
    n, c, h, w = x.shape
    ph, pw = -h % 16, -w % 16
    rgb = x.expand(n, 3, h, w) if c == 1 else x
    if ph or pw:
        rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
    q = torch.full((1,), float(quality), device=x.device, dtype=x.dtype)
    out = kornia.enhance.jpeg_codec_differentiable(rgb, q)[..., :h, :w]
    return (out.mean(1, keepdim=True) if c == 1 else out).clamp(0, 1)


@register("jpeg_pil")
def jpeg_pil(x: torch.Tensor, quality: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Real JPEG (Pillow/libjpeg, 4:2:0) on 8-bit images, one image at a time; not differentiable."""
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, "JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(dec.reshape(a.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


@register("crop")
def crop(x: torch.Tensor, keep: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Centred crop keeping `keep` of the area: (N, C, round(H sqrt(keep)), round(W sqrt(keep)))."""
    if not 0 < keep <= 1:
        raise ValueError(f"crop keeps a fraction in (0, 1], got {keep}")
    h, w = x.shape[-2:]
    side = math.sqrt(keep)
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


@register("resize")
def resize(x: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bilinear rescale by `scale` (antialiased when shrinking): (N, C, round(H s), round(W s))."""
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                         antialias=scale < 1).clamp(0, 1)


@register("blur")
def blur(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur with standard deviation `sigma` pixels (reflect borders)."""
    k = 2 * math.ceil(3 * sigma) + 1
    s = torch.tensor([[float(sigma), float(sigma)]], device=x.device, dtype=x.dtype)
    return kornia.filters.gaussian_blur2d(x, (k, k), s, border_type="reflect")


@register("noise")
def noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None, *,
          rows: slice | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Additive white Gaussian noise of standard deviation `sigma`, clamped to [0, 1].

    With `rows` and `batch_size`, x (n, C, H, W) is rows `rows` of a batch of `batch_size` images:
    the noise is drawn for (batch_size, C, H, W) and those rows are added (the noise the whole
    batch would get)."""
    dev = generator.device if generator is not None else x.device
    shape = x.shape if rows is None else (int(batch_size), *x.shape[1:])
    eps = torch.randn(shape, generator=generator, device=dev, dtype=x.dtype)
    if rows is not None:
        eps = eps[rows]
    if eps.shape != x.shape:
        raise ValueError(f"rows {rows} of a batch of {batch_size} do not match x {tuple(x.shape)}")
    return (x + sigma * eps.to(x.device)).clamp(0, 1)


@register("brightness")
def brightness(x: torch.Tensor, delta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive brightness shift by `delta`, clamped."""
    return kornia.enhance.adjust_brightness(x, float(delta), clip_output=True)


@register("contrast")
def contrast(x: torch.Tensor, factor: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Contrast about each image's mean luma (PIL / torchvision semantics), clamped."""
    return kornia.enhance.adjust_contrast_with_mean_subtraction(x, float(factor))


@register("rotation")
def rotation(x: torch.Tensor, degrees: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotation by `degrees` about the image centre; corners outside the source are black."""
    angle = torch.full((x.shape[0],), float(degrees), device=x.device, dtype=x.dtype)
    return kornia.geometry.transform.rotate(x, angle, mode="bilinear", padding_mode="zeros").clamp(0, 1)


def apply_attack(x: torch.Tensor, name: str, strength: Any,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a registered attack, or a chain "a+b+..." with one strength per link (a tuple)."""
    check_images(x)
    parts = name.split("+")
    strengths = (strength,) if len(parts) == 1 else tuple(strength) if isinstance(strength, (tuple, list)) else ()
    if len(strengths) != len(parts):
        raise ValueError(f"{name!r} needs {len(parts)} strengths, got {strength!r}")
    for part, s in zip(parts, strengths):
        if part not in ATTACKS:
            raise KeyError(f"unknown attack {part!r}; known: {sorted(ATTACKS)}")
        x = ATTACKS[part](x, s, generator=generator)
    return x


ATTACK_GRID: list[tuple[str, Any]] = [
    ("jpeg_pil", 90), ("jpeg_pil", 70), ("jpeg_pil", 50), ("jpeg_pil", 30),
    ("crop", 0.9), ("crop", 0.7), ("crop", 0.5),
    ("resize", 0.75), ("resize", 0.5), ("resize", 0.25),
    ("blur", 1.0), ("blur", 2.0),
    ("noise", 0.02), ("noise", 0.05),
    ("brightness", 0.2), ("brightness", -0.2),
    ("contrast", 0.7), ("contrast", 1.3),
    ("rotation", 5), ("rotation", 15),
    ("jpeg_pil+crop", (50, 0.7)),
    ("resize+jpeg_pil", (0.5, 70)),
]
