"""madmark filter on real photo crops: flags exactly the watermarked files, keeps the clean ones,
lists the corrupt one, never touches the inputs and never writes the key."""
import csv
import hashlib
import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from madmark.cli import main
from madcore.images import write_png
from watermark import SecretKey, SpreadSpectrum, binomial_p_value

SECRET = "correct horse battery staple"
RGB = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def tiles(arrays, size):
    """Non-overlapping size x size crops, in reading order."""
    for a in arrays:
        for i in range(0, a.shape[0] - size + 1, size):
            for j in range(0, a.shape[1] - size + 1, size):
                yield a[i:i + size, j:j + size]


def to_tensor(array):
    x = torch.from_numpy(array.astype(np.float32) / 255)
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def mark(arrays, key):
    """The images watermarked with spread spectrum at its default strength (as madmark embed)."""
    x = torch.stack([to_tensor(a) for a in arrays])
    wm = SpreadSpectrum.for_image_size(key, *x.shape[-2:])
    return wm.embed(x, key.message(wm.num_bits).expand(len(x), -1))


@pytest.fixture(scope="module")
def photos():
    """Distinct real photo crops: RGB 128 x 128 and grey 96 x 96, and marked copies of the
    odd-numbered RGB crops 1..11 and of grey crop 1."""
    rgb = list(tiles([getattr(skimage.data, n)() for n in RGB], 128))      # 71 crops
    grey = list(tiles([skimage.data.camera(), skimage.data.moon()], 96))   # 50 crops
    key = SecretKey(SECRET)
    return rgb, grey, mark(rgb[1:12:2], key), mark(grey[1:2], key)


@pytest.fixture
def dataset(tmp_path, photos):
    """data/: 6 clean and 6 marked RGB crops, 1 clean and 1 marked grey crop in sub/, a corrupt
    file; key.txt outside it. Returns (data dir, key file, paths of the marked files)."""
    rgb, grey, marked_rgb, marked_grey = photos
    key_file = tmp_path / "key.txt"
    key_file.write_text(SECRET + "\n")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    marked = set()
    for i in range(12):                       # interleaved, so position says nothing
        name = f"img{i:02d}.png"
        if i % 2:
            write_png(data / name, marked_rgb[i // 2])
            marked.add(name)
        else:
            write_png(data / name, to_tensor(rgb[i]))
    Image.fromarray(grey[0]).save(data / "sub" / "clean_grey.png")
    write_png(data / "sub" / "marked_grey.png", marked_grey[0])
    marked.add("sub/marked_grey.png")
    (data / "broken.png").write_bytes(b"\x89PNG but not really")
    return data, key_file, marked


def fingerprint(*roots):
    """sha256 and mtime of every file under the roots (what must not change)."""
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def assert_no_key(out_dir, *texts):
    for path in out_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for text in texts:
        assert SECRET not in text


def lines(path):
    return set(path.read_text().splitlines())


def test_filter_flags_exactly_the_marked_images(dataset, tmp_path, capsys):
    data, key_file, marked = dataset
    before = fingerprint(data)
    out = tmp_path / "filtered"
    code = main(["filter", str(data), f"key_file={key_file}", f"out={out}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    assert fingerprint(data) == before                               # nothing read was changed

    assert lines(out / "flagged.txt") == marked
    clean = {"img00.png", "img02.png", "img04.png", "img06.png", "img08.png", "img10.png",
             "sub/clean_grey.png"}
    assert lines(out / "kept.txt") == clean
    for rel in lines(out / "kept.txt") | lines(out / "flagged.txt"):   # usable as a file list
        assert (data / rel).is_file()

    manifest = {r["path"]: r for r in csv.DictReader(open(out / "manifest.csv"))}
    assert set(manifest) == clean | marked | {"broken.png"}
    broken = manifest["broken.png"]
    assert (broken["status"], broken["decision"]) == ("unreadable", "unreadable")
    assert broken["reason"] and "broken.png" in std.err
    for path in marked:                              # p-value is the binomial tail (scipy)
        row = manifest[path]
        k, n = int(row["matched_bits"]), int(row["num_bits"])
        assert row["decision"] == "flag" and k >= 30
        assert float(row["p_value"]) == pytest.approx(float(binomial_p_value(k, n)), rel=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_kept"], summary["n_flagged"], summary["n_unreadable"]) == (7, 7, 1)
    assert summary["p_values"] == "analytic" and summary["calibration"] is None
    assert (summary["alpha"], summary["method"], summary["bits"]) == (0.01, "spread_spectrum", 32)
    assert sorted(g["shape"] for g in summary["groups"]) == ["1x96x96", "3x128x128"]
    assert std.out.strip() == (f"kept 7, flagged 7 of 14 images (alpha=0.01, analytic p-values; "
                               f"1 unreadable, see manifest.csv); wrote {out}")
    assert_no_key(out, std.out, std.err)


def test_calibrated_filter_records_its_calibration(dataset, photos, tmp_path, capsys):
    data, key_file, marked = dataset
    rgb, grey = photos[:2]
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    for i, tile in enumerate(rgb[12:52]):                 # 40 clean crops the data does not hold
        Image.fromarray(tile).save(clean_dir / f"rgb{i:02d}.png")
    for i, tile in enumerate(grey[2:42]):
        Image.fromarray(tile).save(clean_dir / f"grey{i:02d}.png")
    before = fingerprint(data, clean_dir)
    out = tmp_path / "calibrated"
    code = main(["filter", str(data), f"key={SECRET}", "alpha=0.05", f"calibrate={clean_dir}",
                 f"out={out}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    assert fingerprint(data, clean_dir) == before
    assert lines(out / "flagged.txt") == marked

    summary = json.loads((out / "summary.json").read_text())
    assert summary["p_values"] == "calibrated" and "calibrated p-values" in std.out
    cal = {g["shape"]: g for g in summary["calibration"]["groups"]}
    assert {s: g["n_clean"] for s, g in cal.items()} == {"3x128x128": 40, "1x96x96": 40}
    for g in cal.values():
        assert g["certifies_alpha"]                                  # 0.05 >= 1 / 41
        assert 0 <= g["empirical_fpr_calibrated"] <= g["empirical_fpr_analytic"] + 1e-12
        assert g["threshold_calibrated"] >= g["threshold_analytic"]
    manifest = {r["path"]: r for r in csv.DictReader(open(out / "manifest.csv"))}
    for row in manifest.values():                    # never more lenient than the binomial test
        if row["status"] == "decoded":
            k, n = int(row["matched_bits"]), int(row["num_bits"])
            assert float(row["p_value"]) >= float(binomial_p_value(k, n)) * (1 - 1e-5)
    assert_no_key(out, std.out, std.err)                 # given as key=..., still never written


def test_calibration_with_other_image_sizes_is_an_error(dataset, photos, tmp_path, capsys):
    data, key_file, _ = dataset
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    for i, tile in enumerate(photos[0][20:24]):
        Image.fromarray(tile[:100, :100]).save(clean_dir / f"{i}.png")
    out = tmp_path / "out"
    code = main(["filter", str(data), f"key_file={key_file}", f"calibrate={clean_dir}",
                 f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("madmark: error: ") and "3x128x128" in err and "3x100x100" in err
    assert not out.exists()


def test_filter_never_overwrites_its_output(dataset, tmp_path, capsys):
    data, key_file, _ = dataset
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["filter", str(data), f"key_file={key_file}", f"out={out}"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_default_output_folder_is_named_after_the_data(dataset, tmp_path, capsys, monkeypatch):
    data, key_file, _ = dataset
    monkeypatch.chdir(tmp_path)
    assert main(["filter", str(data), f"key_file={key_file}"]) == 0
    assert (tmp_path / "filter_data" / "summary.json").is_file()
    assert main(["filter", str(data), f"key_file={key_file}"]) == 2        # second run refused
    assert "filter_data already exists" in capsys.readouterr().err


@pytest.mark.parametrize("args, problem", [
    (["{missing}", "key=k"], "does not exist"),
    (["{empty}", "key=k"], "no images found"),
    (["{data}", "key=k", "alpha=1.5"], "outside (0, 1)"),
    (["{data}", "key=k", "alpha=0"], "outside (0, 1)"),
    (["{data}"], "secret key"),
    (["{data}", "key_file={missing}"], "cannot read key_file"),
    (["{data}", "key=k", "calibrate={missing}"], "calibrate folder"),
    (["{data}", "key=k", "colour=red"], "unknown option"),
    (["{data}", "key=k", "out={data}/out"], "inside the data folder"),
])
def test_user_errors_are_one_line(photos, tmp_path, capsys, args, problem):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photos[0][0]).save(data / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    names = {"data": data, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    args = [a.format(**names) for a in args]
    if not any(a.startswith("out=") for a in args):
        args.append(f"out={tmp_path / 'never'}")
    before = fingerprint(data)
    code = main(["filter", *args])
    err = capsys.readouterr().err
    assert code == 2 and problem in err
    assert err.startswith("madmark: error: ") and " — " in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists() and not (data / "out").exists()
    assert fingerprint(data) == before
