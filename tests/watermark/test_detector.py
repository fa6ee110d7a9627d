"""watermark.detector: binomial p-values against scipy, the FPR-1e-6 thresholds, the empirical FPR
of spread spectrum on real clean images, and calibration of biased and correlated decoders."""
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest

from watermark import (Detector, SecretKey, SpreadSpectrum, Watermarker, binomial_p_value,
                       matched_bits_threshold, poisson_binomial_sf)

from watermark.imageops import luma

from .conftest import RGB_PHOTOS, mnist_digits, photo_tiles

ALPHA = 0.01
KEY = SecretKey("detector-test-key")


@pytest.fixture(scope="module")
def tiles():
    """5,376 real 64 x 64 tiles of 14 photographs at 4 scales, with mirror images; as luma
    (N, 1, 64, 64), which is all spread spectrum reads, to keep memory and time low."""
    return luma(photo_tiles(64, min_sides=(128, 192, 256, 320)))


def test_p_values_equal_binomtest():
    for k, n in [(0, 8), (5, 8), (8, 8), (16, 32), (24, 32), (30, 32), (32, 32), (41, 48), (60, 100),
                 (74, 100), (150, 256), (167, 256)]:
        want = binomtest(k, n, 0.5, alternative="greater").pvalue
        assert binomial_p_value(k, n) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_thresholds_for_fpr_1e6():
    assert [matched_bits_threshold(k, 1e-6) for k in (32, 48, 100, 256)] == [30, 41, 74, 167]
    for k in (32, 48, 100, 256):   # the threshold is the first count whose p-value is <= alpha
        t = matched_bits_threshold(k, 1e-6)
        assert binom.sf(t - 1, k, 0.5) <= 1e-6 < binom.sf(t - 2, k, 0.5)
    assert matched_bits_threshold(8, 1e-6) == 9          # unreachable: nothing is ever flagged


def test_poisson_binomial_tail_by_enumeration():
    q = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.95, 0.5, 0.6, 0.2, 0.8])
    sf = poisson_binomial_sf(q)
    pmf = np.zeros(len(q) + 1)
    for bits in itertools.product((0, 1), repeat=len(q)):
        b = np.array(bits)
        pmf[b.sum()] += np.prod(np.where(b == 1, q, 1 - q))
    want = np.append(np.cumsum(pmf[::-1])[::-1], 0.0)
    assert np.allclose(sf, want, atol=1e-14)
    assert np.allclose(poisson_binomial_sf(np.full(32, 0.5))[:33], binom.sf(np.arange(33) - 1, 32, 0.5))


def test_marked_images_are_flagged_at_1e6(photos256):
    wm = SpreadSpectrum.for_image_size(KEY, 256, 256)
    det = Detector(wm, KEY, alpha=1e-6)
    res = det(wm.embed(photos256, KEY.message(32)))
    assert res.flagged.all() and (res.p_value <= 1e-6).all() and res.threshold == 30
    assert res.bit_accuracy.shape == res.matched_bits.shape == (photos256.shape[0],)
    clean = det(photos256)
    assert not clean.flagged.any()


def test_spread_spectrum_clean_fpr_photos_and_digits(tiles):
    """Analytic test on real unmarked images: empirical FPR <= 1.5 alpha (its exact size at K = 32
    is P(Bin(32, 1/2) >= 24) = 0.0035)."""
    for x, wm in [(tiles, SpreadSpectrum(KEY, work_size=64)),
                  (mnist_digits(), SpreadSpectrum.for_image_size(KEY, 28, 28))]:
        res = Detector(wm, KEY, alpha=ALPHA)(x)
        fpr = res.flagged.float().mean().item()
        print(f"\nclean FPR at alpha={ALPHA}: {fpr:.4f} on {len(x)} images of {x.shape[-1]} px")
        assert len(x) >= 3000 and fpr <= 1.5 * ALPHA


class _Biased(Watermarker):
    """Spread spectrum whose decoder is broken on purpose: on every image, bits in `biased` decode
    to the message bit with probability 0.9 (independently), the rest as the real decoder says."""
    name = "biased"

    def __init__(self, base, message, biased, seed):
        self.base, self.message, self.biased, self.num_bits = base, message, biased, base.num_bits
        self.g = torch.Generator().manual_seed(seed)

    def embed(self, x, msg):
        return self.base.embed(x, msg)

    def decode(self, x):
        logits = self.base.decode(x)
        hit = torch.rand(x.shape[0], len(self.biased), generator=self.g) < 0.9
        sign = self.message[self.biased] * 2 - 1
        logits[:, self.biased] = torch.where(hit, sign, -sign)
        return logits


class _Correlated(_Biased):
    """Bits 0..15 all decode to the message together on a random 20 % of images (a shared failure
    a per-bit model cannot see); otherwise the real decoder."""

    def decode(self, x):
        logits = self.base.decode(x)
        hit = torch.rand(x.shape[0], 1, generator=self.g) < 0.2
        logits[:, :16] = torch.where(hit, self.message[:16] * 2 - 1, logits[:, :16])
        return logits


@pytest.mark.parametrize("kind", ["independent", "correlated"])
def test_calibration_corrects_a_biased_decoder(tiles, kind):
    msg = KEY.message(32)
    base = SpreadSpectrum(KEY, work_size=64)
    wm = _Biased(base, msg, list(range(12)), 0) if kind == "independent" else _Correlated(base, msg, None, 0)
    det = Detector(wm, msg, alpha=ALPHA)
    perm = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(0))
    calib, held_out = tiles[perm[: len(tiles) // 2]], tiles[perm[len(tiles) // 2:]]
    analytic_fpr = det(held_out).flagged.float().mean().item()
    cal = det.calibrate(calib)
    fpr = det(held_out).flagged.float().mean().item()
    print(f"\n{kind}: analytic FPR {analytic_fpr:.4f} (on calibration {cal.empirical_fpr_analytic:.4f}),"
          f" calibrated FPR {fpr:.4f}; thresholds {cal.analytic_threshold} -> {cal.corrected_threshold}"
          f" (model {cal.model_threshold}), dispersion {cal.dispersion:.2f}")
    assert analytic_fpr > 5 * ALPHA and cal.empirical_fpr_analytic > 5 * ALPHA
    assert fpr <= 1.5 * ALPHA
    assert cal.corrected_threshold > cal.analytic_threshold
    if kind == "independent":
        assert (cal.bias[:12] > 0.3).all() and (cal.bias[12:].abs() < 0.1).all()
        assert cal.model_threshold == cal.corrected_threshold      # the per-bit model suffices
    else:
        assert cal.dispersion > 2 and cal.corrected_threshold > cal.model_threshold
    marked = base.embed(held_out[:64], msg)
    assert det(marked).flagged.float().mean() > 0.9               # still detects real marks
    det.reset_calibration()
    assert det.threshold == cal.analytic_threshold


def test_detector_validates_message():
    wm = SpreadSpectrum(KEY, num_bits=16, work_size=32, band=(0.5, 1.0))
    with pytest.raises(ValueError):
        Detector(wm, torch.ones(32))
    with pytest.raises(ValueError):
        Detector(wm, torch.full((16,), 2.0))
    with pytest.raises(ValueError):
        Detector(wm, torch.ones(16), alpha=0.0)
    assert torch.equal(Detector(wm, "some key").message, SecretKey("some key").message(16))


@pytest.mark.slow
def test_clean_fpr_on_10k_images():
    """Over more than 10,000 real clean images from every offline source — photo tiles at 9 scales
    (streamed per photo), the 5,000 MNIST digits, the 1,797 scikit-learn 8x8 digits resized to
    28 x 28, and the 200 LFW-subset images (25 x 25, resized to 28 x 28) — the analytic FPR is <= 1.5 alpha on each
    source; calibrating on half of the tiles keeps the other half <= 1.5 alpha."""
    from sklearn.datasets import load_digits
    from skimage.data import lfw_subset

    wm = SpreadSpectrum(KEY, work_size=64)
    det = Detector(wm, KEY, alpha=ALPHA)
    sides = (96, 128, 160, 192, 256, 320, 384, 448, 512)
    batches = [photo_tiles(64, sides, names=(n,)) for n in RGB_PHOTOS + ("camera", "brick", "grass",
                                                                       "gravel", "moon", "coins", "clock")]
    k = torch.cat([det.matches(b).sum(1) for b in batches])
    assert len(k) >= 10_000
    fpr = (det.p_values(k) <= ALPHA).float().mean().item()
    print(f"\nphoto tiles: {len(k)} images, analytic FPR {fpr:.4f}")
    assert fpr <= 1.5 * ALPHA
    cal = det.calibrate(batches[::2])
    held = torch.cat([det.matches(b).sum(1) for b in batches[1::2]])
    held_fpr = (det.p_values(held) <= ALPHA).float().mean().item()
    print(f"calibrated on {cal.n_images} (threshold {cal.analytic_threshold} -> "
          f"{cal.corrected_threshold}, max |bias| {cal.bias.abs().max():.3f}, dispersion "
          f"{cal.dispersion:.2f}): held-out FPR {held_fpr:.4f} on {len(held)}")
    assert held_fpr <= 1.5 * ALPHA and cal.empirical_fpr_analytic <= 1.5 * ALPHA
    small = {
        "mnist": mnist_digits(),
        "sklearn digits (8x8 -> 28x28)": torch.nn.functional.interpolate(
            torch.from_numpy(load_digits().images).float().div(16)[:, None], size=(28, 28),
            mode="bilinear", align_corners=False).clamp(0, 1),
        "lfw subset (25x25 -> 28x28)": torch.nn.functional.interpolate(
            torch.from_numpy(lfw_subset()).float()[:, None], size=(28, 28), mode="bilinear",
            align_corners=False).clamp(0, 1),
    }
    total = len(k)
    for name, images in small.items():
        side = images.shape[-1]
        flagged = Detector(SpreadSpectrum.for_image_size(KEY, side, side), KEY,
                           alpha=ALPHA)(images).flagged.float()
        total += len(images)
        print(f"{name}: {len(images)} images, analytic FPR {flagged.mean():.4f}")
        # <= 1.5 alpha, with a 3-sigma allowance for the small sets (200 faces: 1 flag is 0.005)
        n = len(images)
        assert flagged.mean().item() <= 1.5 * ALPHA + 3 * (1.5 * ALPHA / n) ** 0.5
    assert total >= 10_000 + 5_000