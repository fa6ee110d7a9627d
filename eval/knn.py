"""Chunked nearest-neighbour kernels in torch (CPU or GPU, same call) for the k-NN metrics.

Distances are *squared Euclidean* (units: feature units²) throughout; squaring is monotone, so every
"distance <= radius" test is done as "d² <= r²".

Two-stage exactness (float32 speed, float64 answers):

1. **Screening, float32.** Each set is centred (float64 mean) and rounded to float32 (a, with
   ‖a‖²); one GEMM per tile gives ``D32 = addmm(‖b‖², a, bᵀ, alpha=−2) + ‖a‖²``. A rigorous bound
   covers the rounding of the points and norms and any summation order of the GEMM:
   ``|D32_ij − D_ij| <= c_d · (ν_i + ν_j)``, ``ν = ‖x − centre‖²`` (float64),
   ``c_d = 1.01 · (2γ_{d+3} + 6u)``, ``γ_K = K u / (1 − K u)``, ``u = 2⁻²⁴`` — float32 matmuls are
   forced to full IEEE precision (no TF32) inside this module. Thresholds are widened by the
   bound and rounded up, so the screen never drops a pair that is inside in exact arithmetic.
2. **Decision, float64.** A screened pair whose value lies within the bound of a threshold is
   recomputed directly as ``Σ (x − y)²`` in float64 from the original inputs
   (:func:`pair_sq_dists`) and the ``<=`` test is done on that value; pairs farther from every
   threshold are decided by the screen. Float32 round-off can never flip a comparison; near-ties
   are decided at float64 accuracy (relative error ≲ d·2⁻⁵³), and exact ties (duplicated points)
   compare equal because both sides come from the same float64 routine.

k-NN radii keep k + 1 + extra float32 candidates per row, found by a block-minimum search
(:func:`smallest_k`); the radius is certified when the last candidate exceeds it by more than the
bound, else the row is redone with more candidates. For d >= 256 the radius pass computes only
the upper triangle of the distance matrix (half the GEMM flops).

Memory (``chunk_bytes``, default ``DEFAULT_CHUNK_BYTES`` = 256 MiB): distance tiles always span
all columns; their height is cache-sized (~16 MiB of tile, 6 bytes per entry budgeted), at least
d/4 rows for large d (GEMM efficiency), never more than ``chunk_bytes`` (>= 1 row). Transient
work (candidate indices, float64 gathers, block masks) comes in pieces of <= 16 MiB. Besides the
inputs, each point set costs one float32 copy (N' × d, N' = N rounded up to 32) plus O(N) vectors.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np
import torch

__all__ = ["DEFAULT_CHUNK_BYTES", "as_points", "mean64", "rows_per_chunk", "work_rows", "tile_rows",
           "ieee_fp32_matmul", "error_coef", "round_up_f32", "Embedded", "dist_tiles",
           "pair_sq_dists", "nonzero_pairs", "pairs_below", "smallest_k", "kth_neighbour_sq_radii"]

DEFAULT_CHUNK_BYTES = 256 * 2**20
_U32 = 2.0 ** -24          # unit round-off of float32
_TILE_BYTES_PER_ENTRY = 6  # float32 tile + two bool masks
_CACHE_TILE_BYTES = 16 * 2**20  # tiles of this size stay in a typical L3 cache
_BLOCK = 32                # column blocks of the block-minimum k-smallest search
_PAD = 1e38                # squared "distance" of the padding columns (never a candidate)
_SYMMETRIC_MIN_N = 2048    # half-GEMM radius pass from this N and _SYMMETRIC_MIN_D on (measured
_SYMMETRIC_MIN_D = 256     # crossover on 2 CPU cores; below it the plain pass is faster)


def as_points(x, name: str = "x", device=None) -> torch.Tensor:
    """A (N, d) floating tensor from a tensor / numpy array / array-like (integers → float64).

    Raises ValueError for other ranks, empty sets or non-finite values."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, d) feature matrix, got {t.shape}")
    step = work_rows(t.shape[1], 8)  # isfinite makes ~8 bytes of temporaries per entry
    for s in range(0, t.shape[0], step):
        if not bool(torch.isfinite(t[s:s + step]).all()):
            raise ValueError(f"{name}: features contain NaN or inf")
    return t


def mean64(x: torch.Tensor, chunk_bytes: Optional[int] = None) -> torch.Tensor:
    """(d,) float64 mean of x (N, d), accumulated chunk by chunk (no N×d float64 copy)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    step = work_rows(x.shape[1], 8, chunk_bytes)
    for s in range(0, x.shape[0], step):
        total += x[s:s + step].sum(0, dtype=torch.float64)
    return total / x.shape[0]


def rows_per_chunk(n_cols: int, bytes_per_entry: float, budget: Optional[int] = None) -> int:
    """Rows of a (rows, n_cols) work item that fit ``budget`` bytes (default 256 MiB); >= 1."""
    budget = DEFAULT_CHUNK_BYTES if budget is None else int(budget)
    return max(1, int(budget // max(1.0, bytes_per_entry * n_cols)))


def work_rows(n_cols: int, bytes_per_entry: float, budget: Optional[int] = None) -> int:
    """Rows of a transient work item: cache-sized pieces (<= 16 MiB, and <= the budget). Large
    fresh allocations are slow (page faults) and evict the tile, so candidate work stays small."""
    budget = DEFAULT_CHUNK_BYTES if budget is None else int(budget)
    return rows_per_chunk(n_cols, bytes_per_entry, min(budget, _CACHE_TILE_BYTES))


def tile_rows(n_cols: int, d: int, budget: Optional[int] = None) -> int:
    """Height of a distance tile (rows × n_cols, 6 bytes per entry): cache-sized (~16 MiB) for
    cheap GEMMs, >= d/4 rows so that large-d GEMMs amortise packing, never above the budget."""
    want = max(rows_per_chunk(n_cols, _TILE_BYTES_PER_ENTRY, _CACHE_TILE_BYTES), d // 4)
    return max(1, min(want, rows_per_chunk(n_cols, _TILE_BYTES_PER_ENTRY, budget)))


@contextlib.contextmanager
def ieee_fp32_matmul():
    """Force full-precision float32 matmuls (no TF32 / bf16 passes) inside the block: the error
    bound of :func:`error_coef` assumes u = 2⁻²⁴. The previous setting is restored on exit."""
    prev = torch.get_float32_matmul_precision()
    if prev == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def error_coef(d: int) -> float:
    """c_d with |D32_ij − D_ij| <= c_d (ν_i + ν_j) for the float32 GEMM distances (module doc)."""
    k = d + 3
    gamma = k * _U32 / (1.0 - k * _U32)
    return 1.01 * (2.0 * gamma + 6.0 * _U32)


def round_up_f32(t: torch.Tensor) -> torch.Tensor:
    """Smallest float32 values >= the float64 values ``t`` (thresholds that never shrink)."""
    t32 = t.to(torch.float32)
    up = torch.nextafter(t32, torch.full_like(t32, np.inf))
    return torch.where(t32.to(torch.float64) < t, up, t32)


class Embedded:
    """The float32 copy of a point set x (N, d) used by the screening GEMM.

    ``a`` (N', d) float32 = fl32(x − centre) and ``sq`` (N',) float32 = ‖a‖², where N' is N rounded
    up to a multiple of 32 with padding points (a = 0, sq = 1e38) that sit at squared distance
    ~1e38 from everything; ``nu`` (N,) float64 = ‖x − centre‖² (units²) feeds the error bound.
    """

    def __init__(self, x: torch.Tensor, center: torch.Tensor, chunk_bytes: Optional[int] = None,
                 order: Optional[torch.Tensor] = None):
        n, d = x.shape
        self.n, self.d = n, d
        self.nu = torch.empty(n, dtype=torch.float64, device=x.device)
        self.a = torch.zeros(-(-n // _BLOCK) * _BLOCK, d, device=x.device)
        self.sq = torch.full((self.a.shape[0],), _PAD, device=x.device)
        self.fill(x, center, chunk_bytes, order)

    def fill(self, x: torch.Tensor, center: torch.Tensor, chunk_bytes: Optional[int] = None,
             order: Optional[torch.Tensor] = None) -> "Embedded":
        """(Re)compute the copy in place for x (same shape), centred at ``center``, rows permuted
        by ``order`` (point i = x[order[i]]) — reuses the buffers, no new N × d allocation."""
        step = work_rows(self.d, 16, chunk_bytes)
        center = center.to(device=x.device, dtype=torch.float64)
        for s in range(0, self.n, step):  # float64 temporaries stay small
            e = min(s + step, self.n)
            xs = x[s:e] if order is None else x.index_select(0, order[s:e])
            xc = xs.to(torch.float64) - center
            self.nu[s:e] = xc.square().sum(1)
            self.a[s:e] = xc
            self.sq[s:e] = self.a[s:e].to(torch.float64).square().sum(1)
        if float(self.nu.max()) > 1e30:
            raise ValueError("features too large for float32 screening (‖x − mean‖² > 1e30)")
        return self


def dist_tiles(rows: Embedded, cols: Embedded, which: Optional[torch.Tensor] = None,
               chunk_bytes: Optional[int] = None, row_norms: bool = True,
               ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (i0, i1, D32): float32 squared distances (i1 − i0, M') from rows i0:i1 of ``rows``
    (or of its subset ``which``) to all (padded) points of ``cols``, as
    ``addmm(‖b‖², a, bᵀ, alpha=−2) + ‖a‖²``. With ``row_norms=False`` the per-row term ‖a‖² is
    left out (one pass less; the caller adds it to what it keeps or subtracts it from its
    thresholds — the error bound still holds for tile + ‖a‖² taken exactly). The tile is a reused
    buffer: consume it before advancing the iterator."""
    m = cols.a.shape[0]
    a, sq = rows.a[: rows.n], rows.sq[: rows.n]
    if which is not None:
        a, sq = a.index_select(0, which), sq.index_select(0, which)
    step = tile_rows(m, cols.d, chunk_bytes)
    buf = torch.empty(min(step, a.shape[0]), m, device=a.device)
    cols_t, cols_sq = cols.a.T, cols.sq.unsqueeze(0)
    with ieee_fp32_matmul():
        for i0 in range(0, a.shape[0], step):
            i1 = min(i0 + step, a.shape[0])
            out = buf[: i1 - i0]
            torch.addmm(cols_sq, a[i0:i1], cols_t, alpha=-2.0, out=out)
            if row_norms:
                out.add_(sq[i0:i1].unsqueeze(1))
            yield i0, i1, out


def pair_sq_dists(x: torch.Tensor, y: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor,
                  chunk_bytes: Optional[int] = None) -> torch.Tensor:
    """Exact-path squared distances ‖x[ii] − y[jj]‖² (P,) float64, computed as Σ (x − y)² in float64
    from the original features (no expansion, no cancellation), chunk by chunk."""
    p, d = ii.numel(), x.shape[1]
    out = torch.empty(p, dtype=torch.float64, device=x.device)
    step = work_rows(d, 24, chunk_bytes)
    for s in range(0, p, step):
        diff = x.index_select(0, ii[s:s + step]).to(torch.float64)
        diff -= y.index_select(0, jj[s:s + step]).to(torch.float64)
        out[s:s + step] = diff.square_().sum(1)
    return out


def nonzero_pairs(mask: torch.Tensor, chunk_bytes: Optional[int] = None, bytes_per_hit: int = 16,
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (rows, cols) int64 index pairs of the True entries of a (r, M) bool mask, in row blocks
    sized so that even an all-True block stays within the work size (``bytes_per_hit`` each)."""
    r, m = mask.shape
    step = work_rows(m, bytes_per_hit, chunk_bytes)
    for s in range(0, r, step):
        flat = torch.nonzero(mask[s:s + step].reshape(-1)).squeeze(1)
        if flat.numel():
            yield flat // m + s, flat % m


def pairs_below(tile: torch.Tensor, row_thr: torch.Tensor, col_thr: torch.Tensor,
                chunk_bytes: Optional[int] = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield (rows, cols, values) of the entries with ``tile[i, j] <= row_thr[i]`` or
    ``<= col_thr[j]`` of an (r, M') float32 tile (M' a multiple of 32; row_thr (r,), col_thr (M',)
    float32, −inf for padding columns).

    Block-minimum search: only 32-column blocks whose minimum is <= max(row_thr[i], block max of
    col_thr) are gathered and tested entry by entry, so the per-entry cost is one ``amin`` pass.
    Tight when columns are ordered by ascending col_thr (block maxima ≈ members' values)."""
    r, m = tile.shape
    nb = m // _BLOCK
    col_blocks = col_thr.view(nb, _BLOCK)
    bthr = torch.maximum(row_thr.unsqueeze(1), col_blocks.amax(1))                  # (r, nb)
    blocks = tile.view(r * nb, _BLOCK)
    bmask = blocks.amin(1).view(r, nb) <= bthr
    for br, bc in nonzero_pairs(bmask, chunk_bytes, bytes_per_hit=_BLOCK * 40):
        vals = blocks.index_select(0, br * nb + bc)                                # (P, 32)
        thr = torch.maximum(row_thr[br].unsqueeze(1), col_blocks.index_select(0, bc))
        p, q = torch.nonzero(vals <= thr, as_tuple=True)
        yield br[p], bc[p] * _BLOCK + q, vals[p, q]


def smallest_k(tile: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kk smallest entries of each row of a (r, M') tile with M' a multiple of 32: values
    ascending (r, kk) and column indices (r, kk) — the same values as ``torch.topk``.

    Block-minimum search: the kk smallest entries of a row lie in the kk blocks (of 32 columns)
    with the smallest minima (any entry outside them has kk block minima below it), so only
    kk·32 entries per row go through ``topk``; the per-entry cost is one ``amin`` pass."""
    r, m = tile.shape
    if m <= 4 * kk * _BLOCK:
        return torch.topk(tile, kk, dim=1, largest=False, sorted=True)
    nb = m // _BLOCK
    blocks = tile.view(r * nb, _BLOCK)
    bidx = torch.topk(blocks.amin(1).view(r, nb), kk, dim=1, largest=False, sorted=False).indices
    flat = bidx + torch.arange(r, device=tile.device).unsqueeze(1) * nb
    vals, pos = torch.topk(blocks.index_select(0, flat.view(-1)).view(r, kk * _BLOCK), kk, dim=1,
                           largest=False, sorted=True)
    cols = bidx.unsqueeze(2) * _BLOCK + torch.arange(_BLOCK, device=tile.device)
    return vals, torch.gather(cols.view(r, -1), 1, pos)


def _merge(vals: torch.Tensor, idx: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor):
    """kk smallest (ascending) of the union of two candidate lists (rows × kk and rows × kk2)."""
    v, pos = torch.topk(torch.cat([vals, v2], 1), vals.shape[1], dim=1, largest=False, sorted=True)
    return v, torch.gather(torch.cat([idx, i2], 1), 1, pos)


def _topk_rows(emb: Embedded, which: Optional[torch.Tensor], kk: int, chunk_bytes: Optional[int]):
    """(values ascending, column indices) (R, kk) of the kk smallest screened distances of the rows
    ``which`` (None: all rows), one tile per row strip. Values are float64 sums of the float32
    tile entry and the row's ‖a‖² (taken exactly, so the screen's error bound applies)."""
    r = emb.n if which is None else which.numel()
    vals = torch.empty(r, kk, dtype=torch.float64, device=emb.a.device)
    idx = torch.empty(r, kk, dtype=torch.int64, device=emb.a.device)
    sq = emb.sq[: emb.n] if which is None else emb.sq.index_select(0, which)
    for i0, i1, tile in dist_tiles(emb, emb, which, chunk_bytes, row_norms=False):
        v, idx[i0:i1] = smallest_k(tile, kk)   # same order as with the row constant added
        vals[i0:i1] = v.to(torch.float64) + sq[i0:i1].to(torch.float64).unsqueeze(1)
    return vals, idx


def _push_candidates(vals, idx, rows, cols, v):
    """Merge scattered candidates (value v at row ``rows`` of column ``cols``) into the running
    per-point lists ``vals``/``idx`` (N, kk) of the points ``cols`` (candidate index = ``rows``)."""
    order = torch.argsort(cols, stable=True)
    cols, rows, v = cols[order], rows[order], v[order]
    uniq, counts = torch.unique_consecutive(cols, return_counts=True)
    group = torch.repeat_interleave(torch.arange(uniq.numel(), device=cols.device), counts)
    pos = torch.arange(cols.numel(), device=cols.device) - (torch.cumsum(counts, 0) - counts)[group]
    pv = torch.full((uniq.numel(), int(counts.max())), float("inf"), device=v.device)
    pi = torch.zeros(pv.shape, dtype=torch.int64, device=v.device)
    pv[group, pos], pi[group, pos] = v, rows
    vals[uniq], idx[uniq] = _merge(vals[uniq], idx[uniq], pv, pi)


def _topk_rows_symmetric(emb: Embedded, kk: int, chunk_bytes: Optional[int]):
    """As :func:`_topk_rows` for all rows, computing only the upper triangle of D (half the GEMM
    flops). Strip i0:i1 gives D[i0:i1, i0:]; its rows complete the lists of points i0:i1, and its
    columns j >= i1 are pushed into the running lists of the later points: entries <= the current
    kk-th value of point j (few after the first strips, which push their kk smallest per column)."""
    n, n_pad, dev = emb.n, emb.a.shape[0], emb.a.device
    vals = torch.full((n, kk), float("inf"), device=dev)
    idx = torch.zeros(n, kk, dtype=torch.int64, device=dev)
    step = max(_BLOCK, tile_rows(n_pad, emb.d, chunk_bytes) // _BLOCK * _BLOCK)
    buf = torch.empty(min(step, n) * n_pad, device=dev)
    lane = torch.arange(_BLOCK, device=dev)
    with ieee_fp32_matmul():
        for i0 in range(0, n, step):
            i1, w = min(i0 + step, n), n_pad - i0
            tile = buf[: (i1 - i0) * w].view(i1 - i0, w)
            torch.addmm(emb.sq[i0:].unsqueeze(0), emb.a[i0:i1], emb.a[i0:].T, alpha=-2.0, out=tile)
            tile.add_(emb.sq[i0:i1].unsqueeze(1))
            v, j = smallest_k(tile, min(kk, w))
            vals[i0:i1], idx[i0:i1] = _merge(vals[i0:i1], idx[i0:i1], v, j + i0)
            if i1 == n:
                break
            upper = tile[:, i1 - i0: n - i0]                         # (r, n − i1) columns j >= i1
            if i0 == 0 or i1 - i0 <= kk:                     # lists still empty: kk smallest
                v, j = torch.topk(upper.T, min(kk, i1 - i0), dim=1, largest=False, sorted=False)
                vals[i1:], idx[i1:] = _merge(vals[i1:], idx[i1:], v, j + i0)
                continue
            # later strips: only 32-row blocks whose minimum beats a column's current kk-th value
            thr = vals[i1:, -1]
            bmask = upper.unflatten(0, (-1, _BLOCK)).amin(1) <= thr                # (r/32, n − i1)
            for rb, c in nonzero_pairs(bmask, chunk_bytes, bytes_per_hit=_BLOCK * 40):
                rows = rb.unsqueeze(1) * _BLOCK + lane                           # (P, 32)
                v = upper[rows, c.unsqueeze(1)]
                p, q = torch.nonzero(v <= thr[c].unsqueeze(1), as_tuple=True)
                if p.numel():
                    _push_candidates(vals, idx, rows[p, q] + i0, c[p] + i1, v[p, q])
    return vals, idx


def _kth_exact(x, rows, vals, idx, k, half_tau, chunk_bytes):
    """Exact (k+1)-th smallest of each row's candidates: screened values ``vals`` (R, kk) at columns
    ``idx``, |screen − exact| <= half_tau[i] + half_tau[j]. Candidates surely below / above the
    (k+1)-th become −inf / +inf; only the band in between is recomputed in float64."""
    rows2 = rows.unsqueeze(1).expand_as(idx)
    tau = half_tau[rows2] + half_tau[idx]
    lo, hi = vals.to(torch.float64) - tau, vals.to(torch.float64) + tau
    a = lo.kthvalue(k + 1, dim=1, keepdim=True).values   # (k+1)-th exact value is in [a, b]
    b = hi.kthvalue(k + 1, dim=1, keepdim=True).values
    below, above = hi < a, lo > b
    band = ~(below | above)
    full = torch.zeros_like(lo).masked_fill_(below, -np.inf).masked_fill_(above, np.inf)
    full[band] = pair_sq_dists(x, x, rows2[band], idx[band], chunk_bytes)
    return full.kthvalue(k + 1, dim=1).values


def kth_neighbour_sq_radii(x: torch.Tensor, k: int, *, extra: int = 3,
                           emb: Optional[Embedded] = None,
                           chunk_bytes: Optional[int] = None) -> torch.Tensor:
    """Squared k-NN radius of every point of x (N, d) within x, self excluded: (N,) float64.

    Radius = the (k+1)-th smallest distance of the row *including* the zero self-distance (official
    P/R and prdc convention; a duplicate of a point counts as a neighbour at distance 0).
    The float32 screen keeps the k + 1 + ``extra`` nearest candidates per row; their exact float64
    distances give the radius, which is certified when the screen's last candidate exceeds it by
    more than the error bound. Uncertified rows (near-ties, duplicates) are redone with 4× more
    candidates, up to the whole row. ``emb``: a prepared :class:`Embedded` of x.
    """
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k-NN radius needs 1 <= k < N, got k={k}, N={n}")
    if emb is None:
        emb = Embedded(x, mean64(x, chunk_bytes), chunk_bytes)
    coef, nu_max = error_coef(emb.d), float(emb.nu.max())
    radii = torch.empty(n, dtype=torch.float64, device=x.device)
    todo = torch.arange(n, device=x.device)
    kk = min(n, k + 1 + extra)
    while todo.numel():
        if todo.numel() == n and kk < n and n >= _SYMMETRIC_MIN_N and emb.d >= _SYMMETRIC_MIN_D:
            vals, idx = _topk_rows_symmetric(emb, kk, chunk_bytes)
        else:
            vals, idx = _topk_rows(emb, None if todo.numel() == n else todo, kk, chunk_bytes)
        r = _kth_exact(x, todo, vals, idx, k, coef * emb.nu, chunk_bytes)
        radii[todo] = r
        if kk == n:
            break
        certified = vals[:, -1].to(torch.float64) - coef * (emb.nu[todo] + nu_max) >= r
        todo = todo[~certified]
        kk = min(n, 4 * kk)
    return radii
