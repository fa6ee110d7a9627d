"""madcore.images: one reader for every Pillow mode, checked against the pixels written."""
import numpy as np
import pytest
from PIL import Image

from madcore.images import encode_png, read_image, write_png


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)


def test_grey_and_colour_8_bit(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    c, g = read_image(tmp_path / "c.png"), read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(c.image, rgb.transpose(2, 0, 1) / np.float32(255))
    np.testing.assert_array_equal(g.image, rgb[None, ..., 0] / np.float32(255))
    assert c.alpha is None and c.reason == "" and c.ok


def test_16_bit_grey_uses_the_full_range(tmp_path):
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    read = read_image(tmp_path / "16.png")
    np.testing.assert_allclose(read.image[0], values / 65535.0, rtol=1e-6)
    assert "16-bit" in read.notes


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_apart_from_the_colour(tmp_path, rgb, mode):
    alpha = np.linspace(0, 255, 120, dtype=np.uint8).reshape(12, 10)
    colour = rgb if mode == "RGBA" else rgb[..., :1]
    Image.fromarray(np.dstack([colour, alpha]), mode).save(tmp_path / "a.png")
    read = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(read.image, colour.transpose(2, 0, 1) / np.float32(255))
    np.testing.assert_array_equal(read.alpha[0], alpha / np.float32(255))
    write_png(tmp_path / "out.png", read.image, alpha=read.alpha)
    again = read_image(tmp_path / "out.png")
    np.testing.assert_array_equal(again.image, read.image)
    np.testing.assert_array_equal(again.alpha, read.alpha)


def test_palette_with_transparency_and_cmyk(tmp_path, rgb):
    p = Image.fromarray(rgb).convert("P")
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    read = read_image(tmp_path / "p.png")
    assert read.image.shape == (3, 12, 10) and read.alpha is not None and read.mode == "P"
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "k.jpg")
    assert read_image(tmp_path / "k.jpg").image.shape == (3, 12, 10)


def test_exif_rotation_and_animation_are_applied_and_noted(tmp_path, rgb):
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6                                            # rotate 90° clockwise to view
    im.save(tmp_path / "r.jpg", exif=exif)
    read = read_image(tmp_path / "r.jpg")
    assert read.image.shape == (3, 10, 12) and "EXIF-rotated" in read.notes
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    read = read_image(tmp_path / "a.gif")
    assert read.ok and "animated: first of 2 frames" in read.notes


def test_resize_is_bilinear_on_the_decoded_image(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "c.png")
    want = np.asarray(Image.fromarray(rgb).resize((5, 6), Image.BILINEAR)) / np.float32(255)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png", (6, 5)).image,
                                  want.transpose(2, 0, 1))


def test_bad_files_give_a_reason_not_an_exception(tmp_path, rgb):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(encode_png(rgb.transpose(2, 0, 1) / 255.0)[:80])
    for name in ("empty.png", "text.png", "cut.png", "absent.png"):
        read = read_image(tmp_path / name)
        assert read.image is None and not read.ok and read.reason
        assert "\n" not in read.reason
