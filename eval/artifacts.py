"""Artifact growth: how much of a watermark a self-consuming loop's *unmarked* samples carry.

    probe = WatermarkProbe(lambda x: wm.embed(x, msg), real_probe)   # once per run
    meter = ArtifactMeter(probe, real_reference, detector, alpha=0.01)
    row.update(meter(S_t))                                           # per generation, S_t unmarked
    rows = add_growth(rows)                                          # <col>_growth columns

Images are (N, C, H, W) float in [0, 1]; probe, reference and samples share (C, H, W).

**Inheritance** (:func:`inheritance`): decode S_t with the run's detector (anything with
``detect(x)`` returning ``bit_accuracy``, ``p_value``, ``flagged``, all (N,), e.g. a calibrated
``watermark.Detector``): mean bit accuracy (matched bits / K), detection rate (fraction with
p-value <= alpha) and the median log10 p-value — what the model reproduces of the message itself.

**Artifact energy.** :class:`WatermarkProbe` marks real probe images P (n, C, H, W) once and keeps
the mean residual r̄ = mean_i (embed(P)_i − P_i) (C, H, W). With m_ref the mean of the real
reference set (N_ref images) and z(x) = <x − m_ref, r̄> / <r̄, r̄> the per-image projection,

    artifact_energy(S) = mean_{x in S} z(x) = <mean(S) − m_ref, r̄> / <r̄, r̄>

in units of one watermark layer: 0 for data whose mean is the real mean, 1 when the mean of S sits
exactly one mean residual from it along r̄, k for k layers (linear). Its standard error is the
two-sample one, se² = var_S(z)/N + var_ref(z)/N_ref (both with ddof = 1: the reference mean is an
estimate too), and ``artifact_energy_z`` = energy / se; |z| below ~3 is noise.

**Band energy ratio.** Spectra are the orthonormal 2-D DCT-II of each channel at the image's own
size, power averaged over channels (gray and RGB in the same units; a mark in chroma counts too).
The DCT is real and orthonormal (Parseval: per-frequency powers add up to the pixel energy), has one
coefficient per frequency (no conjugate pairs) and no wrap-around jump at the borders that an FFT
would smear over all frequencies. The probe's mean residual power spectrum is
Π(f) = mean_i mean_c DCT(embed(P)_i − P_i)_c(f)² (residuals, no mean removed: the residual *is* the
signal), and the band B is the smallest set of frequencies holding >= ``band_fraction`` (default
0.5) of Σ_f Π(f): frequencies sorted by Π descending (ties in row-major order), cut at the first
prefix that reaches the fraction. A pure single-frequency residual gives B = {that frequency}. Then

    band_energy_ratio(S) = mean_{x in S} E_B(x) / ((N_ref + 1)/(N_ref − 1) · mean_{y in ref} E_B(y))
    E_B(x) = mean_c Σ_{f in B} DCT(x − m_ref)_c(f)²,

i.e. mean removal uses the *real reference* mean for both (not S's own mean, which would discard a
watermark pattern shared by all samples: that pattern is exactly what is measured). The factor
(N_ref + 1)/(N_ref − 1) makes the denominator the expected E_B of a *fresh* real image (unbiased:
E‖x − m_ref‖² = (1 + 1/N_ref) tr Σ, while the reference's own deviations average
(1 − 1/N_ref) tr Σ), so held-out real data scores 1 on average, the reference set itself
(N_ref − 1)/(N_ref + 1), and > 1 means excess energy in the watermark's band.
``band_energy_ratio_se`` is the delta-method standard error of the ratio of the two means. Any
change of S_t's variance (collapse, blur) moves the ratio too: read it next to precision/recall.

The two statistics see different things. The projection is matched to a *fixed* pattern (a
key-seeded mark with one message is largely the same residual on every image) and averages the
host away; the band ratio also sees *incoherent* artifacts (phase varying per image, like a GAN's
cross-hatching) that the projection misses, but only once they are comparable to the host's own
power in the band. Measured on 28 x 28 MNIST (SpreadSpectrum, 32 bits, informed embedding, 1,000
probe / 2,000 reference / 1,000 test digits): one layer at its default strength 0.01 gives
artifact_energy 1.01-1.02 ± 0.09 (z = 11) but band_energy_ratio 0.96-0.98 ± 0.05 (two keys;
held-out real digits: −0.05 ± 0.09 and 1.06 ± 0.05): the mark holds ~2 % of the digits' power in
its band, and informed embedding *cancels* host energy there (cross term −2× the mark's power).
At strength 0.04 the ratio is 1.18-1.28 ± 0.05.

**Growth** (:func:`add_growth`, in :mod:`eval.growth`, re-exported here): ``<col>_growth`` =
value at t ÷ value at a baseline generation; see its docstring for why the baseline is the first
generation trained on marked data.

Cost: one DCT per image (two matrix products, O(C·H·W·(H + W))) and one dot product; batched, no
Python loops over samples. ``eval`` imports nothing from ``watermark``: the probe takes an ``embed``
callable and the meter a duck-typed detector.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from madcore.columns import Column, names
from madcore.dct import dct2
from eval.radioactivity import sign_flip_p_value
from eval.growth import GROWTH_COLUMNS, add_growth, growth_baseline  # noqa: F401  (re-exported)

__all__ = ["WatermarkProbe", "ArtifactMeter", "inheritance", "add_growth", "growth_baseline",
           "stacked_layers", "COLUMNS", "GROWTH_COLUMNS"]

_DECODED = "S_t (unmarked samples), decoded with the run's calibrated detector"
#: shared with the text run's inheritance columns (madmark/text_run.py)
_TESTED = ("S_t (unmarked samples), tested with the run's key (images: decoded by the calibrated "
           "detector; text: each document's de-duplicated (context, token) windows scored)")
_ENERGY = "S_t (unmarked samples) vs the reference split, along the probe's mean residual r̄"
_BAND = "S_t (unmarked samples) vs the reference split, in the watermark's DCT band B"
_PROBE = "the run's watermark probe (real images marked once)"
#: the columns :class:`ArtifactMeter` returns, in order
COLUMNS = (
    Column("inherit_bit_acc", "mean bit accuracy of the decoded message (matched bits ÷ K; 0.5 "
           "= chance)", "fraction in [0, 1]", _DECODED),
    Column("inherit_detect_rate", "fraction of samples with p-value ≤ wm_alpha", "fraction in "
           "[0, 1]", _TESTED),
    Column("inherit_log10p_median", "median log10 p-value (p clamped at 1e-300)", "log10 of a "
           "p-value (≤ 0)", _DECODED),
    Column("radio_log10p", "radioactivity of generation t's model: log10 p-value of one test "
           "pooled over all its unmarked samples (images: the exact message sign-flip test on the "
           "matched bits, eval.radioactivity, floor K·log10(1/2), e.g. −9.6 for 32 bits; text: "
           "the watermark's test on S_t's windows de-duplicated across the set, Sander et al. "
           "2024)", "log10 of a p-value (≤ 0)", _TESTED),
    Column("radio_m", "samples M the radioactivity test decoded (all of S_t)", "count",
           _DECODED),
    Column("artifact_energy", "⟨mean(S_t) − m_ref, r̄⟩ ÷ ⟨r̄, r̄⟩: how far S_t's mean sits along "
           "the mark's pattern", "watermark layers", _ENERGY),
    Column("artifact_energy_se", "two-sample standard error of artifact_energy", "watermark "
           "layers", _ENERGY),
    Column("artifact_energy_z", "artifact_energy ÷ artifact_energy_se (|z| < ~3 is noise)",
           "standard errors", _ENERGY),
    Column("band_energy_ratio", "mean band energy of S_t ÷ that expected of a fresh real image "
           "(> 1: excess energy in the watermark's band)", "ratio (1 = real data)", _BAND),
    Column("band_energy_ratio_se", "delta-method standard error of band_energy_ratio", "ratio",
           _BAND),
    Column("artifact_n_probe", "real probe images marked to measure r̄ and B", "count", _PROBE),
    Column("artifact_band_fraction", "share of the probe's residual power the band B holds",
           "fraction in (0, 1]", _PROBE),
)
_NAMES = names(COLUMNS)

_P_FLOOR = 1e-300  # p-values are clamped here before log10 (smallest normal float64 ~ 2e-308)
_MAX_ELEMENTS = 2 ** 24  # pixel values per batch (a float64 batch stays under 128 MiB)


def _step(batch_size: int, shape: tuple) -> int:
    """Images per batch: batch_size, fewer for large images (at most _MAX_ELEMENTS values)."""
    return max(1, min(int(batch_size), _MAX_ELEMENTS // math.prod(shape)))


def _images(x: torch.Tensor, name: str, shape: Optional[tuple] = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating (N, C, H, W) tensor, got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} has images of shape {tuple(x.shape[1:])}, "
                         f"the probe {tuple(shape)}")
    return x


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class WatermarkProbe:
    """The watermark's mean residual pattern and frequency band, measured once per run.

    Args:
        embed: ``embed(x) -> x_w``, marks a batch (B, C, H, W) with the run's message (same shape).
        probe: real images (n_probe, C, H, W) in [0, 1]; use images the reference set does not hold.
        band_fraction: share of the mean residual power the band must hold, in (0, 1].
        batch_size: images passed to ``embed`` per call (fewer for large images: every batch
            holds at most 2**24 pixel values, as in :meth:`measure`).

    Attributes:
        residual_mean: r̄ (C, H, W) float64.
        residual_power: Π (H, W) float64, mean DCT power of the residuals (mean over channels).
        band: (H, W) bool, the band B; ``band_size`` its number of frequencies.
        n_probe, band_fraction, shape (C, H, W).
    """

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], probe: torch.Tensor, *,
                 band_fraction: float = 0.5, batch_size: int = 256):
        probe = _images(probe, "probe")
        if not 0 < band_fraction <= 1:
            raise ValueError(f"band_fraction must lie in (0, 1], got {band_fraction}")
        self.shape, self.n_probe, self.band_fraction = tuple(probe.shape[1:]), probe.shape[0], \
            float(band_fraction)
        c, h, w = self.shape
        res_sum = torch.zeros(c, h, w, dtype=torch.float64, device=probe.device)
        power = torch.zeros(h, w, dtype=torch.float64, device=probe.device)
        with torch.no_grad():
            for xb in probe.split(_step(batch_size, self.shape)):
                xw = embed(xb)
                if xw.shape != xb.shape:
                    raise ValueError(f"embed returned {tuple(xw.shape)} for {tuple(xb.shape)}")
                res = xw.to(torch.float64) - xb.to(torch.float64)
                res_sum += res.sum(0)
                power += dct2(res).square().mean(1).sum(0)
        self.residual_mean = res_sum / self.n_probe
        self.residual_power = power / self.n_probe
        self.norm_sq = float(self.residual_mean.square().sum())
        if self.norm_sq == 0 or float(power.sum()) == 0:
            raise ValueError("embed left the probe images unchanged on average: no residual")
        flat = self.residual_power.flatten()
        order = torch.argsort(flat, descending=True, stable=True)
        cum = flat[order].cumsum(0)
        n_in = int(torch.searchsorted(cum, self.band_fraction * cum[-1])) + 1
        band = torch.zeros_like(flat, dtype=torch.bool)
        band[order[:min(n_in, flat.numel())]] = True
        self.band = band.view(h, w)
        self.band_size = int(self.band.sum())

    def measure(self, x: torch.Tensor, center: torch.Tensor, batch_size: int = 256,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image projections z (N,) = <x − center, r̄>/<r̄, r̄> and band energies E_B (N,), both
        float64, for images x (N, C, H, W) about ``center`` (C, H, W)."""
        x = _images(x, "x", self.shape)
        r = self.residual_mean.to(x.device)
        center = center.to(x.device, torch.float64)
        band = self.band.to(x.device)
        z, e = [], []
        with torch.no_grad():
            for xb in x.split(_step(batch_size, self.shape)):
                d = xb.to(torch.float64) - center
                z.append(d.flatten(1) @ r.flatten() / self.norm_sq)
                spec = dct2(d.to(_work_dtype(xb))).square().mean(1)           # (B, H, W)
                e.append(spec[:, band].to(torch.float64).sum(1))
        return torch.cat(z), torch.cat(e)

    def __repr__(self) -> str:
        return (f"WatermarkProbe(n_probe={self.n_probe}, shape={self.shape}, "
                f"band_fraction={self.band_fraction}, band_size={self.band_size})")


def inheritance(result: Any, alpha: Optional[float] = None) -> dict[str, float]:
    """Inheritance columns from a detection result on N images.

    ``result`` has ``bit_accuracy`` (N,) (matched bits / K), ``p_value`` (N,) and ``flagged`` (N,)
    (e.g. ``watermark.DetectionResult``). Detection rate = fraction with p_value <= alpha, or the
    fraction ``flagged`` when alpha is None. The median is numpy's (mean of the two middle values
    for even N); p-values are clamped at 1e-300 before log10.
    """
    acc = torch.as_tensor(result.bit_accuracy).to(torch.float64)
    p = torch.as_tensor(result.p_value).to(torch.float64)
    hit = torch.as_tensor(result.flagged).bool() if alpha is None else p <= alpha
    return {"inherit_bit_acc": float(acc.mean()),
            "inherit_detect_rate": float(hit.to(torch.float64).mean()),
            "inherit_log10p_median": float(torch.quantile(p.clamp_min(_P_FLOOR).log10(), 0.5))}


def radioactivity(result: Any) -> dict[str, float]:
    """``radio_log10p`` and ``radio_m`` from a detection result with ``matches`` (M, K) bool:
    the exact sign-flip test of :func:`eval.radioactivity.sign_flip_p_value`, valid whatever the
    decoder's per-bit biases because the secret message is uniform; NaN without ``matches``."""
    matches = getattr(result, "matches", None)
    if matches is None or matches.shape[0] < 1:
        return {"radio_log10p": math.nan, "radio_m": 0.0}
    p, _ = sign_flip_p_value(matches)
    return {"radio_log10p": math.log10(max(p, _P_FLOOR)), "radio_m": float(matches.shape[0])}


class ArtifactMeter:
    """Per-generation artifact columns of samples S_t: ``meter(samples) -> dict`` (:data:`COLUMNS`).

    Args:
        probe: the run's :class:`WatermarkProbe`.
        reference: real images (N_ref >= 2, C, H, W); only their mean, projection variance and mean
            band energy are kept (computed in batches).
        detector: optional, ``detector.detect(x)`` (or ``detector(x)``) returning ``bit_accuracy``,
            ``p_value``, ``flagged`` (N,); without one the ``inherit_*`` columns are NaN.
        alpha: detection threshold on p-values; None counts the detector's own ``flagged``.
        batch_size: images per batch (fewer for large images, see :class:`WatermarkProbe`).
    """

    def __init__(self, probe: WatermarkProbe, reference: torch.Tensor, detector: Any = None,
                 alpha: Optional[float] = 0.01, batch_size: int = 256):
        reference = _images(reference, "reference", probe.shape)
        if reference.shape[0] < 2:
            raise ValueError("reference needs at least 2 images")
        if alpha is not None and not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        self.probe, self.detector, self.alpha, self.batch_size = probe, detector, alpha, batch_size
        total = torch.zeros(probe.shape, dtype=torch.float64, device=reference.device)
        for xb in reference.split(_step(batch_size, probe.shape)):
            total += xb.to(torch.float64).sum(0)
        self.n_ref = reference.shape[0]
        self.center = total / self.n_ref                                     # m_ref (C, H, W)
        z, e = probe.measure(reference, self.center, batch_size)
        self.ref_var = float(z.var())                                        # ddof = 1
        self.ref_band = float(e.mean()) * (self.n_ref + 1) / (self.n_ref - 1)
        self.ref_band_rel_var = float(e.var()) / (self.n_ref * float(e.mean()) ** 2) \
            if float(e.mean()) > 0 else math.nan                              # (se/mean)^2

    def energy(self, samples: torch.Tensor) -> dict[str, float]:
        """``artifact_energy``, ``artifact_energy_se``, ``artifact_energy_z``, ``band_energy_ratio``
        and ``band_energy_ratio_se`` of samples (N, C, H, W) (se and z are NaN for N = 1)."""
        z, e = self.probe.measure(samples, self.center, self.batch_size)
        n = z.numel()
        a = float(z.mean())
        se = math.sqrt(float(z.var()) / n + self.ref_var / self.n_ref) if n > 1 else math.nan
        ratio = float(e.mean()) / self.ref_band if self.ref_band > 0 else math.nan
        rel = float(e.var()) / (n * float(e.mean()) ** 2) if n > 1 and float(e.mean()) > 0 \
            else math.nan
        return {"artifact_energy": a, "artifact_energy_se": se,
                "artifact_energy_z": a / se if se > 0 else math.nan,
                "band_energy_ratio": ratio,
                "band_energy_ratio_se": ratio * math.sqrt(rel + self.ref_band_rel_var)}

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        """All :data:`COLUMNS` for unmarked samples S_t (N, C, H, W) in [0, 1]."""
        if self.detector is None:
            row = {**dict.fromkeys(_NAMES[:3], math.nan), **radioactivity(None)}
        else:
            detect = getattr(self.detector, "detect", self.detector)
            with torch.no_grad():
                result = detect(samples)
            row = {**inheritance(result, self.alpha), **radioactivity(result)}
        row.update(self.energy(samples))
        row.update(artifact_n_probe=self.probe.n_probe,
                   artifact_band_fraction=self.probe.band_fraction)
        return {k: row[k] for k in _NAMES}


def stacked_layers(residuals: torch.Tensor, samples: torch.Tensor, reference: torch.Tensor,
                   batch_size: int = 256) -> dict[str, Any]:
    """How many layers of each of G marks the samples carry, estimated jointly.

    With G keys (one per generation) the mean residuals r̄_1..r̄_G are *not* orthogonal: every
    informed embedding also cancels host energy in the band, a component all keys share (cosine
    ~0.3 between two spread-spectrum keys on MNIST), so per-key projections double-count it. The
    least-squares coefficients of the mean deviation on all residuals at once,

        β = argmin_b ‖(mean(S) − m_ref) − Σ_k b_k r̄_k‖²  =  (R Rᵀ)⁻¹ R (mean(S) − m_ref),

    with R (G, C·H·W) the stacked residuals, give layers per key: S carrying one layer of key 1
    and one of key 2 gives β ≈ (1, 1), one of key 2 alone (0, 1). β is linear in the images, so
    the total Σ_k β_k = mean_i wᵀ(x_i − m_ref) with w = Rᵀ(R Rᵀ)⁻¹ 1 has the two-sample standard
    error of :class:`ArtifactMeter` (per-image projections on w, ddof = 1).

    Args:
        residuals: (G, C, H, W) mean residuals r̄_k (e.g. ``WatermarkProbe.residual_mean``).
        samples: (N, C, H, W) images.
        reference: (N_ref >= 2, C, H, W) real images; m_ref is their mean.
    Returns:
        ``total`` (Σ β_k, layers), ``total_se`` (NaN for N = 1), ``layers`` (G,) float64 tensor.
    """
    r = residuals.to(torch.float64).flatten(1)                                  # (G, D)
    shape = tuple(residuals.shape[1:])
    samples = _images(samples, "samples", shape)
    reference = _images(reference, "reference", shape)
    if reference.shape[0] < 2:
        raise ValueError("reference needs at least 2 images")
    step = _step(batch_size, shape)

    def projections(x: torch.Tensor, weights: torch.Tensor, center) -> torch.Tensor:
        return torch.cat([(xb.to(torch.float64).flatten(1) - center) @ weights
                          for xb in x.split(step)])                            # (N, G') float64

    r = r.to(samples.device)
    center = sum(xb.to(torch.float64).flatten(1).sum(0) for xb in reference.split(step)) \
        / reference.shape[0]
    gram = r @ r.T
    solve = torch.linalg.solve(gram, r).T                                       # (D, G): Rᵀ(RRᵀ)⁻¹
    per_key = projections(samples, solve, center.to(samples.device))           # (N, G)
    total = per_key.sum(1)
    ref_total = projections(reference, solve.to(reference.device), center).sum(1)
    n = total.numel()
    se = math.sqrt(float(total.var()) / n + float(ref_total.var()) / reference.shape[0]) \
        if n > 1 else math.nan
    return {"total": float(total.mean()), "total_se": se, "layers": per_key.mean(0)}
