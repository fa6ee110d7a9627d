"""ImageFolder on real image files written to tmp_path, and each of its one-line errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from madmark.data import ImageFolder
from madcore.errors import MadmarkError


def write(path, array, **save_kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)
    return path


def rgb(rng, h=12, w=10):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def colour_folder(tmp_path, rng):
    """Ten 12x10 RGB images in nested folders and five lossless formats, plus non-images."""
    root = tmp_path / "colour"
    names = ["a.png", "sub/b.png", "sub/deep/c.bmp", "d.tif", "e.tiff", "sub/f.webp",
             "g.PNG", "sub/h.png", "i.png", "sub/deep/j.png"]
    arrays = {}
    for name in names:
        arrays[name] = rgb(rng)
        write(root / name, arrays[name], **({"lossless": True} if name.endswith("webp") else {}))
    (root / "notes.txt").write_text("not an image")
    (root / "._a.png").write_bytes(b"macOS resource fork, not an image")  # hidden: skipped
    return root, arrays


def test_reads_nested_files_exactly_and_splits_by_file(colour_folder):
    root, arrays = colour_folder
    s = ImageFolder(root, seed=0).load()
    assert s.kind == "image" and s.train_labels is None
    assert s.train.shape == (8, 3, 12, 10) and s.reference.shape == (2, 3, 12, 10)  # 20%
    assert s.train.dtype == torch.float32
    expected = {torch.from_numpy(a).permute(2, 0, 1).float().div(255).numpy().tobytes()
                for a in arrays.values()}
    got_train = {x.numpy().tobytes() for x in s.train}
    got_ref = {x.numpy().tobytes() for x in s.reference}
    assert got_train | got_ref == expected and not got_train & got_ref


def test_split_is_seeded_and_n_reference_may_be_a_count(colour_folder):
    root, _ = colour_folder
    a, b = ImageFolder(root, seed=0).load(), ImageFolder(root, seed=0).load()
    assert torch.equal(a.reference, b.reference)
    refs = {ImageFolder(root, seed=s).load().reference.numpy().tobytes() for s in range(4)}
    assert len(refs) > 1
    assert ImageFolder(root, n_reference=3).load().reference.shape[0] == 3


def test_user_files_are_left_untouched(colour_folder):
    root, _ = colour_folder
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    ImageFolder(root, resize=8, channels=1).load()
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    assert before == after


def test_grayscale_jpeg_and_16_bit_keep_one_channel(tmp_path, rng):
    for i in range(4):
        write(tmp_path / f"g{i}.jpg", rng.integers(0, 256, (9, 9), dtype=np.uint8), quality=95)
    deep = np.full((9, 9), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    write(tmp_path / "deep" / "g16.png", deep)
    s = ImageFolder(tmp_path, n_reference=1, seed=0).load()
    x = torch.cat([s.train, s.reference])
    assert x.shape == (5, 1, 9, 9) and x.min() >= 0 and x.max() <= 1
    assert any(float(img.min()) == 0.0 and float(img[0, 1:, 1:].min()) == 1.0 for img in x)


def test_mixed_sizes_and_channels_with_resize_and_channels(tmp_path, rng):
    write(tmp_path / "big.png", rgb(rng, 40, 30))
    write(tmp_path / "small.jpg", rgb(rng, 12, 10))
    write(tmp_path / "grey" / "g.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    s = ImageFolder(tmp_path, resize=[16, 12], channels=3, n_reference=1).load()
    assert s.train.shape == (2, 3, 16, 12) and s.reference.shape == (1, 3, 16, 12)
    g = ImageFolder(tmp_path, resize=8, channels=1, n_reference=1).load()
    assert g.train.shape == (2, 1, 8, 8)


def test_mixed_grey_and_colour_without_channels_names_both(tmp_path, rng):
    write(tmp_path / "c.png", rgb(rng))
    write(tmp_path / "g.png", rng.integers(0, 256, (12, 10), dtype=np.uint8))
    with pytest.raises(MadmarkError, match=r"g\.png.*c\.png.*data\.channels"):
        ImageFolder(tmp_path, n_reference=1).load()


def test_mixed_sizes_without_resize_names_the_sizes_and_fix(tmp_path, rng):
    write(tmp_path / "a.png", rgb(rng, 12, 10))
    write(tmp_path / "b.png", rgb(rng, 20, 20))
    with pytest.raises(MadmarkError) as err:
        ImageFolder(tmp_path, n_reference=1).load()
    msg = str(err.value)
    assert "12x10" in msg and "20x20" in msg and "b.png" in msg and "data.resize=" in msg
    assert "\n" not in msg


def test_corrupt_file_is_named(tmp_path, rng):
    write(tmp_path / "ok.png", rgb(rng))
    write(tmp_path / "ok2.png", rgb(rng))
    bad = tmp_path / "sub" / "x.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG garbage, not really a png" * 3)
    with pytest.raises(MadmarkError, match="remove or repair") as err:
        ImageFolder(tmp_path, n_reference=1).load()
    assert str(bad) in str(err.value)
    assert bad.read_bytes().startswith(b"\x89PNG garbage")  # never modified


def test_truncated_png_is_named(tmp_path, rng):
    write(tmp_path / "ok.png", rgb(rng))
    cut = write(tmp_path / "cut.png", rgb(rng, 64, 64))
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(MadmarkError, match="cut.png"):
        ImageFolder(tmp_path, n_reference=1).load()


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no_images", "one_image"])
def test_folder_errors_name_the_problem_and_fix(tmp_path, rng, case):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case != "missing":
        root.mkdir()
    if case == "no_images":
        (root / "readme.txt").write_text("x")
    if case == "one_image":
        write(root / "only.png", rgb(rng))
    expected = {"missing": "does not exist", "file": "is not a folder",
                "empty": "no image files", "no_images": "no image files",
                "one_image": "too few"}[case]
    with pytest.raises(MadmarkError, match=expected) as err:
        ImageFolder(root).load()
    assert str(root) in str(err.value) and err.value.fix and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, key", [({"resize": [8]}, "data.resize"),
                                         ({"channels": 2}, "data.channels"),
                                         ({"n_reference": 1.5}, "data.n_reference")])
def test_bad_settings(colour_folder, kwargs, key):
    with pytest.raises(MadmarkError, match=key):
        ImageFolder(colour_folder[0], **kwargs).load()
