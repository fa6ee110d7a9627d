"""watermark.imageops: BT.601 luma."""
import torch

from watermark.imageops import luma


def test_luma_is_bt601():
    x = torch.rand(2, 3, 5, 5)
    want = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(luma(x)[:, 0], want)
    assert torch.equal(luma(x[:, :1]), x[:, :1])
