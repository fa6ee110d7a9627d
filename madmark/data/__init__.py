"""Offline real data sources: each yields a train split, a disjoint held-out reference split and
fresh real draws (see :mod:`madmark.data.base`). Configured by ``configs/data/<name>.yaml``.
Images, vectors, and text (token windows, :mod:`madmark.data.text_source`; wikitext2 needs
internet)."""
from madmark.data.base import DataSource, Splits
from madmark.data.digits import Digits
from madmark.data.faces import Faces
from madmark.data.gaussian import Gaussian
from madmark.data.gmm2d import GMM2D
from madmark.data.imagefolder import ImageFolder
from madmark.data.mnist import MNIST5k
from madmark.data.photos import Photos
from madmark.data.text_source import Shakespeare, TextFile, TextSource, WikiText2
from madmark.data.torchvision_source import TorchvisionDataset

SOURCES = {cls.name: cls for cls in (MNIST5k, Digits, Photos, Faces, ImageFolder,
                                     TorchvisionDataset, Gaussian, GMM2D, Shakespeare,
                                     TextFile, WikiText2)}

__all__ = ["DataSource", "Splits", "MNIST5k", "Digits", "Photos", "Faces", "ImageFolder",
           "TorchvisionDataset", "Gaussian", "GMM2D", "TextSource", "Shakespeare", "TextFile",
           "WikiText2", "SOURCES"]
