"""Build a watermark method by name for an image size (shared by embed, detect and the loop)."""
from __future__ import annotations

import os
import stat

from watermark import BaselineUnavailableError, DwtDct, DwtDctSvd, RivaGAN, SecretKey, SpreadSpectrum
from watermark import load as load_card
from watermark.base import Watermarker
from watermark.cards import CARDS_DIR

from madcore.errors import MadmarkError

METHODS = ("spread_spectrum", "dwtdct", "dwtdctsvd", "rivagan")


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


#: the largest key file read: a key is a few dozen bytes; anything this big is the wrong file
MAX_KEY_FILE_BYTES = 1 << 20


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
