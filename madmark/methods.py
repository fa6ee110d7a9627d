"""Build a watermark method by name for an image size (shared by embed, detect and the loop).

A method is a ``Watermarker`` class and a yaml, ``configs/watermark/<name>.yaml``, starting from
``base.yaml`` (the settings every method shares) and holding a ``build`` node: its ``_target_``
(a class or factory) is called with the node's other keys, plus those of ``key`` (the
:class:`~watermark.SecretKey`), ``height`` and ``width`` (pixels) that its signature names, and
returns the watermarker for that image size. ``method=<name>`` finds the yaml by name (the yaml
composed on its base, with ``bits`` and ``strength`` set); adding a method adds a class and a
yaml, nothing here. A learned model card without a yaml (a name in watermark/cards/, or a path to
a card .yaml) is built by :data:`CARD_TARGET`.
"""
from __future__ import annotations

import functools
import inspect
import os
import stat
from typing import Any, Optional

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf, open_dict

from watermark import BaselineUnavailableError, SecretKey, UnsupportedImageError
from watermark.base import Watermarker
from watermark.cards import CARDS_DIR
from watermark.keys import MAX_KEY_FILE_BYTES

from madcore.errors import MadmarkError
from madmark.hydra_app import compose_option, group_choices

#: the factory of a learned model card: ``watermark.load(name_or_path)``
CARD_TARGET = "watermark.load"
#: the image side at which :func:`check_method` tries the settings (a size every method marks)
REFERENCE_SIDE = 256
#: the arguments a build target receives when its signature names them
RUNTIME_ARGS = ("key", "height", "width")


def card_names() -> list[str]:
    """Names of the learned model cards shipped in watermark/cards/."""
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def method_config(name: str) -> Optional[DictConfig]:
    """``configs/watermark/<name>.yaml`` composed on its base (read-only), or None when ``name``
    has no yaml with a ``build`` node (``none``, ``base``, a card path)."""
    if name not in group_choices("watermark"):
        return None
    cfg = compose_option("watermark", name)
    if "build" not in cfg:
        return None
    OmegaConf.set_readonly(cfg, True)
    return cfg


def method_names() -> list[str]:
    """What ``method=`` takes: the method yamls, then the shipped cards without one."""
    names = [n for n in group_choices("watermark") if method_config(n) is not None]
    return names + [c for c in card_names() if c not in names]


def build_spec(name: str, bits: int = 32, strength: float = 0.01,
               build: Optional[DictConfig] = None) -> dict[str, Any]:
    """The ``build`` node of method ``name`` with ``bits`` and ``strength`` set, resolved:
    ``{"_target_": ..., setting: value}``. ``build``: a run's own (composed, perhaps
    overridden) node, used when it builds the same ``_target_`` as the method's yaml."""
    cfg = method_config(name)
    if cfg is None:
        if name in card_names() or name.endswith((".yaml", ".yml")):
            return {"_target_": CARD_TARGET, "name_or_path": name}
        raise MadmarkError(f"unknown watermark method '{name}'",
                           f"use method= one of {', '.join(method_names())}")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))       # a writable copy, unresolved
    with open_dict(cfg):
        cfg.bits, cfg.strength = bits, strength
        if build is not None and build.get("_target_") == cfg.build._target_:
            cfg.build = OmegaConf.to_container(build)
    return OmegaConf.to_container(cfg.build, resolve=True)    # type: ignore[return-value]


def build(spec: dict[str, Any], key: SecretKey, height: int, width: int) -> Watermarker:
    """Call ``spec["_target_"]`` with the spec's settings and the :data:`RUNTIME_ARGS` it names."""
    settings = {k: v for k, v in spec.items() if k != "_target_"}
    target = get_object(spec["_target_"])
    named = inspect.signature(target).parameters
    runtime = {"key": key, "height": height, "width": width}
    return target(**{k: v for k, v in runtime.items() if k in named}, **settings)


def build_method(name: str, key: SecretKey, height: int, width: int, bits: int = 32,
                 strength: float = 0.01, build_cfg: Optional[DictConfig] = None) -> Watermarker:
    """The watermarker ``name`` for (height, width) images (see the module docstring).

    ``strength``: residual RMS in [0, 1] pixel units for spread spectrum (≈ −20·log10 dB PSNR).
    A learned model card carries its own bits and strength; ``bits`` and ``strength`` are then
    ignored. ``build_cfg``: a run's ``watermark.build`` node (:func:`build_spec`).
    """
    spec = build_spec(name, bits, strength, build_cfg)
    if spec["_target_"] == CARD_TARGET:
        try:
            return build(spec, key, height, width)
        except (OSError, ValueError, KeyError) as e:
            raise MadmarkError(f"cannot load watermark card '{name}': {str(e).splitlines()[0]}",
                               "pass a card name from watermark/cards/ or a card path") from e
    try:
        return build(spec, key, height, width)
    except BaselineUnavailableError as e:
        raise MadmarkError(str(e).splitlines()[0], "pip install 'madmark[baselines]'") from e
    except ValueError as e:
        raise MadmarkError(f"method={name}: {e}", "change bits/strength or the method") from e


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
