"""Every model's ``fit`` returns exactly the statistics its ``fit_columns`` declare, in order
(the engine writes them as ``fit_<key>``)."""
import pytest
import torch

import inspect

import loops.models
from loops.models import (DDPMModel, FlowModel, GaussianModel, GenerativeModel, GMMModel,
                          GPTModel, LatentDiffusionModel, NGramModel, PCAGMMModel, VAEModel,
                          WGANGPModel)
from loops.models.base import FIT_PREFIX
from tests.loops.models.test_ddpm import TINY as DDPM_TINY
from tests.loops.models.test_latent_diffusion import SMALL as LD_SMALL
from tests.loops.models.test_wgan import SMALL as WGAN_SMALL

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def vectors(n=64, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def tokens(n=32, length=8):
    return torch.randint(1, 16, (n, length), generator=torch.Generator().manual_seed(0))


def images(n=32):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


CASES = {
    "gaussian": (GaussianModel, vectors),
    "gmm": (lambda: GMMModel(n_components=2, max_iter=5), vectors),
    "pca_gmm": (lambda: PCAGMMModel(n_components=4, gmm_components=2, max_iter=5), images),
    "flow": (lambda: FlowModel(n_layers=2, hidden=8, steps=2, batch_size=32), vectors),
    "ddpm": (lambda: DDPMModel(**{**DDPM_TINY, "train_steps": 2}), images),
    "wgan": (lambda: WGANGPModel(**{**WGAN_SMALL, "steps": 2}), images),
    "vae": (lambda: VAEModel(latent_dim=2, width=4, epochs=1, prior_steps=2, prior_layers=2),
            images),
    "vae_normal_prior": (lambda: VAEModel(latent_dim=2, width=4, epochs=1, prior="normal"),
                         images),
    "latent_diffusion": (lambda: LatentDiffusionModel(**{**LD_SMALL, "train_steps": 2}), images),
    "gpt": (lambda: GPTModel(n_layer=1, n_head=1, d_model=8, steps=2, batch_size=8), tokens),
    "ngram": (lambda: NGramModel(order=3), tokens),
}


@pytest.mark.parametrize("name", CASES)
def test_fit_returns_the_declared_statistics(name):
    make, data = CASES[name]
    model = make()
    stats = model.fit(data(), torch.Generator().manual_seed(0))
    declared = [c.name.removeprefix(FIT_PREFIX) for c in model.fit_columns]
    assert list(stats) == declared
    assert all(c.name.startswith(FIT_PREFIX) for c in model.fit_columns)


def test_every_builtin_model_declares_its_fit_columns_and_has_a_case_here():
    builtin = [m for m in vars(loops.models).values() if inspect.isclass(m)
               and issubclass(m, GenerativeModel) and not inspect.isabstract(m)]
    assert len(builtin) >= 8
    tested = {type(make()) for make, _ in CASES.values()}
    for cls in builtin:
        assert cls.fit_columns, cls.__name__
        assert cls in tested, f"add a {cls.__name__} case to CASES"
