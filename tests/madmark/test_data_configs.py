"""Every configs/data/*.yaml instantiates its source through Hydra's _target_."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import madmark.data as data
from madmark.hydra_app import config_dir   # imports configs: its schemas are registered

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def composed(name: str, seed: int):
    """``madmark run data=<name> seed=<seed>`` as Hydra composes it (the yaml on its schema)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"data={name}", f"seed={seed}"])


def test_every_source_has_a_config():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= set(data.SOURCES)


@pytest.mark.parametrize("name", sorted(data.SOURCES))
def test_config_instantiates_the_source(name, tmp_path):
    cfg = composed(f"{name}", seed=7)
    if name == "imagefolder":
        cfg.data.root = str(tmp_path)
    if name == "textfile":
        cfg.data.path = str(tmp_path)
    source = instantiate(cfg.data)
    assert type(source) is data.SOURCES[name] and source.name == name
    assert source.seed == 7


def test_vector_configs_load_through_hydra():
    cfg = composed("gmm2d", seed=1)
    cfg.data.n_train = 50
    s = instantiate(cfg.data).load()
    assert s.train.shape == (50, 2) and s.true_cov is not None


def test_photos_config_with_an_image_list(tmp_path):
    cfg = composed("photos", seed=1)
    cfg.data.images = ["coffee"]
    cfg.data.n_train, cfg.data.n_reference, cfg.data.size = 3, 2, 8
    assert instantiate(cfg.data).load().train.shape == (3, 3, 8, 8)


def test_imagefolder_config_with_a_list_resize(tmp_path):
    from PIL import Image
    import numpy as np

    for i, hw in enumerate([(10, 12), (20, 9), (7, 7)]):
        Image.fromarray(np.full(hw, 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    cfg = composed("imagefolder", seed=1)
    cfg.data.root, cfg.data.resize, cfg.data.n_reference = str(tmp_path), [6, 5], 1
    s = instantiate(cfg.data).load()
    assert s.train.shape == (2, 1, 6, 5)
