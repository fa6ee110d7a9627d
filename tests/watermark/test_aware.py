"""watermark.aware: the idempotent spread spectrum against closed forms on small inputs, then on
real digits and photos."""
import math

import pytest
import torch

from madcore.dct import idct2
from watermark import IdempotentSpreadSpectrum, SecretKey, SpreadSpectrum, psnr

KEY = SecretKey("aware-test-key")
SIDE = 16           # H = W = work_size: no resampling, the carriers stay exactly orthogonal


def _msg(n, k=8, seed=0):
    return torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(seed)).float()


def small(**kwargs) -> IdempotentSpreadSpectrum:
    """8 bits at work size 16 (band [1.0, 1.42): 8 coefficients per bit), strength 0.01."""
    return IdempotentSpreadSpectrum.for_image_size(KEY, SIDE, SIDE, num_bits=8, **kwargs)


def carrier_image(wm, amplitudes: torch.Tensor) -> torch.Tensor:
    """sum_k amplitudes[:, k] c_k as an (N, 1, SIDE, SIDE) pixel pattern, from the carriers'
    definition (disjoint key-chosen DCT coefficients with +-1/sqrt(M) signs), not from wm's
    embedding code."""
    t = wm._tables(torch.device("cpu"))
    coef = torch.zeros(amplitudes.shape[0], SIDE * SIDE, dtype=torch.float64)
    for k in range(wm.num_bits):
        coef[:, t["idx"][k]] += amplitudes[:, k:k + 1].double() * t["carrier"][k].double()
    return idct2(coef.view(-1, SIDE, SIDE)).unsqueeze(1).float()


def gray(n=4, level=0.5):
    return torch.full((n, 1, SIDE, SIDE), level)


def test_one_layer_on_a_flat_host_is_the_closed_form():
    """A flat host has no band energy, so every bit is missing tau = margin * a with
    a = alpha / sqrt(K / (H W)) (orthonormal DCT, unit carriers, gain 1): the residual is
    sum_k s_k tau c_k, of RMS exactly margin * alpha."""
    for margin in (0.5, 1.0, 2.0):
        wm = small(margin=margin)
        msg = _msg(4)
        tau = margin * 0.01 / math.sqrt(8 / SIDE ** 2)
        assert wm.amplitude(SIDE, SIDE) == pytest.approx(tau / margin, rel=1e-6)
        x = gray()
        xw = wm.embed(x, msg)
        expected = x + carrier_image(wm, (2 * msg - 1) * tau)
        assert torch.allclose(xw, expected, atol=1e-6)
        assert (xw - x).square().mean().sqrt().item() == pytest.approx(margin * 0.01, rel=1e-4)
        assert torch.equal(wm.decode_bits(xw), msg)


def test_a_second_embedding_changes_nothing():
    wm, msg = small(), _msg(4)
    once = wm.embed(gray(), msg)
    assert torch.equal(wm.embed(once, msg), once)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.6, 0.9, 1.0, 1.5, 3.0])
def test_a_partial_mark_is_topped_up_not_stacked(beta):
    """E(x + beta L) = x + max(beta, 1) L for the one-layer residual L of a clean host x."""
    wm, msg = small(), _msg(4)
    x = gray()
    layer = wm.embed(x, msg) - x
    got = wm.embed(x + beta * layer, msg)
    assert torch.allclose(got, x + max(beta, 1.0) * layer, atol=1e-6)


def test_within_tolerance_counts_as_present():
    wm, msg = small(tol=0.05), _msg(4)
    x = gray()
    layer = wm.embed(x, msg) - x
    partial = x + 0.97 * layer                 # 3 % missing on every bit: below tol
    assert torch.equal(wm.embed(partial, msg), partial)


def test_a_bit_the_host_opposes_beyond_reach_is_left_alone():
    wm, msg = small(reach=2.0), _msg(1)
    s = 2 * msg - 1
    tau = wm.margin * wm.amplitude(SIDE, SIDE)
    host_amplitudes = torch.zeros(1, 8)
    host_amplitudes[0, 3] = -s[0, 3] * 1.5 * tau        # missing 2.5 tau > reach: given up
    host_amplitudes[0, 5] = -s[0, 5] * 0.5 * tau        # missing 1.5 tau <= reach: filled
    host_amplitudes[0, 6] = s[0, 6] * 2.0 * tau         # present already (past the target)
    x = gray(1) + carrier_image(wm, host_amplitudes)
    xw = wm.embed(x, msg)
    before, after = s * wm.decode(x), s * wm.decode(xw)
    t_before = s * wm._stats(wm._coefficients(x), wm._tables(torch.device("cpu")))
    t_after = s * wm._stats(wm._coefficients(xw), wm._tables(torch.device("cpu")))
    assert t_after[0, 3] == pytest.approx(t_before[0, 3].item(), abs=1e-6)   # unchanged
    assert t_after[0, 6] == pytest.approx(t_before[0, 6].item(), abs=1e-6)   # never pushed past
    filled = [k for k in range(8) if k not in (3, 6)]
    assert torch.allclose(t_after[0, filled], torch.full((6,), tau), atol=1e-5)
    assert before[0, 3] < 0 and after[0, 3] < 0 and torch.equal(wm.embed(xw, msg), xw)


def test_excess_removed_puts_every_kept_bit_on_the_target():
    """excess="remove": E(x) sits exactly on the target for every bit within reach, so
    E(x + beta L) = x + L for every beta in [0, reach] (the mark neither stacks nor grows)."""
    wm, msg = small(excess="remove"), _msg(4)
    x = gray()
    layer = wm.embed(x, msg) - x
    for beta in (0.0, 0.5, 2.0, 4.0):
        assert torch.allclose(wm.embed(x + beta * layer, msg), x + layer, atol=1e-6)


def test_it_reads_with_the_spread_spectrum_of_the_same_key():
    """Same carriers and decoder: a SpreadSpectrum detector with the key reads the aware mark."""
    aware, plain = small(), SpreadSpectrum.for_image_size(KEY, SIDE, SIDE, num_bits=8)
    xw = aware.embed(gray(), _msg(4))
    assert torch.equal(aware.decode(xw), plain.decode(xw))


@pytest.mark.parametrize("kwargs, needle", [({"margin": 0}, "margin"), ({"reach": 0.5}, "reach"),
                                            ({"tol": 1.0}, "tol"), ({"excess": "clip"}, "excess")])
def test_settings_that_cannot_work_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        small(**kwargs)


def _second_layer(wm, x, msg):
    """(layers the second embedding moves x along the first's mean residual, PSNR(E(E(x)), E(x)))."""
    once = wm.embed(x, msg)
    twice = wm.embed(once, msg)
    r = (once - x).mean(0)
    layers = ((twice - once).mean(0) * r).sum() / (r * r).sum()
    mse = (twice - once).square().mean().item()
    return layers.item(), math.inf if mse == 0 else -10 * math.log10(mse)


def test_idempotent_on_real_digits_where_spread_spectrum_stacks(digits):
    """The scorecard's property 1 on 300 real MNIST digits (clamping at 0 and 1 everywhere):
    the aware mark moves <= 0.05 layers and keeps PSNR >= 50 dB on a second embedding; the budgeted
    informed spread spectrum adds about a second full layer."""
    x, msg = digits[:300], _msg(300, 32)
    aware = IdempotentSpreadSpectrum.for_image_size(KEY, 28, 28)
    layers, db = _second_layer(aware, x, msg)
    assert abs(layers) <= 0.05 and db >= 50
    plain_layers, plain_db = _second_layer(SpreadSpectrum.for_image_size(KEY, 28, 28), x, msg)
    assert plain_layers > 0.8 and plain_db < 40
    xw = aware.embed(x, msg)
    assert psnr(x, xw).mean().item() >= 34                  # the digits' quality floor
    assert (aware.decode_bits(xw) == msg).float().mean().item() >= 0.99


def test_idempotent_on_photos(photos256):
    x, msg = photos256[:12], _msg(12, 32)
    aware = IdempotentSpreadSpectrum.for_image_size(KEY, 256, 256)
    layers, db = _second_layer(aware, x, msg)
    assert abs(layers) <= 0.05 and db >= 50
    xw = aware.embed(x, msg)
    assert psnr(x, xw).mean().item() >= 38                  # the photos' quality floor
    assert torch.equal(aware.decode_bits(xw), msg)
