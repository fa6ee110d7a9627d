"""The watermark and filter stages, alone and inside the engine (provenance, resume, labels)."""
import math

import pytest
import torch

from loops.checkpoint import Checkpoints
from loops.engine import LoopEngine, LoopSettings
from loops.errors import LoopError
from loops.families import LoopFamily
from loops.models import GaussianModel
from loops.models.base import GenerativeModel
from loops.pool import Pool
from loops import engine as engine_module
from loops import pool as pool_module
from loops.stages import (FILTER_COLUMNS, WATERMARK_COLUMNS, FilterStage, HeldOutDraw,
                          WatermarkStage)
from madcore.columns import names
from madcore.quality import pooled_psnr
from madcore.rng import generator

SHAPE = (1, 4, 4)


class ImageSource:
    """Real 4x4 images with pixels uniform in [0, 0.8]: never carrying the 'mark' pixel value 1."""

    def draw_real(self, n, generator):
        return 0.8 * torch.rand(n, *SHAPE, generator=generator)


class FlatGaussian(GaussianModel):
    """GaussianModel on flattened images, clamped back to [0, 1] images."""
    accepts = ("image",)

    def fit(self, x, generator=None, progress=None, labels=None):
        return super().fit(x.flatten(1), generator, progress)

    def sample(self, n, bias=1.0, generator=None, labels=None):
        return super().sample(n, bias, generator).view(n, *SHAPE).clamp(0, 1)


def mark(t, x):
    """A visible toy 'watermark': pixel (0, 0) set to 1."""
    x = x.clone()
    x[:, 0, 0, 0] = 1.0
    return x


def flag(t, x):
    return x[:, 0, 0, 0] >= 0.999


def toy_engine(folder, family="synthetic_augmentation", generations=3, filtering=True,
               n_real=40, n_synthetic=30):
    return LoopEngine(ImageSource(), FlatGaussian, LoopFamily(family, "replace"),
                      LoopSettings(generations, n_real, n_synthetic, 1.0, seed=1),
                      Checkpoints(folder), watermark=WatermarkStage(mark, "toy"),
                      filter=FilterStage(flag, min_pool=10) if filtering else None)


def test_filter_stage_counts_by_origin():
    x = torch.zeros(10, *SHAPE)
    x[[0, 5, 6, 7], 0, 0, 0] = 1.0                     # flagged: one real, three synthetic
    origin = torch.tensor([0, 0, 0, 0, 0, 2, 2, 2, 2, 3])
    marked = origin > 0
    kept, stats = FilterStage(flag, min_pool=2)(4, Pool(x, origin, marked))
    assert len(kept) == 6 and (kept.x[:, 0, 0, 0] < 1).all()
    assert stats["filter_n_in"] == 10
    assert stats["filter_real_dropped"] == 1 and stats["filter_real_drop_rate"] == pytest.approx(0.2)
    assert stats["filter_synth_caught"] == 3 and stats["filter_synth_missed"] == 2
    assert stats["filter_tpr"] == pytest.approx(0.6)
    assert stats["filter_marked_n"] == 5 and stats["filter_marked_caught"] == 3
    assert stats["real_fraction_before"] == pytest.approx(0.5)
    assert kept.composition()["real_fraction"] == pytest.approx(4 / 6)
    assert tuple(stats) == names(FILTER_COLUMNS)                # exactly what it declares


def test_filter_stage_without_synthetic_reports_nan_tpr():
    _, stats = FilterStage(flag)(1, Pool.real(torch.zeros(5, *SHAPE)))
    assert math.isnan(stats["filter_tpr"]) and stats["filter_real_dropped"] == 0


def test_watermark_stage_with_a_detector_reports_the_share_of_marked_samples_it_flags():
    x = torch.full((8, *SHAPE), 0.5)
    seen = []

    def detect(t, x_w):
        seen.append((t, x_w.clone()))
        return torch.arange(len(x_w)) < 6                  # 6 of 8 found

    marked, stats = WatermarkStage(mark, "toy", detect=detect)(3, x)
    assert tuple(stats) == names(WATERMARK_COLUMNS)
    assert stats["wm_detect_rate"] == 0.75
    assert seen[0][0] == 3 and torch.equal(seen[0][1], marked)    # the marked copy, generation t


def test_filter_leaving_too_few_samples_is_a_clear_error():
    x = torch.ones(8, *SHAPE)
    with pytest.raises(LoopError, match="too few to fit") as err:
        FilterStage(flag, min_pool=3)(2, Pool.synthetic(x, 1, marked=True))
    assert "loop=synthetic_augmentation" in str(err.value)


def test_watermark_stage_marks_and_reports_psnr():
    x = torch.full((6, *SHAPE), 0.5)
    marked, stats = WatermarkStage(mark, "toy")(1, x)
    assert torch.equal(marked, mark(1, x))
    assert stats["n_marked_new"] == 6
    assert stats["wm_psnr"] == pytest.approx(pooled_psnr(marked, x))
    assert stats["wm_psnr"] == pytest.approx(-10 * math.log10(0.25 / 16))
    assert tuple(stats) == names(WATERMARK_COLUMNS)[:2]         # no detector: no detect rate
    with pytest.raises(LoopError, match="needs images"):
        WatermarkStage(mark)(1, torch.zeros(3, 5))


def test_engine_marks_pooled_samples_and_filter_catches_them(tmp_path):
    rows = toy_engine(tmp_path).run()
    # the engine's row: its own columns, the pool's, the filter's, the model's fit statistics,
    # (no evaluators here) the watermark stage's — each exactly as declared
    assert tuple(rows[0]) == (*names(engine_module.COLUMNS), *names(pool_module.COLUMNS),
                              *names(FILTER_COLUMNS), *names(FlatGaussian.fit_columns),
                              *names(WATERMARK_COLUMNS)[:2])
    ckpt = Checkpoints(tmp_path)
    for t in (1, 2, 3):
        record = ckpt.load(t)
        assert record["marked"].all() and (record["samples"][:, 0, 0, 0] == 1).all()
        assert rows[t - 1]["n_marked_new"] == 30
    assert rows[0]["filter_n_in"] == 40 and rows[0]["filter_real_dropped"] == 0
    for row in rows[1:]:
        assert row["filter_n_in"] == 70 and row["filter_synth_caught"] == 30
        assert row["filter_tpr"] == 1.0 and row["filter_real_drop_rate"] == 0.0
        assert row["n_pool"] == 40 and row["real_fraction"] == 1.0 and row["n_marked"] == 0


def test_without_filter_marked_samples_enter_the_pool(tmp_path):
    rows = toy_engine(tmp_path, filtering=False).run()
    assert [r["n_marked"] for r in rows] == [0, 30, 30]
    assert all("filter_tpr" not in r for r in rows)


def test_resume_with_stages_equals_uninterrupted_run(tmp_path):
    full = toy_engine(tmp_path / "full", filtering=False).run()
    toy_engine(tmp_path / "cut", generations=2, filtering=False).run()
    assert toy_engine(tmp_path / "cut", filtering=False).run() == full


def test_fully_synthetic_loop_with_a_perfect_filter_stops_after_saving_generation_1(tmp_path):
    with pytest.raises(LoopError, match="generation 2: the filter flagged 30 of 30"):
        toy_engine(tmp_path, family="fully_synthetic", n_real=30).run()
    assert Checkpoints(tmp_path).finished() == [1]


class LabelledSource:
    """Images whose pixels all equal label / 10, with labels 0..4."""

    def draw_real(self, n, generator):
        return self.draw_real_labeled(n, generator)[0]

    def draw_real_labeled(self, n, generator):
        y = torch.randint(5, (n,), generator=generator)
        return (y.float() / 10).view(n, 1, 1, 1).expand(n, *SHAPE).clone(), y


class ClassMeans(GenerativeModel):
    """A conditional toy model: per-class mean image; records what fit and sample received."""
    accepts = ("image",)

    def fit(self, x, generator, progress=None, labels=None):
        self.fit_labels = labels
        self.num_classes = int(labels.max()) + 1
        self.means = torch.stack([x[labels == c].mean(0) for c in range(self.num_classes)])
        return {}

    def sample(self, n, bias=1.0, generator=None, labels=None):
        return self.means[labels]

    def state_dict(self):
        return {"means": self.means}

    def load_state_dict(self, state):
        self.means = state["means"]


def test_labels_flow_from_real_data_through_conditional_models(tmp_path):
    engine = LoopEngine(LabelledSource(), ClassMeans, LoopFamily("synthetic_augmentation"),
                        LoopSettings(3, 50, 40, 1.0, seed=2), Checkpoints(tmp_path))
    engine.run()
    record = Checkpoints(tmp_path).load(3)
    labels = record["label"]
    assert labels.shape == (40,) and (labels >= 0).all()
    # every sample is its class's mean image: the label drawn by the engine conditioned it
    assert torch.allclose(record["samples"][:, 0, 0, 0], labels.float() / 10)
    # resume rebuilds the synthetic history with its labels (ClassMeans.fit needs labels for all)
    history, _ = engine.resume_state()
    assert (history[1].label == Checkpoints(tmp_path).load(2)["label"]).all()


# -- a learned filter's columns and held-out draws (loops.stages.HeldOutDraw) ---------------------
class DrawRecorder:
    """A toy learned filter: flags the mark pixel, keeps every held-out draw it is handed."""

    def __init__(self, n):
        self.n, self.received = n, {}

    def receive(self, t, x):
        self.received[t] = x.clone()

    def stage(self):
        return FilterStage(flag, min_pool=10, draw=HeldOutDraw(self.n, self.receive),
                           columns=lambda t: {"toy_draws_seen": len(self.received)})


def test_filter_stage_appends_its_detectors_columns_after_the_declared_ones():
    x = torch.zeros(6, *SHAPE)
    _, stats = FilterStage(flag, columns=lambda t: {"toy_t": t})(3, Pool.real(x))
    assert tuple(stats) == (*names(FILTER_COLUMNS), "toy_t") and stats["toy_t"] == 3


def test_engine_draws_held_out_samples_stores_them_and_hands_them_back_on_resume(tmp_path):
    plain = toy_engine(tmp_path / "plain").run()                  # the same filter, no draw
    recorder = DrawRecorder(25)
    engine = toy_engine(tmp_path / "draws", filtering=False)
    engine.filter = recorder.stage()
    rows = engine.run()
    ckpt, plain_ckpt = Checkpoints(tmp_path / "draws"), Checkpoints(tmp_path / "plain")
    assert "filter_train" not in ckpt.load(3) and sorted(recorder.received) == [1, 2]
    for t in (1, 2):                                # the last generation's draw is never used
        record = ckpt.load(t)
        # S_t is what a run without the draw makes: the draw has its own stream, after S_t
        assert torch.equal(record["samples"], plain_ckpt.load(t)["samples"])
        assert torch.equal(record["filter_train"], recorder.received[t])
        assert record["filter_train"].shape == (25, *SHAPE)
        assert not torch.equal(record["filter_train"][:25], record["samples"][:25])
        # D_t is model_t's own stream: refit model_t from its state and redraw it
        model = FlatGaussian()
        model.load_state_dict(record["model"])
        again = model.sample(25, 1.0, generator=generator(1, t, "filter-train"))
        assert torch.equal(again, record["filter_train"])
    assert [r.pop("toy_draws_seen") for r in rows] == [0, 1, 2]       # columns(t) after flag(t)
    assert rows == plain                            # draws never enter a pool, a fit or a row
    # a resumed engine gets the finished generations' draws back from their checkpoints
    resumed = DrawRecorder(25)
    again = toy_engine(tmp_path / "draws", filtering=False)
    again.filter = resumed.stage()
    again.resume_state()
    assert sorted(resumed.received) == [1, 2]
    assert all(torch.equal(resumed.received[t], recorder.received[t]) for t in (1, 2))


def test_filter_without_a_draw_stores_none(tmp_path):
    toy_engine(tmp_path).run()
    assert "filter_train" not in Checkpoints(tmp_path).load(2)
