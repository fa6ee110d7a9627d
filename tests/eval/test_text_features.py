"""The text modality's feature extractor (eval/features/text_lm.py): the cache (miss, hit, changed
settings or data, corrupt entry), determinism, shapes, input checks, the separation of real text
from token-shuffled text in precision/recall, and GenerationMetrics end to end on token tensors.

Fast tests use two synthetic Markov chains over 32 tokens (sequences of 16) and a tiny GPT; the
slow test trains the default text LM on Shakespeare and prints the numbers."""
import time
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from eval.features import EXTRACTORS, build_extractor
from eval.features import text_lm as tl
from eval.features.text_lm import TextLMExtractor, load_or_train_text_lm
from eval.prdc import prdc
from madcore.errors import MadmarkError
from madmark.data.base import Splits
from madmark.metrics import GenerationMetrics, choose_extractor, make_extractor

V, L = 33, 16                      # ids 1..32, BOS = 0 unused
TINY = {"n_layer": 1, "n_head": 2, "d_model": 32, "steps": 120, "batch_size": 32, "lr": 3e-3,
        "warmup_steps": 10}


def markov(n: int, seed: int, chain: int) -> torch.Tensor:
    """n sequences (n, L) of a sparse Markov chain over ids 1..32 (each state moves to one of 3
    successors, chosen per ``chain``)."""
    g = torch.Generator().manual_seed(1000 + chain)
    succ = torch.stack([torch.randperm(V - 1, generator=g)[:3] for _ in range(V - 1)])   # (32, 3)
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, L, dtype=torch.long)
    x[:, 0] = torch.randint(0, V - 1, (n,), generator=g)
    for t in range(1, L):
        x[:, t] = succ[x[:, t - 1], torch.randint(0, 3, (n,), generator=g)]
    return x + 1


def shuffle_tokens(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each row's tokens in a random order (same unigram counts, order destroyed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([row[torch.randperm(len(row), generator=g)] for row in x])


@pytest.fixture(scope="module")
def corpus():
    return {"train": markov(1200, 0, chain=0), "val": markov(400, 1, chain=0),
            "other": markov(400, 2, chain=1)}


@pytest.fixture(scope="module")
def fitted(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("text_lm_cache")
    lm, info = load_or_train_text_lm(cache, {"source": "markov"}, corpus["train"], V,
                                     val=corpus["val"], **TINY)
    return cache, lm, info


def test_cache_miss_trains_and_hit_loads_identical_features(corpus, fitted, monkeypatch):
    cache, lm, info = fitted
    entry = Path(info["cache_path"])
    assert info["trained"] and not info["cached"]
    assert (entry / "model.safetensors").is_file() and (entry / "meta.json").is_file()
    assert 1 < info["val_perplexity"] < 32          # below uniform over the 32 tokens
    assert info["vocab_size"] == V and info["seq_len"] == L and info["d_model"] == 32

    def no_training(*a, **k):
        raise AssertionError("train_text_lm called on a cache hit")

    monkeypatch.setattr(tl, "train_text_lm", no_training)
    lm2, info2 = load_or_train_text_lm(cache, {"source": "markov"}, corpus["train"], V,
                                       val=corpus["val"], **TINY)
    assert info2["cached"] and not info2["trained"]
    assert info2["val_perplexity"] == pytest.approx(info["val_perplexity"], rel=1e-12)
    x = corpus["val"][:50]
    assert torch.equal(TextLMExtractor(lm).extract(x), TextLMExtractor(lm2).extract(x))
    # a changed setting, data, vocabulary or key is another entry: it trains
    for change in ({**TINY, "steps": 121}, {**TINY, "seed": 1}):
        with pytest.raises(AssertionError, match="cache hit"):
            load_or_train_text_lm(cache, {"source": "markov"}, corpus["train"], V, **change)
    with pytest.raises(AssertionError, match="cache hit"):
        load_or_train_text_lm(cache, {"source": "markov"}, corpus["train"][:-1], V, **TINY)
    with pytest.raises(AssertionError, match="cache hit"):
        load_or_train_text_lm(cache, {"source": "markov"}, corpus["train"], V + 1, **TINY)
    with pytest.raises(AssertionError, match="cache hit"):
        load_or_train_text_lm(cache, {"source": "other"}, corpus["train"], V, **TINY)
    # another val split: the cached weights, the perplexity remeasured
    _, info3 = load_or_train_text_lm(cache, {"source": "markov"}, corpus["train"], V,
                                     val=corpus["other"], **TINY)
    assert info3["cached"] and info3["val_perplexity"] > info["val_perplexity"]


def test_corrupt_entry_retrains_with_a_warning(corpus, tmp_path):
    small = {**TINY, "steps": 20}
    train = corpus["train"][:300]
    _, info = load_or_train_text_lm(tmp_path, {"source": "markov"}, train, V, **small)
    weights = Path(info["cache_path"]) / "model.safetensors"
    reference = weights.read_bytes()
    weights.write_bytes(b"not a weights file")
    with pytest.warns(UserWarning, match="unreadable.*retraining"):
        _, again = load_or_train_text_lm(tmp_path, {"source": "markov"}, train, V, **small)
    assert again["trained"] and weights.read_bytes() == reference      # deterministic retrain
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, hit = load_or_train_text_lm(tmp_path, {"source": "markov"}, train, V, **small)
    assert hit["cached"]


def test_torch_saved_weights_load(corpus, fitted, tmp_path):
    """An entry whose weights are a torch.save'd state dict (model.pt) loads (weights_only)."""
    cache, lm, info = fitted
    entry = tl.text_lm_entry_dir(tmp_path, tl._full_key({"source": "markov"}, corpus["train"],
                                                         V, TINY))
    entry.mkdir(parents=True)
    (entry / "meta.json").write_bytes((Path(info["cache_path"]) / "meta.json").read_bytes())
    torch.save(lm.state_dict(), entry / "model.pt")
    lm2, info2 = load_or_train_text_lm(tmp_path, {"source": "markov"}, corpus["train"], V, **TINY)
    assert info2["cached"]
    x = corpus["val"][:8]
    assert torch.equal(TextLMExtractor(lm).extract(x), TextLMExtractor(lm2).extract(x))


def test_features_shape_determinism_and_input_checks(corpus, fitted):
    _, lm, info = fitted
    ext = TextLMExtractor(lm, source="markov", perplexity=info["val_perplexity"])
    x = corpus["val"][:100]
    f = ext.extract(x, batch_size=256)
    assert f.shape == (100, 64) and f.dtype == torch.float32 and f.device.type == "cpu"
    assert torch.isfinite(f).all() and ext.dim == 64
    assert torch.equal(f, ext.extract(x, batch_size=256))
    assert torch.allclose(f, ext.extract(x, batch_size=7), atol=1e-5)
    assert ext.extract(x[:, :5]).shape == (100, 64)                  # shorter sequences
    assert ext.extract(x[:0]).shape == (0, 64)
    assert ext.describe() == f"text_lm(markov, gpt 1x32, d=64, ppl={info['val_perplexity']:.1f})"
    # [mean_t h_t, mean_t h_t * e(x_t) / |e(x_t)| * sqrt(d)], h_t the final hidden states of
    # [BOS, x_0 .. x_{L-2}]
    inp = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    h = lm.hidden_states(inp)
    e = lm.net.wte.weight[x]
    fit = (h * e / e.norm(dim=-1, keepdim=True) * 32 ** 0.5).mean(1)
    assert torch.allclose(f, torch.cat([h.mean(1), fit], 1), atol=1e-5)
    mean = TextLMExtractor(lm, pool="mean")
    assert mean.dim == 32 and torch.allclose(mean.extract(x), h.mean(1), atol=1e-6)
    assert mean.describe() == "text_lm(custom, gpt 1x32, d=32, pool=mean)"
    for bad, match in ((x.float(), "int64"), (x[0], "int64"), (x - 1, r"outside \[1, 33\)"),
                       (x + 1, "outside"), (torch.cat([x, x], 1), "seq_len=16"),
                       (x[:, :0], "seq_len")):
        with pytest.raises(ValueError, match=match):
            ext.extract(bad)
    with pytest.raises(ValueError, match="mean_fit, mean"):
        TextLMExtractor(lm, pool="max")


def test_hidden_states_are_what_the_logits_map(fitted, corpus):
    """GPTModel.hidden_states: the logits are the tied output layer applied to them."""
    _, lm, _ = fitted
    inp = torch.cat([torch.zeros_like(corpus["val"][:4, :1]), corpus["val"][:4, :-1]], dim=1)
    h = lm.hidden_states(inp)
    logits = lm.net(inp)
    assert h.shape == (4, L, 32)
    assert torch.allclose(h @ lm.net.wte.weight[1:].T, logits, atol=1e-5)


def test_embeddings_separate_real_from_shuffled_text(corpus, fitted):
    """Real held-out vs real train: precision and recall high; token-shuffled sequences (same
    tokens, order destroyed) and another chain over the same tokens: precision low. The plain
    mean hidden state is close to a bag of tokens here and does not see the shuffle."""
    _, lm, _ = fitted
    for pool in ("mean_fit", "mean"):
        ext = TextLMExtractor(lm, pool=pool)
        train = ext.extract(corpus["train"][:400])
        real = prdc(train, ext.extract(corpus["val"]), k=5)
        shuffled = prdc(train, ext.extract(shuffle_tokens(corpus["val"])), k=5)
        other = prdc(train, ext.extract(corpus["other"]), k=5)
        assert real["precision"] > 0.9 and real["recall"] > 0.9, (pool, real)
        if pool == "mean_fit":
            assert shuffled["precision"] < 0.1 and other["precision"] < 0.1, (shuffled, other)
        else:
            assert shuffled["precision"] > 0.8, shuffled       # the weakness mean_fit removes


def test_factory_and_metrics_pick_text_lm_for_token_sequences(corpus, fitted, monkeypatch):
    """eval.features.name=auto on text data builds the text LM (here the fixture's cache entry:
    the same data, key and settings), and GenerationMetrics runs end to end on token tensors."""
    cache, _, info = fitted
    for k, v in TINY.items():
        monkeypatch.setitem(tl.DEFAULTS, k, v)

    def no_training(*a, **k):
        raise AssertionError("train_text_lm called on a cache hit")

    monkeypatch.setattr(tl, "train_text_lm", no_training)
    splits = Splits(train=corpus["train"], reference=corpus["val"], kind="text", vocab_size=V)
    assert "text_lm" in EXTRACTORS and choose_extractor("auto", splits) == "text_lm"
    cfg = OmegaConf.load("configs/eval/default.yaml")
    cfg.features.seed, cfg.features.cache_dir = 0, str(cache)
    cfg.kid_subset_size = 100
    ext = make_extractor(cfg, splits, "markov", torch.device("cpu"))
    assert isinstance(ext, TextLMExtractor)
    assert ext.describe() == f"text_lm(markov, gpt 1x32, d=64, ppl={info['val_perplexity']:.1f})"
    metrics = GenerationMetrics(cfg, ext, splits.reference, seed=0, device=torch.device("cpu"))
    good = metrics(1, markov(300, 5, chain=0))
    bad = metrics(2, shuffle_tokens(markov(300, 5, chain=0)))
    for row in (good, bad):
        assert {"precision", "recall", "density", "coverage", "fid", "kid", "kid_std"} <= set(row)
        assert row["features"] == ext.describe() and row["n_real_eval"] == 400
    assert good["precision"] > 0.8 and bad["precision"] < 0.2
    assert good["fid"] < bad["fid"] and good["kid"] < bad["kid"]
    # images / vectors names on text, and text_lm on other data, are config errors
    with pytest.raises(MadmarkError, match="text_lm"):
        make_extractor(OmegaConf.merge(cfg, {"features": {"name": "lenet"}}), splits, "markov",
                       torch.device("cpu"))
    images = Splits(train=torch.rand(4, 1, 8, 8), reference=torch.rand(4, 1, 8, 8), kind="image")
    with pytest.raises(MadmarkError, match="token sequences"):
        make_extractor(OmegaConf.merge(cfg, {"features": {"name": "text_lm"}}), images, "img",
                       torch.device("cpu"))
    # the factory takes a fitted LM as is
    built = build_extractor("text_lm", lm=ext.lm, source="m", pool="mean")
    assert built.describe() == "text_lm(m, gpt 1x32, d=32, pool=mean)"


@pytest.mark.slow
def test_shakespeare_text_lm_numbers(tmp_path):
    """The default text LM on Shakespeare: training time, held-out perplexity, extraction time of
    1,000 sequences of 64 tokens, and P/R (k = 5) of real vs real and real vs token-shuffled."""
    from madmark.data import Shakespeare
    from madmark.data.text_corpus import shakespeare_path

    if not shakespeare_path().is_file():
        pytest.skip("no Shakespeare corpus (madmark fetch-corpus shakespeare)")
    source = Shakespeare()
    splits = source.load()
    ext = tl.build_text_lm_extractor(source="shakespeare", cache_dir=str(tmp_path),
                                     key={"source": "shakespeare"}, train=splits.train,
                                     vocab_size=splits.vocab_size, val=splits.reference)
    _, info = load_or_train_text_lm(tmp_path, {"source": "shakespeare"}, splits.train,
                                    splits.vocab_size, val=splits.reference)
    n = 1000
    g = torch.Generator().manual_seed(0)
    train = splits.train[torch.randperm(len(splits.train), generator=g)[:n]]
    ref = splits.reference[:n]
    t0 = time.perf_counter()
    f_ref = ext.extract(ref, batch_size=256)
    extract_s = time.perf_counter() - t0
    f_train = ext.extract(train)
    f_shuf = ext.extract(shuffle_tokens(ref))
    real, shuf = prdc(f_ref, f_train, k=5), prdc(f_ref, f_shuf, k=5)
    print(f"\n{ext.describe()}: train {info['train_time_s']:.1f} s, held-out ppl "
          f"{info['val_perplexity']:.1f} on {info['n_val']} sequences, d={ext.dim}, extract "
          f"{n}x64 in {extract_s:.2f} s; real train vs reference: {real}; token-shuffled vs "
          f"reference: {shuf}")
    assert info["cached"] and f_ref.shape == (n, 128)
    assert real["precision"] > 0.7 and real["recall"] > 0.7
    assert shuf["precision"] < 0.2
