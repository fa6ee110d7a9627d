"""eval.knn: the chunked float32 screen with float64 decisions."""
import numpy as np
import pytest
import torch

from eval import knn


def _brute_sq_radii(x: np.ndarray, k: int) -> np.ndarray:
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.sort(d2, axis=1)[:, k]  # (k+1)-th smallest including self = k-th neighbour


def _datasets():
    g = np.random.default_rng(0)
    dup = g.standard_normal((150, 6))
    dup[50:80] = dup[0]                                      # 31 copies of one point
    return {
        "normal": g.standard_normal((300, 16)),
        "offset": g.standard_normal((200, 64)) * 0.01 + 1000.0,  # large mean, tiny spread
        "duplicates": dup,
        "lattice": g.integers(0, 3, size=(250, 3)).astype(np.float64),  # many exact ties
    }


@pytest.mark.parametrize("name", list(_datasets()))
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["one-tile", "tiny-chunks"])
def test_kth_radii_match_bruteforce(name, symmetric, k, chunk_bytes, monkeypatch):
    monkeypatch.setattr(knn, "_SYMMETRIC_MIN_N", 1 if symmetric else 10**9)
    monkeypatch.setattr(knn, "_SYMMETRIC_MIN_D", 1)
    x = _datasets()[name]
    got = knn.kth_neighbour_sq_radii(torch.from_numpy(x), k, chunk_bytes=chunk_bytes).numpy()
    np.testing.assert_allclose(got, _brute_sq_radii(x, k), rtol=1e-12, atol=1e-12)


def test_radii_independent_of_chunking_and_dtype():
    x = torch.from_numpy(_datasets()["normal"])
    ref = knn.kth_neighbour_sq_radii(x, 5)
    assert torch.equal(knn.kth_neighbour_sq_radii(x, 5, chunk_bytes=1), ref)  # 1-row tiles
    x32 = x.float()
    exact32 = _brute_sq_radii(x32.double().numpy(), 5)
    np.testing.assert_allclose(knn.kth_neighbour_sq_radii(x32, 5).numpy(), exact32, rtol=1e-12)


@pytest.mark.parametrize("name", ["normal", "offset", "lattice"])
def test_float32_screen_error_bound(name):
    """|D32 − D| <= c_d (ν_i + ν_j): the bound that makes the float64 re-check sufficient."""
    x = torch.from_numpy(_datasets()[name])
    emb = knn.Embedded(x, x.mean(0))
    exact = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    bound = knn.error_coef(x.shape[1]) * (emb.nu[:, None] + emb.nu[None, :])
    for i0, i1, tile in knn.dist_tiles(emb, emb, chunk_bytes=4096):
        err = (tile[:, : x.shape[0]].double() - exact[i0:i1]).abs()
        assert bool((err <= bound[i0:i1]).all())
        assert bool((tile[:, x.shape[0]:] > 1e37).all())  # padding columns are never candidates


def test_pair_sq_dists_and_smallest_k():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 7, generator=g), torch.randn(40, 7, generator=g, dtype=torch.float64)
    ii, jj = torch.randint(0, 50, (300,), generator=g), torch.randint(0, 40, (300,), generator=g)
    want = ((x.double()[ii] - y[jj]) ** 2).sum(1)
    assert torch.allclose(knn.pair_sq_dists(x, y, ii, jj, chunk_bytes=1), want, rtol=1e-15)
    tile = torch.randn(37, 32 * 200, generator=g)
    vals, idx = knn.smallest_k(tile, 9)
    ref = torch.topk(tile, 9, dim=1, largest=False).values
    assert torch.equal(vals, ref) and torch.equal(torch.gather(tile, 1, idx), ref)


def test_tile_sizes_respect_budget():
    assert knn.tile_rows(10_000, 64, 1) == 1
    assert knn.tile_rows(50_000, 2048) * 50_000 * 6 <= knn.DEFAULT_CHUNK_BYTES
    assert knn.tile_rows(10_000, 64) * 10_000 * 6 <= 16 * 2**20  # cache-sized at small d


def test_input_validation():
    with pytest.raises(ValueError):
        knn.as_points(np.zeros(5))
    with pytest.raises(ValueError):
        knn.as_points(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError):
        knn.kth_neighbour_sq_radii(torch.zeros(5, 2), 5)
