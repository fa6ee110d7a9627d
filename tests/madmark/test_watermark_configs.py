"""Every configs/watermark/<name>.yaml composes into `madmark run` and names a method that marks
and reads back real images (256 x 256 RGB photos; MNIST digits for the digits card) through the
same builder the loop uses."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import configs
from madmark.data import MNIST5k, Photos
from madmark.methods import build_method
from watermark import BaselineUnavailableError, SecretKey

_YAMLS = sorted((Path(configs.__file__).parent / "watermark").glob("*.yaml"))
#: the text watermarks (modality: text) mark at sampling time; madmark/text_run.py builds them
TEXT_NAMES = [p.stem for p in _YAMLS if "modality: text" in p.read_text()]
NAMES = [p.stem for p in _YAMLS if p.stem not in ("none", "base", *TEXT_NAMES)]


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    photos = Photos(seed=0, size=256, n_train=6, n_reference=6, reference_fraction=0.5,
                    images=["astronaut", "coffee", "rocket", "immunohistochemistry", "retina",
                            "hubble_deep_field"]).load().reference[:3]
    return {"photos": photos, "digits": MNIST5k(seed=0).load().reference[:3]}


@pytest.mark.parametrize("name", NAMES)
def test_watermark_config_builds_a_working_method(name, images):
    with initialize_config_module("configs", version_base=None):
        cfg = compose("config", overrides=[f"watermark={name}"]).watermark
    x = images["digits" if name.startswith("digits32") else "photos"]   # the grey 28x28 cards
    try:
        method = build_method(cfg.method, SecretKey("configs"), x.shape[-2], x.shape[-1],
                              int(cfg.bits), float(cfg.strength))
    except Exception as error:                     # optional extras (invisible-watermark, onnxruntime)
        if isinstance(error.__cause__, BaselineUnavailableError):
            pytest.skip(str(error))
        raise
    message = torch.randint(0, 2, (len(x), method.num_bits), generator=torch.Generator().manual_seed(0))
    accuracy = (method.decode_bits(method.embed(x, message.float())) == message).float().mean()
    assert accuracy >= 0.75, (name, float(accuracy))


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_text_watermark_config_builds_a_detecting_chooser(name):
    from loops.models.text_lm import TextLM
    from madmark.text_run import text_watermark

    class Unigram(TextLM):                  # a fixed skewed unigram over 64 tokens
        vocab_size, seq_len = 64, 48
        logp = torch.log_softmax(torch.randn(64, generator=torch.Generator().manual_seed(0)), 0)

        def fit(self, x, generator, progress=None, labels=None):
            return {}

        def next_logits(self, context):
            return self.logp.expand(len(context), 64)

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with initialize_config_module("configs", version_base=None):
        cfg = compose("config", overrides=[f"watermark={name}"]).watermark
    assert cfg.modality == "text" and cfg.method == name
    wm = text_watermark(cfg, seed=0, vocab_size=64)
    marked = Unigram().sample(50, generator=torch.Generator().manual_seed(1), chooser=wm)
    plain = Unigram().sample(50, generator=torch.Generator().manual_seed(2))
    assert wm.score(marked).flagged.double().mean() > 0.8, name
    assert wm.score(plain).flagged.double().mean() < 0.1, name


def test_watermark_base_alone_names_no_method(cli):
    code, _, err = cli("run", "watermark=base", "data=mnist5k", "progress=false")
    assert code == 2 and "watermark.method" in err and "Traceback" not in err
