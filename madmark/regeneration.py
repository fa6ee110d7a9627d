"""Regeneration attacks for ``madmark eval-watermark`` (Zhao et al. 2023; the WAVES / W-Bench
"regeneration" category): a marked image is pushed through a generative model trained on clean
images and what comes out is detected again.

    regen_vae        strength = latent noise s   z = μ(x) + s·ε, image = decoder mean E[x | z]
                                                 (s = 0: plain reconstruction; the prior has
                                                 unit scale, so s = 1 is a prior-sized jolt)
    regen_diffusion  strength = noise fraction   latent diffusion: encode, noise the latent to
                                                 step t = round(f·T), denoise back with DDIM,
                                                 decode (f → 1: a fresh sample)

Each regenerator is a loop model (``configs/model/<name>.yaml``, under ``regeneration.<name>`` in
the eval-watermark config) fitted ONCE on the source's clean real TRAIN split — never on the
reference images being marked and attacked — and cached as safetensors under
``regeneration.cache_dir``, keyed by the source, the train split's bytes, the model's resolved
config and the seed (like the LeNet feature cache), so a second evaluation loads it in seconds.

``madmark train-watermark regeneration=vae`` trains a learned watermark against the same cached
VAE: :func:`training_regenerator` wraps it as :class:`VAEReconstruction`, regen_vae at strength 0
as a frozen but differentiable module (``regenerate()`` runs without gradients), which the trainer
(``watermark.train``, trainer.regeneration_prob) puts between the embedder and the extractor.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from torch import nn

from loops.models import GenerativeModel
from loops.models.vae import VAEModel, decoder_mean
from madcore.errors import MadmarkError
from madcore.files import atomic_write_text, atomic_write_with
from madmark.data.base import Splits
from madmark.metrics import fingerprint

#: attack name → the key of its model config under ``regeneration``
REGENERATORS: dict[str, str] = {"regen_vae": "vae", "regen_diffusion": "latent_diffusion"}
#: bump when a regenerator's fit or state layout changes, so old cache entries are not reused
CACHE_VERSION = 1


@dataclass
class Regenerator:
    """A fitted regeneration model: ``regenerator(x, strength, generator) -> x'``, both
    (N, C, H, W) float32 in [0, 1], through the model's ``regenerate(x, strength, generator)``.
    ``info``: ``cached`` (loaded, not fitted), ``fit_s`` (seconds of the fit, or of the load),
    ``cache_path``, and the fit statistics when it was fitted in this call."""

    attack: str
    model: GenerativeModel
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor, strength: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.model.regenerate(x, float(strength), generator=generator).clamp(0, 1)


def cache_key(attack: str, model_cfg: DictConfig, splits: Splits, data_name: str,
              seed: int) -> dict[str, Any]:
    """The JSON-able identity of one cached regenerator."""
    return {"attack": attack, "version": CACHE_VERSION, "source": data_name,
            "shape": list(splits.sample_shape),
            "train": fingerprint(splits.train, splits.train_labels), "seed": int(seed),
            "model": OmegaConf.to_container(model_cfg, resolve=True)}


def entry_dir(cache_dir: str | Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{key['attack']}-{digest}"


def load_or_fit(attack: str, model_cfg: DictConfig, splits: Splits, data_name: str,
                cache_dir: str | Path, seed: int, device: torch.device) -> Regenerator:
    """The regenerator ``attack`` (a key of :data:`REGENERATORS`) for this source: loaded from
    ``cache_dir`` when an entry with the same key exists, else built from ``model_cfg``
    (``_target_``), fitted on the clean real train split with a generator seeded by ``seed``, and
    cached (safetensors + meta.json, written atomically)."""
    if attack not in REGENERATORS:
        raise MadmarkError(f"unknown regeneration attack '{attack}'",
                           f"use regeneration.attacks= a list of {', '.join(REGENERATORS)}")
    if splits.kind != "image":
        raise MadmarkError(f"{attack} needs images, the data gives {splits.kind}s",
                           "choose an image source or drop regeneration.attacks")
    key = cache_key(attack, model_cfg, splits, data_name, seed)
    entry = entry_dir(cache_dir, key)
    model: GenerativeModel = instantiate(model_cfg)
    if not callable(getattr(model, "regenerate", None)):
        raise MadmarkError(f"regeneration.{REGENERATORS[attack]} builds "
                           f"{type(model).__name__}, which has no regenerate()",
                           f"point regeneration.{REGENERATORS[attack]} at a model config that "
                           "regenerates (vae, latent_diffusion)")
    start = time.perf_counter()
    weights, meta = entry / "model.safetensors", entry / "meta.json"
    if weights.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        model.load_state_dict(load_file(str(weights), device=str(device)))
        return Regenerator(attack, model, {"cached": True, "cache_path": str(entry),
                                           "fit_s": time.perf_counter() - start})
    g = torch.Generator(device).manual_seed(int(seed))
    labels = None if splits.train_labels is None else splits.train_labels.to(device)
    stats = model.fit(splits.train.to(device).float(), g, labels=labels)
    fit_s = time.perf_counter() - start
    entry.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(weights, lambda p: save_file(state, str(p)))
    atomic_write_text(meta, json.dumps({"key": key, "fit_s": fit_s, "fit": stats}, indent=2,
                                       default=float))
    return Regenerator(attack, model, {"cached": False, "cache_path": str(entry), "fit_s": fit_s,
                                       **{f"fit_{k}": v for k, v in stats.items()}})


def model_config(cfg: DictConfig, attack: str) -> DictConfig:
    """The model config of regeneration ``attack`` in the ``regeneration`` node ``cfg``
    (``cfg.vae`` for regen_vae); one-line errors for an unknown attack or an unset config."""
    if attack not in REGENERATORS:
        raise MadmarkError(f"unknown regeneration attack '{attack}'",
                           f"use regeneration.attacks= a list of {', '.join(REGENERATORS)}")
    model_key = REGENERATORS[attack]
    if cfg.get(model_key) is None:
        raise MadmarkError(f"regeneration.{model_key} is not set",
                           f"add regeneration.{model_key}: a model config (configs/model/)")
    return cfg[model_key]


def build_regenerators(cfg: DictConfig, splits: Splits, data_name: str,
                       device: torch.device) -> list[tuple[Regenerator, list[float]]]:
    """The regenerators ``cfg.attacks`` names (the ``regeneration`` block of eval-watermark's
    config), each with its strengths, fitted or loaded."""
    out = []
    for attack in [str(a) for a in cfg.attacks]:
        model_cfg = model_config(cfg, attack)
        strengths = [float(s) for s in cfg.strengths[attack]]
        if not strengths:
            raise MadmarkError(f"regeneration.strengths.{attack} is empty",
                               f"give {attack} one or more strengths")
        print(f"{attack}: fitting or loading regeneration.{REGENERATORS[attack]} on the clean "
              "train split", flush=True)
        regen = load_or_fit(attack, model_cfg, splits, data_name, cfg.cache_dir, int(cfg.seed),
                            device)
        out.append((regen, strengths))
    return out


class VAEReconstruction(nn.Module):
    """regen_vae at strength 0 as a differentiable module: x (N, C, H, W) in [0, 1] -> the
    decoder mean E[x | z = μ(x)] of a fitted :class:`VAEModel` (N, C, H, W) in [0, 1], what
    ``model.regenerate(x, 0)`` returns, computed with gradients to x (in float32, without the
    model's autocast or chunking). The VAE's weights are frozen (``requires_grad_(False)``, eval
    mode); the module is the trainer's regenerator, not something it trains."""

    def __init__(self, model: VAEModel):
        super().__init__()
        if getattr(model, "net", None) is None:
            raise MadmarkError("the regeneration VAE is not fitted",
                               "build it with madmark.regeneration.load_or_fit")
        self.net, self.likelihood = model.net, model.likelihood
        self.shape = tuple(model.shape)
        self.requires_grad_(False).eval()
        for param in self.parameters():
            param.grad = None                        # what a fit in this process left behind

    def train(self, mode: bool = True) -> "VAEReconstruction":
        return super().train(False)                  # always in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise MadmarkError(f"the regeneration VAE got images {tuple(x.shape[1:])}, fitted "
                               f"on {self.shape}", "regenerate images of the fitted size")
        mu, _ = self.net.encode(x.float())
        return decoder_mean(self.net.decode(mu), self.likelihood).contiguous()


#: the regeneration attacks train-watermark can put in training (a differentiable path)
TRAINABLE = ("regen_vae",)


def trainable_attack(cfg: DictConfig) -> str:
    """``cfg.attack`` of train-watermark's ``regeneration`` node, refused in one line unless it
    is one of :data:`TRAINABLE`."""
    attack = str(cfg.get("attack"))
    if attack not in TRAINABLE:
        raise MadmarkError(f"regeneration.attack={attack} cannot be trained through",
                           f"use regeneration=vae (attack {', '.join(TRAINABLE)}, a VAE "
                           "reconstruction with gradients)")
    return attack


def training_regenerator(cfg: DictConfig, splits: Splits, data_name: str,
                         device: torch.device) -> VAEReconstruction:
    """The frozen, differentiable regenerator of ``madmark train-watermark regeneration=vae``
    (``cfg``: the ``regeneration`` node, configs/regeneration/vae.yaml: ``attack``, its model
    under ``vae``, ``seed``, ``cache_dir``), fitted on the clean train split or loaded from the
    cache eval-watermark shares, on ``device``."""
    attack = trainable_attack(cfg)
    model_key = REGENERATORS[attack]
    regen = load_or_fit(attack, model_config(cfg, attack), splits, data_name, cfg.cache_dir,
                        int(cfg.seed), device)
    if not isinstance(regen.model, VAEModel):
        raise MadmarkError(f"regeneration.{model_key} builds {type(regen.model).__name__}, not "
                           "a VAE", f"point regeneration.{model_key} at a VAE config "
                           "(configs/model/vae.yaml)")
    return VAEReconstruction(regen.model).to(device)
