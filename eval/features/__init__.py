"""Feature extractors: images ``(N, C, H, W)`` float in [0, 1] → features ``(N, d)`` float32.

=============  =====  ==========================================================================
name           d      what
=============  =====  ==========================================================================
raw            D      flattened pixels; vectors ``(N, D)`` unchanged
random_cnn     256    fixed-seed random CNN (no training, any domain)
lenet          128    LeNet trained on the source's real TRAIN split (the paper's MNIST "FID")
inception      2048   FID Inception-v3 pool3 (needs local weights offline)
dinov2         384    DINOv2 ViT-S/14 CLS token (needs local hub repo + weights offline)
text_lm        64     token sequences (N, L) int64: mean final hidden state of a small GPT
                      trained on the source's real TRAIN split (the LeNet of text)
=============  =====  ==========================================================================

Use ``build_extractor(name, **kwargs).extract(x)``; every extractor has ``name``, ``dim`` and
``describe()`` (e.g. ``"lenet(mnist5k, acc=0.972)"``) for results tables.
"""
from eval.features.base import FeatureExtractor, FeatureUnavailable
from eval.features.dinov2 import DINOv2Extractor
from eval.features.factory import EXTRACTORS, build_extractor, build_lenet_extractor
from eval.features.inception import InceptionExtractor
from eval.features.lenet import LeNet, LeNetExtractor, lenet_accuracy
from eval.features.lenet_cache import load_or_train_lenet
from eval.features.lenet_train import train_lenet
from eval.features.random_cnn import RandomCNNExtractor
from eval.features.raw import RawExtractor
from eval.features.text_lm import TextLMExtractor, load_or_train_text_lm

__all__ = ["FeatureExtractor", "FeatureUnavailable", "build_extractor", "build_lenet_extractor",
           "EXTRACTORS", "RawExtractor", "RandomCNNExtractor", "LeNet", "LeNetExtractor",
           "train_lenet", "lenet_accuracy", "load_or_train_lenet", "InceptionExtractor",
           "DINOv2Extractor", "TextLMExtractor", "load_or_train_text_lm"]
