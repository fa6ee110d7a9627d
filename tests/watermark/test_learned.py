"""LearnedWatermarker: shapes and range, cost independent of image size, gradients, cards."""
import pytest
import torch

from watermark.attack_layer import AttackLayer
from watermark.cards import load, load_card, read_card, save_card
from watermark.learned import LearnedWatermarker, jnd_mask
from madcore.quality import psnr


def _wm(**kw):
    torch.manual_seed(0)
    args = dict(num_bits=16, work_size=32, alpha=0.02, channels=3, width=8, msg_dim=8)
    args.update(kw)
    return LearnedWatermarker(**args)


@pytest.mark.parametrize("c,h,w", [(3, 64, 48), (1, 28, 28), (3, 256, 256)])
def test_shapes_range_and_strength_bound(c, h, w):
    wm = _wm(channels=c)
    x = torch.rand(3, c, h, w)
    msg = torch.randint(0, 2, (3, 16))
    x_w = wm.embed(x, msg)
    assert x_w.shape == x.shape and x_w.dtype == x.dtype
    assert x_w.min() >= 0 and x_w.max() <= 1
    assert (x_w - x).abs().max() <= wm.alpha + 1e-6          # tanh-bounded residual, no JND mask
    assert psnr(x_w, x).min() >= -20 * torch.log10(torch.tensor(wm.alpha)).item() - 1e-6
    if c == 3:   # the residual is on luma: the same offset on R, G, B where nothing clamps
        d = x_w - x
        inside = ((x > 0.05) & (x < 0.95)).all(1)
        assert torch.allclose(d[:, 0][inside], d[:, 1][inside], atol=1e-6)
    logits = wm.decode(x_w)
    assert logits.shape == (3, 16) and logits.dtype == torch.float32
    assert set(wm.decode_bits(x_w).unique().tolist()) <= {0.0, 1.0}


def test_jnd_mask_bounds_and_texture():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 16:] = torch.rand(1, 1, 32, 16)          # right half textured, left half flat
    m = jnd_mask(x)
    assert m.shape == (1, 1, 32, 32) and m.min() >= 0.25 and m.max() <= 2
    assert m[..., 4:12].mean() < m[..., 20:28].mean()
    wm = _wm(channels=1, jnd=True)
    assert (wm.embed(x, torch.ones(16)) - x).abs().max() <= 2 * wm.alpha + 1e-6


def test_networks_run_at_work_size_whatever_the_image_size():
    wm = _wm()
    seen = []
    hooks = [wm.embedder.register_forward_hook(lambda m, i, o: seen.append(("emb", tuple(i[0].shape[-2:])))),
             wm.extractor.register_forward_hook(lambda m, i, o: seen.append(("ext", tuple(i[0].shape[-2:]))))]
    for side in (64, 256):
        x_w = wm.embed(torch.rand(2, 3, side, side), torch.zeros(16))
        wm.decode(x_w)
    for h in hooks:
        h.remove()
    assert seen == [("emb", (32, 32)), ("ext", (32, 32))] * 2


def test_gradients_flow_embed_attack_decode():
    wm = _wm(channels=1, work_size=28)
    wm.train()
    layer = AttackLayer(["jpeg", "blur", "noise", "resize"], max_chain=2, seed=0)
    x = torch.rand(4, 1, 28, 28) * 0.8 + 0.1
    msg = torch.randint(0, 2, (4, 16)).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(wm.decode_train(layer(wm.embed_train(x, msg))), msg)
    loss.backward()
    for part in (wm.embedder, wm.extractor):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert wm.embedder.msg.linear.weight.grad.abs().sum() > 0     # the message reaches the loss


def test_messages_validated():
    wm = _wm()
    with pytest.raises(ValueError, match="bits"):
        wm.embed(torch.rand(1, 3, 32, 32), torch.zeros(8))
    with pytest.raises(ValueError, match="binary"):
        wm.embed(torch.rand(1, 3, 32, 32), torch.full((16,), 0.5))


def test_safetensors_and_card_round_trip(tmp_path):
    wm = _wm(channels=1, work_size=28, jnd=True)
    x = torch.rand(5, 1, 28, 28)
    msg = torch.randint(0, 2, (5, 16))
    metrics = {"bit_acc": 0.987, "bit_acc_jpeg50": 0.91, "psnr": 35.5}
    card = save_card(wm, tmp_path / "tiny.yaml", {"steps": 10, "attack_names": ["jpeg"]}, metrics)
    assert (tmp_path / "tiny.safetensors").is_file()
    assert not (tmp_path / "tiny.safetensors").read_bytes().startswith(b"\x80")   # not a pickle
    wm2 = load_card(card)
    assert wm2.hparams() == wm.hparams()
    assert torch.equal(wm2.embed(x, msg), wm.embed(x, msg))
    assert torch.equal(wm2.decode(x), wm.decode(x))
    assert wm2.card["metrics"] == metrics and wm2.card["training"]["steps"] == 10
    assert load(tmp_path / "tiny").hparams() == wm.hparams()          # path without suffix
    assert read_card(str(card))["name"] == "tiny"


def test_card_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model card"):
        load("no_such_model_card")
    card = save_card(_wm(), tmp_path / "gone.yaml")
    (tmp_path / "gone.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights"):
        load_card(card)
