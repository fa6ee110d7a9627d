"""Autophagy-aware spread spectrum: embed only the part of the mark an image is missing.

A self-consuming loop marks the samples of a model that was trained on marked data. Those samples
already carry part of the mark (the model inherited it), and every embedder that spends its full
budget on every call stacks a new layer on top: artifact energy then grows by about one layer per
generation. :class:`IdempotentSpreadSpectrum` is :class:`~watermark.SpreadSpectrum` (same key,
carriers, decoder and detector; a detector of one detects the other) with an embedding that is a
*projection* onto the set of marked images:

    d_k = tau - s_k T_k(x)                       the part of bit k the image is missing
    z_k = s_k d_k / g_k   if tol * tau < d_k <= reach * tau
    z_k = 0               otherwise              (present already, or the host opposes it too much)

with s_k = 2 m_k - 1 the bit's sign, T_k the decoder's whitened carrier correlation, g_k the
pipeline gain, and the target margin tau = ``margin`` * a, where a = ``alpha`` / sqrt(sum_k q_k /
g_k^2) is the equal amplitude that additive embedding gives at strength ``alpha`` (so on a host with
no interference, margin 1 costs exactly ``alpha`` RMS, i.e. PSNR -20 log10 alpha). Clamping to
[0, 1] can leave a fixed bit short; ``refine_steps`` passes top it up to tau, never past it.

Idempotence. After one call every fixed bit sits at s_k T_k >= (1 - tol) tau and every bit left
alone is unchanged, so a second call finds nothing missing and returns its input:
E(E(x)) = E(x). Exact when H = W = ``work_size`` (the carriers stay orthogonal, T is linear in the
image) and no pixel clamps; with resampling (photos) or clamping the top-up passes leave bits short by
less than ``tol`` * tau, which the second call ignores. The same holds for a partly marked image:
E(x + beta L) = x + L for the one-layer residual L of a clean host x and any beta in [0, 1], and
E(x + beta L) = x + beta L for beta >= 1 (tests/watermark/test_aware.py checks both against these
closed forms). That is the property a loop needs: what the model inherited is topped up, not
stacked. With ``excess="remove"`` a bit past the target (within ``reach``) is brought back to it as
well, so every marked image sits on the target: E(x + beta L) = x + L for every beta in [0, reach].

Cost. Unlike the budgeted informed embedding of SpreadSpectrum, the residual's energy is not capped
per image: a busy host pays more (up to ``reach``^2 times the budget for a host opposing every bit).
On 28 x 28 MNIST the host's projections are comparable to a (median |s T| / a = 0.63), so PSNR is
a little below -20 log10 alpha; bits opposed by more than (reach - 1) tau are given up (they decode
wrong), which is cheaper than fighting the host and keeps the rule idempotent (a budget shared
between bits would not be: a second call would spend it again on the bits the first left).
"""
from __future__ import annotations

import math
import os

import torch

from .base import check_message
from .keys import SecretKey
from .spread_spectrum import SpreadSpectrum


class IdempotentSpreadSpectrum(SpreadSpectrum):
    """Spread spectrum whose embedding tops each bit up to a fixed target margin (module docstring).

    Args:
        key, num_bits, alpha, work_size, band, whiten, refine_steps: as for SpreadSpectrum
            (``alpha`` sets the amplitude unit a; the embedding is always this module's rule).
        margin: target margin tau in units of a (> 0).
        reach: the largest missing part of a bit that is filled, in units of tau (>= 1); a bit the
            host opposes more is left alone.
        tol: a bit missing at most ``tol`` * tau counts as present (0 <= tol < 1).
        excess: "keep" (a bit past the target is left as it is) or "remove" (it is brought back
            to the target too, within ``reach``: every marked image then sits at the target).
    """

    name = "spread_spectrum_aware"

    def __init__(self, key: SecretKey | str | os.PathLike, num_bits: int = 32, alpha: float = 0.01,
                 work_size: int = 64, band: tuple[float, float] = (0.5, 1.0), whiten: float = 2.0,
                 refine_steps: int = 10, margin: float = 1.0, reach: float = 6.0,
                 tol: float = 0.02, excess: str = "keep"):
        super().__init__(key, num_bits=num_bits, alpha=alpha, work_size=work_size, band=band,
                         whiten=whiten, embedding="informed", refine_steps=refine_steps)
        if not margin > 0:
            raise ValueError(f"margin must be > 0 (the target in units of the additive "
                             f"amplitude), got {margin}")
        if not reach >= 1:
            raise ValueError(f"reach must be >= 1 (units of the target margin), got {reach}")
        if not 0 <= tol < 1:
            raise ValueError(f"tol must be in [0, 1), got {tol}")
        if excess not in ("keep", "remove"):
            raise ValueError(f"excess must be 'keep' or 'remove', got {excess!r}")
        self.margin, self.reach, self.tol = float(margin), float(reach), float(tol)
        self.excess = excess

    def amplitude(self, height: int, width: int, device: torch.device | str = "cpu") -> float:
        """a: the equal decoded amplitude of additive embedding at ``alpha`` for (height, width)
        images, in units of T (the target margin is ``margin`` * a)."""
        g, q = self._gains(height, width, torch.device(device))
        return self.alpha / math.sqrt(float((q / g.square()).sum()))

    def embed(self, x: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """Top x (N, C, H, W) in [0, 1] up to the target margin for msg ((N, K) or (K,) {0, 1});
        min(H, W) >= work_size. An image that already carries the mark is returned unchanged."""
        n, _, h, w = self._embeddable(x)
        t = self._tables(x.device)
        g = self._gains(h, w, x.device)[0].to(x.dtype)
        s = check_message(msg, n, self.num_bits).to(x.device, x.dtype) * 2 - 1
        tau = self.margin * self.amplitude(h, w, x.device)
        d = tau - s * self._stats(self._coefficients(x), t)
        kept = self._within_reach(d, tau)             # bits not given up to the host
        fixed = kept & self._off_target(d, tau)
        if not bool(fixed.any()):
            return x.clamp(0, 1)
        z = torch.where(fixed, s * d / g, torch.zeros_like(d))
        xw = (x + self._residual(z, t, (h, w))).clamp(0, 1)
        for _ in range(self.refine_steps):    # top up kept bits that clamping (or a neighbour's
            short = tau - s * self._stats(self._coefficients(xw), t)   # clamped residual) left short
            kept = kept | self._within_reach(short, tau)   # a given-up bit moved within reach: a
            short = torch.where(kept & self._off_target(short, tau),   # second call would fill it,
                                short, torch.zeros_like(short))        # so fill it now
            if not bool(short.any()):
                break
            z = z + s * short / g
            xw = (x + self._residual(z, t, (h, w))).clamp(0, 1)
        return xw

    def _within_reach(self, d: torch.Tensor, tau: float) -> torch.Tensor:
        """Bits whose distance to the target (missing d > 0, excess d < 0) is worth closing."""
        return (d <= self.reach * tau) & (d >= -self.reach * tau if self.excess == "remove"
                                          else torch.ones_like(d, dtype=torch.bool))

    def _off_target(self, d: torch.Tensor, tau: float) -> torch.Tensor:
        """Bits that are not at the target within ``tol`` (below it only, unless excess is
        removed)."""
        return (d.abs() if self.excess == "remove" else d) > self.tol * tau

    def __repr__(self) -> str:
        return (f"IdempotentSpreadSpectrum(key={self.key}, num_bits={self.num_bits}, "
                f"alpha={self.alpha}, work_size={self.work_size}, band={self.band}, "
                f"margin={self.margin}, reach={self.reach}, tol={self.tol}, excess={self.excess!r})")
