import pytest
import torch

from tests.watermark.conftest import photo_crops


@pytest.fixture(scope="session")
def photos256() -> torch.Tensor:
    """24 real RGB photo crops (N, 3, 256, 256) in [0, 1] from scikit-image's photos."""
    return photo_crops(24, 256, seed=0)
