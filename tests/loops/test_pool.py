import pytest
import torch

from loops.pool import Pool


def test_composition_counts_by_origin():
    pool = Pool.cat([Pool.real(torch.zeros(5, 2)), Pool.synthetic(torch.ones(3, 2), 1),
                     Pool.synthetic(torch.ones(2, 2), 3, marked=True)])
    c = pool.composition()
    assert (c["n_pool"], c["n_real"], c["n_synthetic"], c["n_marked"]) == (10, 5, 5, 2)
    assert c["real_fraction"] == 0.5
    assert c["origin_counts"] == "g0=5 g1=3 g3=2"


def test_subset_keeps_provenance_aligned():
    pool = Pool.cat([Pool.real(torch.arange(4.0)[:, None]), Pool.synthetic(torch.arange(4.0, 6)[:, None], 2)])
    kept = pool.subset(pool.x[:, 0] % 2 == 1)
    assert kept.x[:, 0].tolist() == [1.0, 3.0, 5.0]
    assert kept.origin.tolist() == [0, 0, 2]


def test_mismatched_provenance_is_rejected():
    with pytest.raises(ValueError, match="provenance"):
        Pool(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.bool))


def test_composition_writes_the_declared_columns_in_order():
    from loops.pool import COLUMNS
    from madcore.columns import names

    pool = Pool.cat([Pool.real(torch.zeros(3, 2)),
                     Pool.synthetic(torch.ones(2, 2), 1, marked=True)])
    assert tuple(pool.composition()) == names(COLUMNS)
