"""What a run on text data adds to the loop engine: text metrics, a watermark that marks while
sampling, its inheritance and radioactivity, and the watermark filter.

    attach_text(cfg, engine, source, splits, run_dir, device, data_name)   # madmark.commands.run

- **Metrics** (:class:`madmark.text_evaluation.TextMetrics`): ``ppl_real``, ``ppl_ref`` under a
  reference n-gram LM fitted once on the real train split, distinct-1..4, tail mass; with
  ``eval.text_features`` also precision, recall, density, coverage, FID and KID
  (:class:`madmark.metrics.GenerationMetrics`) on sequence embeddings of a small GPT trained
  once on the real train split (eval/features/text_lm.py).
- **Watermark** (``watermark=kgw`` or ``watermark=exp``; configs/watermark/{kgw,exp}.yaml): the
  pooled part of S_t is drawn again from model_t with the method as the sampler's token chooser
  (:class:`loops.stages.SamplingWatermarkStage`); ``watermark.mark=false`` (the control arm)
  samples unmarked and only measures.
- **Inheritance** of model_t's own unmarked samples S_t, scored with the run's key: the share of
  documents flagged at α, the median z, the share of windows left after de-duplication; and the
  **radioactivity** test of Sander et al. (2024): one test over all of S_t with the scored
  (context, token) windows de-duplicated across the set (without it, text repeating itself looks
  marked).
- **Filter** (``filter=detector``): drops the pool's documents the method flags at α.

The run directory gets ``tokenizer.json`` (the run's tokenizer), so ``madmark detect`` can score
text of the run later; the key never leaves the process (only its fingerprint is recorded).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import eval.artifacts
from loops.engine import LoopEngine
from loops.models import NGramModel
from loops.stages import FilterStage, SamplingWatermarkStage
from madcore.columns import Column
from madcore.errors import MadmarkError
from madcore.files import atomic_write_text
from madmark.methods import secret_key
from madmark.text_evaluation import TextMetrics
from madmark.watermarking import SETTINGS_COLUMNS as IMAGE_SETTINGS, experiment_key, refuse_other_key
from watermark.text import TEXT_WATERMARKS, TextWatermark

#: watermark.method -> the text watermark class (watermark.text.TEXT_WATERMARKS' classes)
TEXT_METHODS = {name: cls for name, (cls, _) in TEXT_WATERMARKS.items()}

_COLUMN = {c.name: c for c in (*IMAGE_SETTINGS, *eval.artifacts.COLUMNS)}
_TESTED = _COLUMN["inherit_detect_rate"].computed_on
#: the constant columns naming the text watermark (shared declarations with the image runs)
SETTINGS_COLUMNS = (
    *(_COLUMN[n] for n in ("wm_method", "wm_marks", "wm_alpha", "wm_key", "wm_key_mode",
                           "wm_key_fingerprint")),
    Column("wm_text_settings", "the text watermark's settings (γ, δ, context width h, green "
           "list, test; EXP: h)", "text", "the run's config (watermark.text)"),
)
#: the inheritance and radioactivity columns of a text run, in order
INHERITANCE_COLUMNS = (
    _COLUMN["inherit_detect_rate"],
    Column("inherit_z_median", "median over S_t's documents of the watermark test's z-score "
           "(0 for text independent of the key)", "standard deviations", _TESTED),
    Column("inherit_scored_fraction", "scored (context, token) windows ÷ tokens after "
           "de-duplication within each document (low: the text repeats itself)",
           "fraction in [0, 1]", _TESTED),
    _COLUMN["radio_log10p"],
    Column("radio_n_scored", "windows the radioactivity test scored (de-duplicated across S_t)",
           "count", _TESTED),
)


def text_watermark(cfg: DictConfig, seed: int, vocab_size: int) -> TextWatermark:
    """The run's text watermark from the ``watermark`` config (method kgw | exp, key_file,
    alpha, text: the method's settings); the key is the file's or the seed's experiment key."""
    method = str(cfg.method)
    if method not in TEXT_METHODS:
        raise MadmarkError(f"watermark={method} marks images, but this run's data is text",
                           f"use a text watermark: watermark={' or watermark='.join(TEXT_METHODS)}"
                           ", or watermark=none")
    if str(cfg.get("key_mode", "run")) != "run":
        raise MadmarkError(f"watermark.key_mode={cfg.key_mode}: text runs use one key",
                           "set watermark.key_mode=run")
    key = secret_key("", str(cfg.key_file)) if cfg.get("key_file") else experiment_key(seed)
    try:
        return TEXT_METHODS[method](key, vocab_size, instantiate(cfg.text))
    except ValueError as e:
        raise MadmarkError(f"watermark={method}: {e}", "fix the setting under watermark.text")


class TextRunWatermark:
    """A run's text watermark: the marking sampler, detection, settings and inheritance."""

    def __init__(self, cfg: DictConfig, seed: int, vocab_size: int):
        self.wm = text_watermark(cfg, seed, vocab_size)
        self.method_name, self.marks = str(cfg.method), bool(cfg.get("mark", True))
        self.key_source = "file" if cfg.get("key_file") else "seed (experiment key, not secret)"
        self.alpha = self.wm.alpha

    def sample_marked(self, t: int, model: Any, n: int, bias: float,
                      generator: torch.Generator) -> torch.Tensor:
        """n samples (n, L) of model_t at bias λ drawn with the watermark as the chooser."""
        return model.sample(n, bias, generator=generator, chooser=self.wm)

    def flags(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """bool (N,): documents (N, L) whose test has p ≤ α."""
        return self.wm.score(x).flagged

    def settings(self) -> dict[str, Any]:
        c = self.wm.config
        shown = {k: v for k, v in vars(c).items() if k != "alpha"}
        return {"wm_method": self.method_name, "wm_marks": self.marks, "wm_alpha": self.alpha,
                "wm_key": self.key_source, "wm_key_mode": "run",
                "wm_key_fingerprint": self.wm.key.fingerprint,
                "wm_text_settings": " ".join(f"{k}={v}" for k, v in shown.items())}

    def inheritance(self, t: int, samples: torch.Tensor, model: Any = None) -> dict[str, Any]:
        """The row's :data:`INHERITANCE_COLUMNS` for S_t (N, L)."""
        per_doc = self.wm.score(samples)
        pooled = self.wm.pooled(self.wm.score(samples, dedup="corpus"))
        return {
            "inherit_detect_rate": float(per_doc.flagged.double().mean()),
            "inherit_z_median": float(per_doc.z.median()),
            "inherit_scored_fraction": float(per_doc.num_scored.sum()) / max(samples.numel(), 1),
            "radio_log10p": float(pooled.log_p[0]) / math.log(10),
            "radio_n_scored": int(pooled.num_scored[0]),
        }

    def check_same_key(self, recorded: dict) -> None:
        """Refuse a key other than the one the run's finished generations were marked with."""
        refuse_other_key(recorded, self.wm.key.fingerprint,
                         "resume with the key file the run started with (watermark.key_file), "
                         "or start a new run")


def target_class(node: Optional[DictConfig]) -> Optional[type]:
    """The class a config node's ``_target_`` names, or None (no node, not a class, a bad
    target: reported where the component is built)."""
    from hydra.utils import get_class

    if node is None or node.get("_target_") is None:
        return None
    try:
        cls = get_class(str(node.get("_target_")))
    except Exception:
        return None
    return cls if isinstance(cls, type) else None


def data_is_text(cfg: DictConfig) -> bool:
    """Whether ``cfg.data`` builds a text source (from its ``_target_`` class; no data loaded)."""
    from madmark.data.text_source import TextSource

    cls = target_class(cfg.get("data"))
    return cls is not None and issubclass(cls, TextSource)


def check_modalities(cfg: DictConfig, text: bool) -> None:
    """Refuse (one-line MadmarkError) parts of a run made for the other modality: an image
    watermark, the classifier filter or CAS on text; a text watermark on images. Called before
    the run directory exists (madmark.commands.run.check_run_config) and again when the data
    is loaded."""
    wm = cfg.get("watermark")
    marks_text = wm is not None and bool(wm.enabled) and wm.get("modality") == "text"
    if not text:
        if marks_text:
            raise MadmarkError(f"watermark={wm.method} marks text (at sampling time), but this "
                               "run's data is not text",
                               "use data=shakespeare (or data=textfile) with model=ngram, or an "
                               "image watermark such as watermark=spread_spectrum")
        return
    model = target_class(cfg.get("model"))
    if model is not None and "text" not in getattr(model, "accepts", ("text",)):
        raise MadmarkError(f"model {model.__name__} does not take text data",
                           "choose a model for text data (model=ngram or model=gpt)")
    if wm is not None and bool(wm.enabled) and not marks_text:
        raise MadmarkError(f"watermark={wm.method} marks images, but this run's data is text",
                           f"use a text watermark: watermark={' or watermark='.join(TEXT_METHODS)}"
                           ", or watermark=none")
    f = cfg.get("filter")
    if f is not None and bool(f.enabled) and str(f.get("method", "watermark")) == "classifier":
        if marks_text:
            raise MadmarkError("filter=classifier detects synthetic images; text runs have none",
                               "use filter=detector with watermark=kgw or watermark=exp")
        raise MadmarkError("filter=classifier on text needs a text watermark to detect (the "
                           "learned detector is for images)",
                           "add watermark=kgw (or watermark=exp) with filter=detector, or set "
                           "filter=none")
    if bool(cfg.eval.get("cas", False)):
        raise MadmarkError("eval.cas trains an image classifier; this run's data is text",
                           "set eval.cas=false")


def check_text_model(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    """Overrides for the model's constructor: its ``vocab_size`` is the tokenizer's, so a
    generation whose pool stops using some tokens keeps the full vocabulary."""
    set_size = cfg.model.get("vocab_size")
    if set_size is None:
        return {"vocab_size": vocab_size}
    if int(set_size) < vocab_size:
        raise MadmarkError(f"model.vocab_size={set_size} is smaller than the tokenizer's "
                           f"{vocab_size} ids", "set model.vocab_size=null (the tokenizer's)")
    return {}


def attach_text(cfg: DictConfig, engine: LoopEngine, source: Any, splits: Any,
                run_dir: Optional[Path], device: torch.device,
                data_name: str = "text") -> Optional[TextRunWatermark]:
    """Add the text evaluators, watermark stage and filter to ``engine``; write the run's
    tokenizer to ``run_dir/tokenizer.json``. Returns the run's watermark (None without)."""
    tokenizer = source.tokenizer
    vocab = int(tokenizer.vocab_size)
    if run_dir is not None and not (run_dir / "tokenizer.json").exists():
        atomic_write_text(run_dir / "tokenizer.json", tokenizer.to_str())
    if cfg.eval.enabled:
        reference_lm = NGramModel(order=int(cfg.eval.text_reference_order), vocab_size=vocab)
        reference_lm.fit(splits.train.to(device), torch.Generator(device=device))
        engine.evaluators.append(TextMetrics(
            splits.reference.to(device), splits.train.to(device), vocab, reference_lm,
            n_eval=cfg.eval.text_n_eval, tail_share=float(cfg.eval.text_tail_share),
            describe_lm=f"ngram(order={reference_lm.order}, real train split)"))
        if bool(cfg.eval.get("text_features", True)):      # k-NN metrics on LM embeddings
            from madmark.metrics import GenerationMetrics, make_extractor

            extractor = make_extractor(cfg.eval, splits, data_name, device)
            engine.evaluators.append(GenerationMetrics(cfg.eval, extractor, splits.reference,
                                                       int(cfg.seed), device))
    check_modalities(cfg, text=True)
    wm_cfg = cfg.get("watermark")
    filtering = cfg.get("filter") is not None and bool(cfg.filter.enabled)
    if wm_cfg is None or not wm_cfg.enabled:
        if filtering:
            raise MadmarkError("filter=detector on text needs a text watermark to detect",
                               "add watermark=kgw (or watermark=exp), or set filter=none")
        return None
    run_wm = TextRunWatermark(wm_cfg, int(cfg.seed), vocab)
    if run_wm.marks:
        engine.watermark = SamplingWatermarkStage(run_wm.sample_marked, run_wm.method_name,
                                                  detect=run_wm.flags)
    settings = run_wm.settings()
    engine.evaluators.append(lambda t, samples, model: dict(settings))
    engine.evaluators.append(run_wm.inheritance)
    if filtering:
        engine.filter = FilterStage(run_wm.flags, min_pool=int(cfg.filter.min_pool),
                                    alpha=run_wm.alpha)
    return run_wm
