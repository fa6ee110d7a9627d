"""Detection: decode -> matched bits -> one-sided p-value -> flag at a false-positive rate alpha.

    det = Detector(wm, key.message(32), alpha=0.01)
    res = det(x)                  # DetectionResult: p_value, matched_bits, bit_accuracy, flagged (N,)
    cal = det.calibrate(clean)    # Calibration: measured bias and FPR; later p-values are calibrated

Analytic test. On an unmarked image a decoder is assumed to output i.i.d. fair bits, so the number k
of the K bits that match the message is Binomial(K, 1/2) and p = P(Bin(K, 1/2) >= k) =
`scipy.stats.binom.sf(k - 1, K, 0.5)` (= binomtest(k, K, 0.5, alternative="greater")). Matched bits
needed at alpha = 1e-6: 30 of 32, 41 of 48, 74 of 100, 167 of 256.

Calibrated test (after `calibrate(clean)`). Real decoders are biased and correlated, and the analytic
FPR can be far off. From n clean images we measure each bit's match rate q_j (Laplace-smoothed) and the
matched-bit counts k_1..k_n, and use

    p(k) = max(p_binomial(k), p_poisson_binomial(k; q), p_conformal(k)),
    p_conformal(k) = (1 + #{i: k_i >= k}) / (n + 1) for k <= max_i k_i, and 0 above.

Each term is non-increasing in k, so flagging (p <= alpha) is a threshold on k. The maximum of
p-values is a valid p-value as soon as one of them is valid, and:
  * the Poisson-binomial tail (independent bits with the measured biases, computed exactly by
    convolution) is valid when bits are independent given their biases, at any alpha;
  * the conformal term is valid for clean images exchangeable with the calibration set, with no
    model at all, for every alpha >= 1 / (n + 1) (above the largest clean count it is the conformal
    p-value's floor, 1 / (n + 1), so it can be set to 0 there without changing any decision at such
    alpha). Below 1 / (n + 1) the data cannot certify alpha: the model term extrapolates the tail,
    and no count that a clean calibration image reached is ever flagged;
  * the binomial term keeps the test from ever being more lenient than the analytic one.
So biased bits are corrected at any alpha, and correlated bits (whose tail a per-bit model cannot see)
are corrected wherever the calibration set is large enough to see alpha.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
from scipy.stats import binom

from .base import Watermarker, check_images
from .keys import SecretKey


def binomial_p_value(matched, num_bits: int) -> np.ndarray:
    """One-sided binomial p-values P(Bin(K, 1/2) >= k), vectorised over `matched` (any shape)."""
    k = np.asarray(torch.as_tensor(matched).cpu(), dtype=np.int64)
    return binom.sf(k - 1, num_bits, 0.5)


def matched_bits_threshold(num_bits: int, alpha: float) -> int:
    """Smallest k with P(Bin(K, 1/2) >= k) <= alpha (K + 1 if no k qualifies)."""
    p = binomial_p_value(np.arange(num_bits + 1), num_bits)
    hits = np.nonzero(p <= alpha)[0]
    return int(hits[0]) if hits.size else num_bits + 1


def poisson_binomial_sf(rates) -> np.ndarray:
    """sf[k] = P(sum_j Bernoulli(q_j) >= k) for k = 0..K+1, exact (float64 convolution)."""
    pmf = np.ones(1)
    for q in np.asarray(rates, dtype=np.float64):
        pmf = np.concatenate([pmf * (1 - q), [0.0]]) + np.concatenate([[0.0], pmf * q])
    return np.concatenate([np.cumsum(pmf[::-1])[::-1], [0.0]]).clip(0.0, 1.0)


@dataclass
class DetectionResult:
    """Per-image detection outcome; tensors are (N,) on the input's device."""
    p_value: torch.Tensor        # float64, one-sided (calibrated once the detector is calibrated)
    matched_bits: torch.Tensor   # int64, bits equal to the message
    bit_accuracy: torch.Tensor   # float32, matched_bits / K
    flagged: torch.Tensor        # bool, p_value <= alpha
    threshold: int               # matched bits needed to be flagged
    matches: Optional[torch.Tensor] = None   # bool (N, K): decoded bit j equals message bit j


@dataclass
class Calibration:
    """What `Detector.calibrate` measured on n clean images (K = number of bits)."""
    n_images: int
    match_rate: torch.Tensor       # (K,) P(decoded bit = message bit), Laplace-smoothed
    bias: torch.Tensor             # (K,) match_rate - 1/2
    matched_hist: torch.Tensor     # (K+1,) clean images with k matched bits
    analytic_threshold: int        # binomial threshold at alpha
    empirical_fpr_analytic: float  # fraction of the clean images flagged by the analytic test
    model_threshold: int           # Poisson-binomial threshold at alpha
    corrected_threshold: int       # threshold of the calibrated p-value
    empirical_fpr_corrected: float  # fraction of the clean images flagged by the calibrated test
    dispersion: float              # var(k) / Poisson-binomial variance: > 1 means correlated bits


class Detector:
    """Flags images carrying `message` at false-positive rate `alpha`.

    Args:
        watermarker: any `Watermarker`; its `decode` gives the bit logits.
        message: (K,) {0, 1} tensor, or a key (SecretKey / str) whose `message(K)` is used.
        alpha: target false-positive rate in (0, 1).
        batch_size: images decoded per call.
    """

    def __init__(self, watermarker: Watermarker, message, alpha: float = 0.01, batch_size: int = 256):
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        k = watermarker.num_bits
        if isinstance(message, (SecretKey, str, os.PathLike)):
            message = SecretKey.coerce(message).message(k)
        message = torch.as_tensor(message).flatten().float()
        if message.numel() != k or not ((message == 0) | (message == 1)).all():
            raise ValueError(f"message must hold {k} bits in {{0, 1}}, got shape {tuple(message.shape)}")
        self.watermarker, self.message, self.alpha = watermarker, message, float(alpha)
        self.num_bits, self.batch_size = k, int(batch_size)
        self.calibration: Calibration | None = None
        self._p_table = binomial_p_value(np.arange(k + 1), k)     # p-value by matched count

    @property
    def threshold(self) -> int:
        """Matched bits needed to be flagged under the current (analytic or calibrated) p-values."""
        hits = np.nonzero(self._p_table <= self.alpha)[0]
        return int(hits[0]) if hits.size else self.num_bits + 1

    def matches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) bool: decoded bit equals the message bit; decoded in chunks of batch_size."""
        check_images(x)
        out = []
        for chunk in x.split(self.batch_size):
            with torch.no_grad():
                bits = self.watermarker.decode(chunk) > 0
            out.append(bits == self.message.to(chunk.device).bool())
        return torch.cat(out)

    def p_values(self, matched_bits: torch.Tensor) -> torch.Tensor:
        """p-values (float64, same shape and device) for matched-bit counts."""
        k = torch.as_tensor(matched_bits)
        return torch.from_numpy(self._p_table[k.cpu().numpy()]).to(k.device)

    def detect(self, x: torch.Tensor) -> DetectionResult:
        """Decode x (N, C, H, W), count matched bits, and test each image."""
        m = self.matches(x)
        k = m.sum(1)
        p = self.p_values(k)
        return DetectionResult(p_value=p, matched_bits=k, bit_accuracy=k.float() / self.num_bits,
                               flagged=p <= self.alpha, threshold=self.threshold, matches=m)

    __call__ = detect

    def calibrate(self, clean: torch.Tensor | Iterable[torch.Tensor]) -> Calibration:
        """Measure bias and FPR on clean images (N, C, H, W), or an iterable of such batches (for
        sets too large for memory); from then on p-values and flags are the calibrated ones."""
        batches = [clean] if isinstance(clean, torch.Tensor) else clean
        parts = [self.matches(b).cpu() for b in batches]
        if not parts:
            raise ValueError("calibrate needs at least one clean image")
        m = torch.cat(parts)
        n, kbits = m.shape
        counts = m.sum(1).numpy()
        hist = np.bincount(counts, minlength=kbits + 1)
        rate = (m.sum(0).double().numpy() + 1) / (n + 2)
        ks = np.arange(kbits + 1)
        p_bin = binomial_p_value(ks, kbits)
        p_pb = poisson_binomial_sf(rate)[: kbits + 1]
        at_least = np.cumsum(hist[::-1])[::-1]                     # #{i: k_i >= k}
        p_conf = np.where(ks <= counts.max(), (1 + at_least) / (n + 1), 0.0)
        self._p_table = np.maximum.reduce([p_bin, p_pb, p_conf])
        analytic = matched_bits_threshold(kbits, self.alpha)
        model = int(np.argmax(np.append(np.maximum(p_bin, p_pb), 0.0) <= self.alpha))
        corrected = self.threshold
        pb_var = float((rate * (1 - rate)).sum())
        self.calibration = Calibration(
            n_images=n, match_rate=torch.from_numpy(rate), bias=torch.from_numpy(rate - 0.5),
            matched_hist=torch.from_numpy(hist), analytic_threshold=analytic,
            empirical_fpr_analytic=float((counts >= analytic).mean()), model_threshold=model,
            corrected_threshold=corrected, empirical_fpr_corrected=float((counts >= corrected).mean()),
            dispersion=float(counts.var() / pb_var) if pb_var > 0 else float("nan"))
        return self.calibration

    def reset_calibration(self) -> None:
        """Back to the analytic binomial test."""
        self.calibration = None
        self._p_table = binomial_p_value(np.arange(self.num_bits + 1), self.num_bits)

    def __repr__(self) -> str:
        state = "calibrated" if self.calibration else "analytic"
        return f"Detector({self.watermarker!r}, alpha={self.alpha}, {state}, threshold={self.threshold})"
