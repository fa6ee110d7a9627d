"""The watermark stage that marks while sampling (text), inside the engine."""
import torch

from loops.checkpoint import Checkpoints
from loops.engine import LoopEngine, LoopSettings
from loops.families import LoopFamily
from loops.models.text_lm import BOS, MultinomialChooser, TextLM
from loops.stages import SAMPLING_WATERMARK_COLUMNS, FilterStage, SamplingWatermarkStage
from madcore.columns import names

V, L = 12, 8


class TokenSource:
    """Real 'text': sequences of ids 1..V-1 with a preference for low ids."""

    def draw_real(self, n, generator):
        probs = 1.0 / torch.arange(1, V, dtype=torch.float64)
        return torch.multinomial(probs, n * L, replacement=True, generator=generator).view(n, L) + 1


class UnigramLM(TextLM):
    """Token frequencies of the pool (add-one smoothed), independent of the context."""

    def fit(self, x, generator, progress=None, labels=None):
        self.vocab_size, self.seq_len = V, x.shape[1]
        counts = torch.bincount(x.flatten(), minlength=V).double() + 1
        counts[BOS] = 0
        self.logp = (counts / counts.sum()).log().float()
        return {}

    def next_logits(self, context):
        return self.logp.expand(len(context), V)

    def state_dict(self):
        return {"logp": self.logp}

    def load_state_dict(self, state):
        self.logp = state["logp"]


class Always(MultinomialChooser):
    """A 'watermark' that biases every choice to token 1 (``shift`` = its logit bonus)."""

    def __init__(self, shift):
        self.shift = shift

    def choose(self, logits, context, generator):
        logits = logits.clone()
        logits[:, 1] += self.shift
        return super().choose(logits, context, generator)


def engine(folder, shift, filtering=False, generations=3):
    def sample_marked(t, model, n, bias, g):
        return model.sample(n, bias, generator=g, chooser=Always(shift))

    def detect(t, x):
        return (x == 1).double().mean(1) > 0.9

    return LoopEngine(TokenSource(), UnigramLM, LoopFamily("synthetic_augmentation", "replace"),
                      LoopSettings(generations, 50, 40, 1.0, seed=3), Checkpoints(folder),
                      watermark=SamplingWatermarkStage(sample_marked, "toy", detect=detect),
                      filter=FilterStage(lambda t, x: detect(t, x), min_pool=10)
                      if filtering else None)


def test_a_mark_that_changes_nothing_reproduces_s_t(tmp_path):
    rows = engine(tmp_path, shift=0.0).run()
    ckpt = Checkpoints(tmp_path)
    for t, row in enumerate(rows, start=1):
        assert row["n_marked_new"] == 0 and row["wm_changed_fraction"] == 0.0
        assert tuple(row)[-3:] == names(SAMPLING_WATERMARK_COLUMNS)
        record = ckpt.load(t)
        assert record["marked"].all() and record["samples"].dtype == torch.int64
        # the pooled samples are S_t itself: refit model_t and redraw from S_t's stream
        model = UnigramLM()
        model.load_state_dict(record["model"])
        model.vocab_size, model.seq_len = V, L
        from madcore.rng import generator
        again = model.sample(40, 1.0, generator=generator(3, t, "sample"))
        assert torch.equal(again, record["samples"])


def test_marked_samples_enter_the_pool_and_a_filter_removes_them(tmp_path):
    rows = engine(tmp_path / "plain", shift=50.0).run()
    assert rows[0]["wm_changed_fraction"] > 0.5              # real text is 1/3 token 1
    assert all(r["wm_detect_rate"] == 1.0 for r in rows)
    samples = Checkpoints(tmp_path / "plain").load(2)["samples"]
    assert (samples == 1).all()                        # every pooled token is the 'green' one
    filtered = engine(tmp_path / "filtered", shift=50.0, filtering=True).run()
    for row in filtered[1:]:
        assert row["filter_synth_caught"] == 40 and row["filter_real_dropped"] == 0
        assert row["n_pool"] == 50


def test_resume_equals_uninterrupted_run(tmp_path):
    full = engine(tmp_path / "full", shift=2.0).run()
    engine(tmp_path / "cut", shift=2.0, generations=2).run()
    assert engine(tmp_path / "cut", shift=2.0).run() == full
