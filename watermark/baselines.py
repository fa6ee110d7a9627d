"""Classical baselines from the `invisible-watermark` package (the Stable Diffusion watermark).

    DwtDct(num_bits=32)      Haar DWT, then 4x4 block DCT; quantises the largest AC coefficient
    DwtDctSvd(num_bits=32)   Haar DWT, block DCT, then quantises the top singular value
    RivaGAN()                learned video watermark (ONNX; 32 bits; needs onnxruntime)

They share the `Watermarker` interface: tensors (N, C, H, W) in [0, 1] go through the package one
image at a time as uint8 BGR arrays (what it expects; the marked image is therefore 8-bit
quantised), and decoded bits come back as logits +-1 (the package exposes hard bits only). The
package refuses images smaller than 256 x 256 pixels (it checks H * W >= 65536); so do these
wrappers, with an UnsupportedImageError (a ValueError), before calling it; so do they for
images that are not RGB. All three need RGB (C = 3): the DWT methods mark
chroma (U), which gray images lack, and marking Y instead overflows the package's uint8 arithmetic
(bright and dark pixels wrap around; it happens, rarely, in U too: about 1e-4 of the pixels of
real photos, left as the package does it).

The package is an optional extra: install it with `pip install invisible-watermark` (RivaGAN also
needs `pip install onnxruntime`); without it the constructors raise `BaselineUnavailableError`.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import UnsupportedImageError, Watermarker, check_images, check_message

MIN_PIXELS = 256 * 256
INSTALL_HINT = ("invisible-watermark is not installed — pip install 'madmark[baselines]' "
                "(or invisible-watermark)")


class BaselineUnavailableError(ImportError):
    """An optional dependency of a baseline watermarker is missing."""


def _imwatermark():
    try:
        import imwatermark
    except ImportError as err:
        raise BaselineUnavailableError(INSTALL_HINT) from err
    return imwatermark


def _to_bgr(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float RGB in [0, 1] -> (N, H, W, 3) uint8 BGR."""
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().flip(1)
    return np.ascontiguousarray(u8.permute(0, 2, 3, 1).numpy())


def _from_bgr(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR -> (N, 3, H, W) RGB in [0, 1], dtype and device of `like`."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).flip(1)
    return (t.to(torch.float32) / 255).to(like.device, like.dtype)


class _InvisibleWatermark(Watermarker):
    """Shared per-image bridge to imwatermark's WatermarkEncoder / WatermarkDecoder."""

    method: str = ""

    def __init__(self, num_bits: int = 32, scale: int = 36):
        self._iw = _imwatermark()
        self.num_bits, self.scale = int(num_bits), int(scale)
        if self.num_bits < 1:
            raise ValueError("num_bits must be positive")

    def _check(self, x: torch.Tensor) -> None:
        check_images(x)
        h, w = x.shape[-2:]
        name = f"{type(self).__name__} (invisible-watermark)"
        if x.shape[1] != 3:
            raise UnsupportedImageError(f"{name} marks RGB images (C = 3), got C = {x.shape[1]}")
        if h * w < MIN_PIXELS:
            raise UnsupportedImageError(f"{name} needs images of at least 256x256 pixels "
                                        f"(H*W >= {MIN_PIXELS}), got {h}x{w}")

    def _configs(self) -> dict:
        """Keyword arguments for the package's encode/decode: quantisation scale per Y, U, V."""
        return {"scales": [0, self.scale, 0]}

    def embed(self, x: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """Mark x (N, C, H, W), H*W >= 65536, with msg (N, K) or (K,); output 8-bit quantised."""
        self._check(x)
        bits = check_message(msg, x.shape[0], self.num_bits).to(torch.int64).cpu().tolist()
        enc, cfg = self._iw.WatermarkEncoder(), self._configs()
        out = []
        for img, b in zip(_to_bgr(x), bits):                      # the package is per-image numpy
            enc.set_watermark("bits", b)
            out.append(enc.encode(img, self.method, **cfg))
        return _from_bgr(np.stack(out), x).clamp(0, 1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K): +1 where the package decodes bit 1, -1 where it decodes 0."""
        self._check(x)
        dec, cfg = self._iw.WatermarkDecoder("bits", self.num_bits), self._configs()
        bits = [np.asarray(dec.decode(img, self.method, **cfg), dtype=np.float32) for img in _to_bgr(x)]
        return torch.from_numpy(np.stack(bits) * 2 - 1).to(x.device)


class DwtDct(_InvisibleWatermark):
    """invisible-watermark's DWT-DCT method on the U channel; `scale` is its quantisation step."""
    name, method = "dwtdct", "dwtDct"


class DwtDctSvd(_InvisibleWatermark):
    """invisible-watermark's DWT-DCT-SVD method on the U channel; `scale` is its quantisation step."""
    name, method = "dwtdctsvd", "dwtDctSvd"


class RivaGAN(_InvisibleWatermark):
    """invisible-watermark's RivaGAN (Zhang et al. 2019) ONNX models; 32 bits, RGB only."""
    name, method = "rivagan", "rivaGan"

    def __init__(self, num_bits: int = 32):
        super().__init__(num_bits)
        if self.num_bits != 32:
            raise ValueError("RivaGAN carries exactly 32 bits")
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise BaselineUnavailableError("RivaGAN needs onnxruntime — pip install onnxruntime") from err
        self._iw.WatermarkEncoder.loadModel()

    def _configs(self) -> dict:
        return {}
