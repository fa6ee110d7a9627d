"""GMM2D: the 25-mode 2-D Gaussian grid of the GAN mode-collapse literature."""
from __future__ import annotations

import torch

from madmark.data.base import DataSource, Splits
from madmark.data.gaussian import check_positive
from madcore.errors import MadmarkError

GRID = (-4.0, -2.0, 0.0, 2.0, 4.0)


def grid_means() -> torch.Tensor:
    """The 25 component means, float64 ``(25, 2)``, row-major over the grid GRID x GRID."""
    g = torch.tensor(GRID, dtype=torch.float64)
    return torch.cartesian_prod(g, g)


class GMM2D(DataSource):
    """An equal-weight mixture of 25 isotropic Gaussians with means on {-4,-2,0,2,4}^2.

    This is the "2D grid" of VEEGAN / PacGAN (spacing 2, std 0.05 by default, so the modes are
    well separated). Samples are float32 ``(N, 2)``; labels are int64 component indices 0-24
    (row-major, see :func:`grid_means`). The true moments are closed form: mean = average of the
    means (0) and cov = Cov(means) + std^2 I (= (8 + std^2) I on this grid).

    Train and reference are independent draws from one generator seeded by ``seed``;
    :meth:`draw_real` draws new mixture samples with the caller's generator.

    Args:
        seed: seeds the train and reference draws.
        n_train / n_reference: split sizes (default 2,000 each).
        std: standard deviation of every component (default 0.05).
    """

    name = "gmm2d"

    def __init__(self, seed: int = 0, n_train: int = 2000, n_reference: int = 2000,
                 std: float = 0.05):
        self.seed = seed
        self.n_train = n_train
        self.n_reference = n_reference
        self.std = std
        self.means = grid_means()

    def _sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        comp = torch.randint(len(self.means), (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.std * noise).float(), comp

    def _load(self) -> Splits:
        check_positive(n_train=self.n_train, n_reference=self.n_reference)
        if not float(self.std) > 0:
            raise MadmarkError(f"data.std={self.std!r} is not positive", "set data.std=0.05")
        g = torch.Generator().manual_seed(self.seed)
        train, train_labels = self._sample(self.n_train, g)
        reference, reference_labels = self._sample(self.n_reference, g)
        mean = self.means.mean(0)
        centred = self.means - mean
        eye = torch.eye(2, dtype=torch.float64)
        cov = centred.T @ centred / len(self.means) + float(self.std) ** 2 * eye
        return Splits(train=train, reference=reference, kind="vector",
                      train_labels=train_labels, reference_labels=reference_labels,
                      true_mean=mean, true_cov=cov)

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` new samples of the mixture: float32 ``(n, 2)``."""
        return self._sample(n, generator)[0]
