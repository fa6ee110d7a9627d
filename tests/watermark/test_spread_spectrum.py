"""watermark.spread_spectrum: keyed carriers, strength, robustness claims, sizes and devices."""
import math

import pytest
import torch

from watermark import SecretKey, SpreadSpectrum, apply_attack, psnr

KEY = SecretKey("ss-test-key")


def _msg(n, k=32, seed=0):
    return torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(seed)).float()


def test_key_is_needed_to_read(photos256):
    x, msg = photos256[:12], _msg(12)
    xw = SpreadSpectrum(KEY).embed(x, msg)
    assert torch.equal(SpreadSpectrum(KEY).decode_bits(xw), SpreadSpectrum("ss-test-key").decode_bits(xw))
    other = (SpreadSpectrum(SecretKey("another key")).decode_bits(xw) == msg).float().mean().item()
    assert abs(other - 0.5) < 0.1                       # chance level without the key


def test_alpha_sets_psnr_and_additive_mode(photos256):
    x, msg = photos256[:12], _msg(12)
    # minimum bit accuracy per (alpha, mode): informed embedding beats the host's interference
    floor = {(0.02, "informed"): 1.0, (0.02, "additive"): 0.98, (0.01, "informed"): 1.0,
             (0.01, "additive"): 0.85, (0.005, "informed"): 0.95, (0.005, "additive"): 0.75}
    for alpha in (0.02, 0.01, 0.005):
        for mode in ("informed", "additive"):
            wm = SpreadSpectrum(KEY, alpha=alpha, embedding=mode)
            xw = wm.embed(x, msg)
            # alpha is the RMS residual before clamping: PSNR = -20 log10(alpha) up to clamping/top-ups
            assert psnr(x, xw).mean().item() == pytest.approx(-20 * math.log10(alpha), abs=0.5)
            acc = (wm.decode_bits(xw) == msg).float().mean().item()
            assert acc >= floor[alpha, mode]


def test_clean_logits_are_standardised(photos256):
    logits = SpreadSpectrum(KEY).decode(photos256)
    assert abs(logits.mean().item()) < 0.15 and 0.8 < logits.std().item() < 1.2
    xw = SpreadSpectrum(KEY).embed(photos256[:4], _msg(4))
    scaled = SpreadSpectrum(KEY).decode(0.5 + 0.7 * (xw - 0.5))   # contrast changes no logit
    assert torch.allclose(scaled, SpreadSpectrum(KEY).decode(xw), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("attack,strength", [("jpeg", 50), ("resize", 0.5), ("noise", 0.05),
                                             ("blur", 2.0), ("resize+jpeg", (0.5, 70))])
def test_survives_valuemetric_attacks(photos256, attack, strength):
    x, msg = photos256[:12], _msg(12)
    wm = SpreadSpectrum.for_image_size(KEY, 256, 256)
    y = apply_attack(wm.embed(x, msg), attack, strength, generator=torch.Generator().manual_seed(0))
    assert (wm.decode_bits(y) == msg).float().mean().item() >= 0.95


def test_sizes_and_configuration():
    assert SpreadSpectrum.for_image_size(KEY, 256, 256).work_size == 64
    small = SpreadSpectrum.for_image_size(KEY, 28, 28)
    assert (small.work_size, small.band) == (28, (1.0, 1.42))
    wm = SpreadSpectrum(KEY, work_size=64)
    with pytest.raises(ValueError, match="at least 64"):
        wm.embed(torch.rand(1, 3, 48, 100), torch.zeros(32))
    x = torch.rand(2, 3, 90, 150) * 0.8 + 0.1        # non-square, decode at any size
    xw = wm.embed(x, _msg(2))
    assert wm.decode(torch.nn.functional.interpolate(xw, size=(45, 75))).shape == (2, 32)
    with pytest.raises(ValueError, match="per bit"):
        SpreadSpectrum(KEY, num_bits=64, work_size=16, band=(1.2, 1.4))
    with pytest.raises(ValueError):
        SpreadSpectrum(KEY, embedding="quantized")
    assert "ss-test-key" not in repr(wm)


def test_double_precision_and_gray(digits):
    wm = SpreadSpectrum.for_image_size(KEY, 28, 28)
    x = digits[:64].double()
    xw = wm.embed(x, _msg(64))
    assert xw.dtype == torch.float64 and xw.shape == (64, 1, 28, 28)
    assert (wm.decode_bits(xw) == _msg(64)).float().mean() > 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_results_on_gpu(photos256):
    wm, x, msg = SpreadSpectrum(KEY), photos256[:8], _msg(8)
    cpu = wm.embed(x, msg)
    gpu = wm.embed(x.cuda(), msg.cuda())
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    assert torch.equal(wm.decode_bits(gpu).cpu(), wm.decode_bits(cpu))
