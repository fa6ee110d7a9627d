"""Fidelity and diversity of each generation against the held-out real reference split.

Builds the configured feature extractor once per run, extracts the reference features once, and
keeps the real k-NN manifold (radii) and the reference feature statistics for every generation:
a generation only costs the features of its own samples S_t, one real × fake pass, and one FID.

Columns added to each row (:data:`COLUMNS`): precision, recall, density, coverage (k-NN
manifolds, k), fid, kid, kid_std, and the setting they were computed on: features, n_real_eval,
n_fake_eval, k, kid_subsets, kid_subset_size.

Under ``torchrun`` each rank extracts the features of its ``shard(N)`` of the samples (and of the
reference, once), and the parts are gathered in rank order, so every rank holds all N features and
computes the same row (the k-NN metrics, FID and KID on all of them; cheap next to extraction).
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig

from eval.features import FeatureUnavailable, build_extractor
from eval.features.factory import EXTRACTORS, build_lenet_extractor
from eval.features.text_lm import build_text_lm_extractor
from eval.fid import FeatureStats, frechet_distance, kid
from eval.prdc import RealManifold
from madcore import dist
from madcore.columns import Column
from madcore.rng import generator
from madmark.data.base import Splits
from madcore.errors import MadmarkError

_ON = ("S_t (unmarked samples, the first n_fake_eval) vs the reference split (the first "
       "n_real_eval), in the run's feature space (column features)")
_SET = "the run's eval config and feature extractor"
_FEAT = "feature units (of the extractor in column features, e.g. LeNet)"
#: the columns :class:`GenerationMetrics` writes, in order
COLUMNS = (
    Column("precision", "fraction of S_t inside the real k-NN manifold (fidelity)",
           "fraction in [0, 1]", _ON),
    Column("recall", "fraction of real samples inside the k-NN manifold of S_t (diversity)",
           "fraction in [0, 1]", _ON),
    Column("density", "mean count of real k-NN balls holding a sample of S_t, ÷ k",
           "ratio (about 1 for real data; may exceed 1)", _ON),
    Column("coverage", "fraction of real samples whose k-NN ball holds a sample of S_t",
           "fraction in [0, 1]", _ON),
    Column("fid", "Fréchet distance between Gaussians fitted to the two feature sets",
           _FEAT.replace("units", "units²", 1), _ON, when="eval.fid"),
    Column("kid", "kernel inception distance: mean unbiased MMD² over random subsets, kernel "
           "(x·y/d + 1)³", "kernel units", _ON, when="eval.kid"),
    Column("kid_std", "standard deviation of the MMD² over the subsets", "kernel units", _ON,
           when="eval.kid"),
    Column("kid_subsets", "random subsets KID averages over", "count", _SET, when="eval.kid"),
    Column("kid_subset_size", "samples per KID subset (eval.kid_subset_size, capped at both set "
           "sizes)", "count", _SET, when="eval.kid"),
    Column("features", "the feature extractor, e.g. lenet(d=...)", "text", _SET),
    Column("n_real_eval", "reference samples the metrics use", "count", _SET),
    Column("n_fake_eval", "samples of S_t the metrics use", "count", _SET),
    Column("k", "neighbourhood size of precision, recall, density and coverage", "count", _SET),
)


def fingerprint(*tensors: Optional[torch.Tensor]) -> str:
    """SHA-1 of the tensors' shapes and bytes (identifies a training split for caches)."""
    h = hashlib.sha1()
    for t in tensors:
        if t is not None:
            t = t.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def choose_extractor(name: str, splits: Splits) -> str:
    """``auto``: raw for vectors, text_lm for token sequences, lenet for labelled images
    (≥ 2 classes), else random_cnn."""
    if name != "auto":
        return name
    if splits.kind == "vector":
        return "raw"
    if splits.kind == "text":
        return "text_lm"
    labels = splits.train_labels
    return "lenet" if labels is not None and len(torch.unique(labels)) >= 2 else "random_cnn"


def _raw(f: DictConfig, splits: Splits, data_name: str, device: torch.device):
    return build_extractor("raw")


def lenet_from_config(f: DictConfig, splits: Splits, data_name: str, device: torch.device):
    """The run's reference LeNet (a LeNetExtractor): trained on the REAL TRAIN split (or loaded
    from the cache), its accuracy measured on the held-out reference split; ``f``: the
    ``eval.features`` block."""
    if splits.train_labels is None:
        raise MadmarkError(f"lenet features need class labels but data '{data_name}' has none",
                           "set eval.features.name=random_cnn")
    key = {"source": data_name, "shape": list(splits.sample_shape),
           "train": fingerprint(splits.train, splits.train_labels)}
    return build_lenet_extractor(
        source=data_name, cache_dir=str(Path(f.cache_dir).expanduser()), key=key,
        train_x=splits.train, train_y=splits.train_labels, val_x=splits.reference,
        val_y=splits.reference_labels, epochs=int(f.epochs), seed=int(f.seed),
        device=str(device), in_channels=splits.sample_shape[0])


def text_lm_from_config(f: DictConfig, splits: Splits, data_name: str, device: torch.device):
    """The run's reference text LM as a TextLMExtractor (eval/features/text_lm.py): a small GPT
    trained on the REAL TRAIN split (or loaded from the cache), its perplexity measured on the
    held-out reference split. V is the splits' ``vocab_size`` (the tokenizer's), else the largest
    id of either split + 1."""
    if splits.kind != "text":
        raise MadmarkError(f"text_lm features need token sequences but data '{data_name}' is "
                           f"{splits.kind}", "set eval.features.name=auto")
    vocab = splits.vocab_size or int(max(splits.train.max(),
                                                           splits.reference.max())) + 1
    return build_text_lm_extractor(
        source=data_name, cache_dir=str(Path(f.cache_dir).expanduser()),
        key={"source": data_name}, train=splits.train, vocab_size=vocab, val=splits.reference,
        seed=int(f.seed), device=str(device))


def _random_cnn(f: DictConfig, splits: Splits, data_name: str, device: torch.device):
    return build_extractor("random_cnn", seed=int(f.seed),
                           in_channels=3 if splits.sample_shape[0] == 3 else 1)


def _pretrained(name: str) -> Callable[..., Any]:
    """A pretrained extractor (inception, dinov2): built with the ``eval.features`` settings its
    constructor names among weights_path and hub_dir."""
    def make(f: DictConfig, splits: Splits, data_name: str, device: torch.device):
        takes = inspect.signature(EXTRACTORS[name]).parameters
        return build_extractor(name, **{k: f.get(k) for k in ("weights_path", "hub_dir")
                                        if k in takes})
    return make


#: eval.features.name -> how the run builds it from (eval.features, splits, data name, device);
#: an extractor of eval.features.factory.EXTRACTORS not listed is built as a pretrained one
FROM_CONFIG: dict[str, Callable[..., Any]] = {"raw": _raw, "lenet": lenet_from_config,
                                              "random_cnn": _random_cnn,
                                              "text_lm": text_lm_from_config}


def make_extractor(cfg: DictConfig, splits: Splits, data_name: str, device: torch.device):
    """The run's feature extractor (``cfg``: the ``eval`` block), by :data:`FROM_CONFIG`."""
    f = cfg.features
    name = choose_extractor(f.name, splits)
    if name == "raw" or splits.kind == "vector":
        if splits.kind == "vector" and name != "raw":
            raise MadmarkError(f"eval.features.name={name} needs images but data is vectors",
                               "set eval.features.name=raw (or auto)")
        name = "raw"
    if (splits.kind == "text") != (name == "text_lm") and name in EXTRACTORS:
        if splits.kind == "text":
            raise MadmarkError(f"eval.features.name={name} needs images but data is token "
                               "sequences", "set eval.features.name=text_lm (or auto)")
        raise MadmarkError(f"eval.features.name=text_lm needs token sequences but data is "
                           f"{splits.kind}", "set eval.features.name=auto")
    try:
        if name not in EXTRACTORS:
            return build_extractor(name)          # its ValueError lists the choices
        return FROM_CONFIG.get(name, _pretrained(name))(f, splits, data_name, device)
    except FeatureUnavailable as e:
        problem, _, fix = str(e).partition(" — ")
        raise MadmarkError(problem, fix or "set eval.features.name=lenet or random_cnn") from e
    except ValueError as e:
        if isinstance(e, MadmarkError):
            raise
        raise MadmarkError(str(e), "check eval.features (madmark run --help)") from e


class GenerationMetrics:
    """Evaluator for the loop engine: ``metrics(t, samples, model) -> dict`` of row columns.

    Args:
        cfg: the ``eval`` config block.
        extractor: maps (N, ...) samples to (N, d) features.
        reference: (N_ref, ...) held-out real samples (never trained on).
        seed: run seed (KID subsets are drawn from a per-generation stream).
        device: where features and distances are computed.
    """

    def __init__(self, cfg: DictConfig, extractor, reference: torch.Tensor, seed: int,
                 device: torch.device):
        self.cfg, self.extractor, self.seed, self.device = cfg, extractor, seed, device
        n_real = len(reference) if cfg.n_real is None else min(int(cfg.n_real), len(reference))
        self.batch_size = int(cfg.features.batch_size)
        self.real = self.features(reference[:n_real])
        self.manifold = RealManifold(self.real, int(cfg.k), device=device)
        self.real_stats = FeatureStats.from_features(self.real.double())
        self.describe = extractor.describe()
        self._warn_small("reference", len(self.real))
        self._last: Optional[tuple[int, torch.Tensor]] = None

    def sample_features(self, t: int) -> Optional[torch.Tensor]:
        """(n_fake, d) CPU features of the first n_fake samples of S_t when generation ``t`` was
        the last one evaluated, else None (another evaluator may reuse them: madmark.cas)."""
        return self._last[1] if self._last is not None and self._last[0] == t else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) float32 CPU features of x (N, ...). Under torchrun each rank extracts its
        ``shard(N)`` and the parts are gathered (on the run's device, which the collective
        backend moves) in rank order; with fewer samples than ranks, every rank extracts all."""
        world = dist.world_size()
        if world == 1 or len(x) < world:
            return self.extractor.extract(x, batch_size=self.batch_size, device=self.device)
        mine = self.extractor.extract(x[dist.shard(len(x))], batch_size=self.batch_size,
                                      device=self.device)
        return dist.all_gather_cat(mine.to(self.device)).cpu()

    def _warn_small(self, which: str, n: int) -> None:
        d = self.real.shape[1]
        if self.cfg.fid and n < 2 * d:
            warnings.warn(f"FID: the {which} set has N={n} < 2d={2 * d} features "
                          f"({self.describe}); its covariance estimate is poor", stacklevel=3)

    def __call__(self, t: int, samples: torch.Tensor, model: Any = None) -> dict[str, Any]:
        cfg = self.cfg
        n_fake = len(samples) if cfg.n_fake is None else min(int(cfg.n_fake), len(samples))
        fake = self.features(samples[:n_fake])
        self._last = (t, fake)
        row: dict[str, Any] = dict(self.manifold.score(fake))
        if cfg.fid:
            if t == 1:
                self._warn_small("generated", len(fake))
            stats = FeatureStats.from_features(fake.double())
            row["fid"] = frechet_distance(self.real_stats.mean, self.real_stats.cov,
                                          stats.mean, stats.cov)
        if cfg.kid:
            size = min(int(cfg.kid_subset_size), len(self.real), len(fake))
            row["kid"], row["kid_std"] = kid(self.real, fake, subsets=int(cfg.kid_subsets),
                                             subset_size=size,
                                             generator=generator(self.seed, t, "kid"))
            row["kid_subsets"], row["kid_subset_size"] = int(cfg.kid_subsets), size
        row.update({"features": self.describe, "n_real_eval": len(self.real),
                    "n_fake_eval": len(fake), "k": int(cfg.k)})
        return row
