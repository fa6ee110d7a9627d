"""``inception``: the FID Inception-v3 pool3 features (2048-d) used by FID / precision–recall.

Weights: the TF "2015-12-05" Inception ported to PyTorch (pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``, the same tensors). Looked up in this order:
``weights_path`` → torch.hub's checkpoint folder → download (when ``allow_download``). Offline
without a file this raises :class:`FeatureUnavailable` naming ``eval.features.weights_path``.

Network: torchmetrics' ``NoTrainInceptionV3`` when torch-fidelity is installed, else the
equivalent :class:`~eval.features._fid_inception.FIDInceptionV3` (identical outputs, checked
against both on shared weights).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Union

import torch

from eval.features._download import NETWORK_ERRORS, hub_checkpoint_dir, network_timeout
from eval.features.base import CONFIG_PREFIX, FeatureExtractor, FeatureUnavailable, as_float_images, fit_channels

__all__ = ["InceptionExtractor", "WEIGHT_FILES", "WEIGHTS_URL"]

WEIGHT_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHT_FILES[0]


def _unavailable(reason: str) -> FeatureUnavailable:
    return FeatureUnavailable(
        f"Inception weights are not available ({reason}) — set {CONFIG_PREFIX}.weights_path=<path "
        f"to {WEIGHT_FILES[0]}> or run once with internet")


def resolve_weights(weights_path: Union[str, Path, None], allow_download: bool = True,
                    timeout_s: float = 60.0) -> Path:
    """Path of a local FID Inception weight file, downloading it into torch.hub's cache if needed.

    Raises:
        FeatureUnavailable: ``weights_path`` missing, or nothing cached and no download possible.
    """
    if weights_path is not None:
        p = Path(os.path.expanduser(str(weights_path)))
        if not p.is_file():
            raise _unavailable(f"no file at {CONFIG_PREFIX}.weights_path={weights_path}")
        return p
    cache = hub_checkpoint_dir()
    for name in WEIGHT_FILES:
        if (cache / name).is_file():
            return cache / name
    if not allow_download:
        raise _unavailable(f"none in {cache} and downloads are off")
    cache.mkdir(parents=True, exist_ok=True)
    dst = cache / WEIGHT_FILES[0]
    try:
        with network_timeout(timeout_s):
            torch.hub.download_url_to_file(WEIGHTS_URL, str(dst), progress=False)
    except NETWORK_ERRORS as e:
        raise _unavailable(f"download failed: {type(e).__name__}: {e}") from e
    return dst


def _build_network(path: Path, backend: str) -> torch.nn.Module:
    if backend == "auto":
        backend = "torchmetrics" if importlib.util.find_spec("torch_fidelity") else "builtin"
    if backend == "torchmetrics":
        from torchmetrics.image.fid import NoTrainInceptionV3
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=str(path))
    if backend != "builtin":
        raise ValueError(f"inception: backend must be auto, torchmetrics or builtin, got {backend!r}")
    from eval.features._fid_inception import FIDInceptionV3
    net = FIDInceptionV3()
    net.load_weights(str(path))
    return net


class InceptionExtractor(FeatureExtractor):
    """Images ``(N, C, H, W)`` in [0, 1] → ``(N, 2048)`` FID Inception pool3 features.

    Preprocessing, as torchmetrics' ``FrechetInceptionDistance(normalize=True)``: clamp to
    [0, 1], gray repeated to 3 channels (alpha dropped), ``(x * 255).to(uint8)`` (truncation),
    antialiased bilinear resize to 299×299, ``(x - 128) / 128``.

    Args:
        weights_path: local weight file (config key ``eval.features.weights_path``).
        allow_download: try to download into torch.hub's cache when no local file is found.
        backend: "auto" (torchmetrics if torch-fidelity is installed, else builtin),
            "torchmetrics" or "builtin".
        timeout_s: per-socket-operation limit of the download.

    Raises:
        FeatureUnavailable: no weights locally and none downloadable (one line naming the key).
    """

    name = "inception"
    dim = 2048
    default_batch_size = 32

    def __init__(self, weights_path: Optional[str] = None, allow_download: bool = True,
                 backend: str = "auto", timeout_s: float = 60.0):
        super().__init__()
        self.weights_file = resolve_weights(weights_path, allow_download, timeout_s)
        try:
            self.net = _build_network(self.weights_file, backend)
        except Exception as e:   # unreadable / wrong file: torch.load raises many types
            raise _unavailable(f"cannot load {self.weights_file}: {str(e).splitlines()[0]}") from e
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_channels(as_float_images(x, self.name), 3, self.name)
        return self.net((x * 255).to(torch.uint8)).reshape(x.shape[0], -1).float()

    def describe(self) -> str:
        return "inception(pool3, d=2048)"
