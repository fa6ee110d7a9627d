"""The Watermarker interface on every method, on real images: shapes, range, validation, clean bit
accuracy and PSNR. invisible-watermark methods are skipped when the optional package is absent."""
import ast
import builtins
import pathlib
import sys

import pytest
import torch

from watermark import IdempotentSpreadSpectrum, SecretKey, SpreadSpectrum, Watermarker, psnr

KEY = SecretKey("interface-test-key")
WATERMARK_DIR = pathlib.Path(__file__).resolve().parents[2] / "watermark"


def _baseline(name):
    pytest.importorskip("imwatermark")
    if name == "rivagan":
        pytest.importorskip("onnxruntime")
    from watermark import DwtDct, DwtDctSvd, RivaGAN
    return {"dwtdct": DwtDct, "dwtdctsvd": DwtDctSvd, "rivagan": RivaGAN}[name]()


# method -> (factory, images fixture name, n images, min mean bit accuracy, min mean PSNR)
METHODS = {
    "spread_spectrum_256": (lambda: SpreadSpectrum.for_image_size(KEY, 256, 256), "photos256", 24, 0.999, 38.0),
    "spread_spectrum_28": (lambda: SpreadSpectrum.for_image_size(KEY, 28, 28), "digits", 500, 0.98, 38.0),
    "spread_spectrum_aware_256": (lambda: IdempotentSpreadSpectrum.for_image_size(KEY, 256, 256),
                                  "photos256", 24, 0.999, 38.0),
    "spread_spectrum_aware_28": (lambda: IdempotentSpreadSpectrum.for_image_size(KEY, 28, 28),
                                 "digits", 500, 0.99, 34.0),
    "dwtdct": (lambda: _baseline("dwtdct"), "photos256", 12, 0.85, 36.0),
    "dwtdctsvd": (lambda: _baseline("dwtdctsvd"), "photos256", 12, 0.99, 36.0),
    "rivagan": (lambda: _baseline("rivagan"), "photos256", 3, 0.9, 36.0),
}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "rivagan" else m
                                    for m in METHODS])
def test_embed_decode_on_real_images(method, request):
    factory, images, n, min_acc, min_psnr = METHODS[method]
    wm = factory()
    assert isinstance(wm, Watermarker) and wm.num_bits == 32
    x = request.getfixturevalue(images)[:n]
    msg = torch.randint(0, 2, (n, 32), generator=torch.Generator().manual_seed(0)).float()
    xw = wm.embed(x, msg)
    assert xw.shape == x.shape and xw.dtype == x.dtype
    assert xw.min() >= 0 and xw.max() <= 1
    logits = wm.decode(xw)
    assert logits.shape == (n, 32) and logits.is_floating_point()
    bits = wm.decode_bits(xw)
    assert set(bits.unique().tolist()) <= {0.0, 1.0} and torch.equal(bits, (logits > 0).float())
    acc = (bits == msg).float().mean().item()
    quality = psnr(x, xw)
    print(f"\n{method}: clean bit accuracy {acc:.4f}, PSNR {quality.mean():.2f} dB "
          f"(min {quality.min():.2f}) on {n} real {x.shape[-1]}x{x.shape[-1]} images")
    assert acc >= min_acc and quality.mean() >= min_psnr
    one = wm.embed(x[:2], msg[0])                      # a (K,) message is broadcast to the batch
    assert (wm.decode_bits(one) == msg[0]).float().mean() >= min_acc - 0.05


@pytest.mark.parametrize("method", ["spread_spectrum_256", "dwtdct"])
def test_input_validation(method, photos256):
    wm = METHODS[method][0]()
    x, msg = photos256[:2], torch.zeros(2, 32)
    bad = [
        (x[0], msg),                                   # wrong ndim
        (x, torch.zeros(2, 31)),                       # wrong K
        (x, torch.zeros(3, 32)),                       # wrong N
        (x, torch.full((2, 32), 0.5)),                 # non-binary
        (x, torch.full((2, 32), float("nan"))),        # NaN message
        (torch.where(x > 0.5, float("nan"), x), msg),  # NaN image
        ((x * 255).to(torch.uint8), msg),              # not floating
        (torch.rand(2, 2, 256, 256), msg),             # C = 2
    ]
    for xi, mi in bad:
        with pytest.raises(ValueError):
            wm.embed(xi, mi)
    with pytest.raises(ValueError):
        wm.decode(x[0])


def test_invisible_watermark_size_and_channel_rules():
    wm = _baseline("dwtdct")
    with pytest.raises(ValueError, match="256x256"):
        wm.embed(torch.rand(1, 3, 128, 128), torch.zeros(32))
    with pytest.raises(ValueError, match="256x256"):
        wm.decode(torch.rand(1, 3, 200, 256))
    with pytest.raises(ValueError, match="RGB"):
        wm.embed(torch.rand(1, 1, 256, 256), torch.zeros(32))


def test_missing_invisible_watermark_gives_install_hint(monkeypatch):
    from watermark import BaselineUnavailableError, DwtDct
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "imwatermark" or name.startswith("imwatermark."):
            raise ImportError("No module named 'imwatermark'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "imwatermark", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'madmark\[baselines\]'") as err:
        DwtDct()
    assert isinstance(err.value, BaselineUnavailableError)


def test_watermark_imports_nothing_above_it():
    for path in WATERMARK_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in {"madmark", "loops", "eval"}, f"{path.name} imports {name}"
