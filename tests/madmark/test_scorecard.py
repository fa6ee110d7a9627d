"""madmark.scorecard: the autophagy-aware scorecard of a sweep, from hand-made runs whose
properties are known, then from a real (tiny) sweep of the preset."""
import math

import pytest

from madmark.rundir import read_csv, rows_to_csv
from madmark.scorecard import scorecard_rows
from madmark.sweep_report import control_pairs, load_sweep, write_sweep_report


def fake_run(root, job, overrides, energy, detect=None, radio=None, idem=(0.0, math.inf),
             psnr=36.0, recall=None, shape="1x28x28", family="fully_synthetic"):
    folder = root / job
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = []
    for i, e in enumerate(energy):
        rows.append({"generation": i + 1, "family": family, "wm_image_shape": shape, "idem_layers": idem[0],
                     "idem_psnr_db": idem[1], "artifact_energy": e,
                     "inherit_detect_rate": (detect or [0.0] * len(energy))[i],
                     "radio_log10p": (radio or [0.0] * len(energy))[i],
                     "wm_psnr": psnr, "precision": 0.9,
                     "recall": (recall or [0.5] * len(energy))[i], "fid": 10.0})
    (folder / "results.csv").write_text(rows_to_csv(rows))


def test_properties_are_computed_from_the_marked_run_and_its_control(tmp_path):
    # control drifts by itself (+0.1/gen); the stacking mark adds a layer per generation,
    # the aware one stays 1 layer above control
    fake_run(tmp_path, "0", ["watermark=ss", "arm=control"], [0.5, 0.6, 0.7, 0.8])
    fake_run(tmp_path, "1", ["watermark=ss", "arm=watermark"], [0.5, 1.6, 2.7, 3.8],
             detect=[0.0, 1.0, 1.0, 1.0], radio=[0.0, -9.0, -9.6, -9.6], idem=(1.2, 38.0),
             recall=[0.5, 0.5, 0.4, 0.3])
    fake_run(tmp_path, "2", ["watermark=aware", "arm=control"], [0.2, 0.3, 0.4, 0.5])
    fake_run(tmp_path, "3", ["watermark=aware", "arm=watermark"], [0.2, 1.3, 1.45, 1.5],
             detect=[0.0, 0.98, 1.0, 1.0], radio=[0.0, -5.0, -7.0, -8.0])
    ss, aware = scorecard_rows(control_pairs(load_sweep(tmp_path)))
    assert ss["watermark"] == "ss" and ss["seeds"] == 1
    assert ss["energy_g2"] == pytest.approx(1.0) and ss["drift"] == pytest.approx(2.0)
    assert ss["detect_min"] == 1.0 and ss["radio_log10p_max"] == -9.0
    assert ss["d_recall"] == pytest.approx(-0.2) and ss["d_fid"] == 0
    assert ss["passes"] == "3a 3b 5" and ss["fails"] == "1 2"
    assert aware["drift"] == pytest.approx(0.05) and aware["energy_g2"] == pytest.approx(1.0)
    assert aware["detect_min"] == 0.98 and aware["radio_log10p_max"] == -5.0
    assert aware["passes"] == "1 2 5" and aware["fails"] == "3a 3b"
    assert aware["drift_all_keys"] is None and aware["marked_detect_min"] is None


def test_seeds_are_averaged_with_their_spread(tmp_path):
    for job, seed, recall in ((0, 0, 0.5), (2, 1, 0.4)):
        fake_run(tmp_path, str(job), ["watermark=ss", f"seed={seed}", "arm=control"], [0, 0, 0])
        fake_run(tmp_path, str(job + 1), ["watermark=ss", f"seed={seed}", "arm=watermark"],
                 [0, 1, 1], recall=[0.5, 0.5, recall])
    (row,) = scorecard_rows(control_pairs(load_sweep(tmp_path)))
    assert row["seeds"] == 2 and row["d_recall"] == pytest.approx(-0.05)
    assert row["d_recall_sd"] == pytest.approx(math.sqrt(0.005))


def test_detection_of_every_sample_is_judged_in_fully_synthetic_loops_only(tmp_path):
    """With 10 % of the pool marked the model's samples carry little mark one by one; the
    radioactivity test is the question there."""
    fake_run(tmp_path, "0", ["arm=control"], [0, 0, 0], family="fresh_data")
    fake_run(tmp_path, "1", ["arm=watermark"], [0, 0.1, 0.1], detect=[0, 0.05, 0.06],
             radio=[0, -7, -8], family="fresh_data")
    (row,) = scorecard_rows(control_pairs(load_sweep(tmp_path)))
    assert row["detect_min"] == 0.05 and "3a" not in (row["passes"] + " " + row["fails"]).split()
    assert "3b" in row["passes"].split()


def test_the_rgb_quality_floor_is_38_db(tmp_path):
    fake_run(tmp_path, "0", ["arm=control"], [0, 0], shape="3x256x256")
    fake_run(tmp_path, "1", ["arm=watermark"], [0, 1], psnr=36.0, shape="3x256x256")
    (row,) = scorecard_rows(control_pairs(load_sweep(tmp_path)))
    assert "5" in row["fails"].split()


def test_per_generation_keys_are_judged_on_every_key_found_and_all_keys_flat(tmp_path):
    """Property 4: each generation's marks found by its own key (wm_detect_rate), and the layers
    of all keys together (artifact_energy_all_keys) within 0.2 of generation 2's."""
    def keys_run(job, arm, all_keys, found):
        fake_run(tmp_path / job[0], job[1], ["watermark.key_mode=generation", f"arm={arm}"],
                 [0, 1, 1, 1])
        path = tmp_path / job[0] / job[1] / "results.csv"
        rows = read_csv(path)
        for row, e, d in zip(rows, all_keys, found):
            row.update(artifact_energy_all_keys=e, wm_detect_rate=d)
        path.write_text(rows_to_csv(rows))

    keys_run(("flat", "0"), "control", [0, 0, 0, 0], [None] * 4)
    keys_run(("flat", "1"), "watermark", [0, 1, 1.1, 1.15], [1.0, 1.0, 0.995, 1.0])
    keys_run(("stacks", "0"), "control", [0, 0, 0, 0], [None] * 4)
    keys_run(("stacks", "1"), "watermark", [0, 1, 1.7, 2.2], [1.0, 1.0, 1.0, 1.0])
    (flat,) = scorecard_rows(control_pairs(load_sweep(tmp_path / "flat")))
    (stacks,) = scorecard_rows(control_pairs(load_sweep(tmp_path / "stacks")))
    assert flat["key_mode"] == "generation"
    assert flat["drift_all_keys"] == pytest.approx(0.15) and flat["marked_detect_min"] == 0.995
    assert "4" in flat["passes"].split()
    assert stacks["drift_all_keys"] == pytest.approx(1.2) and "4" in stacks["fails"].split()


def test_too_few_generations_judge_nothing_about_accumulation(tmp_path):
    fake_run(tmp_path, "0", ["arm=control"], [0, 0])
    fake_run(tmp_path, "1", ["arm=watermark"], [0, 1])
    (row,) = scorecard_rows(control_pairs(load_sweep(tmp_path)))
    assert row["drift"] is None and "2" not in (row["passes"] + " " + row["fails"]).split()


def test_the_report_writes_the_scorecard_only_for_runs_that_have_one(tmp_path):
    fake_run(tmp_path / "new", "0", ["arm=control"], [0, 0, 0])
    fake_run(tmp_path / "new", "1", ["arm=watermark"], [0, 1, 1])
    text = write_sweep_report(tmp_path / "new").read_text()
    assert "## Autophagy-aware scorecard" in text
    (row,) = read_csv(tmp_path / "new" / "scorecard.csv")
    assert row["drift"] == "0.0" and row["idem_psnr_db"] == "inf"
    old = tmp_path / "old"
    for job, arm in (("0", "control"), ("1", "watermark")):
        (old / job / ".hydra").mkdir(parents=True)
        (old / job / ".hydra" / "overrides.yaml").write_text(f"- arm={arm}\n")
        (old / job / "results.csv").write_text(rows_to_csv(
            [{"generation": 1, "artifact_energy": 0.1}]))
    assert "scorecard" not in write_sweep_report(old).read_text()
    assert not (old / "scorecard.csv").exists()


TINY_MNIST = ["loop.n_real=300", "model.n_components=16", "model.gmm_components=4",
              "eval.n_real=300", "eval.kid=false", "eval.features.epochs=1",
              "watermark.n_probe=32", "progress=false"]


@pytest.mark.slow
def test_the_preset_sweep_gives_the_scorecard(cli, tmp_path):
    """experiment=autophagy_aware, shrunk: spread spectrum stacks a layer on a second marking and
    its artifact energy grows; the aware variant is idempotent and stays flat."""
    code, _, err = cli("run", "-m", "experiment=autophagy_aware",
                       "watermark=spread_spectrum,spread_spectrum_aware", "loop=fully_synthetic",
                       "loop.generations=4", *TINY_MNIST)
    assert code == 0, err
    (sweep,) = (tmp_path / "outputs" / "autophagy_aware").iterdir()
    code, _, err = cli("report", str(sweep))
    assert code == 0, err
    rows = {r["watermark"]: r for r in read_csv(sweep / "scorecard.csv")}
    assert set(rows) == {"spread_spectrum", "spread_spectrum_aware"}
    ss, aware = rows["spread_spectrum"], rows["spread_spectrum_aware"]
    assert float(ss["idem_layers"]) > 0.8 and "1" in ss["fails"].split()
    assert float(aware["idem_layers"]) == pytest.approx(0.0, abs=0.05)
    assert float(ss["drift"]) > 1.0 and float(aware["drift"]) < float(ss["drift"]) / 3
