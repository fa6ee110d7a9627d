"""``raw``: the values themselves — flattened pixels for images, identity for vectors."""
from __future__ import annotations

from typing import Optional

import torch

from eval.features.base import FeatureExtractor

__all__ = ["RawExtractor"]


class RawExtractor(FeatureExtractor):
    """Flatten ``(N, ...)`` to ``(N, D)`` float32 with no other change (vectors pass unchanged).

    Args:
        dim: expected D (e.g. 784 for 28×28 gray images); None = take it from the first input.
            Once known, inputs of another size raise ValueError, so two sets compared through
            one extractor always live in the same space.
    """

    name = "raw"

    def __init__(self, dim: Optional[int] = None):
        super().__init__()
        self.dim = int(dim) if dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) → (B, D) float32; no clamping or rescaling."""
        if x.ndim < 2:
            raise ValueError(f"raw: expected a batch (N, ...), got shape {tuple(x.shape)}")
        f = x.reshape(x.shape[0], -1).float()
        if self.dim is None:
            self.dim = f.shape[1]
        elif f.shape[1] != self.dim:
            raise ValueError(f"raw: inputs have {f.shape[1]} values per sample, expected {self.dim}")
        return f

    def describe(self) -> str:
        return f"raw(d={self.dim})" if self.dim is not None else "raw"
