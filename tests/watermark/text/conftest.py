"""Shared fixtures of the text-watermark tests: the bigram stand-in models and their samples."""
import pytest
import torch

from tests.watermark.text.bigram_lm import BigramLM

KEY = "text-watermark-test-key"


@pytest.fixture(scope="session")
def lm() -> BigramLM:
    """V = 2048, scale 2: about 5.7 nats per token (uniform would be 7.6)."""
    return BigramLM(2048, scale=2.0, seed=0, seq_len=64)


@pytest.fixture(scope="session")
def small_lm() -> BigramLM:
    """V = 512, scale 2 (about 4.4 nats): many unmarked windows quickly."""
    return BigramLM(512, scale=2.0, seed=1, seq_len=32)


@pytest.fixture(scope="session")
def unmarked(small_lm) -> torch.Tensor:
    """(10,000, 32) unmarked documents of the small chain: 320,000 windows."""
    return small_lm.chain_sample(10_000, 32, torch.Generator().manual_seed(2))


@pytest.fixture(scope="session")
def human(lm) -> torch.Tensor:
    """(64, 64) unmarked text of the big chain: the 'human' text of the copy-paste attack."""
    return lm.chain_sample(64, 64, torch.Generator().manual_seed(3))


@pytest.fixture(scope="session")
def kgw_marked(lm):
    """(96, 64) documents sampled through TextLM.sample with the default KGW chooser."""
    from watermark.text import KGW
    wm = KGW(KEY, lm.vocab_size)
    return wm, lm.sample(96, generator=torch.Generator().manual_seed(0), chooser=wm)
