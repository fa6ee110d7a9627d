"""Declared columns (madmark.columns): real runs write exactly what their producers declare,
consumers fail loudly on undeclared names, docs/columns.md is generated from the declarations."""
import pytest
from omegaconf import OmegaConf

from madcore.columns import UndeclaredColumn
from madmark.columns import PRODUCERS, REGISTRY, declared, docs_text
from madmark.console import format_table
from madmark.report import markdown_table
from madmark.rundir import read_csv
from tests.madmark.conftest import FAST, REPO
from tests.madmark.test_autophagy import CONTROL, FILTER, TINY, WATERMARK
from tests.madmark.test_cas_run import CAS
from tests.madmark.test_classifier_filter import FRESH_CLASSIFIER
from madmark.text_run import data_is_text
from tests.madmark.test_latent_diffusion_preset import SMOKE as LATENT_DIFFUSION_SMOKE
from tests.madmark.test_vae_preset import SMOKE as VAE_SMOKE

# -- which producers run, and which narrower conditions hold, for a run's resolved config ------
MODEL_PREFIX = "loops.models."
def text(cfg) -> bool:
    return data_is_text(cfg)


def image_mark(cfg) -> bool:
    return bool(cfg.watermark.enabled) and not text(cfg)


def text_mark(cfg) -> bool:
    return bool(cfg.watermark.enabled) and text(cfg)


#: producer -> does it run for this config (models: their class is the run's model)
RUNS = {
    "loops.engine.LoopEngine": lambda cfg: True,
    "loops.pool.Pool.composition": lambda cfg: True,
    "loops.stages.FilterStage": lambda cfg: bool(cfg.filter.enabled),
    "madmark.classifier_filter.ClassifierFilter":
        lambda cfg: bool(cfg.filter.enabled) and cfg.filter.get("method") == "classifier",
    "madmark.evaluation.spread_evaluator": lambda cfg: not text(cfg),
    "madmark.metrics.GenerationMetrics":
        lambda cfg: bool(cfg.eval.enabled) and (not text(cfg) or bool(cfg.eval.text_features)),
    "madmark.text_evaluation.TextMetrics": lambda cfg: bool(cfg.eval.enabled) and text(cfg),
    "eval.cas.ClassificationAccuracyScore": lambda cfg: bool(cfg.eval.cas),
    "madmark.evaluation.vector_truth_evaluator":      # the analytic vector sources
        lambda cfg: cfg.data._target_ in ("madmark.data.Gaussian", "madmark.data.GMM2D"),
    "madmark.watermarking.RunWatermark.settings": image_mark,
    "eval.artifacts.ArtifactMeter": image_mark,
    "eval.idempotence.idempotence": image_mark,
    "madmark.watermarking.RunWatermark.artifact_evaluator":
        lambda cfg: image_mark(cfg) and cfg.watermark.key_mode != "run",
    "loops.stages.WatermarkStage":
        lambda cfg: image_mark(cfg) and bool(cfg.watermark.get("mark", True)),
    "eval.growth.add_growth": image_mark,
    "madmark.text_run.TextRunWatermark.settings": text_mark,
    "madmark.text_run.TextRunWatermark.inheritance": text_mark,
    "loops.stages.SamplingWatermarkStage":
        lambda cfg: text_mark(cfg) and bool(cfg.watermark.get("mark", True)),
}
#: a column's own condition (Column.when) -> does it hold
WHEN = {"": lambda cfg: True, "eval.fid": lambda cfg: bool(cfg.eval.fid),
        "eval.kid": lambda cfg: bool(cfg.eval.kid),
        "a detector is given (madmark run: always)": lambda cfg: True,
        "eval.cas_augmented": lambda cfg: bool(cfg.eval.cas_augmented)}


def runs(producer, cfg) -> bool:
    if producer.name.startswith(MODEL_PREFIX):             # loops.models.<Class>.fit
        return cfg.model._target_.rsplit(".", 1)[-1] == producer.name.split(".")[2]
    return RUNS[producer.name](cfg)


def expected_columns(cfg) -> list[str]:
    """The columns the config's producers declare, in the order a row is built."""
    out = []
    for producer in PRODUCERS:
        if runs(producer, cfg):
            out += [c.name for c in producer.columns if WHEN[c.when](cfg) and c.name not in out]
    return out


def test_every_producer_and_condition_is_encoded_here():
    assert {p.name for p in PRODUCERS if not p.name.startswith(MODEL_PREFIX)} == set(RUNS)
    assert {c.when for p in PRODUCERS for c in p.columns} <= set(WHEN)


NO_EVAL = [o for o in TINY if o != "eval.enabled=false"]


def _text_corpus() -> str:
    """Python's own help topics (pydoc_data.topics) as .txt files in a fixed temporary folder."""
    import tempfile
    from pathlib import Path

    import pydoc_data.topics

    folder = Path(tempfile.gettempdir()) / "madmark-test-pydoc-topics"
    folder.mkdir(exist_ok=True)
    for name, body in sorted(pydoc_data.topics.topics.items()):
        path = folder / f"{name}.txt"
        if not path.is_file():
            path.write_text(body)
    return str(folder)


TEXT = ["data=textfile", f"data.path={_text_corpus()}", "data.vocab_size=512", "data.seq_len=32",
        "data.reference_fraction=0.2", "model=ngram", "loop.n_real=200", "loop.generations=2",
        "eval.text_n_eval=100", "eval.text_features=false", "progress=false"]
#: one run per set of producers; the runs other tests assert on too are shared with them
#: (the shared_run fixture runs each once per session)
CONFIGS = {
    "gaussian": FAST,
    "gmm2d": ["data=gmm2d", "model=gmm", "data.n_train=300", "data.n_reference=300",
              "model.n_components=4", "loop.generations=2", "eval.kid=false", "progress=false"],
    "mnist": [*TINY, "loop.generations=2"],
    "mnist_cas": CAS,
    "mnist_eval": [*NO_EVAL, "loop.generations=2", "eval.features.name=random_cnn",
                   "eval.fid=false", "eval.kid_subset_size=100"],
    "watermark": WATERMARK,
    "watermark_aware": [*TINY, "loop.generations=2", "watermark=spread_spectrum_aware"],
    "watermark_filter_augmentation": FILTER,
    "control": CONTROL,
    "watermark_generation_keys": [*TINY, "loop.generations=3", "watermark=spread_spectrum_aware",
                                  "watermark.key_mode=generation"],
    "classifier_filter": FRESH_CLASSIFIER,
    "vae": VAE_SMOKE,
    "latent_diffusion": LATENT_DIFFUSION_SMOKE,
    "text": TEXT,
    "text_kgw_filter": [*TEXT, "loop=fresh_data", "loop.n_synthetic=200", "watermark=kgw",
                        "filter=detector"],
}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_run_writes_exactly_the_declared_columns_of_its_producers(shared_run, name):
    run, _ = shared_run(*CONFIGS[name])
    header = list(read_csv(run / "results.csv")[0])
    declared(header)                                         # every column is declared
    cfg = OmegaConf.load(run / "config.yaml")
    assert header == expected_columns(cfg)                   # all of them, in row order
    report = (run / "report.md").read_text()
    section = report[report.index("## Columns"):]
    for column in header:
        meaning = REGISTRY[column].meaning.replace("|", "\\|")      # as markdown escapes it
        assert f"| `{column}` | {meaning}" in section
    assert "(not declared)" not in section


def test_asking_a_report_for_an_undeclared_column_raises():
    rows = [{"generation": 1, "precision": 0.5}]
    with pytest.raises(UndeclaredColumn, match="'precison'"):
        markdown_table(rows, ("generation", "precison"))
    with pytest.raises(UndeclaredColumn, match="'precison'"):
        format_table(rows, ("generation", "precison"))
    with pytest.raises(UndeclaredColumn, match="'wm_methd'"):
        format_table(rows, ("generation",), ("wm_methd",))
    with pytest.raises(UndeclaredColumn):
        declared(["fit_anything"])
    # declared but absent from every row (no watermark here): left out, as before
    assert markdown_table(rows, ("generation", "wm_psnr", "precision")).splitlines()[0] == \
        "| generation | precision |"


def test_a_report_of_an_old_results_csv_marks_undeclared_columns(tmp_path):
    from madmark.report import write_report
    from madmark.rundir import rows_to_csv

    (tmp_path / "results.csv").write_text(rows_to_csv([{"generation": 1, "old_metric": 2.0}]))
    section = write_report(tmp_path).read_text().split("## Columns")[1]
    assert "| `old_metric` | (not declared) |" in section and "| `generation` |" in section


def test_docs_columns_md_is_generated_from_the_declarations():
    """Regenerate with: python -m madmark.columns > docs/columns.md"""
    text = (REPO / "docs" / "columns.md").read_text()
    assert text == docs_text(), "stale: run python -m madmark.columns > docs/columns.md"
    for column in REGISTRY:
        assert f"| `{column.name}` |" in text


def test_the_readme_default_table_names_declared_columns_only():
    """The README's default-run table (what `madmark run` prints) has declared columns only; the
    full list with meanings and units is the generated docs/columns.md."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("<!-- default-run:begin -->"):text.index("<!-- default-run:end -->")]
    header = next(line for line in block.splitlines() if line.split()[:1] == ["generation"])
    assert len(header.split()) >= 6
    declared(header.split())
    assert "docs/columns.md" in text
