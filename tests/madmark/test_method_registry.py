"""A watermark method is a class and a yaml: ``configs/watermark/<name>.yaml`` names the class in
``build._target_``, and ``method=<name>`` finds it in the loop's builder and the folder commands
(madmark/methods.py) with no code naming it."""
import json
import shutil

import pytest
import torch

import madmark.hydra_app as hydra_app
from madcore.images import write_png
from madmark import methods
from watermark import SecretKey, SpreadSpectrum

TOY_YAML = """\
# A test method: spread spectrum at a fixed 0.02 residual RMS, built by a class of its own.
defaults:
  - base
  - _self_

method: toy
bits: 16
build:
  _target_: tests.madmark.test_method_registry.ToyMark
  num_bits: ${..bits}
"""


class ToyMark(SpreadSpectrum):
    """Spread spectrum for (height, width) images at residual RMS 0.02: a method whose
    constructor takes the key, the image size and its bits."""

    name = "toy"

    def __init__(self, key: SecretKey, height: int, width: int, num_bits: int = 16):
        side = min(height, width)
        super().__init__(key, num_bits=num_bits, alpha=0.02, work_size=min(64, side),
                         band=(0.5, 1.0) if side >= 64 else (1.0, 1.42))


@pytest.fixture
def toy_configs(tmp_path, monkeypatch):
    """The shipped config tree plus configs/watermark/toy.yaml, as the one madmark reads."""
    tree = tmp_path / "configs"
    shutil.copytree(hydra_app.config_dir(), tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "watermark" / "toy.yaml").write_text(TOY_YAML)
    monkeypatch.setattr(hydra_app, "config_dir", lambda: tree)
    methods.method_config.cache_clear()
    yield tree
    methods.method_config.cache_clear()


def test_a_method_with_a_class_and_a_yaml_is_found(toy_configs):
    assert "toy" in methods.method_names()
    method = methods.build_method("toy", SecretKey("k"), 48, 40, bits=12)
    assert type(method) is ToyMark and method.num_bits == 12
    x = torch.rand(4, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    message = SecretKey("k").message(12).expand(4, -1)
    assert (method.decode_bits(method.embed(x, message)) == message).float().mean() > 0.9


def test_the_folder_commands_use_it_by_name(toy_configs, cli, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        write_png(images / f"{i}.png", torch.rand(3, 64, 64, generator=g))
    marked = tmp_path / "marked"
    code, _, err = cli("embed", str(images), str(marked), "key=secret", "method=toy")
    assert code == 0, err
    assert json.loads((marked / "watermark.json").read_text())["method"] == "toy"
    out = tmp_path / "detect.csv"
    code, stdout, err = cli("detect", str(marked), "key=secret", f"out={out}")
    assert code == 0 and "3 of 3 decoded images flagged" in stdout, (stdout, err)


def test_an_unknown_method_is_one_line_naming_the_choices(cli, tmp_path):
    (tmp_path / "in").mkdir()
    code, _, err = cli("embed", str(tmp_path / "in"), str(tmp_path / "out"), "key=k",
                       "method=nope")
    assert code == 2 and err.count("\n") == 1
    assert "unknown watermark method 'nope'" in err and "spread_spectrum" in err
