"""madcore.figures: figures render without switching the caller's matplotlib backend."""
import matplotlib
from PIL import Image

from madcore.figures import new_figure, save_png


def test_save_png_keeps_the_backend_and_writes_a_png(tmp_path):
    before = matplotlib.get_backend()
    fig, axes = new_figure(1, 2, figsize=(4, 2), squeeze=False)
    axes[0, 0].plot([1, 2, 3], [3, 1, 2])
    path = save_png(fig, tmp_path / "plots" / "a.png", dpi=50)
    assert matplotlib.get_backend() == before
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (200, 100)
