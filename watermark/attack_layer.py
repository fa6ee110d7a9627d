"""A differentiable random-attack layer for training learned encoders and decoders.

    layer = AttackLayer(["jpeg", "blur", "noise", "crop"], max_chain=2, seed=0)
    x_att = layer(x_w)            # (N, C, H, W) -> (N, C, H, W); gradients flow back to x_w

Each call draws 1..max_chain distinct attacks from the configured list and, for each, a strength
uniformly from its range; the same draw applies to the whole batch. Per-image randomness (the
noise of `noise`) is drawn for the whole batch too: `layer(x, rows=r, batch_size=B)` attacks x as
rows r of a batch of B, drawing everything for the B images and keeping rows r, so each process of
a batch split across processes (DDP) gets exactly its rows of what the whole batch would get. All
attacks are the torch/kornia ops of `watermark.attacks` (JPEG through kornia's differentiable
codec), so the output is differentiable in the input end to end (pixels that clamping saturates
pass no gradient). With `keep_size` (default), crops and downscales are resized back to (H, W) so a
fixed-size decoder can read them. The layer is active in train and eval mode alike; include
"identity" to leave some batches clean. `last` records the most recent draw as [(name, strength),
...].
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import ATTACKS, PER_IMAGE_RANDOM

# strength ranges (uniform) of the attacks the layer knows; None = no strength
DEFAULT_RANGES: dict[str, tuple[float, float] | None] = {
    "identity": None,
    "jpeg": (30.0, 90.0),          # quality
    "crop": (0.5, 1.0),            # kept fraction of the area
    "resize": (0.25, 1.0),         # scale
    "blur": (0.5, 2.0),            # sigma, pixels
    "noise": (0.0, 0.05),          # sigma
    "brightness": (-0.2, 0.2),     # additive shift
    "contrast": (0.7, 1.3),        # factor
    "rotation": (-15.0, 15.0),     # degrees
}


class AttackLayer(nn.Module):
    """Chains 1..max_chain random differentiable attacks per batch.

    Args:
        attacks: names (ranges from DEFAULT_RANGES) or a mapping name -> (low, high) / None.
        max_chain: largest number of attacks chained in one call (each call draws 1..max_chain).
        keep_size: resize the result back to the input's (H, W).
        seed: seed of the layer's own torch.Generator (None: nondeterministic).
    """

    def __init__(self, attacks: Iterable[str] | Mapping[str, tuple[float, float] | None] | None = None,
                 max_chain: int = 2, keep_size: bool = True, seed: int | None = None):
        super().__init__()
        if attacks is None:
            attacks = DEFAULT_RANGES
        if "jpeg_pil" in attacks:
            raise ValueError("jpeg_pil is not differentiable; use 'jpeg'")
        if not isinstance(attacks, Mapping):
            unknown = [a for a in attacks if a not in DEFAULT_RANGES]
            if unknown:
                raise KeyError(f"no default range for {unknown}; pass a mapping name -> (low, high)")
            attacks = {a: DEFAULT_RANGES[a] for a in attacks}
        for name in attacks:
            if name != "identity" and name not in ATTACKS:
                raise KeyError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
        if not attacks or max_chain < 1:
            raise ValueError("need at least one attack and max_chain >= 1")
        self.ranges = dict(attacks)
        self.max_chain, self.keep_size = min(int(max_chain), len(self.ranges)), bool(keep_size)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self.last: list[tuple[str, float | None]] = []

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def forward(self, x: torch.Tensor, rows: slice | None = None,
                batch_size: int | None = None) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> attacked batch, (N, C, H, W) with keep_size.

        rows, batch_size: x is rows `rows` (N of them) of a batch of `batch_size` images; the draws
        are the whole batch's (default: x is the whole batch). The generator advances the same."""
        if (rows is None) != (batch_size is None):
            raise ValueError("pass rows and batch_size together")
        split = {} if rows is None else {"rows": rows, "batch_size": int(batch_size)}
        h, w = x.shape[-2:]
        names = list(self.ranges)
        n_links = int(torch.randint(1, self.max_chain + 1, (), generator=self.generator))
        picks = torch.randperm(len(names), generator=self.generator)[:n_links].tolist()
        self.last = []
        for i in picks:
            name, rng = names[i], self.ranges[names[i]]
            strength = None if rng is None else self._uniform(*rng)
            self.last.append((name, strength))
            if name != "identity":
                extra = split if name in PER_IMAGE_RANDOM else {}
                x = ATTACKS[name](x, strength, generator=self.generator, **extra)
        if self.keep_size and tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        return x

    def extra_repr(self) -> str:
        return f"attacks={list(self.ranges)}, max_chain={self.max_chain}, keep_size={self.keep_size}"
