"""TorchvisionDataset on tiny fake datasets in torchvision's on-disk format, and offline errors."""
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch

from madmark.data import TorchvisionDataset
from madcore.errors import MadmarkError


def write_idx(path, array: np.ndarray):
    """An uncompressed IDX file (the MNIST raw format): magic, big-endian dims, uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = 0x0800 | array.ndim  # 0x08 = unsigned byte
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root, folder="MNIST", n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        data[prefix] = (images, labels)
    return data


@pytest.mark.parametrize("dataset, folder", [("MNIST", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_train_set_is_train_split_and_test_set_is_reference(tmp_path, dataset, folder):
    data = fake_mnist(tmp_path, folder)
    s = TorchvisionDataset(dataset=dataset, root=str(tmp_path)).load()
    assert s.kind == "image"
    assert s.train.shape == (12, 1, 28, 28) and s.reference.shape == (6, 1, 28, 28)
    assert s.train.dtype == torch.float32 and 0 <= s.train.min() and s.train.max() <= 1
    assert torch.equal(s.train, torch.from_numpy(data["train"][0]).float().div(255).unsqueeze(1))
    assert torch.equal(s.reference_labels, torch.from_numpy(data["t10k"][1]).long())


def test_subsets_are_seeded(tmp_path):
    fake_mnist(tmp_path)

    def make(seed):
        return TorchvisionDataset(root=tmp_path, n_train=5, n_reference=3, seed=seed).load()

    a, b, c = make(0), make(0), make(1)
    assert a.train.shape == (5, 1, 28, 28) and a.reference.shape == (3, 1, 28, 28)
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    with pytest.raises(MadmarkError, match="data.n_train=50.*12"):
        TorchvisionDataset(root=tmp_path, n_train=50).load()


def test_missing_dataset_offline_names_root_and_fix(tmp_path):
    with pytest.raises(MadmarkError) as err:
        TorchvisionDataset(dataset="CIFAR10", root=tmp_path / "nothing").load()
    msg = str(err.value)
    assert "CIFAR10 not found" in msg and str(tmp_path / "nothing") in msg
    assert "data.download=true" in msg and "data.root=" in msg and "\n" not in msg


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(MadmarkError, match="could not download torchvision MNIST.*name resolution"):
        TorchvisionDataset(root=tmp_path, download=True).load()


def test_unknown_dataset(tmp_path):
    with pytest.raises(MadmarkError, match="data.dataset='SVHN'"):
        TorchvisionDataset(dataset="SVHN", root=tmp_path).load()
