"""The FID Inception-v3 network (TF "2015-12-05" graph ported to PyTorch), without torch-fidelity.

Same module names, parameters and computation as torch-fidelity's ``FeatureExtractorInceptionV3``
(which torchmetrics' ``NoTrainInceptionV3`` wraps) and pytorch-fid's ``fid_inception_v3``, so it
loads their weight files (``pt_inception-2015-12-05-6726825d.pth`` or
``weights-inception-2015-12-05-6726825d.pth``) with strict key matching. Differences from
torchvision's Inception3 (all taken from those projects): average pools exclude padding, the last
block max-pools, 1008 output classes. The forward pass reproduces torchmetrics' (antialiased
bilinear resize to 299, ``(x - 128) / 128``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE

__all__ = ["FIDInceptionV3"]


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _FIDInceptionA(InceptionA):
    def _forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))]


class _FIDInceptionC(InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        return [self.branch1x1(x), b7, b7d, self.branch_pool(_tf_avg_pool(x))]


class _FIDInceptionE(InceptionE):
    """``max_pool=False``: TF's padding-excluding average pool (Mixed_7b); True: the 3×3 max pool
    the TF graph uses in Mixed_7c."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool
                  else _tf_avg_pool(x))
        return [self.branch1x1(x), b3, b3d, self.branch_pool(pooled)]


class FIDInceptionV3(nn.Module):
    """uint8 images ``(N, 3, H, W)`` (0..255, any H, W) → ``(N, 2048)`` pool3 features.

    Always in eval mode; parameters are frozen. Load weights with :meth:`load_weights`.
    """

    INPUT_IMAGE_SIZE = 299

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = _FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = _FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = _FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = _FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = _FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = _FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = _FIDInceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)   # unused for features; present so weight files load
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FIDInceptionV3":
        """Never leaves eval mode (BatchNorm statistics are the TF graph's)."""
        return super().train(False)

    def load_weights(self, path: str) -> None:
        """Load a pytorch-fid / torch-fidelity FID Inception state dict (strict key match)."""
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 → (N, 2048) float32."""
        if x.dtype != torch.uint8:
            raise TypeError(f"FIDInceptionV3 expects uint8 images, got {x.dtype}")
        x = F.interpolate(x.float(), size=(self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE),
                          mode="bilinear", align_corners=False, antialias=True)
        x = (x - 128) / 128
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                     "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b",
                     "Mixed_7c", "AvgPool"):
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)
