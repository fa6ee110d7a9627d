"""The madmark CLI: commands, config help, run directories, one-line errors, multirun."""
import json

import pytest

from loops.checkpoint import Checkpoints
from madmark.rundir import read_csv
from tests.madmark.conftest import FAST, run_dirs


def test_help_lists_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "run" in out and "usage: madmark" in out


def test_run_help_shows_config(cli):
    code, out, _ = cli("run", "--help")
    assert code == 0
    for key in ("loop:", "family: fully_synthetic", "data:", "model:", "seed:"):
        assert key in out


def test_run_help_lists_choices_not_schemas(cli):
    """The groups list every yaml a user can choose and none of the ConfigStore schemas or bases
    that those yamls start from."""
    from madmark.hydra_app import group_choices

    code, out, _ = cli("run", "--help")
    groups = dict(line.split(": ", 1) for line in out.split("== Config ==")[0].splitlines()
                  if ": " in line and not line.startswith(" "))
    assert code == 0 and "_schema" not in out.split("== Config ==")[0]
    for group in ("data", "model", "watermark", "loop"):
        shown = groups[group].split(", ")
        assert shown == [c for c in group_choices(group) if c != "base"], group


def test_run_writes_a_complete_run_directory(shared_run):
    run, out = shared_run(*FAST)
    assert run.parent.name == "default"                        # outputs/<name>/<date-time>
    for name in ("config.yaml", "env.json", "status.json", "results.csv"):
        assert (run / name).is_file(), name
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["device"] == "cpu" and env["versions"]["torch"]
    assert Checkpoints(run / "state").finished() == [1, 2, 3]
    rows = read_csv(run / "results.csv")
    assert [r["generation"] for r in rows] == ["1", "2", "3"]
    for col in ("n_real", "n_synthetic", "origin_counts", "fit_trace_cov", "w2_to_true",
                "logdet_cov", "trace_cov"):
        assert col in rows[0], col
    assert "generation" in out and "w2_to_true" in out          # the printed table


@pytest.mark.parametrize("override, needle", [
    ("data=nosuch", "unknown data 'nosuch'"),
    ("model=nosuch", "unknown model 'nosuch'"),
    ("loop=nosuch", "unknown loop 'nosuch'"),
    ("loop.bias=1.5", "outside (0, 1]"),
    ("loop.bias=0", "outside (0, 1]"),
    ("loop.n_synthetic=0", "n_synthetic=0"),
])
def test_bad_config_is_one_line_exit_2_and_leaves_no_run(cli, tmp_path, override, needle):
    code, _, err = cli("run", *FAST, override)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("madmark: error:"), err
    assert needle in lines[0] and "—" in lines[0]          # the problem, then the fix
    assert "Traceback" not in err
    assert run_dirs(tmp_path / "outputs") == []


def test_missing_image_folder(cli, tmp_path):
    code, _, err = cli("run", "data=imagefolder", f"data.root={tmp_path / 'absent'}",
                       "progress=false")
    assert code == 2 and "absent" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(cli):
    with pytest.raises(Exception, match=r"\(0, 1\]"):
        cli("run", *FAST, "loop.bias=2", "debug=true")


def test_unknown_command(cli):
    code, _, err = cli("frobnicate")
    assert code == 2 and "unknown command" in err


@pytest.mark.slow        # ~25 s; the joblib launcher test runs a multirun by default
def test_multirun_sweep_runs_every_combination(cli, tmp_path):
    code, _, err = cli("run", "-m", *FAST, "name=sweep", "loop.bias=1.0,0.8", "seed=0,1")
    assert code == 0, err
    runs = run_dirs(tmp_path / "outputs" / "sweep")
    assert len(runs) == 4
    biases = sorted((r["bias"], json.loads((d / "env.json").read_text())["seed"])
                    for d in runs for r in read_csv(d / "results.csv")[:1])
    assert biases == [("0.8", 0), ("0.8", 1), ("1.0", 0), ("1.0", 1)]


def test_same_seed_same_results(cli, tmp_path, shared_run, one_torch_thread):
    """A second run equals the shared one (computed with one torch thread, as this one: the last
    digits of e.g. fid can depend on the thread count)."""
    a, _ = shared_run(*FAST)
    assert cli("run", *FAST, "name=b")[0] == 0
    (b,) = run_dirs(tmp_path / "outputs" / "b")
    assert (a / "results.csv").read_text() == (b / "results.csv").read_text()


def _png(path, size):
    from PIL import Image
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 128, dtype=np.uint8)).save(path)


@pytest.mark.parametrize("case, needle", [("corrupt", "broken.png"), ("mixed", "resize")])
def test_bad_image_folder_is_one_line_exit_2(cli, tmp_path, case, needle):
    root = tmp_path / "images"
    for i in range(6):
        _png(root / f"img{i}.png", 8)
    if case == "corrupt":
        (root / "broken.png").write_bytes(b"not an image at all")
    else:
        _png(root / "big.png", 16)
    before = {p: p.read_bytes() for p in root.iterdir()}
    code, _, err = cli("run", "data=imagefolder", f"data.root={root}", "progress=false")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in root.iterdir()} == before      # the user's files untouched
    assert run_dirs(tmp_path / "outputs") == []


@pytest.mark.parametrize("experiment", ["gaussian_bias", "gaussian_fresh"])
def test_experiment_presets_compose_and_run(cli, tmp_path, experiment):
    small = ["data.n_train=500", "data.n_reference=500"] if experiment == "gaussian_bias" else []
    code, _, err = cli("run", f"experiment={experiment}", "loop.generations=2", "progress=false",
                       *small)                     # gaussian_bias: 2,000 points of 8 dims each
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "outputs" / experiment)
    rows = read_csv(run / "results.csv")
    assert len(rows) == 2 and rows[0]["features"].startswith("raw")
