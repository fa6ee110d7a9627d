import torch
import pytest


class NormalSource:
    """A real source for engine tests: fresh N(0, I) draws in ``dim`` dims."""

    def __init__(self, dim: int = 2):
        self.dim = dim

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.dim, generator=generator)


@pytest.fixture
def normal_source():
    return NormalSource()
