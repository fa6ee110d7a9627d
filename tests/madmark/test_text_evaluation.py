"""The text evaluator's row: perplexities against closed forms, distinct-n and tail mass."""
import math

import pytest
import torch

from madcore.columns import names
from madmark.text_evaluation import COLUMNS, TextMetrics
from tests.loops.test_sampling_watermark import V, TokenSource, UnigramLM


@pytest.fixture
def data():
    src = TokenSource()
    train = src.draw_real(400, torch.Generator().manual_seed(0))
    reference = src.draw_real(100, torch.Generator().manual_seed(1))
    ref_lm = UnigramLM()
    ref_lm.fit(train, None)
    return train, reference, ref_lm


def test_row_columns_and_perplexities_match_closed_forms(data):
    train, reference, ref_lm = data
    metrics = TextMetrics(reference, train, V, ref_lm, n_eval=50, describe_lm="unigram")
    model = UnigramLM()
    model.fit(train[:200], None)
    samples = model.sample(80, generator=torch.Generator().manual_seed(2))
    row = metrics(1, samples, model)
    assert tuple(row) == names(COLUMNS)
    # a unigram LM: perplexity = exp(−mean over tokens of log p(token))
    expected_real = math.exp(-float(model.logp.double()[reference[:50]].mean()))
    assert row["ppl_real"] == pytest.approx(expected_real, rel=1e-6)
    expected_ref = math.exp(-float(ref_lm.logp.double()[samples[:50]].mean()))
    assert row["ppl_ref"] == pytest.approx(expected_ref, rel=1e-6)
    assert row["n_text_eval"] == 50 and row["text_reference_lm"] == "unigram"
    assert 0 < row["distinct_4"] <= 1 and row["distinct_1"] <= row["distinct_2"]


def test_real_text_sits_at_the_tail_share_and_a_collapsed_set_below_it(data):
    train, reference, ref_lm = data
    metrics = TextMetrics(reference, train, V, ref_lm, n_eval=None, tail_share=0.1)
    real_row = metrics(1, reference, ref_lm)
    assert 0.05 < real_row["tail_mass"] < 0.3           # held-out real text: about the share
    collapsed = torch.ones_like(reference)              # the most frequent token only
    row = metrics(2, collapsed, ref_lm)
    assert row["tail_mass"] == 0.0 and row["distinct_1"] < real_row["distinct_1"]
    assert row["ppl_ref"] < real_row["ppl_ref"]         # collapse looks 'likely'
