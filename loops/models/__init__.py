"""Generative models of the loop: fit from scratch on a pool, sample with bias λ ∈ (0, 1].

The neural ones (flow, WGAN-GP, DDPM, VAE, latent diffusion, GPT) are built on the shared scaffold
:mod:`.training`; the text ones (:mod:`.ngram`, :mod:`.gpt`) are :class:`.text_lm.TextLM` language
models."""
from .base import GenerativeModel, ProgressFn
from .ddpm import DDPMModel
from .flow import FlowModel
from .gaussian import GaussianModel
from .gmm import GMMModel
from .gpt import GPTModel
from .latent_diffusion import LatentDiffusionModel
from .ngram import NGramModel
from .pca_gmm import PCAGMMModel
from .vae import VAEModel
from .wgan import WGANGPModel

__all__ = ["GenerativeModel", "ProgressFn", "DDPMModel", "FlowModel", "GaussianModel", "GMMModel",
           "GPTModel", "LatentDiffusionModel", "NGramModel", "PCAGMMModel", "VAEModel", "WGANGPModel"]
