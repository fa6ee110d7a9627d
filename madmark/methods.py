"""Build a watermark method by name for an image size (shared by embed, detect and the loop)."""
from __future__ import annotations

import os
import stat

from watermark import (BaselineUnavailableError, DwtDct, DwtDctSvd, RivaGAN, SecretKey,
                       SpreadSpectrum, UnsupportedImageError)
from watermark import load as load_card
from watermark.base import Watermarker
from watermark.cards import CARDS_DIR
from watermark.keys import MAX_KEY_FILE_BYTES

from madcore.errors import MadmarkError

METHODS = ("spread_spectrum", "dwtdct", "dwtdctsvd", "rivagan")
#: the image side at which :func:`check_method` tries the settings (a size every method marks)
REFERENCE_SIDE = 256


def card_names() -> list[str]:
    """Names of the learned model cards shipped in watermark/cards/."""
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


def build_method(name: str, key: SecretKey, height: int, width: int, bits: int = 32,
                 strength: float = 0.01) -> Watermarker:
    """The watermarker ``name`` for (height, width) images.

    ``strength``: residual RMS in [0, 1] pixel units for spread spectrum (≈ −20·log10 dB PSNR).
    A learned model card (a name in watermark/cards/ or a path to a card .yaml) carries its own
    bits and strength; ``bits`` and ``strength`` are then ignored.
    """
    if name in card_names() or name.endswith((".yaml", ".yml")):
        try:
            return load_card(name)
        except (OSError, ValueError, KeyError) as e:
            raise MadmarkError(f"cannot load watermark card '{name}': {str(e).splitlines()[0]}",
                               "pass a card name from watermark/cards/ or a card path") from e
    try:
        if name == "spread_spectrum":
            return SpreadSpectrum.for_image_size(key, height, width, num_bits=bits, alpha=strength)
        if name in ("dwtdct", "dwtdctsvd", "rivagan"):
            return {"dwtdct": DwtDct, "dwtdctsvd": DwtDctSvd, "rivagan": RivaGAN}[name](num_bits=bits)
    except BaselineUnavailableError as e:
        raise MadmarkError(str(e).splitlines()[0], "pip install 'madmark[baselines]'") from e
    except ValueError as e:
        raise MadmarkError(f"method={name}: {e}", "change bits/strength or the method") from e
    raise MadmarkError(f"unknown watermark method '{name}'",
                       f"use method= one of {', '.join(METHODS + tuple(card_names()))}")


def check_method(name: str, key: SecretKey, bits: int = 32, strength: float = 0.01) -> None:
    """Raise the one-line MadmarkError of settings that fail at every image size (unknown method,
    bits=0, strength <= 0, ...), before a folder command reads or writes anything."""
    build_method(name, key, REFERENCE_SIDE, REFERENCE_SIDE, bits, strength)


def _builds(name: str, key: SecretKey, side: int, bits: int, strength: float) -> bool:
    try:
        build_method(name, key, side, side, bits, strength)
        return True
    except MadmarkError:
        return False


def method_for_shape(name: str, key: SecretKey, shape: tuple[int, ...], bits: int = 32,
                     strength: float = 0.01) -> Watermarker:
    """The method for images of ``shape`` (C, H, W), as :func:`build_method`; settings that work
    for large images (:func:`check_method`) but not at this size raise an UnsupportedImageError
    naming the size, the method's minimum and the fix, so a folder command skips these images.

    Spread spectrum carries ``bits`` in a band of a min(H, W)-pixel working grid below 64 pixels:
    32 bits need 27 x 27 pixels, 8 bits 15 x 15, and nothing marks images under 8 x 8."""
    height, width = shape[-2:]
    try:
        return build_method(name, key, height, width, bits, strength)
    except MadmarkError as e:
        if not isinstance(e.__cause__, ValueError) or not _builds(
                name, key, REFERENCE_SIDE, bits, strength):
            raise                                     # not a matter of size
        side = next((s for s in range(min(height, width) + 1, REFERENCE_SIDE + 1)
                     if _builds(name, key, s, bits, strength)), REFERENCE_SIDE)
        fewer = next((b for b in range(bits - 1, 0, -1)
                      if _builds(name, key, min(height, width), b, strength)), 0)
        fix = f"use images of at least {side}x{side} pixels" + (
            f" or bits={fewer} (the most a {height}x{width} image carries)" if fewer
            else f" (no bits= setting marks a {height}x{width} image)")
        raise UnsupportedImageError(f"{height}x{width} is below the minimum {side}x{side} of "
                                    f"method={name} at bits={bits} — {fix}") from e


def skip_reason(error: UnsupportedImageError, name: str) -> str:
    """One line for a manifest: why the method cannot mark or read these images, and the fix."""
    reason = str(error).splitlines()[0]
    if " — " in reason:
        return reason
    other = "method=spread_spectrum (grey and small images from 27x27)" \
        if name != "spread_spectrum" else "larger images"
    return f"{reason} — use {other} for such images"


def secret_key(key: str, key_file: str) -> SecretKey:
    """The run's secret key from ``key=`` or ``key_file=`` (exactly one). A key file that is not
    a readable regular file, is larger than 1 MiB (MAX_KEY_FILE_BYTES) or holds only whitespace is
    refused with a MadmarkError; the key never appears in it."""
    if bool(key) == bool(key_file):
        raise MadmarkError("give the secret key exactly once",
                           "pass key_file=<path to a key file> (preferred) or key=<secret>")
    if key_file:
        fix = "pass key_file=<a readable file holding the secret>"
        try:
            info = os.stat(os.path.expanduser(key_file))
        except (OSError, ValueError) as e:      # ValueError: a NUL in the path
            raise MadmarkError(f"cannot read key_file={key_file} ({type(e).__name__})",
                               fix) from None
        if not stat.S_ISREG(info.st_mode):
            raise MadmarkError(f"key_file={key_file} is not a regular file", fix)
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise MadmarkError(f"key_file={key_file} is {info.st_size:,} bytes, more than the "
                               "1 MiB a key file may hold (a key is a few dozen bytes: is it the "
                               "right file?)", fix)
        try:
            return SecretKey.from_file(key_file)
        except OSError as e:
            raise MadmarkError(f"cannot read key_file={key_file} ({type(e).__name__})",
                               fix) from None
        except ValueError:                  # SecretKey.from_file: only whitespace in it
            raise MadmarkError(f"key_file={key_file} is empty (or only whitespace)",
                               "write the secret into it, e.g. python -c \"import secrets; "
                               "print(secrets.token_hex(32))\" > <key file>") from None
    return SecretKey(key)
