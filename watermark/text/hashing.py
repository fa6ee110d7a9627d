"""Keyed 64-bit integer hashing in torch int64 ops: the pseudo-randomness of the text watermarks.

Everything is vectorised tensor arithmetic, so a whole (B, V) grid of (context, token) values costs
a handful of elementwise ops and runs on any device.

    seeds = context_seeds(key_seed, ctx)     # ctx: (..., h) int64 token ids -> (...,) int64
    grid = token_hashes(seeds, V)            # (B,) -> (B, V) int64, one value per (context, token)
    one = pair_hashes(seeds, tokens)         # (M,), (M,) -> (M,) int64, the same values, pointwise
    r = to_unit(grid)                        # float64 in (0, 1), 53 random bits

The mixer is splitmix64's finaliser (Steele, Lea & Flood 2014; the constants of Vigna's
``splitmix64.c``), a bijection of 64-bit words with full avalanche. Unsigned 64-bit arithmetic is
emulated on int64: addition and multiplication wrap modulo 2**64 (two's complement; the bit pattern
equals the unsigned result), and the logical right shift is the arithmetic one masked to its low
``64 - k`` bits. ``tests/watermark/text/test_kgw.py`` checks the mixer against a pure-Python
reference of splitmix64.

Seeds. A context of h ids (c_1, ..., c_h) gets ``s_0 = mix(key_seed)``,
``s_j = mix(s_{j-1} + (c_j + 1) * C)``; token v of that context gets ``mix(s_h + (v + 1) * G)``
(the splitmix64 stream seeded at ``s_h``, G the golden-ratio increment). ``key_seed`` comes from
:meth:`watermark.SecretKey.seed`, so the values are a deterministic function of (key, context,
token) and nothing else: not of the batch, the device or the position.
"""
from __future__ import annotations

import torch

_M64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """The int64 with the bit pattern of the unsigned 64-bit constant ``c``."""
    c &= _M64
    return c - (1 << 64) if c >= 1 << 63 else c


#: splitmix64's increment (2**64 / golden ratio) and finaliser multipliers
GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)
#: the increment that folds context ids into a seed (an odd constant unrelated to GOLDEN)
CONTEXT_STEP = _signed(0xD6E8FEB86659FD93)
_UNIT = 2.0 ** -53


def shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift by ``k`` (1 ≤ k ≤ 63) of int64 ``x`` read as unsigned 64-bit words."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, elementwise on int64 (any shape); a bijection of 64-bit words."""
    x = (x ^ shr(x, 30)) * _MUL1
    x = (x ^ shr(x, 27)) * _MUL2
    return x ^ shr(x, 31)


def context_seeds(key_seed: int, context: torch.Tensor) -> torch.Tensor:
    """Seed of each context: ``context`` (..., h) int64 token ids -> (...,) int64.

    ``key_seed``: a 63-bit int from :meth:`SecretKey.seed`. A loop over the h columns only."""
    s = mix64(torch.full(context.shape[:-1], _signed(key_seed), dtype=torch.int64,
                         device=context.device))
    for j in range(context.shape[-1]):
        s = mix64(s + (context[..., j] + 1) * CONTEXT_STEP)
    return s


def token_hashes(seeds: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Hash of every token of every context: ``seeds`` (B,) int64 -> (B, vocab_size) int64."""
    v = torch.arange(1, vocab_size + 1, dtype=torch.int64, device=seeds.device) * GOLDEN
    return mix64(seeds[:, None] + v[None, :])


def pair_hashes(seeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The values of :func:`token_hashes` at given tokens only: (M,), (M,) -> (M,) int64."""
    return mix64(seeds + (tokens + 1) * GOLDEN)


def to_unit(h: torch.Tensor) -> torch.Tensor:
    """Map hashes to float64 uniforms in the open interval (0, 1): the top 53 bits, plus half a
    unit of the last place, so neither 0 nor 1 occurs (log r and log(1 - r) stay finite)."""
    return (shr(h, 11).double() + 0.5) * _UNIT
