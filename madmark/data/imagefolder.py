"""ImageFolder: every image under a folder (searched recursively), read with Pillow."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from madcore.images import read_image
from madmark.data.base import DataSource, Splits
from madmark.data.splitting import split_pool
from madcore.errors import MadmarkError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: unreadable files named in one error, then a count of the rest
MAX_NAMED = 5


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` (any depth), sorted; hidden files and folders are skipped."""
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _target_size(resize) -> Optional[tuple[int, int]]:
    """``resize`` (None, int, or [H, W]) as (H, W) or None."""
    if resize is None:
        return None
    hw = [resize, resize] if isinstance(resize, int) else list(resize)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                               for v in hw):
        raise MadmarkError(f"data.resize={resize!r} is not a size",
                           "set data.resize=<int> or data.resize=[H,W] or data.resize=null")
    return int(hw[0]), int(hw[1])


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """``(C, H, W)`` with C in {1, 3} converted to ``channels`` (ITU-R 601 luma for grey)."""
    if arr.shape[0] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=0)
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.tensordot(luma, arr, axes=1)[None]


class ImageFolder(DataSource):
    """All images under ``root`` (png, jpg, jpeg, bmp, tif, tiff, webp; any depth).

    Images are float32 ``(N, C, H, W)`` in [0, 1]; there are no labels. The user's files are
    only read. Files and folders whose names start with "." are skipped. The reference split is a
    seeded random choice of files, so no file is in both splits.

    Args:
        root: folder of images.
        resize: None (all images must share one size), an int (square side) or [H, W].
        channels: None keeps the channels found (grey = 1, colour = 3; must agree across files),
            1 or 3 converts every image (alpha is always dropped).
        n_reference: reference split size, an int count or a fraction in (0, 1) of the files
            (default 0.2, rounded, at least 1). At least one file is left for training.
        seed: chooses the split.
    """

    name = "imagefolder"

    def __init__(self, root: Union[str, Path], resize: Union[None, int, Sequence[int]] = None,
                 channels: Optional[int] = None, n_reference: Union[int, float] = 0.2,
                 seed: int = 0):
        self.root = root
        self.resize = resize
        self.channels = channels
        self.n_reference = n_reference
        self.seed = seed

    def _files(self) -> list[Path]:
        root = Path(str(self.root)).expanduser()
        if not root.exists():
            raise MadmarkError(f"data.root '{root}' does not exist",
                               "set data.root=<folder of images>")
        if not root.is_dir():
            raise MadmarkError(f"data.root '{root}' is not a folder",
                               "set data.root=<folder of images>")
        files = find_images(root)
        if not files:
            raise MadmarkError(f"no image files ({', '.join(EXTENSIONS)}) found under '{root}'",
                               "set data.root=<folder that holds images>")
        return files

    @staticmethod
    def _decode(files: list[Path], size: Optional[tuple[int, int]]) -> list[np.ndarray]:
        """Every file through :func:`madcore.images.read_image` (alpha dropped: the loop models
        colour only); unreadable files are all named in one error (the first MAX_NAMED, then a
        count), so a folder is repaired in one pass."""
        reads = [read_image(path, size) for path in files]
        bad = [r for r in reads if not r.ok]
        if bad:
            named = "; ".join(f"'{r.path}' ({r.reason})" for r in bad[:MAX_NAMED])
            more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
            raise MadmarkError(f"cannot read {len(bad)} of {len(files)} image files: {named}{more}",
                               "remove or repair those files")
        return [r.image for r in reads]

    def _n_reference(self, n: int) -> int:
        k = self.n_reference
        if isinstance(k, float) and 0.0 < k < 1.0:
            k = max(1, int(round(k * n)))
        elif isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MadmarkError(f"data.n_reference={k!r} is neither a count nor a fraction",
                               "set data.n_reference=<int >= 1> or a fraction in (0, 1)")
        if n < 2 or k > n - 1:
            raise MadmarkError(
                f"data.root '{self.root}' has {n} image(s), too few for a reference split of {k} "
                "plus at least 1 training image",
                "add images, or set a smaller data.n_reference")
        return k

    def _load(self) -> Splits:
        files = self._files()
        size = _target_size(self.resize)
        if self.channels not in (None, 1, 3):
            raise MadmarkError(f"data.channels={self.channels!r} is not 1, 3 or null",
                               "set data.channels=1, 3 or null")
        n_reference = self._n_reference(len(files))
        arrays = self._decode(files, size)

        chans = [a.shape[0] for a in arrays]
        channels = self.channels
        if channels is None:
            if len(set(chans)) > 1:
                grey, colour = files[chans.index(1)], files[chans.index(3)]
                raise MadmarkError(f"images under '{self.root}' mix grayscale ('{grey}') and "
                                   f"colour ('{colour}')", "set data.channels=1 or data.channels=3")
            channels = chans[0]
        sizes = [a.shape[1:] for a in arrays]
        if len(set(sizes)) > 1:
            first = {}
            for path, hw in zip(files, sizes):
                first.setdefault(hw, path)
            found = ", ".join(f"{h}x{w} (e.g. '{p}')" for (h, w), p in list(first.items())[:4])
            raise MadmarkError(f"images under '{self.root}' have mixed sizes (HxW): {found}",
                               "set data.resize=<size> or data.resize=[H,W]")

        images = np.stack([to_channels(a, channels) for a in arrays])
        return split_pool(images, None, n_reference, self.seed, self.name)
