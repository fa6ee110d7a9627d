"""``madmark run`` on text: the n-gram loop, its metrics, a KGW mark drawn at sampling time, its
filter, inheritance and radioactivity columns, and the errors of mixing text and image parts.

A small corpus: the 79 help topics of Python's own documentation (``pydoc_data.topics``, ~0.5 MB)
as .txt documents, a 512-id BPE, 32-token sequences."""
import pydoc_data.topics
import pytest

from loops.checkpoint import Checkpoints
from madcore.columns import names
from madmark.commands.text import load_tokenizer
from madmark.columns import REGISTRY
from madmark.rundir import read_csv
from madmark.text_evaluation import COLUMNS as TEXT_COLUMNS
from madmark.text_run import INHERITANCE_COLUMNS
from tests.madmark.conftest import run_dirs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pydoc_topics")
    for name, text in sorted(pydoc_data.topics.topics.items()):
        (folder / f"{name}.txt").write_text(text)
    return folder


def text_args(corpus, tmp_path, *extra):
    return ["run", "data=textfile", f"data.path={corpus}", "data.vocab_size=512",
            "data.seq_len=32", "data.reference_fraction=0.2",
            f"data.cache_dir={corpus.parent / 'tokenizers'}", "model=ngram", "loop.n_real=400",
            "eval.text_n_eval=300", "eval.text_features=false", "progress=false", *extra]


def only_run(tmp_path):
    (run,) = run_dirs(tmp_path / "outputs")
    return run


def test_fully_synthetic_text_loop_writes_declared_text_metrics(cli, corpus, tmp_path):
    code, out, err = cli(*text_args(corpus, tmp_path, "loop=fully_synthetic",
                                    "loop.generations=3", "loop.bias=0.7"))
    assert code == 0, err
    run = only_run(tmp_path)
    rows = read_csv(run / "results.csv")
    assert len(rows) == 3 and all(c in REGISTRY for c in rows[0])
    assert set(names(TEXT_COLUMNS)) <= set(rows[0])
    assert "wm_method" not in rows[0] and "precision" not in rows[0]   # text_features=false
    # at λ = 0.7 the loop forgets the real distribution: ppl_real rises, distinct-2 falls
    ppl = [float(r["ppl_real"]) for r in rows]
    assert ppl[0] < ppl[1] < ppl[2], ppl
    assert float(rows[2]["distinct_2"]) < float(rows[0]["distinct_2"])
    assert (run / "tokenizer.json").is_file()
    assert "ppl_real" in (run / "report.md").read_text() and "ppl_real" in out


def test_kgw_marks_at_sampling_time_and_the_filter_drops_marked_documents(cli, corpus, tmp_path):
    code, _, err = cli(*text_args(corpus, tmp_path, "loop=fresh_data", "loop.n_synthetic=400",
                                  "loop.generations=2", "watermark=kgw", "filter=detector"))
    assert code == 0, err
    rows = read_csv(only_run(tmp_path) / "results.csv")
    first, second = rows
    assert set(names(INHERITANCE_COLUMNS)) <= set(first)
    assert float(first["wm_detect_rate"]) > 0.9          # 32-token documents, δ = 2, γ = 0.25
    assert float(first["wm_changed_fraction"]) > 0.5
    assert first["wm_method"] == "kgw" and "gamma=0.25" in first["wm_text_settings"]
    # generation 1's model never saw a mark: its own samples are not detected
    assert float(first["inherit_detect_rate"]) < 0.05
    assert float(first["radio_log10p"]) > -3
    assert float(second["filter_tpr"]) > 0.9 and float(second["filter_real_drop_rate"]) < 0.05
    assert int(second["n_synthetic"]) < 40                 # the marked documents are dropped
    # the practitioner's view: generation 1's pooled (marked) samples as .txt files, tested
    # with the run's tokenizer and watermark settings (run=)
    run = only_run(tmp_path)
    tokenizer = load_tokenizer(str(run / "tokenizer.json"))[0]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(tokenizer.decode(Checkpoints(run / "state").load(1)["samples"][:30])):
        (docs / f"{i:02d}.txt").write_text(text)
    out = tmp_path / "detect.csv"
    code, stdout, err = cli("detect", str(docs), f"run={run}", f"out={out}")
    assert code == 0, err
    flagged = [r["flagged"] == "True" for r in read_csv(out)]
    assert len(flagged) == 30 and sum(flagged) >= 25, stdout
    # another key than the run's is refused, unless asked for as a control
    other = tmp_path / "other.key"
    other.write_text("not-the-run-key")
    code, _, err = cli("detect", str(docs), f"run={run}", f"key_file={other}",
                       f"out={tmp_path / 'other.csv'}")
    assert code == 2 and "marked with key" in err and "not-the-run-key" not in err, err
    code, _, err = cli("detect", str(docs), f"run={run}", f"key_file={other}", "other_key=true",
                       f"out={tmp_path / 'other.csv'}")
    assert code == 0, err
    assert sum(r["flagged"] == "True" for r in read_csv(tmp_path / "other.csv")) <= 3


@pytest.mark.slow        # the kgw run test covers the stage; this one the unmarked arm (~15 s)
def test_the_control_arm_measures_without_marking(cli, corpus, tmp_path):
    code, _, err = cli(*text_args(corpus, tmp_path, "loop=fully_synthetic", "loop.generations=2",
                                  "watermark=exp", "watermark.mark=false"))
    assert code == 0, err
    rows = read_csv(only_run(tmp_path) / "results.csv")
    assert all("wm_detect_rate" not in r or r["wm_detect_rate"] == "" for r in rows)
    assert all(float(r["inherit_detect_rate"]) < 0.05 for r in rows)


@pytest.mark.parametrize("extra, message", [
    (["watermark=spread_spectrum"], "watermark=spread_spectrum marks images"),
    (["filter=classifier"], "filter=classifier on text needs a text watermark"),
    (["watermark=kgw", "filter=classifier"], "filter=classifier detects synthetic images"),
    (["eval.cas=true"], "eval.cas trains an image classifier"),
    (["model=pca_gmm"], "does not take text data"),
    (["model.vocab_size=100"], "model.vocab_size=100 is smaller than the tokenizer's"),
])
def test_mixing_text_and_image_parts_is_a_one_line_error(cli, corpus, tmp_path, extra, message):
    code, _, err = cli(*text_args(corpus, tmp_path, "loop.generations=1", *extra))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_text_watermark_on_images_is_a_one_line_error(cli, tmp_path):
    code, _, err = cli("run", "watermark=kgw", "loop.generations=1", "progress=false")
    assert code == 2 and "watermark=kgw marks text" in err, err


@pytest.mark.slow        # ~20-40 s: tests/loops/models/test_gpt.py covers the model itself
def test_the_small_transformer_runs_the_same_loop(cli, corpus, tmp_path):
    args = [a for a in text_args(corpus, tmp_path, "loop=fully_synthetic", "loop.generations=2",
                                 "loop.n_real=64", "model.steps=3", "model.batch_size=8",
                                 "watermark=kgw")
            if a != "model=ngram"]
    code, _, err = cli(*args, "model=gpt_tiny")
    assert code == 0, err
    rows = read_csv(only_run(tmp_path) / "results.csv")
    assert [r["fit_steps"] for r in rows] == ["3.0", "3.0"]
    assert all(float(r["ppl_real"]) > 1 and float(r["wm_detect_rate"]) >= 0 for r in rows)
