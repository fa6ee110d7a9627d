"""The watermark of one run: key(s), method(s) and calibrated detectors, from ``cfg.watermark``.

Builds the engine's watermark and filter stages (``loops.stages``) and the per-generation
artifact meter (``eval.artifacts``) so that all three use the same keys and methods.

Keys. ``watermark.key_file`` names a file holding the secret; only its path is recorded. Without
it the run uses an *experiment key* derived from the run seed: reproducible, and explicitly not
secret (anyone with the config can rebuild it) — fine for measuring autophagy, wrong for marking
data you publish. With ``key_mode: generation`` each generation t marks with its own key derived
from the run key and t (its own carriers and message); with ``key_mode: message`` every
generation keeps the run key's carriers and marks its own message, derived the same way. In both
the filter tests every key used so far and flags a sample when the smallest p-value,
Bonferroni-corrected for the number of keys, is at most α.

Why two per-generation modes. New carriers are orthogonal to everything an image carries, so even
an idempotent embedder adds a full layer for each new key while the model reproduces the older
ones: the layers of all keys stack (``artifact_energy_all_keys``). A new message on the same
carriers only flips the bits in which it differs from what the image carries, so an embedder that
tops bits up to a fixed target (``spread_spectrum_aware``) keeps one layer in total.

Detectors are calibrated on the held-out real reference split (never trained on), so their
p-values account for the decoder's measured bit bias and correlation on this data.

Re-marking. A model trained on marked data reproduces the mark, and a watermarker that does not
look before it embeds adds a full new layer on top of the inherited one (spread spectrum's informed
embedding spends its whole budget every time: a real digit marked twice sits 2.1 layers from the
real mean). In a fully synthetic loop the artifact then grows by about one layer per generation.
``skip_detected: true`` is the autophagy-aware alternative: samples the calibrated detector already
flags at α are passed through unmarked (they already carry the key), so only unmarked-looking
samples get a layer.
"""
from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

from eval.artifacts import ArtifactMeter, WatermarkProbe, stacked_layers
from eval.idempotence import idempotence
from madcore.columns import Column
from madcore.errors import MadmarkError
from madcore.quality import pooled_psnr
from madmark.methods import build_method, secret_key
from watermark import Detector, SecretKey
from watermark.base import Watermarker

KEY_MODES = ("run", "generation", "message")
PER_GENERATION = ("generation", "message")    # the modes with a key (a message) per generation

_CFG = "the run's watermark config (constant over a run)"
#: the columns of :meth:`RunWatermark.settings`, in order
SETTINGS_COLUMNS = (
    Column("wm_method", "the watermark method (watermark.method)", "text", _CFG),
    Column("wm_marks", "whether the pooled samples are marked (False: the control arm, measured "
           "only)", "boolean (True/False)", _CFG),
    Column("wm_bits", "message length K of the method", "bits", _CFG),
    Column("wm_alpha", "false-positive rate of detection (inheritance detection rate, filter)",
           "fraction in (0, 1)", _CFG),
    Column("wm_key", "where the key comes from: file, or the seed (an experiment key, not "
           "secret)", "text", _CFG),
    Column("wm_key_mode", "run (one key), generation (a key per generation) or message (the run "
           "key's carriers, a message per generation)", "text", _CFG),
    Column("wm_key_fingerprint", "first 8 hex digits of SHA-256(SHA-256(run key)): names the key "
           "without disclosing it (a resumed run must mark with the same key)", "text", _CFG),
    Column("wm_skip_detected", "whether samples the detector already flags are left unmarked",
           "boolean (True/False)", _CFG),
    Column("wm_n_calibration", "reference images the detectors are calibrated on", "count",
           "the reference split"),
    Column("wm_image_shape", "the marked images' shape, channels x height x width (e.g. "
           "1x28x28)", "text", "the data source"),
)


_KEYS = ("S_t (unmarked samples) vs the reference split, on the probes' mean residuals r̄ of "
         "the keys of generations 1..t−1 (eval.artifacts.stacked_layers)")
#: the columns the artifact evaluator adds with a key per generation (generation, message modes)
KEYS_COLUMNS = (
    Column("artifact_energy_all_keys", "layers of every earlier generation's key that S_t carries, "
           "summed: Σ_k β_k, the least-squares coefficients of S_t's mean deviation on the keys' "
           "mean residuals jointly (they share a host-cancelling component, so per-key "
           "projections would count it once per key)", "watermark layers", _KEYS),
    Column("artifact_energy_all_keys_se", "two-sample standard error of "
           "artifact_energy_all_keys", "watermark layers", _KEYS),
    Column("artifact_keys", "keys of generations 1..t−1 (at least 1) the sum runs over",
           "count", _KEYS),
)


def experiment_key(seed: int) -> SecretKey:
    """The non-secret key of a run without ``watermark.key_file`` (a function of the seed only)."""
    return SecretKey(f"madmark/experiment-key/seed={int(seed)}")


def refuse_other_key(recorded: dict, fingerprint: str, fix: str) -> None:
    """Refuse (MadmarkError, with ``fix``) a key whose ``fingerprint`` is not the one a run's
    finished generations were marked with: ``recorded`` is one of their rows
    (``wm_key_fingerprint``; rows from before that column pass)."""
    before = recorded.get("wm_key_fingerprint")
    if before is not None and str(before) != fingerprint:
        raise MadmarkError(f"this run's generations were marked with key {before} but the key "
                           f"now given is {fingerprint} (fingerprints)", fix)


class RunWatermark:
    """Methods, keys and calibrated detectors of one run.

    Args:
        cfg: the ``watermark`` config group (method, bits, strength, key_file, key_mode, alpha,
            batch_size, n_calibration).
        seed: the run seed (experiment key).
        image_shape: (C, H, W) of the data.
        reference: (N_ref, C, H, W) held-out real images for calibration.
        device: where marking and decoding run.
    """

    def __init__(self, cfg: DictConfig, seed: int, image_shape: tuple[int, ...],
                 reference: torch.Tensor, device: torch.device):
        if len(image_shape) != 3:
            raise MadmarkError(f"watermark={cfg.method} needs image data, this data is vectors "
                               f"of shape {tuple(image_shape)}",
                               "use image data (e.g. data=mnist5k) or watermark=none")
        if cfg.key_mode not in KEY_MODES:
            raise MadmarkError(f"watermark.key_mode={cfg.key_mode} is not one of "
                               f"{', '.join(KEY_MODES)}",
                               "set watermark.key_mode=run, generation or message")
        if not 0 < float(cfg.alpha) < 1:
            raise MadmarkError(f"watermark.alpha={cfg.alpha} is outside (0, 1)",
                               "set watermark.alpha to a false-positive rate such as 0.01")
        self.cfg, self.device = cfg, device
        self.alpha = float(cfg.alpha)
        self.batch_size = int(cfg.batch_size)
        self.key_source = "file" if cfg.key_file else "seed (experiment key, not secret)"
        self._key = secret_key("", str(cfg.key_file)) if cfg.key_file else experiment_key(seed)
        self._shape = tuple(int(s) for s in image_shape)
        n_cal = cfg.n_calibration
        self._calibration = reference if n_cal is None else reference[: int(n_cal)]
        self._methods: dict[int, Watermarker] = {}
        self._detectors: dict[int, Detector] = {}
        self.method_name = str(cfg.method)
        self.marks = bool(cfg.get("mark", True))   # false: measure only (the control arm)
        self.skip_detected = bool(cfg.get("skip_detected", False))
        self.num_bits = self.method(1).num_bits
        if cfg.get("min_psnr_db") is not None and len(self._calibration):
            self.check_psnr_floor(float(cfg.min_psnr_db))

    def check_psnr_floor(self, floor: float) -> None:
        """Refuse (MadmarkError) a method and strength whose marking of the calibration images'
        first ``n_probe`` (generation 1's key) has a pooled PSNR below ``floor`` dB."""
        real = self._calibration[: int(self.cfg.n_probe)].to(self.device)
        with torch.no_grad():
            psnr = pooled_psnr(self.mark(1, real), real)
        if psnr < floor:
            needed = float(self.cfg.strength) * 10 ** ((psnr - floor) / 20)
            raise MadmarkError(
                f"watermark={self.method_name} at strength {self.cfg.strength} marks the "
                f"reference images at {psnr:.1f} dB, below watermark.min_psnr_db={floor:g}",
                f"lower watermark.strength (about {needed:.3g} reaches it for additive marks; "
                "learned cards ignore strength: choose another method) or lower min_psnr_db")

    def check_same_key(self, recorded: dict, fix: str = "resume with the key file the run "
                       "started with (watermark.key_file), or start a new run") -> None:
        """Refuse (MadmarkError, with ``fix``) a key other than the one a run's finished
        generations were marked with: ``recorded`` is one of their rows (``wm_key_fingerprint``;
        rows from before that column pass)."""
        refuse_other_key(recorded, self._key.fingerprint, fix)

    # -- keys and methods --------------------------------------------------------------------
    def key_index(self, t: int) -> int:
        """The key (message) used to mark generation t's samples (1 for every t in run mode)."""
        return 1 if self.cfg.key_mode == "run" else int(t)

    def key(self, t: int) -> SecretKey:
        """Generation t's key: its message's source (and its carriers' in generation mode)."""
        if self.cfg.key_mode == "run":
            return self._key
        return SecretKey(self._key.derive(f"loop/generation/{int(t)}", 32))

    def method(self, t: int) -> Watermarker:
        """The method marking generation t: built with the run key in run and message modes
        (one carrier set), with generation t's key in generation mode."""
        i = self.key_index(t) if self.cfg.key_mode == "generation" else 1
        if i not in self._methods:
            _, h, w = self._shape
            carriers = self.key(t) if self.cfg.key_mode == "generation" else self._key
            method = build_method(self.method_name, carriers, h, w, int(self.cfg.bits),
                                  float(self.cfg.strength), self.cfg.get("build"))
            if hasattr(method, "to"):
                method.to(self.device)
            self._methods[i] = method
        return self._methods[i]

    def message(self, t: int) -> torch.Tensor:
        """(K,) float32 {0, 1}: the message marked into generation t's samples."""
        return self.key(t).message(self.method(t).num_bits).to(self.device)

    def detector(self, t: int) -> Detector:
        """The detector of generation t's key, calibrated on the reference split (cached)."""
        i = self.key_index(t)
        if i not in self._detectors:
            detector = Detector(self.method(t), self.message(t), alpha=self.alpha,
                                batch_size=self.batch_size)
            detector.calibrate(self._calibration.to(self.device).split(self.batch_size))
            self._detectors[i] = detector
        return self._detectors[i]

    # -- what the engine calls ---------------------------------------------------------------
    def mark(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """Images x (N, C, H, W) marked with generation t's key, in batches."""
        method, message = self.method(t), self.message(t)
        parts = []
        for chunk in x.split(self.batch_size):
            marked = method.embed(chunk, message.expand(len(chunk), -1)).clamp_(0, 1)
            if self.skip_detected:
                carries = self.detector(t).detect(chunk).flagged.to(chunk.device)
                marked = torch.where(carries[:, None, None, None], chunk, marked)
            parts.append(marked)
        return torch.cat(parts)

    def own_flags(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """bool (N,): the images x (N, C, H, W) that the detector of generation t's key flags at
        ``alpha`` (for the watermark stage's ``wm_detect_rate``: are just-marked samples found?)."""
        return self.detector(t).detect(x).flagged

    def p_values(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """(N,) float64: p-value that each image carries a mark of a generation before t.

        Run mode: the calibrated p-value of the run key. Generation and message modes: the
        smallest p-value over the keys of generations 1..max(1, t − 1), times their number
        (Bonferroni), capped at 1.
        """
        keys = range(1, max(1, t - 1) + 1) if self.cfg.key_mode in PER_GENERATION else [1]
        p = torch.stack([self.detector(g).detect(x).p_value for g in keys])
        return (p.min(0).values * len(keys)).clamp(max=1.0)

    def flag(self, alpha: float):
        """``flag(t, x) -> bool (N,)`` for the filter stage at false-positive rate ``alpha``."""
        def flag(t: int, x: torch.Tensor) -> torch.Tensor:
            return self.p_values(t, x) <= alpha
        return flag

    def artifact_evaluator(self, probe_images: torch.Tensor, reference: torch.Tensor):
        """``evaluate(t, samples, model) -> dict``: inheritance and artifact energy of the unmarked
        S_t (eval.artifacts) against the key of the most recent marked data, generation t − 1
        (the run key in run mode), and the idempotence of the run's marking operation with that
        key (eval.idempotence, on the reference split's first ``n_probe`` images; with
        ``skip_detected`` the operation leaves flagged images alone). One probe, meter and
        idempotence per key, computed on first use.

        Args:
            probe_images: (n_probe, C, H, W) real images marked once to measure the mean residual
                and the watermark's band.
            reference: (N_ref, C, H, W) the held-out real reference split.
        """
        meters: dict[int, ArtifactMeter] = {}
        twice: dict[int, dict] = {}
        probe_images = probe_images[: int(self.cfg.n_probe)].to(self.device)
        reference = reference.to(self.device)
        held_out = reference[: int(self.cfg.n_probe)]

        def meter(g: int) -> ArtifactMeter:
            i = self.key_index(g)
            if i not in meters:
                probe = WatermarkProbe(lambda x: self.mark(g, x), probe_images,
                                       band_fraction=float(self.cfg.band_fraction),
                                       batch_size=self.batch_size)
                meters[i] = ArtifactMeter(probe, reference, self.detector(g), alpha=self.alpha,
                                          batch_size=self.batch_size)
                twice[i] = idempotence(lambda x: self.mark(g, x), held_out, self.batch_size)
            return meters[i]

        def evaluate(t: int, samples: torch.Tensor, model) -> dict:
            g = max(1, t - 1)
            row = {**meter(g)(samples), **twice[self.key_index(g)]}
            if self.cfg.key_mode in PER_GENERATION:
                keys = range(1, g + 1)
                residuals = torch.stack([meter(k).probe.residual_mean for k in keys])
                stacked = stacked_layers(residuals, samples, reference, self.batch_size)
                row.update({"artifact_energy_all_keys": stacked["total"],
                            "artifact_energy_all_keys_se": stacked["total_se"],
                            "artifact_keys": len(keys)})
            return row

        return evaluate

    def settings(self) -> dict:
        """Constant row columns naming what the watermark columns are computed with
        (:data:`SETTINGS_COLUMNS`)."""
        return {"wm_method": self.method_name, "wm_marks": self.marks, "wm_bits": self.num_bits,
                "wm_alpha": self.alpha,
                "wm_key": self.key_source, "wm_key_mode": str(self.cfg.key_mode),
                "wm_key_fingerprint": self._key.fingerprint,
                "wm_skip_detected": self.skip_detected,
                "wm_n_calibration": len(self._calibration),
                "wm_image_shape": "x".join(str(s) for s in self._shape)}


def build_run_watermark(cfg: DictConfig, image_shape: tuple[int, ...], reference: torch.Tensor,
                        device: torch.device) -> Optional[RunWatermark]:
    """The run's watermark, or None when ``watermark.enabled`` is false."""
    wm = cfg.get("watermark")
    if wm is None or not wm.enabled:
        return None
    if wm.get("modality") == "text":           # refused before the run (madmark.text_run)
        from madmark.text_run import check_modalities
        check_modalities(cfg, text=False)
    return RunWatermark(wm, int(cfg.seed), image_shape, reference, device)
