"""madmark eval-watermark: one metrics.csv row per attack x strength; the key never lands on disk."""
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
    jpeg50 = next(r for r in rows if r["attack"] == "jpeg" and r["strength"] == "50")
    assert float(jpeg50["bit_accuracy"]) > 0.95
    assert (metrics.parent / "plots" / "bit_accuracy.png").is_file()
    for path in metrics.parent.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in out + err
