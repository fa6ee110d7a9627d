"""madmark train-watermark writes a loadable card whose recorded metrics the loaded model reproduces."""
import pytest

from watermark import load_card
from watermark.train import evaluate
from madmark.data import MNIST5k


def test_train_watermark_card_round_trip(cli, tmp_path):
    code, out, err = cli("train-watermark", "steps=30", "val_every=0", "checkpoint_every=15",
                         "eval_images=32", "card_name=tiny", f"out_dir={tmp_path / 'o'}")
    assert code == 0, err
    (card_path,) = (tmp_path / "o").rglob("tiny.yaml")
    model = load_card(card_path)
    assert model.card["metrics"]["n_eval_images"] == 32
    assert model.card["training"]["steps"] == 30
    reference = MNIST5k(seed=0).load().reference[:32]
    again = evaluate(model, reference, seed=0)
    for key in ("bit_acc", "bit_acc_jpeg50", "psnr"):
        assert again[key] == pytest.approx(model.card["metrics"][key], abs=1e-6), key
    assert (card_path.parent / "checkpoints").is_dir()
