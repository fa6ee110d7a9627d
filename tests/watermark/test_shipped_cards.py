"""The model cards shipped in watermark/cards/ load and reproduce the metrics they record."""
import pytest

from watermark import load
from watermark.cards import CARDS_DIR
from watermark.train import evaluate

CARDS = sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", CARDS)
def test_card_reproduces_its_recorded_metrics(name):
    from madmark.data import MNIST5k

    model = load(name)
    card = model.card
    assert card["training"]["data"]["_target_"] == "madmark.data.MNIST5k"
    reference = MNIST5k(seed=card["training"]["seed"]).load().reference
    measured = evaluate(model, reference[:card["metrics"]["n_eval_images"]],
                        seed=card["training"]["seed"])
    for key in ("bit_acc", "bit_acc_jpeg50", "psnr"):
        assert measured[key] == pytest.approx(card["metrics"][key], abs=1e-4), key


def test_digits_card_meets_its_target():
    card = load("digits32").card
    assert card["architecture"]["num_bits"] >= 32
    assert card["metrics"]["bit_acc"] >= 0.99 and card["metrics"]["psnr"] >= 30
