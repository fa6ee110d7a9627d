"""Text attacks: rates honoured exactly, variable lengths scored, and what they do to detection."""
import numpy as np
import pytest
import torch

from watermark.text import KGW, GumbelMax, attacks, unpad
from watermark.text.attacks import TEXT_ATTACK_GRID
from tests.watermark.text.conftest import KEY


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def distinct():
    """(50, 40) documents of distinct ids 1..2000 with lengths 40, 0, 1, ..., so every token can
    be traced; lengths vary as after an earlier attack."""
    x = torch.arange(1, 2001).view(50, 40)
    lengths = torch.tensor([40, 0, 1, 2, 3] + [int(v) for v in torch.randint(4, 41, (45,), generator=gen(0))])
    return x, lengths


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_delete_removes_exactly_the_rate_and_keeps_order(distinct, rate):
    x, lengths = distinct
    out, new = attacks.delete(x, rate, lengths, generator=gen(1))
    assert torch.equal(new, lengths - torch.round(lengths.double() * rate).long())
    for row, n, src, m in zip(out, new.tolist(), x, lengths.tolist()):
        kept = row[:n]
        assert (kept[1:] > kept[:-1]).all()                                   # order kept
        assert set(kept.tolist()) <= set(src[:m].tolist())                    # a subsequence
        assert (row[n:] == 0).all()                                           # BOS padding


def test_deleted_positions_are_uniform():
    x = torch.arange(1, 11).repeat(20000, 1)
    out, new = attacks.delete(x, 0.3, generator=gen(2))
    survived = torch.zeros(11)
    for n in (7,):
        survived.index_add_(0, out[:, :n].flatten(), torch.ones(out[:, :n].numel()))
    rate = survived[1:] / 20000                                               # each 0.7
    assert (rate - 0.7).abs().max() < 4 * np.sqrt(0.7 * 0.3 / 20000)


@pytest.mark.parametrize("rate", [0.05, 0.3, 1.0])
def test_substitute_changes_exactly_the_rate_to_other_ids(distinct, rate):
    x, lengths = distinct
    out, new = attacks.substitute(x, rate, vocab_size=2001, lengths=lengths, generator=gen(3))
    valid = torch.arange(40)[None, :] < lengths[:, None]
    changed = (out != x) & valid
    assert torch.equal(new, lengths)
    assert torch.equal(changed.sum(1), torch.round(lengths.double() * rate).long())
    assert out[valid].min() >= 1 and out[valid].max() < 2001
    assert (out[~valid] == 0).all()


def test_substitute_draws_every_other_id_uniformly():
    x = torch.full((60000, 1), 3)
    out, _ = attacks.substitute(x, 1.0, vocab_size=6, generator=gen(4))
    counts = torch.bincount(out.flatten(), minlength=6)
    assert counts[0] == 0 and counts[3] == 0
    assert (counts[[1, 2, 4, 5]].double() / 60000 - 0.25).abs().max() < 0.01


def test_truncate_keeps_a_prefix(distinct):
    x, lengths = distinct
    out, new = attacks.truncate(x, fraction=0.5, lengths=lengths)
    assert torch.equal(new, torch.ceil(lengths.double() / 2).long())
    assert out.shape[1] == 20 and torch.equal(out[0], x[0, :20])
    out, new = attacks.truncate(x, length=8, lengths=lengths)
    assert torch.equal(new, lengths.clamp(max=8)) and torch.equal(out[5, :new[5]], x[5, :new[5]])
    with pytest.raises(ValueError):
        attacks.truncate(x, fraction=0.5, length=3)


@pytest.mark.parametrize("spans", [1, 3])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_copy_paste_overwrites_the_fraction_with_contiguous_human_spans(distinct, fraction, spans):
    x, lengths = distinct
    human = torch.arange(5000, 6000)                                          # traceable ids
    out, new = attacks.copy_paste(x, human, fraction, spans=spans, lengths=lengths,
                                  generator=gen(5))
    assert torch.equal(new, lengths)
    valid = torch.arange(40)[None, :] < lengths[:, None]
    is_human = (out >= 5000) & valid
    assert torch.equal(is_human.sum(1), torch.round(lengths.double() * fraction).long())
    for row, n in zip(out, lengths.tolist()):
        h = row[:n][row[:n] >= 5000]
        runs = int((h[1:] != h[:-1] + 1).sum()) + 1 if len(h) else 0        # contiguous stream runs
        assert runs <= spans
        marked = row[:n][row[:n] < 5000]
        assert (marked[1:] > marked[:-1]).all()                               # the rest untouched


def test_attacks_accept_the_list_form(distinct):
    x, lengths = distinct
    docs = unpad(x, lengths)
    a = attacks.delete(docs, 0.2, generator=gen(6))
    b = attacks.delete(x, 0.2, lengths, generator=gen(6))
    assert torch.equal(a[1], b[1])
    assert all(torch.equal(u, v) for u, v in zip(unpad(*a), unpad(*b)))


def test_grid_names_attacks_that_exist():
    for name, _ in TEXT_ATTACK_GRID:
        assert callable(getattr(attacks, name))


def test_deletion_and_substitution_lower_z_monotonically(kgw_marked):
    """Mean z of 96 KGW documents of 64 tokens over the attack rates (each deletion or
    substitution breaks the scored windows it touches)."""
    wm, x = kgw_marked
    rates = [0.0, 0.1, 0.2, 0.3, 0.5]
    for name in ("delete", "substitute"):
        means = []
        for r in rates:
            kw = {"vocab_size": wm.vocab_size} if name == "substitute" else {}
            tokens, lengths = getattr(attacks, name)(x, r, generator=gen(8), **kw)
            means.append(wm.score(tokens, lengths).z.mean().item())
        print(f"KGW mean z under {name} at {rates}: {[round(m, 2) for m in means]}")
        assert all(a > b for a, b in zip(means, means[1:])), (name, means)


def test_half_human_copy_paste_is_still_detected_in_long_documents(lm, human):
    """16 documents of 256 tokens, 50 % overwritten by human (unmarked) text in 1 or 4 spans: KGW and
    EXP still flag them at p < 1e-5 (64-token documents printed for comparison)."""
    stream = human.flatten()
    for wm in (KGW(KEY, lm.vocab_size), GumbelMax(KEY, lm.vocab_size)):
        x = lm.sample(16, generator=gen(9), chooser=wm, length=256)
        for spans in (1, 4):
            tokens, lengths = attacks.copy_paste(x, stream, 0.5, spans=spans, generator=gen(10))
            res = wm.score(tokens, lengths)
            tpr = res.p_value.lt(1e-5).double().mean().item()
            short = wm.score(*attacks.copy_paste(x[:, :64], stream, 0.5, spans=spans,
                                                 generator=gen(10)))
            print(f"{wm.name} copy-paste 50 %, {spans} span(s): L=256 TPR(p<1e-5) {tpr:.3f}, "
                  f"median z {res.z.median().item():.2f}; L=64 TPR "
                  f"{short.p_value.lt(1e-5).double().mean().item():.3f}, median z "
                  f"{short.z.median().item():.2f}")
            assert tpr >= 0.95, (wm.name, spans)


@pytest.mark.slow
def test_detection_over_the_attack_grid(lm, human):
    """TPR at p < 1e-5 over TEXT_ATTACK_GRID for 200 documents of 128 tokens (printed)."""
    for wm in (KGW(KEY, lm.vocab_size), GumbelMax(KEY, lm.vocab_size)):
        x = lm.sample(200, generator=gen(11), chooser=wm, length=128)
        for name, strength in TEXT_ATTACK_GRID:
            if name == "copy_paste":
                out = attacks.copy_paste(x, human.flatten(), strength, generator=gen(12))
            elif name == "truncate":
                out = attacks.truncate(x, fraction=strength)
            elif name == "substitute":
                out = attacks.substitute(x, strength, wm.vocab_size, generator=gen(12))
            else:
                out = attacks.delete(x, strength, generator=gen(12))
            res = wm.score(*out)
            print(f"{wm.name} {name} {strength}: TPR {res.p_value.lt(1e-5).double().mean():.3f} "
                  f"median z {res.z.median():.2f}")
            assert res.z.median() > 0
