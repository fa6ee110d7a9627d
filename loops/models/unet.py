"""A small UNet denoiser ε_θ(x_t, t, y) for DDPM (Ho et al. 2020 layout, GroupNorm residual blocks).

    net = UNet(in_channels=1, base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
               attn_resolution=7, num_classes=10)
    eps = net(x_t, t, y)          # x_t (N, C, H, W), t (N,) timesteps, y (N,) int64 → (N, C, H, W)

Layout: ``conv_in`` → per level ``num_res_blocks`` residual blocks (width ``base_channels ×
channel_mult[i]``), a stride-2 conv between levels → middle (res, attention, res) → mirrored up path
with skip concatenation and nearest upsampling to the skip's size (odd sizes such as 7 → 4 → 7 work)
→ GroupNorm, SiLU, ``conv_out``. Self-attention runs at every level whose feature map has
max(H, W) ≤ ``attn_resolution`` (0 = only none, the middle block keeps its attention when > 0).

Conditioning: the timestep enters as a sinusoidal embedding (width ``base_channels``) through an MLP
to width 4·``base_channels``; with ``num_classes`` = K > 0 a learned class embedding of K + 1 rows
is added, row K being the "null" class used for classifier-free guidance (label dropout in training,
the unconditional branch in sampling). With K = 0 the network is unconditional and ignores ``y``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps t (N,) (int or float) → (N, dim) float32:
    [cos(t·f_0..f_{h−1}), sin(t·f_0..f_{h−1})], f_i = max_period^(−i/h), h = dim // 2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device,
                                                            dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the most groups ≤ ``groups`` that divide ``channels`` and keep ≥ 4 channels
    per group: a 1-channel group is an instance norm, which erases each channel's spatial mean (the
    image brightness an ε-predictor must reproduce)."""
    g = max(d for d in range(1, groups + 1)
            if channels % d == 0 and channels // d >= min(4, channels))
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """GN → SiLU → conv3 → (+ embedding shift) → GN → SiLU → dropout → conv3, plus a (1×1) skip.
    x (N, C_in, H, W), emb (N, E) → (N, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions with a residual; (N, C, H, W) → same."""

    def __init__(self, channels: int, groups: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))          # (N, heads, HW, d)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """ε-prediction UNet. See the module docstring for the layout.

    Args:
        in_channels: image channels C (input and output).
        base_channels: width of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: width multipliers, one per resolution level (len L; L − 1 downsamplings).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolution: self-attention at levels with max(H, W) ≤ this and in the middle block;
            0 disables attention everywhere.
        num_classes: K > 0 for a class-conditional net (K + 1 embedding rows, row K = null class).
        dropout: dropout inside residual blocks.
        groups: GroupNorm groups at most (fewer where a group would hold < 4 channels).
        image_size: (H, W) or H of the inputs, used to decide where attention goes.
        patch_size: p > 1 folds p×p pixel patches into channels first (``pixel_unshuffle``, H and W
            divisible by p) and unfolds them at the end: p² fewer positions, for cheap CPU runs.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_resolution: int = 7, num_classes: int = 0, dropout: float = 0.0,
                 groups: int = 32, image_size: int | Sequence[int] = 28, patch_size: int = 1):
        super().__init__()
        size = max(image_size) if isinstance(image_size, Sequence) else int(image_size)
        ch, emb_dim, p = int(base_channels), 4 * int(base_channels), int(patch_size)
        self.base_channels, self.num_classes, self.patch_size = ch, int(num_classes), p
        in_channels, size = in_channels * p * p, -(-size // p)
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        def attn(c: int, s: int) -> nn.Module:
            return Attention(c, groups) if 0 < s <= attn_resolution else nn.Identity()

        self.down, skips, c, sizes = nn.ModuleList(), [ch], ch, []
        for i, mult in enumerate(channel_mult):
            sizes.append(size)
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([ResBlock(c, ch * mult, emb_dim, groups, dropout),
                                                attn(ch * mult, size)]))
                c = ch * mult
                skips.append(c)
            if i < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                size = (size + 1) // 2
        self.mid1 = ResBlock(c, c, emb_dim, groups, dropout)
        self.mid_attn = Attention(c, groups) if attn_resolution > 0 else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, groups, dropout)
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(c + skips.pop(), ch * mult, emb_dim, groups,
                                                       dropout), attn(ch * mult, sizes[i])]))
                c = ch * mult
            if i > 0:
                self.up.append(nn.Conv2d(c, c, 3, padding=1))          # after a 2× upsampling
        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)

    def embed(self, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """Time (N,) and class (N,) int64 (K = null) → (N, 4·base_channels)."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.class_emb(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (N, C, H, W), t (N,) timesteps, y (N,) int64 in [0, K] or None (= null class) →
        predicted noise (N, C, H, W)."""
        emb = self.embed(t, y)
        h = self.conv_in(F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](h, emb))
            else:
                h = layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, hs.pop()], dim=1), emb))
            else:
                h = layer(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out
