"""madmark eval-watermark on text data: the text attack grid per method from a real corpus
(Python's own documentation, ``pydoc_data.topics``, as a folder of .txt files), one-line errors
for the other modality's parts, the key never on disk."""
import pytest

from madmark.rundir import read_csv
from watermark.text.attacks import TEXT_ATTACK_GRID

SECRET = "eval-text-secret-5d2e"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("pydoc")
    for i, name in enumerate(sorted(topics)):
        (folder / f"{i:03d}.txt").write_text(topics[name], encoding="utf-8")
    return folder


def text_args(corpus, tmp_path, *more):
    key_file = tmp_path / "key.txt"
    key_file.write_text(SECRET)
    return ("eval-watermark", "data=textfile", f"data.path={corpus}", "data.seq_len=32",
            "data.vocab_size=512", "data.cache_dir=null", "data.reference_fraction=0.3",
            "text.n_docs=80", "text.n_fit=2000", f"key_file={key_file}",
            f"out_dir={tmp_path / 'outputs'}", *more)


def one_line_error(code, err, *words):
    assert code == 2 and err.startswith("madmark: error: ") and len(err.strip().splitlines()) == 1
    for w in words:
        assert w in err, err


def test_text_grid_per_method_with_the_cost_in_perplexity(cli, corpus, tmp_path):
    code, out, err = cli(*text_args(corpus, tmp_path, "method=[kgw,exp]"))
    assert code == 0, err
    (metrics,) = (tmp_path / "outputs").rglob("metrics.csv")
    rows = read_csv(metrics)
    grid = [("none", "")] + [(a, str(s)) for a, s in TEXT_ATTACK_GRID]
    for method in ("kgw", "exp"):
        mine = [r for r in rows if r["method"] == method]
        assert [(r["attack"], r["strength"]) for r in mine] == grid
        clean = mine[0]
        assert float(clean["detect_rate"]) >= 0.95 and int(clean["n_docs"]) == 80
        assert float(clean["human_flag_rate"]) <= 0.05
        assert float(mine[-1]["median_z"]) < float(clean["median_z"])   # 75 % human text
        assert int(float(clean["mean_tokens"])) == 32
    kgw, exp = (next(r for r in rows if r["method"] == m) for m in ("kgw", "exp"))
    unmarked = float(kgw["ppl_unmarked"])
    # KGW's logit bias raises the perplexity of its text under the model that drew it; EXP is
    # distortion-free (over keys) and stays near the unmarked samples'
    assert float(kgw["ppl_marked"]) > 1.1 * unmarked
    assert abs(float(exp["ppl_marked"]) / unmarked - 1) < 0.1
    assert "gamma=0.25" in kgw["settings"] and "repeated_context=sample" in exp["settings"]
    run = metrics.parent
    assert (run / "comparison.md").read_text().count("\n| ") == 2 + len(grid)   # header, rule, rows
    assert (run / "plots" / "detect_rate.png").is_file()
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in out + err


def test_method_settings_come_from_the_watermark_configs(cli, corpus, tmp_path):
    code, _, err = cli(*text_args(corpus, tmp_path, "method=kgw", "text.kgw.text.gamma=0.5",
                                  "text.kgw.text.delta=4.0"))
    assert code == 0, err
    (metrics,) = (tmp_path / "outputs").rglob("metrics.csv")
    rows = read_csv(metrics)
    assert {r["method"] for r in rows} == {"kgw"} and "gamma=0.5" in rows[0]["settings"]


@pytest.mark.parametrize("extra, words", [
    (("method=spread_spectrum",), ("method=spread_spectrum marks images", "method=kgw")),
    (("method=kgw", "regeneration.attacks=[regen_vae]"), ("regeneration.attacks",)),
    (("method=kgw", "text.n_docs=0"), ("text.n_docs=0",)),
    (("method=kgw", "text.n_docs=100000"), ("reference split holds",)),
    (("method=kgw", "text.kgw.text.gamma=1.5"), ("method=kgw", "text.kgw.text")),
    (("method=kgw", "model@text.model=vae_tiny"), ("does not take text data", "model@text.model")),
])
def test_bad_text_settings_get_one_line(cli, corpus, tmp_path, extra, words):
    code, _, err = cli(*text_args(corpus, tmp_path, *extra))
    one_line_error(code, err, *words)


def test_a_text_method_on_images_is_refused(cli, tmp_path):
    code, _, err = cli("eval-watermark", "method=exp", "data=digits", f"out_dir={tmp_path}")
    one_line_error(code, err, "method=exp marks text", "data=shakespeare")
