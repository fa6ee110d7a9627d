"""madmark eval-watermark: one metrics.csv row per method x attack x strength; methods side by side;
attacks a method cannot read are recorded as not applicable; the key never lands on disk."""
import math

import pytest

from watermark import ATTACK_GRID
from madmark.rundir import read_csv


def test_harness_writes_the_grid_and_keeps_the_key_secret(cli, tmp_path):
    key_file = tmp_path / "key.txt"
    secret = "a very secret watermark key 1234"
    key_file.write_text(secret)
    code, out, err = cli("eval-watermark", "n_images=4", f"key_file={key_file}",
                         f"out_dir={tmp_path / 'outputs'}", "data.n_reference=4")
    assert code == 0, err
    (metrics,) = (tmp_path / "outputs").rglob("metrics.csv")
    rows = read_csv(metrics)
    assert [(r["attack"]) for r in rows] == ["none"] + [name for name, _ in ATTACK_GRID]
    clean = rows[0]
    assert float(clean["bit_accuracy"]) == 1.0 and float(clean["psnr_db"]) > 38
    jpeg50 = next(r for r in rows if r["attack"] == "jpeg_pil" and r["strength"] == "50")
    assert float(jpeg50["bit_accuracy"]) > 0.95
    assert (metrics.parent / "plots" / "bit_accuracy.png").is_file()
    for path in metrics.parent.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in out + err


def test_methods_side_by_side_with_not_applicable_attacks(cli, tmp_path):
    pytest.importorskip("imwatermark")
    key_file = tmp_path / "key.txt"
    key_file.write_text("side by side")
    code, out, err = cli("eval-watermark", "method=[spread_spectrum,dwtdct]", "bits=32", "n_images=4",
                         "data.n_reference=4", f"key_file={key_file}", f"out_dir={tmp_path / 'outputs'}")
    assert code == 0, err
    (metrics,) = (tmp_path / "outputs").rglob("metrics.csv")
    rows = read_csv(metrics)
    grid = ["none"] + [name for name, _ in ATTACK_GRID]
    assert [r["method"] for r in rows] == ["spread_spectrum"] * len(grid) + ["dwtdct"] * len(grid)
    assert all(r["applicable"] == "True" for r in rows if r["method"] == "spread_spectrum")
    dwt = {(r["attack"], r["strength"]): r for r in rows if r["method"] == "dwtdct"}
    # invisible-watermark reads nothing below 256 x 256: the 243 x 243 crop is not applicable
    crop = dwt[("crop", "0.9")]
    assert crop["applicable"] == "False" and crop["attacked_size"] == "243x243"
    assert math.isnan(float(crop["bit_accuracy"])) and "256x256" in crop["note"]
    assert dwt[("none", "")]["applicable"] == "True" and float(dwt[("none", "")]["bit_accuracy"]) > 0.7
    assert dwt[("jpeg_pil", "90")]["applicable"] == "True"          # same size: measured
    table = (metrics.parent / "comparison.md").read_text()
    assert "| crop 0.9 | " in table and "| n/a |" in table and "dwtdct (" in table
    assert (metrics.parent / "plots" / "bit_accuracy.png").is_file()


def test_a_repeated_method_is_a_one_line_error(cli, tmp_path):
    code, out, err = cli("eval-watermark", "method=[spread_spectrum,spread_spectrum]",
                         f"out_dir={tmp_path / 'outputs'}")
    assert code == 2 and "distinct methods" in err


def test_a_method_that_cannot_mark_the_data_is_a_one_line_error(cli, tmp_path):
    pytest.importorskip("imwatermark")
    code, out, err = cli("eval-watermark", "method=dwtdct", "data=mnist5k", "n_images=2",
                         f"out_dir={tmp_path / 'outputs'}")
    assert code == 2 and "method=dwtdct cannot mark these images" in err and "photos256" in err


def test_the_shipped_rgb_card_through_the_harness(cli, tmp_path):
    """rgb48 reads every attack of the grid (it resizes any input), beats chance on clean images
    and records its own 48 bits."""
    key_file = tmp_path / "key.txt"
    key_file.write_text("learned card")
    code, out, err = cli("eval-watermark", "method=rgb48", "n_images=4", "data.n_reference=4",
                         f"key_file={key_file}", f"out_dir={tmp_path / 'outputs'}")
    assert code == 0, err
    (metrics,) = (tmp_path / "outputs").rglob("metrics.csv")
    rows = read_csv(metrics)
    assert all(r["applicable"] == "True" and r["bits"] == "48" for r in rows)
    assert float(rows[0]["bit_accuracy"]) > 0.95 and float(rows[0]["psnr_db"]) > 38
