"""Watermark embedding, decoding and detection (learned and classical methods).

Tensors in, tensors or numbers out; this package imports nothing from madmark, loops or eval
(only the shared bottom layer, madcore: DCT, PSNR/SSIM, atomic files, rank/shard).

    from watermark import SecretKey, SpreadSpectrum, Detector
    key = SecretKey.from_file("key.txt")
    wm = SpreadSpectrum.for_image_size(key, 256, 256)       # 32 bits, alpha 0.01 (~40 dB)
    x_w = wm.embed(x, key.message(wm.num_bits))              # x: (N, C, H, W) in [0, 1]
    det = Detector(wm, key.message(wm.num_bits), alpha=0.01)
    det.calibrate(clean_images)                              # measured FPR and bit bias
    det(x_w).flagged                                         # (N,) bool

Modules: base (interface and checks), keys, imageops (luma, resize), spread_spectrum, aware (its
idempotent variant), baselines
(invisible-watermark, optional), detector, attacks (registry and ATTACK_GRID), attack_layer
(training), learned (encoder/decoder), train (training loop with checkpoints), cards (model cards, `load`).
Text (the language-model loop) lives in the subpackage `watermark.text` (KGW, Gumbel-max / EXP,
text attacks), imported on its own: `from watermark.text import KGW`.
"""
from madcore.quality import mse, psnr, ssim   # re-exported: the quality of a mark

from .attack_layer import DEFAULT_RANGES, AttackLayer
from .attacks import ATTACK_GRID, ATTACKS, apply_attack, register
from .base import UnsupportedImageError, Watermarker, check_images, check_message
from .cards import load, load_card, read_card, save_card
from .learned import Embedder, Extractor, LearnedWatermarker
from .baselines import BaselineUnavailableError, DwtDct, DwtDctSvd, RivaGAN
from .detector import (Calibration, DetectionResult, Detector, binomial_p_value, matched_bits_threshold,
                       poisson_binomial_sf)
from .keys import SecretKey
from .spread_spectrum import SpreadSpectrum
from .aware import IdempotentSpreadSpectrum
from .train import TrainerConfig, train_watermarker

__all__ = [
    "Embedder", "Extractor", "LearnedWatermarker", "load", "load_card", "read_card", "save_card",
    "TrainerConfig", "train_watermarker",
    "ATTACKS", "ATTACK_GRID", "AttackLayer", "BaselineUnavailableError", "Calibration", "DEFAULT_RANGES",
    "DetectionResult", "Detector", "DwtDct", "DwtDctSvd", "IdempotentSpreadSpectrum", "RivaGAN",
    "SecretKey", "SpreadSpectrum",
    "UnsupportedImageError",
    "Watermarker", "apply_attack", "binomial_p_value", "check_images", "check_message",
    "matched_bits_threshold", "mse", "poisson_binomial_sf", "psnr", "register", "ssim",
]
