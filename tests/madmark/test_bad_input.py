"""Bad input to ``madmark run`` and ``madmark radioactivity``: one line on stderr, exit code 2, and
nothing lost — no run directory left by an early failure, no file of a run changed by a refusal,
and torch's advice to load a refused checkpoint unsafely repeated nowhere."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loops.checkpoint import CheckpointError, Checkpoints
from madcore.errors import MadmarkError
from madmark.cli import main
from madmark.methods import MAX_KEY_FILE_BYTES, secret_key
from tests.madmark.conftest import FAST, madmark_subprocess

#: a small image loop (sklearn's 8x8 digits): sample grids, about a second per run
DIGITS = ["data=digits", "model=pca_gmm", "model.n_components=8", "model.gmm_components=4",
          "model.max_iter=30", "loop.generations=3", "eval.enabled=false", "progress=false",
          "seed=3"]
#: what torch says when safe loading refuses a file: for a hostile file, the attack
TORCH_ADVICE = ("will likely succeed", "weights_only` set to `False", "weights_only=False")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("madmark: error:"), err
    assert "Traceback" not in err and " — " in lines[0]
    return lines[0]


# -- a value of the wrong type: refused before anything is created -----------------------------
@pytest.mark.parametrize("override, message", [
    ("loop.bias=abc", "madmark: error: loop.bias='abc' is not a number — set loop.bias=0.8"),
    ("seed=abc", "madmark: error: seed='abc' is not an integer — set seed=0"),
    ("loop.generations=2.5",
     "madmark: error: loop.generations=2.5 is not an integer — set loop.generations=10"),
    ("loop.n_real=many", "madmark: error: loop.n_real='many' is not an integer or null — "
                         "set loop.n_real=1000 or loop.n_real=null"),
    ("progress=maybe",
     "madmark: error: progress='maybe' is not true or false — set progress=true or progress=false"),
    ("eval.k=abc", "madmark: error: eval.k='abc' is not an integer — set eval.k=5"),
    ("data.dim=abc",                                         # data/gaussian_schema
     "madmark: error: data.dim='abc' is not an integer — set data.dim=8"),
    ("samples_grid=null", "madmark: error: samples_grid=null is not an integer — "
                          "set samples_grid=64"),
    ("threads=two", "madmark: error: threads='two' is not an integer or null — "
                    "set threads=1 or threads=null"),
    ("threads=0", "madmark: error: threads=0 is not a thread count (an integer >= 1) — set "
                  "threads=1 (or another count), or threads=null for the CPUs this job may use"),
])
def test_a_value_of_the_wrong_type_is_one_line_and_creates_nothing(cli, tmp_path, override,
                                                                    message):
    code, out, err = cli("run", *FAST, override)
    assert code == 2 and one_line(err) == message
    assert not (tmp_path / "outputs").exists()          # not even Hydra's .hydra/ and log


@pytest.mark.parametrize("command, override, message", [
    ("run", "loop.n_rael=5", "madmark: error: loop.n_rael is not a setting of this command — "
                             "check its spelling (--help lists the settings)"),
    ("eval-watermark", "n_imgs=4", "madmark: error: n_imgs is not a setting of this command — "
                                   "check its spelling (--help lists the settings)"),
    ("eval-watermark", "n_images=abc", "madmark: error: n_images='abc' is not a number — "
                                       "set n_images=64"),
    ("eval-watermark", "text.n_docs=many", "madmark: error: text.n_docs='many' is not a number — "
                                           "set text.n_docs=500"),
    ("train-watermark", "eval_images=all", "madmark: error: eval_images='all' is not a number — "
                                           "set eval_images=512"),
])
def test_an_unknown_key_or_a_word_for_a_number_in_any_command_is_one_line(cli, tmp_path, command,
                                                                          override, message):
    """Every Hydra command: a misspelt key (Hydra's own error is six lines), and a value whose
    type is not the one the command's config file implies (eval-watermark and train-watermark
    have no declared schema: the file's number is the type)."""
    args = (*FAST, override) if command == "run" else (override, f"out_dir={tmp_path / 'outputs'}")
    code, _, err = cli(command, *args)
    assert code == 2 and one_line(err) == message
    assert not (tmp_path / "outputs").exists()


def test_a_misspelt_key_in_a_sweep_is_one_line_before_any_job(cli, tmp_path):
    code, _, err = cli("run", "-m", *FAST, "loop.n_rael=5,6")
    assert code == 2 and one_line(err) == ("madmark: error: loop.n_rael is not a setting of this "
                                           "command — check its spelling (--help lists the "
                                           "settings)")
    assert not (tmp_path / "outputs").exists()


def test_the_real_cli_exits_2_on_a_string_for_a_number(tmp_path):
    done = madmark_subprocess("run", *FAST, "loop.bias=abc", f"out_dir={tmp_path / 'out'}",
                              timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr) == ("madmark: error: loop.bias='abc' is not a number — "
                                     "set loop.bias=0.8")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_creates_nothing(cli, tmp_path):
    code, _, err = cli("run", *FAST, "device=cuda")
    assert code == 2 and "no CUDA GPU" in one_line(err)
    assert not (tmp_path / "outputs").exists()


def test_valid_numbers_in_other_forms_still_run(cli, tmp_path):
    code, _, err = cli("run", *FAST, "loop.bias=1", "name=forms")      # an int for a float
    assert code == 0, err


def test_a_bad_value_in_a_sweep_removes_its_job_and_keeps_the_finished_one(cli, tmp_path):
    code, _, err = cli("run", "-m", *FAST, "name=sweep", "filter.min_pool=64,abc")
    assert code == 2 and one_line(err) == ("madmark: error: filter.min_pool='abc' is not a "
                                           "number — set filter.min_pool=64")
    (sweep,) = (tmp_path / "outputs" / "sweep").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]
    assert json.loads((sweep / "0" / "status.json").read_text())["state"] == "complete"


def test_a_swept_run_setting_of_the_wrong_type_is_refused_before_any_job(cli, tmp_path):
    code, _, err = cli("run", "-m", *FAST, "name=sweep", "seed=0,abc")
    assert code == 2 and one_line(err) == ("madmark: error: seed='abc' is not an integer — "
                                           "set seed=0")
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_whose_jobs_all_fail_early_leaves_nothing(cli, tmp_path):
    code, _, err = cli("run", "-m", *FAST, "name=sweep", "loop.bias=abc,0.5")
    assert code == 2 and "loop.bias='abc' is not a number" in one_line(err)
    assert not (tmp_path / "outputs").exists()


# -- failures after Hydra created the folder: it goes, and nothing else does -------------------
def key_run(cli, key_file, *extra):
    return cli("run", *DIGITS, "loop.generations=1", "watermark=spread_spectrum",
               f"watermark.key_file={key_file}", *extra)


@pytest.mark.parametrize("content, needle", [
    (b"", "is empty"),
    (b"  \n\t\n", "is empty"),
    (b"x" * (MAX_KEY_FILE_BYTES + 1), "more than the 1 MiB"),
], ids=["empty", "whitespace", "over-1MiB"])
def test_a_bad_key_file_is_one_line_and_leaves_no_directory(cli, tmp_path, content, needle):
    key = tmp_path / "key.txt"
    key.write_bytes(content)
    code, _, err = key_run(cli, key)
    assert code == 2 and needle in one_line(err) and str(key) in err
    assert not (tmp_path / "outputs").exists()


MNIST = ["loop.n_real=300", "model.n_components=16", "model.gmm_components=4",
         "eval.enabled=false", "progress=false", "samples_grid=0", "watermark.n_probe=64"]


def test_resuming_with_a_key_that_did_not_mark_the_run_is_refused_and_changes_nothing(
        cli, tmp_path, monkeypatch):
    """The key file was rewritten between the killed run and its resume: marking on with the new
    key would leave later generations with other marks than the finished ones."""
    key, run = tmp_path / "key.txt", tmp_path / "run"
    key.write_text("the-key-the-run-started-with")
    monkeypatch.setenv("MADMARK_KILL_AT", "after-checkpoint@1")
    killed = madmark_subprocess("run", *MNIST, "loop.generations=2", "watermark=spread_spectrum",
                                f"watermark.key_file={key}", f"hydra.run.dir={run}")
    monkeypatch.delenv("MADMARK_KILL_AT")
    assert killed.returncode != 0 and (run / "state" / "g0001.pt").exists()
    recorded = Checkpoints(run / "state").load(1)["row"]["wm_key_fingerprint"]
    assert recorded == secret_key("", str(key)).fingerprint
    key.write_text("another-key")
    before = files_of(run / "state")
    code, _, err = cli("run", f"resume={run}", "progress=false")
    line = one_line(err)
    assert code == 2 and recorded in line and secret_key("", str(key)).fingerprint in line
    assert "watermark.key_file" in line and "another-key" not in err
    assert files_of(run / "state") == before
    key.write_text("the-key-the-run-started-with")
    code, _, err = cli("run", f"resume={run}", "progress=false")
    assert code == 0, err


def test_a_strength_below_the_psnr_floor_is_refused_with_the_strength_that_reaches_it(cli,
                                                                                     tmp_path):
    code, _, err = cli("run", *MNIST, "loop.generations=1", "watermark=spread_spectrum",
                       "watermark.strength=0.05", "watermark.min_psnr_db=34")
    line = one_line(err)
    assert code == 2 and "below watermark.min_psnr_db=34" in line and "lower watermark.strength" in line
    assert not (tmp_path / "outputs").exists()
    suggested = float(line.split("(about ")[1].split()[0])
    assert 0.01 < suggested < 0.025                     # ~0.05 · 10^((26 − 34)/20) ≈ 0.02
    code, _, err = cli("run", *MNIST, "loop.generations=1", "watermark=spread_spectrum",
                       f"watermark.strength={suggested * 0.95:.4f}", "watermark.min_psnr_db=34")
    assert code == 0, err


@pytest.mark.parametrize("override", ["data=digits", "data=gaussian"], ids=["8x8", "vectors"])
def test_the_aware_mark_on_data_it_cannot_mark_is_one_line_and_creates_nothing(cli, tmp_path,
                                                                               override):
    args = DIGITS if override == "data=digits" else ["data=gaussian", "model=gaussian"]
    code, _, err = cli("run", *args, override, "loop.generations=1",
                       "watermark=spread_spectrum_aware")
    line = one_line(err)
    assert code == 2 and ("work_size 8" in line or "needs image data" in line)
    assert not (tmp_path / "outputs").exists()


def test_an_unreadable_key_file_is_one_line(cli, tmp_path):
    code, _, err = key_run(cli, tmp_path)                                 # a folder
    assert code == 2 and "is not a regular file" in one_line(err)
    code, _, err = key_run(cli, tmp_path / "absent.txt")
    assert code == 2 and "cannot read key_file" in one_line(err) and "FileNotFoundError" in err
    assert not (tmp_path / "outputs").exists()


def test_secret_key_refuses_bad_key_files_and_reads_good_ones(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("s3cret\n")
    assert secret_key("", str(good)) == secret_key("s3cret", "")
    for content, needle in ((b"", "is empty"), (b" \n", "is empty"),
                            (b"k" * (MAX_KEY_FILE_BYTES + 1), "1 MiB")):
        bad = tmp_path / "bad.txt"
        bad.write_bytes(content)
        with pytest.raises(MadmarkError, match=needle) as caught:
            secret_key("", str(bad))
        assert "k" * 20 not in str(caught.value)          # the content is never shown
    if hasattr(os, "geteuid") and os.geteuid() != 0:      # root reads a chmod 000 file anyway
        good.chmod(0)
        with pytest.raises(MadmarkError, match="PermissionError"):
            secret_key("", str(good))


def test_an_image_folder_too_small_for_the_evaluation(cli, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype("uint8")).save(
            folder / f"{i}.png")
    code, _, err = cli("run", "data=imagefolder", f"data.root={folder}", "progress=false",
                       "loop.generations=1")
    line = one_line(err)
    assert code == 2 and "eval.k=5" in line and "eval.enabled=false" in line
    assert "1 reference" in line and "more images" in line
    assert not (tmp_path / "outputs").exists()


def test_a_failure_in_an_existing_folder_removes_only_what_it_wrote(cli, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    key = tmp_path / "empty.txt"
    key.write_text("")
    code, _, err = key_run(cli, key, f"hydra.run.dir={folder}")
    assert code == 2 and "is empty" in one_line(err)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_folder_holding_a_run_is_refused_before_hydra_writes_into_it(cli, tmp_path):
    folder = tmp_path / "run"
    code, _, err = cli("run", *FAST, f"hydra.run.dir={folder}")
    assert code == 0, err
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, _, err = cli("run", *FAST, "seed=5", f"hydra.run.dir={folder}")
    assert code == 2 and "already holds a run" in one_line(err)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


# -- corrupt and hostile checkpoints -----------------------------------------------------------
class Hostile:
    """Unpickling it unsafely creates ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_hostile(path: Path, marker: Path, t: int) -> None:
    record = torch.load(path, weights_only=True)
    record["row"] = Hostile(marker)
    torch.save(record, path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-generation image run, to be copied by each test."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", *DIGITS, f"hydra.run.dir={folder}"]) == 0
    return folder


@pytest.fixture
def run_copy(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    return folder


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_no_advice(*texts):
    for text in texts:
        for advice in TORCH_ADVICE:
            assert advice not in text, text


def test_the_hostile_test_file_would_run_code_if_loaded_unsafely(finished_run, tmp_path):
    path, marker = tmp_path / "g.pt", tmp_path / "marker"
    shutil.copy(finished_run / "state" / "g0002.pt", path)
    write_hostile(path, marker, 2)
    torch.load(path, weights_only=False)                  # what torch's advice would do
    assert marker.exists()


def test_checkpoints_load_refuses_hostile_and_random_files(finished_run, tmp_path):
    folder = tmp_path / "state"
    shutil.copytree(finished_run / "state", folder)
    marker = tmp_path / "marker"
    write_hostile(folder / "g0002.pt", marker, 2)
    (folder / "g0003.pt").write_bytes(os.urandom(4096))
    ck = Checkpoints(folder)
    assert ck.load(1)["row"]["generation"] == 1
    with pytest.raises(CheckpointError) as refused:
        ck.load(2)
    assert refused.value.refused and "refused by safe loading" in str(refused.value)
    with pytest.raises(CheckpointError) as unreadable:
        ck.load(3)
    assert "refused by safe loading" in str(unreadable.value) or \
        "unreadable" in str(unreadable.value)
    assert_no_advice(str(refused.value), str(unreadable.value))
    assert refused.value.__cause__ is None and refused.value.__context__ is None
    assert not marker.exists()


def test_resume_refuses_a_hostile_checkpoint_then_resume_from_recomputes_it(cli, run_copy,
                                                                            finished_run,
                                                                            tmp_path):
    marker = tmp_path / "marker"
    write_hostile(run_copy / "state" / "g0002.pt", marker, 2)
    before = files_of(run_copy)
    code, out, err = cli("run", f"resume={run_copy}", "progress=false")
    line = one_line(err)
    assert code == 2 and str(run_copy / "state" / "g0002.pt") in line
    assert "refused by safe loading" in line and f"resume={run_copy} resume_from=2" in line
    assert files_of(run_copy) == before                   # nothing changed, nothing deleted
    assert_no_advice(out, err, *(p.read_text(errors="replace") for p in run_copy.glob("*.*")
                                 if p.is_file()))
    assert not marker.exists()

    code, out, err = cli("run", f"resume={run_copy}", "resume_from=2", "progress=false")
    assert code == 0, err
    assert "moved g0002.pt, g0003.pt" in out
    (aside,) = (run_copy / "state").glob("set-aside-*")
    assert sorted(p.name for p in aside.iterdir()) == ["g0002.pt", "g0003.pt", "results.csv"]
    for name in ("results.csv", "samples/g0002.png", "samples/g0003.png"):
        assert (run_copy / name).read_bytes() == (finished_run / name).read_bytes(), name
    assert json.loads((run_copy / "status.json").read_text())["state"] == "complete"
    assert not marker.exists()


def test_resume_names_an_unreadable_checkpoint(cli, run_copy):
    (run_copy / "state" / "g0003.pt").write_bytes(os.urandom(2000))
    code, _, err = cli("run", f"resume={run_copy}", "progress=false")
    line = one_line(err)
    assert code == 2 and "g0003.pt" in line and "resume_from=3" in line
    assert_no_advice(err)


def test_radioactivity_refuses_a_hostile_checkpoint(cli, run_copy, tmp_path):
    marker = tmp_path / "marker"
    write_hostile(run_copy / "state" / "g0003.pt", marker, 3)
    code, out, err = cli("radioactivity", str(run_copy), "generation=3", "n=100")
    line = one_line(err)
    assert code == 2 and "g0003.pt" in line and "refused by safe loading" in line
    assert "generation=2" in line and "resume_from=3" in line
    assert_no_advice(out, err)
    assert not marker.exists() and not (run_copy / "radioactivity").exists()


def test_a_missing_checkpoint_before_later_ones_is_refused_with_the_command(cli, run_copy,
                                                                           finished_run):
    (run_copy / "state" / "g0002.pt").unlink()
    code, _, err = cli("run", f"resume={run_copy}", "progress=false")
    assert code == 2 and "g0002.pt" in one_line(err) and "resume_from=2" in err
    assert (run_copy / "state" / "g0003.pt").exists()
    code, _, err = cli("run", f"resume={run_copy}", "resume_from=2", "progress=false")
    assert code == 0, err
    assert (run_copy / "results.csv").read_bytes() == (finished_run / "results.csv").read_bytes()


# -- results.csv, sample grids, report and temporaries on resume -------------------------------
def test_resume_repairs_a_truncated_results_csv_a_missing_grid_and_temporaries(cli, run_copy,
                                                                              finished_run):
    text = (run_copy / "results.csv").read_text()
    (run_copy / "results.csv").write_text(text[: len(text) // 2])
    (run_copy / "samples" / "g0003.png").unlink()
    (run_copy / "report.md").write_text("stale")
    stale = [run_copy / ".results.csv.123.abcd1234.tmp", run_copy / "state" / ".g0004.pt.9.x.tmp"]
    for p in stale:
        p.write_text("half")
    code, out, err = cli("run", f"resume={run_copy}", "progress=false")
    assert code == 0, err
    assert "already complete" in out and "rewrote results.csv" in out
    assert files_of(run_copy / "samples") == files_of(finished_run / "samples")
    assert (run_copy / "results.csv").read_bytes() == (finished_run / "results.csv").read_bytes()
    assert (run_copy / "report.md").read_bytes() == (finished_run / "report.md").read_bytes()
    assert "generations finished: 3 of 3, status: complete" in (run_copy / "report.md").read_text()
    assert not any(p.exists() for p in stale)


def test_resume_refuses_a_results_csv_that_disagrees_with_the_checkpoints(cli, run_copy):
    path = run_copy / "results.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("1500", "1499", 1)
    path.write_text("".join(lines))
    before = files_of(run_copy)
    code, _, err = cli("run", f"resume={run_copy}", "progress=false")
    line = one_line(err)
    assert code == 2 and "disagrees with the run's checkpoints" in line
    assert "generation 2" in line and "'1499'" in line and "mv " in line
    assert files_of(run_copy) == before


def test_resume_from_needs_a_valid_generation(cli, run_copy):
    code, _, err = cli("run", f"resume={run_copy}", "resume_from=9", "progress=false")
    assert code == 2 and "set resume_from between 1 and 4" in one_line(err)
    code, _, err = cli("run", *FAST, "resume_from=2")
    assert code == 2 and "needs resume=<run_dir>" in one_line(err)
