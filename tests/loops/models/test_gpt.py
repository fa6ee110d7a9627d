"""GPTModel: it learns a known Markov chain down to the chain's closed-form conditional entropy,
its batched log-likelihood is the per-position sum of next_logits' log-softmax, attention is
causal, the KV cache samples what the plain sampler samples, seeds reproduce fits and samples,
temperature lowers the samples' entropy, state round trips, settings and data errors, the
learning-rate schedule, the configs, and a 2-rank gloo DDP fit equal to the one-process fit."""
from __future__ import annotations

import io
import math

import pytest
import torch
import configs  # noqa: F401  (registers the schemas the model yamls start from)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from loops.errors import LoopError
from loops.models import GPTModel
from loops.models.gpt import lr_at
from loops.models.text_lm import BOS, TextLM
from tests.madmark.conftest import REPO
from tests.loops.models.two_ranks import on_two_gloo_ranks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a small GPT whose fits take well under a second
SMALL = dict(n_layer=2, n_head=2, d_model=32, steps=10, batch_size=16, lr=3e-3, warmup_steps=2)
K, L = 31, 16           # the chain's states (token ids 1..K, V = K + 1 with BOS) and length


# -- a Markov chain with a closed-form entropy --------------------------------------------------
class Chain:
    """A first-order Markov chain on tokens 1..K: x_0 ~ π0, x_t | x_{t−1} ~ P[x_{t−1}] (rows drawn
    from a Dirichlet(0.1): peaked, so its entropy is far below log V)."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        gamma = lambda a, shape: torch._standard_gamma(torch.full(shape, a, dtype=torch.float64),  # noqa: E731
                                                       generator=g)
        p, p0 = gamma(0.1, (K, K)), gamma(1.0, (K,))
        self.P, self.pi0 = p / p.sum(1, keepdim=True), p0 / p0.sum()

    def entropy_per_token(self) -> float:
        """H(x_0, …, x_{L−1}) / L = [H(π0) + Σ_{t≥1} Σ_i p_{t−1}(i) H(P_i)] / L in nats, with
        p_t = π0 Pᵗ the marginal of x_t."""
        h = lambda p: -(p * p.clamp_min(1e-300).log()).sum(-1)          # noqa: E731
        total, p = h(self.pi0), self.pi0
        for _ in range(1, L):
            total, p = total + (p * h(self.P)).sum(), p @ self.P
        return float(total) / L

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """(n, L) int64 token ids in [1, K]."""
        g = torch.Generator().manual_seed(seed)
        x = torch.empty(n, L, dtype=torch.int64)
        x[:, 0] = torch.multinomial(self.pi0, n, replacement=True, generator=g)
        for t in range(1, L):
            x[:, t] = torch.multinomial(self.P[x[:, t - 1]], 1, generator=g).squeeze(1)
        return x + 1


def conditional_entropy(x: torch.Tensor) -> float:
    """Plug-in estimate of H(x_t | x_{t−1}) in nats from the bigram counts of x (N, L)."""
    pairs = (x[:, :-1] * (K + 1) + x[:, 1:]).flatten()
    counts = torch.bincount(pairs, minlength=(K + 1) ** 2).view(K + 1, K + 1).double()
    joint, prev = counts / counts.sum(), counts.sum(1, keepdim=True) / counts.sum()
    cond = joint / prev.clamp_min(1e-300)
    return float(-(joint * cond.clamp_min(1e-300).log()).sum())


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain()


@pytest.fixture(scope="module")
def learned(chain) -> GPTModel:
    """gpt_tiny-sized (2 layers, d 64), 100 steps of 64 sequences on 4,000 chain sequences."""
    m = GPTModel(n_layer=2, n_head=2, d_model=64, steps=100, batch_size=64, lr=1e-2,
                 warmup_steps=20)
    m.stats = m.fit(chain.sample(4000, seed=1), torch.Generator().manual_seed(0))
    return m


def small(seed: int = 0, x: torch.Tensor | None = None, **kw) -> GPTModel:
    m = GPTModel(**{**SMALL, **kw})
    m.fit(Chain().sample(64, seed=5) if x is None else x, torch.Generator().manual_seed(seed))
    return m


# -- learning and likelihood --------------------------------------------------------------------
def test_learns_a_markov_chain_down_to_its_entropy(learned, chain):
    """Held-out NLL per token ≈ the chain's entropy per token (1.767 nats; log V = 3.47).
    Measured: 1.815 after 100 steps."""
    test = chain.sample(500, seed=2)
    nll = -float(learned.log_likelihood(test).sum()) / test.numel()
    x = test - 1
    true_nll = -float(chain.pi0[x[:, 0]].log().sum()
                      + chain.P[x[:, :-1], x[:, 1:]].log().sum()) / test.numel()
    h = chain.entropy_per_token()
    assert abs(true_nll - h) < 0.05                       # the held-out set is typical
    assert h < nll < h + 0.1 and nll < 0.6 * math.log(K + 1)
    st = learned.stats
    assert list(st) == ["xent", "xent_initial", "steps"] and st["steps"] == 100
    assert st["xent"] < st["xent_initial"] and abs(st["xent"] - h) < 0.1
    assert learned.vocab_size == K + 1 and learned.seq_len == L


def test_log_likelihood_is_the_sum_of_next_logits_log_softmax(learned, chain):
    x = chain.sample(7, seed=3)
    ctx = torch.cat([torch.full((7, 1), BOS), x], dim=1)
    terms = torch.stack([torch.log_softmax(learned.next_logits(ctx[:, :t + 1]).double(),
                                           dim=-1)[torch.arange(7), x[:, t]] for t in range(L)], 1)
    manual = terms.sum(1)
    batched = learned.log_likelihood(x)
    assert batched.dtype == torch.float64 and batched.shape == (7,)
    torch.testing.assert_close(batched, manual, atol=1e-5, rtol=0)
    torch.testing.assert_close(TextLM.log_likelihood(learned, x), manual, atol=1e-9, rtol=0)
    learned.eval_batch_size = 3                                      # chunks of 3, 3, 1
    try:
        torch.testing.assert_close(learned.log_likelihood(x), batched, atol=1e-9, rtol=0)
    finally:
        learned.eval_batch_size = 256
    # a prefix scores as the first terms of the whole sequence; no tokens: log 1 = 0
    torch.testing.assert_close(learned.log_likelihood(x[:, :5]), terms[:, :5].sum(1),
                               atol=1e-5, rtol=0)
    assert torch.equal(learned.log_likelihood(x[:, :0]), torch.zeros(7, dtype=torch.float64))


def test_attention_is_causal_and_bos_is_never_a_next_token(learned, chain):
    x = chain.sample(4, seed=4)
    ctx = torch.cat([torch.full((4, 1), BOS), x[:, :-1]], dim=1)
    changed = ctx.clone()
    changed[:, 9:] = changed[:, 9:] % K + 1                         # other tokens after position 8
    with torch.no_grad():
        a, b = learned.net(ctx), learned.net(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=0)
    assert a.shape == (4, L, K) and (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3     # no BOS output
    logits = learned.next_logits(ctx[:, :5])
    assert logits.shape == (4, K + 1) and logits.dtype == torch.float32
    assert bool(torch.isneginf(logits[:, BOS]).all()) and bool(torch.isfinite(logits[:, 1:]).all())


# -- sampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [L, 2 * L + 3])
def test_kv_cache_samples_what_the_plain_sampler_samples(learned, length):
    """Same generator → same tokens with and without the cache, also past seq_len (where both
    slide a window of the last L − 1 tokens after BOS)."""
    learned.kv_cache = False
    try:
        plain = learned.sample(64, 0.9, torch.Generator().manual_seed(7), length=length)
    finally:
        learned.kv_cache = True
    cached = learned.sample(64, 0.9, torch.Generator().manual_seed(7), length=length)
    assert cached.shape == (64, length) and torch.equal(cached, plain)
    # the cache's logits at every step are next_logits' on the same context
    ctx = torch.cat([torch.full((64, 1), BOS), cached[:, :L - 1]], dim=1)
    step = learned.logits_stepper(64, torch.device("cpu"))
    for t in range(1, L + 1):
        torch.testing.assert_close(step(ctx[:, :t]), learned.next_logits(ctx[:, :t]),
                                   atol=2e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="once per step"):
        learned.logits_stepper(2, torch.device("cpu"))(ctx[:2, :3])


def test_bos_is_never_sampled_and_low_temperature_lowers_entropy(learned, chain):
    g = torch.Generator().manual_seed(8)
    hot, cold = learned.sample(1000, 1.0, g), learned.sample(1000, 0.5, g)
    assert int(hot.min()) >= 1 and int(cold.min()) >= 1 and int(hot.max()) <= K
    h_hot, h_cold = conditional_entropy(hot), conditional_entropy(cold)
    truth = conditional_entropy(chain.sample(1000, seed=9))
    assert abs(h_hot - truth) < 0.15 and h_cold < h_hot - 0.3, (h_hot, h_cold, truth)
    learned.top_p = 0.5                                       # a nucleus narrows it further
    try:
        assert conditional_entropy(learned.sample(1000, 1.0, g)) < h_hot - 0.3
    finally:
        learned.top_p = None


def test_same_seed_same_model_and_samples_other_seed_differs():
    a, b, c = small(seed=5), small(seed=5), small(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["net.wte.weight"], sc["net.wte.weight"])
    assert torch.equal(a.loss_curve, b.loss_curve)
    s1, s2 = (m.sample(9, 0.9, torch.Generator().manual_seed(2)) for m in (a, b))
    assert torch.equal(s1, s2) and not torch.equal(s1, a.sample(9, 0.9,
                                                                torch.Generator().manual_seed(3)))


def test_dropout_and_init_follow_the_fit_generator_not_the_global_rng():
    torch.manual_seed(123)
    a = small(seed=5, dropout=0.2).state_dict()
    torch.manual_seed(456)
    state = torch.random.get_rng_state()
    b = small(seed=5, dropout=0.2).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)          # global stream untouched
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_labels_are_ignored_and_ids_may_be_any_integer_dtype():
    x = Chain().sample(64, seed=5)
    a, b = small(x=x), GPTModel(**SMALL)
    b.fit(x.int(), torch.Generator().manual_seed(0), labels=torch.arange(64) % 2)
    assert not b.conditional and all(torch.equal(v, b.state_dict()[k])
                                     for k, v in a.state_dict().items())


# -- state --------------------------------------------------------------------------------------
def test_state_dict_round_trip_with_weights_only(learned, chain):
    buf = io.BytesIO()
    torch.save(learned.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "net.wte.weight" in state and not any("lm_head" in k for k in state)     # tied
    fresh = GPTModel(n_layer=1, n_head=1, d_model=8, kv_cache=False)   # the state's arch wins
    fresh.load_state_dict(state)
    assert (fresh.n_layer, fresh.d_model, fresh.vocab_size, fresh.seq_len) == (2, 64, K + 1, L)
    x = chain.sample(5, seed=6)
    ctx = torch.cat([torch.full((5, 1), BOS), x], dim=1)[:, :10]
    assert torch.equal(fresh.next_logits(ctx), learned.next_logits(ctx))
    assert torch.equal(fresh.log_likelihood(x), learned.log_likelihood(x))
    assert torch.equal(fresh.sample(6, 0.8, torch.Generator().manual_seed(1)),
                       learned.sample(6, 0.8, torch.Generator().manual_seed(1)))
    with pytest.raises(LoopError, match="lacks"):
        GPTModel().load_state_dict({k: v for k, v in state.items() if k != "seq_len"})


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, key", [
    (dict(d_model=64, n_head=3), "model.n_head to a divisor of model.d_model \\(e.g. 2\\)"),
    (dict(n_layer=0), "model.n_layer"), (dict(d_model=2.5), "model.d_model"),
    (dict(dropout=1.0), "model.dropout"), (dict(vocab_size=1), "model.vocab_size"),
    (dict(steps=0), "model.steps"), (dict(batch_size=0), "model.batch_size"),
    (dict(lr=0.0), "model.lr"), (dict(weight_decay=-1.0), "model.weight_decay"),
    (dict(warmup_steps=-1), "model.warmup_steps"), (dict(grad_clip=-1.0), "model.grad_clip"),
    (dict(ema_decay=1.0), "model.ema_decay"), (dict(top_p=0.0), "model.top_p"),
    (dict(kv_cache="yes"), "model.kv_cache"), (dict(eval_batch_size=0), "model.eval_batch_size"),
    (dict(precision="fp16"), "model.precision")])
def test_bad_settings_raise_naming_the_fix(kw, key):
    with pytest.raises(LoopError, match=key) as e:
        GPTModel(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("x, kw, match", [
    (torch.tensor([[1, 2, 40]]), dict(vocab_size=32),
     "token id 40 >= vocab_size=32.*set model.vocab_size to the tokenizer's vocab size \\(>= 41\\)"),
    (torch.tensor([[1, 0, 3]]), {}, "token id 0 \\(0 is BOS, reserved\\)"),
    (torch.rand(4, 8), {}, "dtype torch.float32.*\\(N, L\\) int64"),
    (torch.ones(2, 3, 4, dtype=torch.long), {}, "shape \\(2, 3, 4\\)"),
    (torch.ones(0, 8, dtype=torch.long), {}, "no tokens"),
])
def test_bad_data_raises_one_line_naming_the_fix(x, kw, match):
    with pytest.raises(LoopError, match=match) as e:
        GPTModel(**{**SMALL, **kw}).fit(x, torch.Generator().manual_seed(0))
    assert "\n" not in str(e.value)


def test_vocab_size_setting_covers_tokens_the_data_lacks():
    m = small(x=torch.randint(1, 10, (32, 6), generator=torch.Generator().manual_seed(0)),
              vocab_size=50)
    assert m.vocab_size == 50 and m.next_logits(torch.zeros(2, 1, dtype=torch.long)).shape == (2, 50)
    with pytest.raises(LoopError, match="seq_len=6"):
        m.next_logits(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(LoopError, match="at most 6 tokens"):
        m.log_likelihood(torch.ones(2, 7, dtype=torch.long))
    with pytest.raises(LoopError, match="not fitted"):
        GPTModel().sample(2)


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine_to_a_tenth():
    lr = [lr_at(s, 110, 1.0, 10) for s in range(110)]
    assert lr[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr[10] == 1.0 and lr[-1] == pytest.approx(0.1)
    assert lr[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    assert lr_at(0, 1, 2.0, 0) == 2.0


# -- configs and distributed --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt", "gpt_tiny"])
def test_configs_build_the_model(name):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("config", overrides=[f"model={name}"])
    m = instantiate(cfg.model)
    assert isinstance(m, GPTModel) and m.accepts == ("text",) and m.kv_cache
    if name == "gpt":      # the yaml holds the defaults (the constructor has the same)
        assert (m.n_layer, m.n_head, m.d_model, m.dropout) == (4, 4, 128, 0.0)
        assert vars(m) == vars(GPTModel())
    else:
        assert (m.n_layer, m.d_model) == (2, 64)


def _fit() -> dict:
    """5 steps of a global batch of 15 (8 + 7 on two ranks), SGD-like: no weight decay."""
    m = GPTModel(**{**SMALL, "steps": 5, "batch_size": 15, "weight_decay": 0.0})
    m.fit(Chain().sample(40, seed=5), torch.Generator().manual_seed(3))
    return {"state": m.state_dict(), "losses": m.loss_curve}


@pytest.mark.slow
def test_two_gloo_ranks_fit_like_one_process(tmp_path):
    """Global batches sharded over 2 DDP ranks give the single-process model (to AdamW's
    amplification of the float rounding of the 2-rank gradient sum) and the same losses."""
    two, one = on_two_gloo_ranks(_fit, tmp_path), _fit()
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(two["losses"], one["losses"], atol=1e-5, rtol=1e-5)
