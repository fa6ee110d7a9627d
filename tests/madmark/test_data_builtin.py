"""Bundled real image sources: mnist5k, digits, faces, photos, and the shared split helpers."""
import numpy as np
import pytest
import torch

from madmark.data import Digits, Faces, MNIST5k, Photos
from madmark.data.photos import DEFAULT_IMAGES, _rgb
from madmark.data.splitting import split_indices
from madcore.errors import MadmarkError


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1).numpy()}


def check_images(splits, shape, n_train, n_ref, bright=True):
    assert splits.kind == "image"
    assert splits.train.shape == (n_train, *shape) and splits.reference.shape == (n_ref, *shape)
    for x in (splits.train, splits.reference):
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    if bright:  # really scaled to [0, 1], not [0, 1/255]
        assert torch.cat([splits.train.flatten(), splits.reference.flatten()]).max() > 0.9


@pytest.mark.parametrize("n, k", [(10, 3), (1797, 297)])
def test_split_indices_partition_and_stratify(n, k):
    labels = np.arange(n) % 10
    tr, ref = split_indices(n, k, seed=3, labels=labels)
    assert len(ref) == k and np.array_equal(np.sort(np.concatenate([tr, ref])), np.arange(n))
    counts = np.bincount(labels[ref], minlength=10)
    assert counts.max() - counts.min() <= 1
    again = split_indices(n, k, seed=3, labels=labels)[1]
    other = split_indices(n, k, seed=4, labels=labels)[1]
    assert np.array_equal(ref, again) and not np.array_equal(ref, other)


@pytest.fixture(scope="module")
def mnist():
    return MNIST5k(seed=0).load()


def test_mnist5k_shapes_labels_and_stratified_split(mnist):
    check_images(mnist, (1, 28, 28), 4000, 1000)
    assert mnist.train_labels.dtype == torch.int64
    assert torch.bincount(mnist.reference_labels).tolist() == [100] * 10
    assert torch.bincount(mnist.train_labels).tolist() == [400] * 10


def test_mnist5k_splits_share_no_digit(mnist):
    assert not rows(mnist.train) & rows(mnist.reference)
    assert len(rows(mnist.train)) + len(rows(mnist.reference)) == 5000


def test_mnist5k_is_deterministic_per_seed(mnist):
    again, other = MNIST5k(seed=0).load(), MNIST5k(seed=1).load()
    assert torch.equal(again.reference, mnist.reference)
    assert torch.equal(again.train_labels, mnist.train_labels)
    assert not torch.equal(other.reference, mnist.reference)


def test_mnist5k_rejects_a_reference_split_that_leaves_no_train():
    with pytest.raises(MadmarkError, match="n_reference=5000.*set data.n_reference"):
        MNIST5k(n_reference=5000).load()


def test_digits_shapes_split_and_determinism():
    s = Digits(seed=2).load()
    check_images(s, (1, 8, 8), 1500, 297)
    assert not rows(s.train) & rows(s.reference)
    assert set(s.reference_labels.tolist()) == set(range(10))
    assert torch.equal(Digits(seed=2).load().reference, s.reference)
    assert not torch.equal(Digits(seed=3).load().reference, s.reference)


def test_faces_uses_the_100_faces_by_default():
    s = Faces(seed=0).load()
    check_images(s, (1, 25, 25), 80, 20)
    assert (s.train_labels == 1).all() and (s.reference_labels == 1).all()
    assert not rows(s.train) & rows(s.reference)
    assert not torch.equal(Faces(seed=1).load().reference, s.reference)


def test_faces_with_non_faces_and_resize():
    s = Faces(seed=0, n_reference=40, size=32, include_non_faces=True).load()
    check_images(s, (1, 32, 32), 160, 40)
    assert torch.bincount(s.reference_labels).tolist() == [20, 20]


@pytest.fixture(scope="module")
def photos():
    source = Photos(seed=0, n_train=700, n_reference=140)
    return source, source.load()


def test_photos_shapes_and_labels(photos):
    _, s = photos
    check_images(s, (3, 32, 32), 700, 140)
    n = len(DEFAULT_IMAGES)
    assert torch.bincount(s.train_labels, minlength=n).tolist() == [100] * n
    assert torch.bincount(s.reference_labels, minlength=n).tolist() == [20] * n


def test_photos_crops_come_from_disjoint_regions(photos):
    source, s = photos
    widths = np.array([_rgb(name).shape[1] for name in source.images])
    boundary = np.round(widths * 0.8).astype(int)
    tr, ref = source.crop_boxes["train"], source.crop_boxes["reference"]
    assert (tr[:, 2] + 32 <= boundary[tr[:, 0]]).all()  # train crops end left of the boundary
    assert (ref[:, 2] >= boundary[ref[:, 0]]).all()  # reference crops start right of it
    # the boxes really locate the pixels
    for split, x in (("train", s.train), ("reference", s.reference)):
        i, y0, x0 = source.crop_boxes[split][5]
        photo = torch.from_numpy(_rgb(source.images[i])).permute(2, 0, 1).float() / 255
        assert torch.equal(x[5], photo[:, y0:y0 + 32, x0:x0 + 32])


def test_photos_determinism_and_options(photos):
    _, s = photos
    assert torch.equal(Photos(seed=0, n_train=700, n_reference=140).load().train, s.train)
    other = Photos(seed=1, size=16, n_train=10, n_reference=4, images=["camera", "astronaut"])
    o = other.load()
    check_images(o, (3, 16, 16), 10, 4, bright=False)
    assert torch.equal(o.train[0, 0], o.train[0, 1])  # grayscale "camera" repeated to RGB


@pytest.mark.parametrize("kwargs, text", [
    ({"images": ["kidney"]}, "data.images"),
    ({"size": 200}, "too small"),
    ({"n_train": 0}, "data.n_train"),
])
def test_photos_bad_settings_raise_one_line_errors(kwargs, text):
    with pytest.raises(MadmarkError, match=text) as err:
        Photos(**kwargs).load()
    assert "\n" not in str(err.value)
