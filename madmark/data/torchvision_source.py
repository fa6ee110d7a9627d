"""TorchvisionDataset: MNIST, FashionMNIST or CIFAR10 read through ``torchvision.datasets``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from madmark.data.base import DataSource, Splits
from madmark.data.splitting import subset_indices
from madcore.errors import MadmarkError

DEFAULT_ROOT = "~/.cache/madmark/torchvision"
DATASETS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class TorchvisionDataset(DataSource):
    """A torchvision dataset: its train set is the train split, its test set the reference split.

    The two are disjoint by construction. ``n_train`` / ``n_reference`` optionally take seeded
    random subsets of them (independent streams of ``seed``). Images are float32
    ``(N, 1, 28, 28)`` for (Fashion)MNIST and ``(N, 3, 32, 32)`` for CIFAR10, in [0, 1];
    labels are int64 class indices.

    Nothing is downloaded unless ``download=True``; a dataset that is missing (or whose download
    fails) raises :class:`MadmarkError` naming ``root`` and the fix.

    Args:
        dataset: "MNIST", "FashionMNIST" or "CIFAR10" (case and "-"/"_" ignored).
        root: folder that holds (or will hold) ``<root>/MNIST/raw/...`` etc.
        download: fetch the dataset into ``root`` if it is not there.
        n_train / n_reference: subset sizes, or None for the whole train / test set.
        seed: chooses the subsets.
    """

    name = "torchvision"

    def __init__(self, dataset: str = "MNIST", root: str = DEFAULT_ROOT, download: bool = False,
                 n_train: Optional[int] = None, n_reference: Optional[int] = None, seed: int = 0):
        self.dataset = dataset
        self.root = root
        self.download = download
        self.n_train = n_train
        self.n_reference = n_reference
        self.seed = seed

    def _class_name(self) -> str:
        key = str(self.dataset).lower().replace("-", "").replace("_", "")
        if key not in DATASETS:
            raise MadmarkError(f"data.dataset={self.dataset!r} is not supported",
                               f"set data.dataset to one of {list(DATASETS.values())}")
        return DATASETS[key]

    def _open(self, cls_name: str, root: Path, train: bool):
        import pickle

        import torchvision.datasets

        cls = getattr(torchvision.datasets, cls_name)
        try:
            return cls(str(root), train=train, download=bool(self.download))
        except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
            if self.download:
                raise MadmarkError(
                    f"could not download torchvision {cls_name} to '{root}' ({_one_line(err)})",
                    "download it on a machine with internet with data.download=true and copy "
                    f"'{root}' here, or set data.root=<folder that holds it>") from err
            detail = "" if "Dataset not found" in str(err) else f" ({_one_line(err)})"
            raise MadmarkError(
                f"torchvision {cls_name} not found under '{root}'{detail}",
                "download it on a machine with internet with data.download=true, "
                "or set data.root=<folder that holds it>") from err

    @staticmethod
    def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 (N, C, H, W) in [0, 1], labels int64 (N,)) of a loaded dataset."""
        data = torch.as_tensor(np.asarray(ds.data))
        data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # CIFAR: NHWC
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        return data.float().div_(255.0).contiguous(), labels

    def _load(self) -> Splits:
        cls_name = self._class_name()
        root = Path(str(self.root)).expanduser()
        out = {}
        for split, train, k, stream in (("train", True, self.n_train, 0),
                                        ("reference", False, self.n_reference, 1)):
            x, y = self._tensors(self._open(cls_name, root, train))
            what = f"the torchvision {cls_name} {'train' if train else 'test'} set"
            idx = torch.from_numpy(subset_indices(len(x), k, [self.seed, stream], what,
                                                  f"data.n_{split}"))
            out[split] = (x[idx], y[idx])
        return Splits(train=out["train"][0], reference=out["reference"][0], kind="image",
                      train_labels=out["train"][1], reference_labels=out["reference"][1])
