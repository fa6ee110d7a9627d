"""``dinov2``: DINOv2 ViT CLS-token features (ViT-S/14: 384-d), via ``torch.hub``.

Code (the hub repo with ``hubconf.py``) is found in this order: ``hub_dir`` (a local clone of
facebookresearch/dinov2, config key ``eval.features.hub_dir``) → torch.hub's cache
(``<hub dir>/facebookresearch_dinov2_main``) → GitHub (when ``allow_download``).
Weights: ``weights_path`` (``eval.features.weights_path``, e.g. ``dinov2_vits14_pretrain.pth``)
→ torch.hub's checkpoint cache → download. Offline without them: :class:`FeatureUnavailable`
whose one-line message names the key to set.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from eval.features._download import NETWORK_ERRORS, hub_checkpoint_dir, network_timeout
from eval.features.base import CONFIG_PREFIX, FeatureExtractor, FeatureUnavailable, as_float_images, fit_channels, resize

__all__ = ["DINOv2Extractor", "DINOV2_DIMS"]

#: variant → CLS feature dimension
DINOV2_DIMS = {"vits14": 384, "vitb14": 768, "vitl14": 1024, "vitg14": 1536,
               "vits14_reg": 384, "vitb14_reg": 768, "vitl14_reg": 1024, "vitg14_reg": 1536}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HUB_REPO = "facebookresearch/dinov2"


def _unavailable(what: str, reason: str, key: str, hint: str) -> FeatureUnavailable:
    return FeatureUnavailable(f"DINOv2 {what} is not available ({reason}) — set "
                              f"{CONFIG_PREFIX}.{key}=<{hint}> or run once with internet")


def _find_repo(hub_dir: Optional[str], allow_download: bool) -> tuple[str, str]:
    """(repo, source) for torch.hub.load: a local folder, or the GitHub repo."""
    if hub_dir is not None:
        d = Path(os.path.expanduser(str(hub_dir)))
        if not (d / "hubconf.py").is_file():
            raise _unavailable("code", f"no hubconf.py in {CONFIG_PREFIX}.hub_dir={hub_dir}",
                               "hub_dir", "local clone of facebookresearch/dinov2")
        return str(d), "local"
    cached = Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"
    if (cached / "hubconf.py").is_file():
        return str(cached), "local"
    if not allow_download:
        raise _unavailable("code", f"not in {cached.parent} and downloads are off", "hub_dir",
                           "local clone of facebookresearch/dinov2")
    return HUB_REPO, "github"


def _load_model(variant: str, hub_dir, weights_path, allow_download: bool, timeout_s: float):
    repo, source = _find_repo(hub_dir, allow_download)
    entry = f"dinov2_{variant}"
    weights = None
    if weights_path is not None:
        weights = Path(os.path.expanduser(str(weights_path)))
        if not weights.is_file():
            raise _unavailable("weights", f"no file at {CONFIG_PREFIX}.weights_path={weights_path}",
                               "weights_path", f"path to {entry}_pretrain.pth")
    elif not allow_download and not (hub_checkpoint_dir() / f"{entry}_pretrain.pth").is_file():
        raise _unavailable("weights", f"not in {hub_checkpoint_dir()} and downloads are off",
                           "weights_path", f"path to {entry}_pretrain.pth")
    extra = {"trust_repo": True, "skip_validation": True} if source == "github" else {}
    try:
        with network_timeout(timeout_s):
            model = torch.hub.load(repo, entry, source=source, pretrained=weights is None, **extra)
    except NETWORK_ERRORS as e:   # code missing → hub_dir; code here but weights missing → weights_path
        code_here = source == "local" or (Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"
                                          / "hubconf.py").is_file()
        key, hint = (("weights_path", f"path to {entry}_pretrain.pth") if code_here
                     else ("hub_dir", "local clone of facebookresearch/dinov2"))
        raise _unavailable("model", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           key, hint) from e
    if weights is not None:
        try:
            missing, _ = model.load_state_dict(
                torch.load(weights, map_location="cpu", weights_only=True), strict=False)
        except Exception as e:   # unreadable / wrong file: torch.load raises many types
            raise _unavailable("weights", f"cannot load {weights}: {str(e).splitlines()[0]}",
                               "weights_path", f"path to {entry}_pretrain.pth") from e
        missing = [k for k in missing if "mask_token" not in k]
        if missing:
            raise _unavailable("weights", f"{weights} lacks {len(missing)} tensors of {entry}, "
                               f"e.g. {missing[0]}", "weights_path", f"path to {entry}_pretrain.pth")
    return model


class DINOv2Extractor(FeatureExtractor):
    """Images ``(N, C, H, W)`` in [0, 1] → ``(N, d)`` DINOv2 CLS-token features (d = 384 for
    ViT-S/14).

    Preprocessing: clamp to [0, 1], gray repeated to 3 channels, antialiased bicubic resize to
    ``image_size`` (default 224, a multiple of the 14-pixel patch), ImageNet mean/std.

    Args:
        variant: one of :data:`DINOV2_DIMS` ("vits14", "vitb14", ...).
        hub_dir: local folder holding the dinov2 repo's ``hubconf.py``.
        weights_path: local checkpoint for the variant.
        allow_download: fetch code/weights from GitHub / dl.fbaipublicfiles when not local.
        image_size: input side in pixels; must be a multiple of 14.
        timeout_s: per-socket-operation limit of downloads.
    """

    name = "dinov2"
    default_batch_size = 64

    def __init__(self, variant: str = "vits14", hub_dir: Optional[str] = None,
                 weights_path: Optional[str] = None, allow_download: bool = True,
                 image_size: int = 224, timeout_s: float = 60.0):
        super().__init__()
        if variant not in DINOV2_DIMS:
            raise ValueError(f"dinov2: unknown variant {variant!r}; choose from {sorted(DINOV2_DIMS)}")
        if image_size % 14:
            raise ValueError(f"dinov2: image_size must be a multiple of 14, got {image_size}")
        self.variant, self.image_size = variant, int(image_size)
        self.net = _load_model(variant, hub_dir, weights_path, allow_download, timeout_s).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.dim = int(getattr(self.net, "embed_dim", DINOV2_DIMS[variant]))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_channels(as_float_images(x, self.name), 3, self.name)
        x = resize(x, self.image_size, mode="bicubic").clamp(0.0, 1.0)
        return self.net((x - self.mean) / self.std).reshape(x.shape[0], -1).float()

    def describe(self) -> str:
        return f"dinov2({self.variant}, d={self.dim})"
