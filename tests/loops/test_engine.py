"""Engine behaviour: resume equals an uninterrupted run, checkpoints load safely, NaNs stop it."""
import pytest
import torch

from loops.checkpoint import Checkpoints
from loops.engine import LoopEngine, LoopSettings
from loops.errors import LoopError
from loops.families import LoopFamily
from loops.models import GaussianModel


def engine(source, folder, generations, family="fresh_data", history="accumulate"):
    return LoopEngine(source, GaussianModel, LoopFamily(family, history),
                      LoopSettings(generations, 30, 20, 0.9, seed=3), Checkpoints(folder))


def test_resumed_run_equals_uninterrupted_run(normal_source, tmp_path):
    full = engine(normal_source, tmp_path / "full", 5).run()
    engine(normal_source, tmp_path / "split", 2).run()
    resumed = engine(normal_source, tmp_path / "split", 5).run()
    assert resumed == full
    for t in range(1, 6):
        a = Checkpoints(tmp_path / "full").load(t)["samples"]
        b = Checkpoints(tmp_path / "split").load(t)["samples"]
        assert torch.equal(a, b)


def test_partial_checkpoint_is_ignored_and_recomputed(normal_source, tmp_path):
    full = engine(normal_source, tmp_path / "full", 3).run()
    engine(normal_source, tmp_path / "cut", 2).run()
    (tmp_path / "cut" / ".g0003.pt.abc.tmp").write_bytes(b"half a file")   # killed mid-write
    assert Checkpoints(tmp_path / "cut").finished() == [1, 2]
    assert engine(normal_source, tmp_path / "cut", 3).run() == full


def test_same_seed_same_numbers_other_seed_other_numbers(normal_source, tmp_path):
    a = engine(normal_source, tmp_path / "a", 3).run()
    b = engine(normal_source, tmp_path / "b", 3).run()
    other = LoopEngine(normal_source, GaussianModel, LoopFamily("fresh_data", "accumulate"),
                       LoopSettings(3, 30, 20, 0.9, seed=4), Checkpoints(tmp_path / "c")).run()
    assert a == b
    assert a[-1]["fit_trace_cov"] != other[-1]["fit_trace_cov"]


class DivergedModel(GaussianModel):
    def sample(self, n, bias=1.0, generator=None):
        return torch.full((n, 2), float("nan"))


def test_non_finite_samples_stop_the_loop_with_a_clear_error(normal_source, tmp_path):
    ckpt = Checkpoints(tmp_path)
    e = LoopEngine(normal_source, DivergedModel, LoopFamily("fully_synthetic"),
                   LoopSettings(3, 30, 20, 1.0), ckpt)
    with pytest.raises(LoopError, match="non-finite"):
        e.run()
    assert ckpt.finished() == []


def test_checkpoints_load_with_weights_only(normal_source, tmp_path):
    engine(normal_source, tmp_path, 1).run()
    record = torch.load(tmp_path / "g0001.pt", weights_only=True)
    assert set(record) == {"generation", "samples", "origin", "marked", "label", "model", "row"}
    assert record["origin"].eq(1).all() and not record["marked"].any()


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os
    from madcore.files import atomic_write_text
    atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as f:           # what a plain open() gives under this umask
        f.write("x")
    assert os.stat(tmp_path / "a.txt").st_mode == os.stat(tmp_path / "b.txt").st_mode


class LabelledGaussian(GaussianModel):
    """A conditional model for the test: samples N(μ̂, λΣ̂) and remembers the labels it drew for."""
    num_classes = 4
    drawn: list = []

    def sample(self, n, bias=1.0, generator=None, labels=None):
        type(self).drawn.append(labels.clone())
        return super().sample(n, bias, generator)


def test_an_evaluator_naming_labels_gets_the_labels_s_t_was_drawn_for(normal_source, tmp_path):
    """Conditional model: ``labels=`` is exactly the labels S_t was sampled with; evaluators that
    do not name it are called with (t, samples, model) as before; unconditional: labels=None."""
    seen, plain = [], []

    def with_labels(t, samples, model, labels=None):
        seen.append(labels)
        return {}

    def without(t, samples, model):
        plain.append(t)
        return {}

    for model, folder in ((LabelledGaussian, "cond"), (GaussianModel, "uncond")):
        LoopEngine(normal_source, model, LoopFamily("fully_synthetic"),
                   LoopSettings(2, 30, 20, 1.0, seed=3), Checkpoints(tmp_path / folder),
                   evaluators=[without, with_labels]).run()
    drawn = LabelledGaussian.drawn
    assert len(drawn) == 2 and all(torch.equal(a, b) for a, b in zip(seen[:2], drawn))
    assert drawn[0].shape == (20,) and 0 <= drawn[0].min() and drawn[0].max() < 4
    assert seen[2:] == [None, None] and plain == [1, 2, 1, 2]
    saved = Checkpoints(tmp_path / "cond").load(2)["label"]
    assert torch.equal(saved, drawn[1].cpu())             # the labels the samples keep
