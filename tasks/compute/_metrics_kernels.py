"""Numba kernels for clustering quality metrics (private: inputs are assumed valid).

Rows are sorted by label by the public wrappers (cluster c = rows
``starts[c]:starts[c+1]``). Pairwise distances are computed tile by tile and reduced per
cluster segment; no ``n x n`` matrix is ever materialised. The distances are
``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0))`` (scikit-learn's formula).

* :func:`cluster_distance_sums_sym` (silhouette): hand-written register-blocked dot
  products fused with the distances (see the section comment below), each pair once.
* :func:`cluster_distance_sums` (silhouette with very many clusters) and
  :func:`dunn_extremes`: each thread takes a tile of rows and BLAS (one thread) gives
  the dot products against a tile of columns; memory is one row_tile x col_tile block per
  thread.

The threads each run one part of the row tiles (``*_part`` kernels, see
:func:`tasks.compute._threads.run_parts`). The per-row reductions live in small separate
functions: that is what lets LLVM vectorise them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tasks.compute._kmeans_kernels import _FASTMATH
from tasks.compute._threads import parts_for, run_parts, share


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _row_cluster_sums(g, a, sq_cols, starts, j0, out_row):  # pragma: no cover
    """``out_row[c] +=`` sum over the columns of cluster c in the tile starting at j0 of
    sqrt(max(a + sq_cols - 2 g, 0))."""
    j1 = j0 + g.shape[0]
    for c in range(starts.shape[0] - 1):
        lo = max(starts[c], j0)
        hi = min(starts[c + 1], j1)
        if lo >= hi:
            continue
        acc = 0.0
        for t in range(lo - j0, hi - j0):
            acc += np.sqrt(max(a + sq_cols[t] - 2.0 * g[t], 0.0))
        out_row[c] += acc


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _cluster_distance_sums_part(
    part, n_parts, Xs, sq, starts, sorted_codes, row_tile, col_tile, out
):  # pragma: no cover
    """:func:`cluster_distance_sums` for one part's row tiles."""
    n = Xs.shape[0]
    lo, hi = share(part, n_parts, (n + row_tile - 1) // row_tile)
    for bt in range(lo, hi):
        i0 = bt * row_tile
        i1 = min(n, i0 + row_tile)
        for j0 in range(0, n, col_tile):
            j1 = min(n, j0 + col_tile)
            G = np.dot(Xs[i0:i1], Xs[j0:j1].T)
            for r in range(i1 - i0):
                i = i0 + r
                _row_cluster_sums(G[r], sq[i], sq[j0:j1], starts, j0, out[i])
                if j0 <= i < j1:
                    out[i, sorted_codes[i]] -= np.sqrt(max(2.0 * sq[i] - 2.0 * G[r, i - j0], 0.0))


def cluster_distance_sums(Xs, sq, starts, sorted_codes, row_tile, col_tile):
    """(n, n_clusters): sum of Euclidean distances from each row to each cluster.

    The self-distance is exactly 0 (as scikit-learn's ``pairwise_distances_chunked``).
    """
    n = Xs.shape[0]
    out = np.zeros((n, starts.shape[0] - 1))
    n_parts = parts_for((n + row_tile - 1) // row_tile)
    run_parts(
        _cluster_distance_sums_part, n_parts, Xs, sq, starts, sorted_codes, row_tile, col_tile, out
    )
    return out


# ---------------------------------------------------------------------------------------
# Silhouette sums without BLAS. With few features (d ~ 20) one small dgemm per tile, its
# output written out and read back, cost ~2.5x the time per pair of this scheme (measured
# on one AVX2 core, 20 features): a 4-row x 4-feature micro-kernel accumulates the dot
# products of 4 rows with a strip of columns (column loop contiguous in XT, so LLVM
# vectorises it with AVX2 FMAs; the 16 row values are loop-invariant broadcasts), and the
# last 4 features are fused with the distances and their per-cluster sums. Features are zero-padded to a multiple of 4 and rows to a
# multiple of 4 by the wrapper (zeros change no dot product), so there is no remainder
# code. The hot loops index whole arrays with unsigned integers: numba then emits no
# negative-index wrap-around (which stops vectorisation) and no array views (each view
# costs two reference-count calls, a large share of a short strip's time).
# ---------------------------------------------------------------------------------------

_U = np.uint64


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _x_block(Xs, r0, k):  # pragma: no cover
    """The 4 x 4 block ``Xs[r0:r0+4, k:k+4]`` as 16 scalars (row-major)."""
    return (
        Xs[r0, k],
        Xs[r0, k + 1],
        Xs[r0, k + 2],
        Xs[r0, k + 3],
        Xs[r0 + 1, k],
        Xs[r0 + 1, k + 1],
        Xs[r0 + 1, k + 2],
        Xs[r0 + 1, k + 3],
        Xs[r0 + 2, k],
        Xs[r0 + 2, k + 1],
        Xs[r0 + 2, k + 2],
        Xs[r0 + 2, k + 3],
        Xs[r0 + 3, k],
        Xs[r0 + 3, k + 1],
        Xs[r0 + 3, k + 2],
        Xs[r0 + 3, k + 3],
    )


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _chunk(acc, XT, k, j0, m, x, init):  # pragma: no cover
    """``acc[r, t] (+)= sum_f x[4 r + f] * XT[k + f, j0 + t]`` for r < 4, t < m: 4 rows'
    dot products with a strip of columns over 4 features (``=`` if ``init``)."""
    k0 = _U(k)
    k1 = k0 + _U(1)
    k2 = k0 + _U(2)
    k3 = k0 + _U(3)
    c0 = _U(j0)
    r0 = _U(0)
    r1 = _U(1)
    r2 = _U(2)
    r3 = _U(3)
    if init:
        for t in range(_U(m)):
            j = c0 + t
            v0 = XT[k0, j]
            v1 = XT[k1, j]
            v2 = XT[k2, j]
            v3 = XT[k3, j]
            acc[r0, t] = x[0] * v0 + x[1] * v1 + x[2] * v2 + x[3] * v3
            acc[r1, t] = x[4] * v0 + x[5] * v1 + x[6] * v2 + x[7] * v3
            acc[r2, t] = x[8] * v0 + x[9] * v1 + x[10] * v2 + x[11] * v3
            acc[r3, t] = x[12] * v0 + x[13] * v1 + x[14] * v2 + x[15] * v3
    else:
        for t in range(_U(m)):
            j = c0 + t
            v0 = XT[k0, j]
            v1 = XT[k1, j]
            v2 = XT[k2, j]
            v3 = XT[k3, j]
            acc[r0, t] += x[0] * v0 + x[1] * v1 + x[2] * v2 + x[3] * v3
            acc[r1, t] += x[4] * v0 + x[5] * v1 + x[6] * v2 + x[7] * v3
            acc[r2, t] += x[8] * v0 + x[9] * v1 + x[10] * v2 + x[11] * v3
            acc[r3, t] += x[12] * v0 + x[13] * v1 + x[14] * v2 + x[15] * v3


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _dots4(Xs, XT, r0, j0, j1, kend, acc):  # pragma: no cover
    """``acc[r, :j1-j0] = Xs[r0 + r, :kend] . XT[:kend, j0:j1]`` for r < 4 (kend > 0)."""
    for k in range(0, kend, 4):
        _chunk(acc, XT, k, j0, j1 - j0, _x_block(Xs, r0, k), k == 0)


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _last_chunk_sums(acc, XT, kl, t0, j0, m, x, q, sq, col, cr):  # pragma: no cover
    """The last 4 features (from ``kl``) of :func:`_chunk` for the columns ``j0..j0+m``
    (``acc`` columns ``t0..t0+m``), fused with the distances
    ``sqrt(max(|x_r|^2 + |y_j|^2 - 2 x_r.y_j, 0))``: returns the 4 rows' sums and adds each
    column's sum over the 4 rows to ``col[cr, j]``. ``q`` holds the rows' squared norms."""
    k0 = _U(kl)
    k1 = k0 + _U(1)
    k2 = k0 + _U(2)
    k3 = k0 + _U(3)
    a = _U(t0)
    c0 = _U(j0)
    cc = _U(cr)
    r0 = _U(0)
    r1 = _U(1)
    r2 = _U(2)
    r3 = _U(3)
    q0, q1, q2, q3 = q
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for t in range(_U(m)):
        j = c0 + t
        u = a + t
        v0 = XT[k0, j]
        v1 = XT[k1, j]
        v2 = XT[k2, j]
        v3 = XT[k3, j]
        sj = sq[j]
        g0 = acc[r0, u] + x[0] * v0 + x[1] * v1 + x[2] * v2 + x[3] * v3
        g1 = acc[r1, u] + x[4] * v0 + x[5] * v1 + x[6] * v2 + x[7] * v3
        g2 = acc[r2, u] + x[8] * v0 + x[9] * v1 + x[10] * v2 + x[11] * v3
        g3 = acc[r3, u] + x[12] * v0 + x[13] * v1 + x[14] * v2 + x[15] * v3
        e0 = np.sqrt(max(q0 + sj - 2.0 * g0, 0.0))
        e1 = np.sqrt(max(q1 + sj - 2.0 * g1, 0.0))
        e2 = np.sqrt(max(q2 + sj - 2.0 * g2, 0.0))
        e3 = np.sqrt(max(q3 + sj - 2.0 * g3, 0.0))
        s0 += e0
        s1 += e1
        s2 += e2
        s3 += e3
        col[cc, j] += (e0 + e1) + (e2 + e3)
    return s0, s1, s2, s3


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _block_sums(Xs, XT, sq, r0, j0, j1, sorted_codes, starts, acc, out, col):  # pragma: no cover
    """4 rows ``r0..r0+4`` of one cluster against the columns ``j0..j1`` (all > the rows):
    per-cluster row sums into ``out[r0:r0+4]``, per-column sums into ``col[cluster, j]``."""
    kl = XT.shape[0] - 4
    if kl > 0:
        _dots4(Xs, XT, r0, j0, j1, kl, acc)
    else:
        acc[:, : j1 - j0] = 0.0
    x = _x_block(Xs, r0, kl)
    q = (sq[r0], sq[r0 + 1], sq[r0 + 2], sq[r0 + 3])
    cr = sorted_codes[r0]
    # the columns' clusters are consecutive (rows sorted by cluster, none empty)
    for c in range(sorted_codes[j0], sorted_codes[j1 - 1] + 1):
        lo = max(starts[c], j0)
        hi = min(starts[c + 1], j1)
        s = _last_chunk_sums(acc, XT, kl, lo - j0, lo, hi - lo, x, q, sq, col, cr)
        out[r0, c] += s[0]
        out[r0 + 1, c] += s[1]
        out[r0 + 2, c] += s[2]
        out[r0 + 3, c] += s[3]


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _dist_sum(g, sqc, a):  # pragma: no cover
    """sum_t sqrt(max(a + sqc[t] - 2 g[t], 0))."""
    s = 0.0
    for t in range(g.shape[0]):
        s += np.sqrt(max(a + sqc[t] - 2.0 * g[t], 0.0))
    return s


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _dist_sum_col(g, sqc, a, colc):  # pragma: no cover
    """:func:`_dist_sum`, also adding each distance to ``colc[t]``."""
    s = 0.0
    for t in range(g.shape[0]):
        e = np.sqrt(max(a + sqc[t] - 2.0 * g[t], 0.0))
        s += e
        colc[t] += e
    return s


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _row_sums(g, a, sq, i, j0, j1, sorted_codes, starts, out_row, colc):  # pragma: no cover
    """One row i (dot products ``g`` with the columns j0..j1): per-cluster sums of its
    distances into ``out_row``, leaving out column i (its self-distance is exactly 0, as in
    scikit-learn); if the columns all come after i, also each distance into ``colc[j]``.
    (Decided here from the indices, not by a constant flag from the caller: numba would
    compile one copy per constant.)"""
    with_col = j0 > i
    for c in range(sorted_codes[j0], sorted_codes[j1 - 1] + 1):
        lo = max(starts[c], j0)
        hi = min(starts[c + 1], j1)
        if with_col:
            out_row[c] += _dist_sum_col(g[lo - j0 : hi - j0], sq[lo:hi], a, colc[lo:hi])
        elif lo <= i < hi:
            out_row[c] += _dist_sum(g[lo - j0 : i - j0], sq[lo:i], a) + _dist_sum(
                g[i + 1 - j0 : hi - j0], sq[i + 1 : hi], a
            )
        else:
            out_row[c] += _dist_sum(g[lo - j0 : hi - j0], sq[lo:hi], a)


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _row_tile_sums(
    Xs, XT, sq, sorted_codes, starts, i0, i1, col_tile, acc, out, col
):  # pragma: no cover
    """Rows ``i0..i1`` (i0 multiple of 4) against themselves and all later columns: row
    sums into ``out[i0:i1]``, column sums (columns >= i1) into ``col``."""
    n = sq.shape[0]
    d4 = XT.shape[0]
    for r0 in range(i0, i1, 4):  # diagonal block, in full: row sums only
        _dots4(Xs, XT, r0, i0, i1, d4, acc)
        for i in range(r0, min(r0 + 4, i1)):
            # (``sq`` only fills the unused ``colc`` argument)
            _row_sums(acc[i - r0], sq[i], sq, i, i0, i1, sorted_codes, starts, out[i], sq)
    for j0 in range(i1, n, col_tile):
        j1 = min(n, j0 + col_tile)
        for r0 in range(i0, i1, 4):
            if r0 + 4 <= i1 and sorted_codes[r0 + 3] == sorted_codes[r0]:
                _block_sums(Xs, XT, sq, r0, j0, j1, sorted_codes, starts, acc, out, col)
            else:  # rows of two clusters, or fewer than 4 rows left
                _dots4(Xs, XT, r0, j0, j1, d4, acc)
                for i in range(r0, min(r0 + 4, i1)):
                    _row_sums(
                        acc[i - r0],
                        sq[i],
                        sq,
                        i,
                        j0,
                        j1,
                        sorted_codes,
                        starts,
                        out[i],
                        col[sorted_codes[i]],
                    )


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _distance_sums_sym_part(
    part, n_parts, Xs, XT, sq, starts, sorted_codes, row_tile, col_tile, out, col
):  # pragma: no cover
    """:func:`cluster_distance_sums_sym` for one part's row tiles (``col[part]``: its own
    column sums)."""
    n = sq.shape[0]
    n_rt = (n + row_tile - 1) // row_tile
    acc = np.empty((4, max(col_tile, row_tile)))
    lo, hi = share(part, n_parts, n_rt)
    for q in range(lo, hi):
        h = q // 2
        bt = h if q % 2 == 0 else n_rt - 1 - h
        i0 = bt * row_tile
        i1 = min(n, i0 + row_tile)
        _row_tile_sums(Xs, XT, sq, sorted_codes, starts, i0, i1, col_tile, acc, out, col[part])


def cluster_distance_sums_sym(Xs, XT, sq, starts, sorted_codes, row_tile, col_tile, n_parts):
    """Same result as :func:`cluster_distance_sums`, each pair computed once.

    ``Xs`` is ``(n4, d4)``: the n rows sorted by cluster, zero-padded to multiples of 4
    rows and features; ``XT`` is ``(d4, n)``, its first n rows transposed; ``row_tile`` is a
    multiple of 4. A row tile's diagonal block is done in full (each pair from both sides);
    for the columns after it each distance goes to the row's sum ``out[i]`` and to the
    column's sum towards i's cluster in a per-part buffer ``(n_parts, n_clusters, n)``
    (added up at the end), so memory is O(n_parts * n * n_clusters). Long and short row
    tiles are interleaved to balance the triangular work.
    """
    n = sq.shape[0]
    n_clusters = starts.shape[0] - 1
    out = np.zeros((n, n_clusters))
    col = np.zeros((n_parts, n_clusters, n))
    run_parts(
        _distance_sums_sym_part,
        n_parts,
        Xs,
        XT,
        sq,
        starts,
        sorted_codes,
        row_tile,
        col_tile,
        out,
        col,
    )
    for t in range(n_parts):
        out += col[t].T
    return out


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _row_extremes(g, a, sq_cols, j0, i, end_i):  # pragma: no cover
    """(min over j >= end_i, max over i < j < end_i) of the squared distances
    max(a + sq_cols - 2 g, 0) within the tile of columns starting at j0."""
    tt = g.shape[0]
    lo = max(i + 1 - j0, 0)
    mid = min(max(end_i - j0, lo), tt)
    mx = 0.0
    for t in range(lo, mid):
        mx = max(mx, a + sq_cols[t] - 2.0 * g[t])
    mn = 1.7976931348623157e308
    for t in range(mid, tt):
        mn = min(mn, a + sq_cols[t] - 2.0 * g[t])
    return max(mn, 0.0), mx


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _dunn_extremes_part(
    part, n_parts, Xs, sq, cluster_end, row_tile, col_tile, min_inter, max_intra
):  # pragma: no cover
    """:func:`dunn_extremes` for one part's row tiles."""
    n = Xs.shape[0]
    n_rt = (n + row_tile - 1) // row_tile
    lo, hi = share(part, n_parts, n_rt)
    for q in range(lo, hi):
        h = q // 2
        bt = h if q % 2 == 0 else n_rt - 1 - h  # interleave long and short row tiles
        i0 = bt * row_tile
        i1 = min(n, i0 + row_tile)
        mn = 1.7976931348623157e308
        mx = 0.0
        for j0 in range(i0, n, col_tile):
            j1 = min(n, j0 + col_tile)
            G = np.dot(Xs[i0:i1], Xs[j0:j1].T)
            for r in range(i1 - i0):
                row = i0 + r
                if j1 > row + 1:
                    ext = _row_extremes(G[r], sq[row], sq[j0:j1], j0, row, cluster_end[row])
                    mn = min(mn, ext[0])
                    mx = max(mx, ext[1])
        min_inter[bt] = mn
        max_intra[bt] = mx


def dunn_extremes(Xs, sq, cluster_end, row_tile, col_tile):
    """Squared (min inter-cluster, max intra-cluster) pairwise distances.

    ``cluster_end[i]`` is the (exclusive) end row of row i's cluster. Only pairs j > i
    are visited (column tiles from the row tile's start); long and short row tiles are
    interleaved so that the triangular work is balanced across threads.
    """
    n_rt = (Xs.shape[0] + row_tile - 1) // row_tile
    min_inter = np.full(n_rt, 1.7976931348623157e308)
    max_intra = np.zeros(n_rt)
    run_parts(
        _dunn_extremes_part,
        parts_for(n_rt),
        Xs,
        sq,
        cluster_end,
        row_tile,
        col_tile,
        min_inter,
        max_intra,
    )
    return min_inter.min(), max_intra.max()
