"""``lenet``: a small LeNet-style classifier trained on a source's REAL TRAIN split; features are
its penultimate layer (the paper computes "FID" on MNIST with LeNet features).

Never train it on the held-out reference split the metrics compare against: pass that split (or
another held-out one) as ``val_x, val_y`` to measure accuracy only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from eval.features.base import FeatureExtractor, as_float_images, fit_channels, resize

__all__ = ["LeNet", "LeNetExtractor", "lenet_accuracy", "INPUT_SIZE"]

#: every input is resized to INPUT_SIZE × INPUT_SIZE
INPUT_SIZE = 28


class LeNet(nn.Module):
    """conv5×5(c1) → ReLU → maxpool2 → conv5×5(c2) → ReLU → maxpool2 → fc(25·c2→feature_dim) →
    ReLU → fc(feature_dim→num_classes), with ``(c1, c2) = channels``.

    Input: ``(B, C, H, W)`` in [0, 1] (any H, W: resized to 28×28; 1 or 3 channels: converted to
    ``in_channels``), scaled to [-1, 1] inside. :meth:`features` is the ``(B, feature_dim)``
    post-ReLU penultimate layer; :meth:`forward` returns ``(B, num_classes)`` logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feature_dim: int = 128,
                 channels: tuple[int, int] = (16, 32)):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"lenet: in_channels must be 1 or 3, got {in_channels}")
        self.in_channels, self.num_classes, self.feature_dim = in_channels, num_classes, feature_dim
        self.channels = (int(channels[0]), int(channels[1]))
        self.conv1 = nn.Conv2d(in_channels, self.channels[0], 5, padding=2)
        self.conv2 = nn.Conv2d(self.channels[0], self.channels[1], 5)
        self.fc1 = nn.Linear(self.channels[1] * 5 * 5, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] → (B, in_channels, 28, 28) in [-1, 1]."""
        x = as_float_images(x, "lenet")
        return resize(fit_channels(x, self.in_channels, "lenet"), INPUT_SIZE) * 2.0 - 1.0

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        z = F.max_pool2d(F.relu(self.conv1(z)), 2)
        z = F.max_pool2d(F.relu(self.conv2(z)), 2)
        return F.relu(self.fc1(z.flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] → (B, feature_dim) penultimate activations."""
        return self._features(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] → (B, num_classes) logits."""
        return self.fc2(self.features(x))


class LeNetExtractor(FeatureExtractor):
    """Penultimate-layer features ``(N, feature_dim)`` of a trained :class:`LeNet`.

    Args:
        model: the trained network (see :func:`eval.features.lenet_train.train_lenet`).
        source: data source name shown by :meth:`describe` (e.g. "mnist5k").
        accuracy: held-out accuracy in [0, 1] shown by :meth:`describe`, if measured.
    """

    name = "lenet"

    def __init__(self, model: LeNet, source: str = "custom", accuracy: Optional[float] = None):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim, self.source, self.accuracy = model.feature_dim, source, accuracy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def describe(self) -> str:
        acc = f", acc={self.accuracy:.3f}" if self.accuracy is not None else ""
        return f"lenet({self.source}{acc})"


@torch.no_grad()
def lenet_accuracy(model: LeNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` (N, C, H, W) in [0, 1] classified as ``y`` (N,) int labels."""
    model.eval()
    dev = next(model.parameters()).device
    hits = sum((model(x[i:i + batch_size].to(dev)).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size))
    return hits / max(len(x), 1)
