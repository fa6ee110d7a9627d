"""madmark embed / detect / filter on a zoo of awkward files (all generated here): every file is
accounted for in the manifest, inputs never change, a failed embed leaves nothing behind, and
whatever stops a command is one line with exit code 2."""
import csv
import hashlib
import io
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

import madmark.commands.embed as embed_command
from madmark.cli import main
from madmark.folder_io import MAX_LISTED

SECRET = "zoo keeper"


def picture(h, w, c=3, seed=0):
    """A smooth gradient with a little noise: photo-like, and quick to encode even at 2048²."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = x * 200 // max(w - 1, 1) + y * 50 // max(h - 1, 1)
    planes = [(base + 20 * i + rng.integers(0, 8, (h, w))) % 256 for i in range(c)]
    array = np.stack(planes, -1).astype(np.uint8)
    return array[..., 0] if c == 1 else array


def save(array, path, **kw):
    Image.fromarray(array).save(path, **kw)


#: status under embed, under detect / filter (filter's decision follows), note the manifest shows
EXPECTED = {
    "rgb.png": ("embedded", "decoded", ""),
    "palette.png": ("embedded", "decoded", "alpha kept apart"),
    "rotated.jpg": ("embedded", "decoded", "EXIF-rotated"),
    "grey_alpha.png": ("embedded", "decoded", "alpha kept apart"),
    "cmyk.jpg": ("embedded", "decoded", "CMYK converted to RGB"),
    "deep.png": ("embedded", "decoded", "16-bit"),
    "tiny.png": ("skipped", "skipped", ""),
    "large.png": ("embedded", "decoded", ""),
    "truncated.png": ("unreadable", "unreadable", ""),
    "empty.png": ("unreadable", "unreadable", ""),
    "text.png": ("unreadable", "unreadable", ""),
    "notes.txt": ("unreadable", "unreadable", ""),
    "animated.gif": ("embedded", "decoded", "animated: first of 3 frames"),
    "sub/ünïcödé näme.png": ("embedded", "decoded", ""),
    "sub/with space.jpg": ("embedded", "decoded", ""),
    "link_inside.png": ("embedded", "decoded", "symlink"),
    "link_outside.png": ("embedded", "decoded", "symlink to a file outside the folder"),
    "dangling.png": ("unreadable", "unreadable", ""),
    "linked_folder": ("unreadable", "unreadable", ""),
    "pipe.png": ("unreadable", "unreadable", ""),
    "line\nbreak.png": ("unreadable", "unreadable", ""),
    "not\\xffutf8.png": ("unreadable", "unreadable", ""),
    "a.png": ("embedded", "decoded", ""),
    "a.jpg": ("embedded", "decoded", ""),
    "locked.png": None,            # unreadable, unless running as root
}
REASONS = {"tiny.png": "1x1 is below the minimum 27x27", "truncated.png": "truncated",
           "empty.png": "empty file (0 bytes)", "text.png": "not an image Pillow can decode",
           "notes.txt": "not an image Pillow can decode", "dangling.png": "dangling symlink",
           "linked_folder": "symlink to a folder", "pipe.png": "not a regular file",
           "line\nbreak.png": "line break", "not\\xffutf8.png": "not valid UTF-8",
           "locked.png": "permission denied"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """zoo/: every awkward case; outside/: what two symlinks point to; key.txt."""
    base = tmp_path_factory.mktemp("zoo")
    root, outside = base / "zoo", base / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "folder").mkdir(parents=True)
    save(picture(40, 40), root / "rgb.png")
    pal = Image.fromarray(picture(40, 40, seed=1)).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(root / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6                                          # rotate 90° to display
    save(picture(32, 48, seed=2), root / "rotated.jpg", exif=exif, quality=95)
    la = np.stack([picture(40, 40, 1, seed=3), np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))],
                  -1)
    Image.fromarray(la, "LA").save(root / "grey_alpha.png")
    Image.fromarray(picture(40, 40, seed=4)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    save(picture(40, 40, 1, seed=5).astype(np.uint16) * 257, root / "deep.png")      # I;16
    save(picture(1, 1, seed=6), root / "tiny.png")
    save(picture(2048, 2048, 1, seed=7), root / "large.png")
    whole = io.BytesIO()
    save(picture(40, 40, seed=8), whole, format="PNG")
    (root / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("a text file named .png\n")
    (root / "notes.txt").write_text("not an image at all\n")
    frames = [Image.fromarray(picture(40, 40, seed=s)) for s in (9, 10, 11)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    save(picture(40, 40, seed=12), root / "sub" / "ünïcödé näme.png")
    save(picture(40, 40, seed=13), root / "sub" / "with space.jpg", quality=95)
    save(picture(40, 40, seed=14), outside / "elsewhere.png")
    os.symlink(outside / "elsewhere.png", root / "link_outside.png")
    os.symlink(root / "rgb.png", root / "link_inside.png")
    os.symlink(root / "missing.png", root / "dangling.png")
    os.symlink(outside / "folder", root / "linked_folder")
    os.mkfifo(root / "pipe.png")
    save(picture(40, 40, seed=15), root / "line\nbreak.png")
    save(picture(40, 40, seed=16), os.fsencode(root) + b"/not\xffutf8.png", format="PNG")
    save(picture(40, 40, seed=17), root / "a.png")
    save(picture(40, 40, seed=18), root / "a.jpg", quality=95)
    save(picture(40, 40, seed=19), root / "locked.png")
    os.chmod(root / "locked.png", 0)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")         # hidden: counted, not read
    (root / ".cache").mkdir()
    save(picture(40, 40, seed=20), root / ".cache" / "thumb.png")
    key_file = base / "key.txt"
    key_file.write_text(SECRET + "\n")
    expected = dict(EXPECTED)
    readable = os.access(root / "locked.png", os.R_OK)        # root reads a chmod 000 file
    expected["locked.png"] = (("embedded", "decoded", "") if readable
                              else ("unreadable", "unreadable", ""))
    yield root, key_file, expected
    os.chmod(root / "locked.png", 0o644)


def shown(rel: bytes) -> str:
    """A relative path as the manifests list it (bytes that are not UTF-8 as \\xNN)."""
    return rel.decode("utf-8", "backslashreplace")


def files_under(root):
    """Every non-hidden entry under root that is not a real folder, as manifests list them."""
    found = set()
    for folder, dirs, files in os.walk(os.fsencode(root)):
        dirs[:] = [d for d in dirs if not d.startswith(b".")
                   and not os.path.islink(os.path.join(folder, d))]
        links = [d for d in os.listdir(folder) if os.path.islink(os.path.join(folder, d))
                 and os.path.isdir(os.path.join(folder, d))]
        for name in [*files, *links]:
            if not name.startswith(b"."):
                found.add(shown(os.path.relpath(os.path.join(folder, name), os.fsencode(root))))
    return found


def fingerprint(root):
    """sha256 (regular readable files) and mtime of every entry, hidden ones too, not following
    symlinks: what no command may change."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            digest = None
            if stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            state[path] = (digest, info.st_mtime_ns, info.st_mode, info.st_size)
    return state


def manifest(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def one_line_error(err):
    assert err.startswith("madmark: error: ") and " — " in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_embed_accounts_for_every_file(zoo, tmp_path, capsys):
    root, key_file, expected = zoo
    before = fingerprint(root)
    out = tmp_path / "marked"
    code = main(["embed", str(root), str(out), f"key_file={key_file}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    assert fingerprint(root) == before                                 # inputs unchanged
    rows = {r["input"]: r for r in manifest(out / "manifest.csv")}
    assert set(rows) == files_under(root) == set(expected)
    for name, row in rows.items():
        assert row["status"] == expected[name][0], (name, row)
        assert expected[name][2] in row["notes"], (name, row)
        if name in REASONS and row["status"] != "embedded":
            assert REASONS[name] in row["reason"], (name, row)
        if row["status"] == "embedded":
            assert (out / row["output"]).is_file() and float(row["psnr_db"]) > 35
        else:
            assert row["output"] == "" and row["reason"]
            escaped = name.replace("\n", "\\n")
            assert f"{row['status']} {escaped}: {row['reason']}" in std.err.splitlines()
    # the naming rule: .png kept, other suffixes get .png appended; nothing overwritten
    assert rows["a.png"]["output"] == "a.png" and rows["a.jpg"]["output"] == "a.jpg.png"
    assert rows["sub/with space.jpg"]["output"] == "sub/with space.jpg.png"
    assert (out / "a.png").read_bytes() != (out / "a.jpg.png").read_bytes()
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == {r["output"] for r in rows.values() if r["output"]} | {
        "manifest.csv", "watermark.json"}
    # transparency goes to the output unchanged, and the manifest says so
    with Image.open(root / "palette.png") as src, Image.open(out / "palette.png") as dst:
        assert dst.mode == "RGBA"
        assert np.array_equal(np.asarray(src.convert("RGBA"))[..., 3], np.asarray(dst)[..., 3])
    with Image.open(root / "grey_alpha.png") as src, Image.open(out / "grey_alpha.png") as dst:
        assert dst.mode == "LA"
        assert np.array_equal(np.asarray(src)[..., 1], np.asarray(dst)[..., 1])
    assert "copied to the output unchanged" in rows["palette.png"]["notes"]
    with Image.open(out / "rotated.jpg.png") as dst:
        assert dst.size == (32, 48)                                     # written upright
    info = json.loads((out / "watermark.json").read_text())
    status = [r["status"] for r in rows.values()]
    assert (info["n_files"], info["n_embedded"], info["n_skipped"], info["n_unreadable"]) == (
        len(rows), status.count("embedded"), status.count("skipped"), status.count("unreadable"))
    assert info["n_hidden_not_read"] == 2 and "2 hidden entries" in std.out
    assert std.out.startswith(f"embedded {info['n_embedded']} images into {out}")
    assert SECRET not in std.out + std.err + (out / "manifest.csv").read_text()

    # the marked folder: detect tests the images, not embed's own manifest.csv / watermark.json
    marked_csv = tmp_path / "marked.csv"
    assert main(["detect", str(out), f"key_file={key_file}", f"out={marked_csv}"]) == 0
    std = capsys.readouterr()
    detected = {r["path"]: r for r in manifest(marked_csv)}
    assert set(detected) == written - {"manifest.csv", "watermark.json"}
    assert all(r["flagged"] == "True" for r in detected.values())
    assert "madmark embed's manifest.csv and watermark.json" in std.out


@pytest.mark.parametrize("command", ["detect", "filter"])
def test_detect_and_filter_account_for_every_file(zoo, tmp_path, capsys, command):
    root, key_file, expected = zoo
    before = fingerprint(root)
    out = tmp_path / ("result.csv" if command == "detect" else "filtered")
    code = main([command, str(root), f"key_file={key_file}", f"out={out}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    assert fingerprint(root) == before
    rows = {r["path"]: r for r in manifest(out if command == "detect" else out / "manifest.csv")}
    assert set(rows) == files_under(root) == set(expected)
    for name, row in rows.items():
        assert row["status"] == expected[name][1], (name, row)
        assert expected[name][2] in row["notes"], (name, row)
        if row["status"] == "decoded":
            assert row["flagged"] == "False" and int(row["num_bits"]) == 32
        else:
            assert REASONS[name] in row["reason"], (name, row)
            escaped = name.replace("\n", "\\n")
            assert f"{row['status']} {escaped}: " in std.err
    assert "2 hidden entries" in std.out
    if command == "filter":
        decision = {"decoded": "keep", "skipped": "untested", "unreadable": "unreadable"}
        assert all(r["decision"] == decision[r["status"]] for r in rows.values())
        kept = (out / "kept.txt").read_text(encoding="utf-8").splitlines()
        assert set(kept) == {n for n, r in rows.items() if r["status"] == "decoded"}
        assert (out / "flagged.txt").read_text() == ""
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_files"] == len(rows) and summary["n_hidden_not_read"] == 2
        assert summary["n_untested"] == 1


@pytest.fixture
def tiny_folder(tmp_path):
    root = tmp_path / "tiny"
    root.mkdir()
    save(picture(1, 1), root / "dot.png")
    key_file = tmp_path / "key.txt"
    key_file.write_text(SECRET)
    return root, key_file


def test_a_single_1x1_image_is_skipped_with_its_name_and_the_fix(tiny_folder, tmp_path, capsys):
    """It used to stop all three commands with a method error naming neither file nor fix, and
    embed left a folder without manifest that a rerun refused."""
    root, key_file = tiny_folder
    out = tmp_path / "marked"
    assert main(["embed", str(root), str(out), f"key_file={key_file}"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("skipped dot.png: 1x1 is below the minimum 27x27 of "
                          "method=spread_spectrum at bits=32 — use images of at least 27x27")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "watermark.json"]
    assert [r["status"] for r in manifest(out / "manifest.csv")] == ["skipped"]
    assert main(["detect", str(root), f"key_file={key_file}", f"out={tmp_path / 'd.csv'}"]) == 0
    assert "skipped dot.png: 1x1 is below" in capsys.readouterr().err
    assert main(["filter", str(root), f"key_file={key_file}", f"out={tmp_path / 'f'}"]) == 0
    assert "skipped dot.png: 1x1 is below" in capsys.readouterr().err
    rows = manifest(tmp_path / "f" / "manifest.csv")
    assert [(r["path"], r["decision"]) for r in rows] == [("dot.png", "untested")]


def test_a_small_image_gets_the_bits_it_can_carry_as_the_fix(tmp_path, capsys):
    root = tmp_path / "small"
    root.mkdir()
    save(picture(20, 300), root / "strip.png")
    save(picture(64, 64), root / "fine.png")
    assert main(["embed", str(root), str(tmp_path / "out"), "key=k"]) == 0
    rows = {r["input"]: r for r in manifest(tmp_path / "out" / "manifest.csv")}
    assert rows["fine.png"]["status"] == "embedded"
    assert rows["strip.png"]["status"] == "skipped"
    assert "20x300 is below the minimum 27x27" in rows["strip.png"]["reason"]
    assert "or bits=17 (the most a 20x300 image carries)" in rows["strip.png"]["reason"]
    capsys.readouterr()


def test_settings_that_fail_at_every_size_stop_before_anything(tiny_folder, tmp_path, capsys):
    root, key_file = tiny_folder
    out = tmp_path / "marked"
    assert main(["embed", str(root), str(out), f"key_file={key_file}", "strength=-1"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "method=spread_spectrum" in err and not out.exists()


def test_colliding_outputs_are_refused_before_anything_is_written(tmp_path, capsys):
    root = tmp_path / "photos"
    root.mkdir()
    save(picture(40, 40), root / "x.jpg")
    save(picture(40, 40, seed=1), root / "x.jpg.png")
    out = tmp_path / "marked"
    assert main(["embed", str(root), str(out), "key=k"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "x.jpg and x.jpg.png would both be written as x.jpg.png" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(5):
        save(picture(40, 40, seed=i), root / f"p{i}.png")
    return root


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_embed_leaves_no_output_folder(photos, tmp_path, capsys, monkeypatch, failure):
    before = fingerprint(photos)
    written = []
    real = embed_command.write_png

    def failing_write_png(path, image, alpha=None):
        if len(written) == 2:
            raise failure
        real(path, image, alpha)
        written.append(path)

    monkeypatch.setattr(embed_command, "write_png", failing_write_png)
    out = tmp_path / "marked"
    if isinstance(failure, OSError):
        assert main(["embed", str(photos), str(out), "key=k"]) == 2
        err = capsys.readouterr().err
        one_line_error(err)
        assert "No space left on device" in err and "nothing was left behind" in err
    else:
        with pytest.raises(KeyboardInterrupt):
            main(["embed", str(photos), str(out), "key=k"])
    assert len(written) == 2 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]      # no temporary either
    assert fingerprint(photos) == before
    monkeypatch.setattr(embed_command, "write_png", real)
    assert main(["embed", str(photos), str(out), "key=k"]) == 0           # a rerun just works
    assert len(manifest(out / "manifest.csv")) == 5


def test_an_empty_output_folder_is_used_and_a_file_is_refused(photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["embed", str(photos), str(empty), "key=k"]) == 0
    assert (empty / "watermark.json").is_file()
    (tmp_path / "also_empty").mkdir()
    assert main(["filter", str(photos), "key=k", f"out={tmp_path / 'also_empty'}"]) == 0
    assert (tmp_path / "also_empty" / "summary.json").is_file()
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert main(["embed", str(photos), str(a_file), "key=k"]) == 2
    one_line_error(capsys.readouterr().err)
    assert a_file.read_text() == "mine"


def test_many_problems_are_summarised_on_stderr(tmp_path, capsys):
    root = tmp_path / "mess"
    root.mkdir()
    save(picture(40, 40), root / "ok.png")
    for i in range(MAX_LISTED + 5):
        (root / f"junk{i:02d}.png").write_text("junk")
    assert main(["detect", str(root), "key=k", f"out={tmp_path / 'd.csv'}"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == MAX_LISTED + 1
    assert err[-1].startswith("... and 5 more (5 unreadable); every file's reason is in")
    assert len(manifest(tmp_path / "d.csv")) == MAX_LISTED + 6


def test_a_folder_without_any_image_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "texts"
    root.mkdir()
    (root / "a.txt").write_text("a")
    (root / "b.png").write_bytes(b"")
    for args in (["embed", str(root), str(tmp_path / "o")], ["detect", str(root)],
                 ["filter", str(root), f"out={tmp_path / 'f'}"]):
        assert main([*args, "key=k"]) == 2
        err = capsys.readouterr().err
        one_line_error(err)
        assert "no images found" in err and "2 file(s)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts"]


KEY_FILES = {
    "empty": lambda p: p.write_bytes(b""),
    "whitespace": lambda p: p.write_text("  \n\t\n"),
    "huge": lambda p: p.write_bytes(b"k" * (2**20 + 1)),
    "folder": lambda p: p.mkdir(),
    "missing": lambda p: None,
    "unreadable": lambda p: (p.write_text("secret"), os.chmod(p, 0)),
}
KEY_PROBLEMS = {"empty": "is empty (or only whitespace)",
                "whitespace": "is empty (or only whitespace)", "huge": "more than the 1 MiB",
                "folder": "is not a regular file", "missing": "cannot read key_file",
                "unreadable": "cannot read key_file"}


@pytest.mark.parametrize("command", ["embed", "detect", "filter"])
@pytest.mark.parametrize("case", list(KEY_FILES))
def test_bad_key_files_are_one_line(photos, tmp_path, capsys, command, case):
    key_file = tmp_path / "key"
    KEY_FILES[case](key_file)
    if case == "unreadable" and os.access(key_file, os.R_OK):
        pytest.skip("running as root: a chmod 000 file is still readable")
    out = tmp_path / "out"
    args = {"embed": [str(photos), str(out)], "detect": [str(photos), f"out={out}"],
            "filter": [str(photos), f"out={out}"]}[command]
    assert main([command, *args, f"key_file={key_file}"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert KEY_PROBLEMS[case] in err and not out.exists()


def test_a_folder_that_cannot_be_listed_is_one_row(photos, tmp_path, capsys):
    locked = photos / "locked"
    locked.mkdir()
    save(picture(40, 40), locked / "inside.png")
    os.chmod(locked, 0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: a chmod 000 folder is still listed")
        assert main(["embed", str(photos), str(tmp_path / "out"), "key=k"]) == 0
        rows = {r["input"]: r for r in manifest(tmp_path / "out" / "manifest.csv")}
        assert rows["locked"]["status"] == "unreadable"
        assert "folder cannot be listed" in rows["locked"]["reason"]
        assert "unreadable locked: folder cannot be listed" in capsys.readouterr().err
    finally:
        os.chmod(locked, 0o755)


def test_a_watermark_json_that_is_no_embed_record(photos, tmp_path, capsys):
    """embed lists it as a file; detect needs the settings then, and says so in one line."""
    (photos / "watermark.json").write_text("{not json")
    assert main(["embed", str(photos), str(tmp_path / "out"), "key=k"]) == 0
    rows = {r["input"]: r["status"] for r in manifest(tmp_path / "out" / "manifest.csv")}
    assert rows["watermark.json"] == "unreadable"
    capsys.readouterr()
    assert main(["detect", str(photos), "key=k", f"out={tmp_path / 'd.csv'}"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "not the record madmark embed writes" in err and "method=, bits= and strength=" in err
    assert main(["detect", str(photos), "key=k", f"out={tmp_path / 'd.csv'}",
                 "method=spread_spectrum", "bits=32", "strength=0.01"]) == 0
