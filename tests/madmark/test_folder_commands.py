"""madmark embed / detect on real photo files, with a corrupt file in the folder."""
import csv
import json

import pytest
from PIL import Image

from madmark.cli import main


@pytest.fixture
def photo_folder(tmp_path):
    import skimage.data
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(skimage.data, name)()[:256, :256]
        Image.fromarray(img).save(root / f"{name}.jpg", quality=95)
    Image.fromarray(skimage.data.camera()[:128, :128]).save(root / "sub" / "camera.png")
    (root / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_embed_then_detect(photo_folder, tmp_path, capsys):
    before = snapshot(photo_folder)
    key_file = tmp_path / "key.txt"
    key_file.write_text("correct horse battery staple\n")
    out = tmp_path / "marked"
    assert main(["embed", str(photo_folder), str(out), f"key_file={key_file}"]) == 0
    assert snapshot(photo_folder) == before                         # inputs untouched
    manifest = list(csv.DictReader(open(out / "manifest.csv")))
    status = {r["input"]: r["status"] for r in manifest}
    assert status["broken.png"] == "unreadable" and "broken.png" in capsys.readouterr().err
    assert sum(s == "embedded" for s in status.values()) == 4
    assert all(float(r["psnr_db"]) > 36 for r in manifest if r["status"] == "embedded")
    info = (out / "watermark.json").read_text()
    assert "horse" not in info and json.loads(info)["key_fingerprint"]

    marked_csv, clean_csv = tmp_path / "marked.csv", tmp_path / "clean.csv"
    assert main(["detect", str(out), f"key_file={key_file}", f"out={marked_csv}"]) == 0
    assert main(["detect", str(photo_folder), f"key_file={key_file}", f"out={clean_csv}"]) == 0
    marked = list(csv.DictReader(open(marked_csv)))
    clean = list(csv.DictReader(open(clean_csv)))
    assert len(marked) == 4 and all(r["flagged"] == "True" for r in marked)
    assert all(float(r["p_value"]) < 1e-6 for r in marked)
    decoded = [r for r in clean if r["status"] == "decoded"]
    assert len(decoded) == 4 and not any(r["flagged"] == "True" for r in decoded)
    assert [r["status"] for r in clean if r["path"] == "broken.png"] == ["unreadable"]

    other = tmp_path / "other.txt"
    other.write_text("a different key")
    wrong_csv = tmp_path / "wrong.csv"
    capsys.readouterr()
    # watermark.json records the embedding key's fingerprint: another key is refused, one line
    assert main(["detect", str(out), f"key_file={other}", f"out={wrong_csv}"]) == 2
    err = capsys.readouterr().err
    assert "marked with key" in err and "other_key=true" in err and not wrong_csv.exists()
    # other_key=false is false (bool("false") would be True); a word that is neither: one line
    assert main(["detect", str(out), f"key_file={other}", f"out={wrong_csv}",
                 "other_key=false"]) == 2
    assert "marked with key" in capsys.readouterr().err and not wrong_csv.exists()
    assert main(["detect", str(out), f"key_file={other}", "other_key=maybe"]) == 2
    assert capsys.readouterr().err.strip() == ("madmark: error: other_key=maybe is not true or "
                                               "false — set other_key=true or other_key=false")
    assert main(["detect", str(out), f"key_file={other}", f"out={wrong_csv}",
                 "other_key=true"]) == 0
    wrong = [r["flagged"] == "True" for r in csv.DictReader(open(wrong_csv))]
    assert sum(wrong) <= 1      # a wrong key is chance: each image flagged w.p. ~alpha = 0.01


def test_embed_refuses_a_non_empty_output_folder(photo_folder, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code = main(["embed", str(photo_folder), str(out), "key=k"])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"


def test_detect_never_overwrites_its_csv(photo_folder, tmp_path, capsys):
    existing = tmp_path / "result.csv"
    existing.write_text("precious")
    assert main(["detect", str(photo_folder), "key=k", f"out={existing}"]) == 2
    assert existing.read_text() == "precious"


def test_a_shipped_card_is_a_method_by_name():
    from madmark.methods import build_method
    from watermark import LearnedWatermarker, SecretKey
    method = build_method("digits32", SecretKey("k"), 28, 28)
    assert isinstance(method, LearnedWatermarker) and method.num_bits == 32


def test_images_a_method_cannot_read_are_skipped_with_the_reason(photo_folder, tmp_path, capsys):
    """DwtDct (invisible-watermark) needs RGB of at least 256 x 256: the 128 x 128 grey camera
    image is skipped by embed, detect and filter (listed, reason given), the rest is processed."""
    pytest.importorskip("imwatermark")
    key_file = tmp_path / "key.txt"
    key_file.write_text("correct horse battery staple\n")
    out = tmp_path / "marked"
    assert main(["embed", str(photo_folder), str(out), f"key_file={key_file}", "method=dwtdct"]) == 0
    err = capsys.readouterr().err
    manifest = {r["input"]: r for r in csv.DictReader(open(out / "manifest.csv"))}
    camera = manifest["sub/camera.png"]
    assert camera["status"] == "skipped" and "invisible-watermark" in camera["reason"]
    assert "sub/camera.png" in err and not (out / "sub" / "camera.png").exists()
    assert sum(r["status"] == "embedded" for r in manifest.values()) == 3
    assert json.loads((out / "watermark.json").read_text())["n_skipped"] == 1

    # the skipped image, copied in beside the marked ones, is skipped again by detect and filter
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / "camera.png").write_bytes((photo_folder / "sub" / "camera.png").read_bytes())
    detected_csv = tmp_path / "detected.csv"
    assert main(["detect", str(out), f"key_file={key_file}", f"out={detected_csv}"]) == 0
    rows = {r["path"]: r for r in csv.DictReader(open(detected_csv))}
    assert rows["sub/camera.png"]["status"] == "skipped"
    assert [r["flagged"] for r in rows.values() if r["status"] == "decoded"] == ["True"] * 3
    filtered = tmp_path / "filtered"
    assert main(["filter", str(out), f"key_file={key_file}", f"out={filtered}"]) == 0
    decisions = {r["path"]: r["decision"] for r in csv.DictReader(open(filtered / "manifest.csv"))}
    assert decisions["sub/camera.png"] == "untested"
    assert (filtered / "kept.txt").read_text() == "" and len((filtered / "flagged.txt").read_text().split()) == 3
    assert json.loads((filtered / "summary.json").read_text())["n_untested"] == 1
