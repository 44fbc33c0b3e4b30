"""Numba kernels for clustering quality metrics (private: inputs are assumed valid).

Rows are sorted by label by the public wrappers (cluster c = rows
``starts[c]:starts[c+1]``). Pairwise distances are computed tile by tile: each thread
takes a tile of rows, BLAS (one thread) gives the dot products against a tile of
columns, and the distances ``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0))`` (scikit-learn's
formula) are reduced per cluster segment. No ``n x n`` matrix is ever materialised:
memory is one row_tile x col_tile block per thread.

The per-row reductions live in small separate functions (not inlined into the
parallel loop body): that is what lets LLVM vectorise them.
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

# Reassociation/contraction only: no 'nnan'/'ninf', so inf/NaN checks stay valid.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


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


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _cluster_distance_sums(Xs, sq, starts, sorted_codes, row_tile, col_tile):  # pragma: no cover
    """(n, n_clusters): sum of Euclidean distances from each row to each cluster.

    The self-distance is exactly 0 (as scikit-learn's ``pairwise_distances_chunked``).
    """
    n = Xs.shape[0]
    n_clusters = starts.shape[0] - 1
    out = np.zeros((n, n_clusters))
    n_rt = (n + row_tile - 1) // row_tile
    for bt in prange(n_rt):
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
    return out


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _row_cluster_sums_sym(
    g, a, sq_cols, starts, j0, first, out_row, col_acc, tmp
):  # pragma: no cover
    """Like :func:`_row_cluster_sums` restricted to tile columns ``t >= first``, also
    adding each distance to ``col_acc[t]`` (the column rows' sums towards this row's
    cluster): each pair is computed once and used for both rows. Three simple loops
    (distances into ``tmp``, reduction, column update) so that each one vectorises."""
    tt = g.shape[0]
    for t in range(first, tt):
        tmp[t] = np.sqrt(max(a + sq_cols[t] - 2.0 * g[t], 0.0))
    for t in range(first, tt):
        col_acc[t] += tmp[t]
    j1 = j0 + tt
    for c in range(starts.shape[0] - 1):
        lo = max(starts[c], j0 + first)
        hi = min(starts[c + 1], j1)
        if lo >= hi:
            continue
        acc = 0.0
        for t in range(lo - j0, hi - j0):
            acc += tmp[t]
        out_row[c] += acc


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _cluster_distance_sums_sym(
    Xs, sq, starts, sorted_codes, row_tile, col_tile, n_threads
):  # pragma: no cover
    """Same result as :func:`_cluster_distance_sums`, visiting each pair once (j > i).

    Row i's sums go to ``out[i]``; the same distance is added to column j's sum towards
    i's cluster in a per-thread buffer ``(n_threads, n_clusters, n)`` (reduced at the
    end), so memory is O(n_threads * n * n_clusters). Long and short row tiles are
    interleaved to balance the triangular work.
    """
    n = Xs.shape[0]
    n_clusters = starts.shape[0] - 1
    out = np.zeros((n, n_clusters))
    col = np.zeros((n_threads, n_clusters, n))
    n_rt = (n + row_tile - 1) // row_tile
    for q in prange(n_rt):
        tid = get_thread_id()
        h = q // 2
        bt = h if q % 2 == 0 else n_rt - 1 - h
        i0 = bt * row_tile
        i1 = min(n, i0 + row_tile)
        for j0 in range(i0, n, col_tile):
            j1 = min(n, j0 + col_tile)
            G = np.dot(Xs[i0:i1], Xs[j0:j1].T)
            tmp = np.empty(j1 - j0)
            for r in range(i1 - i0):
                i = i0 + r
                first = max(i + 1 - j0, 0)
                if first >= j1 - j0:
                    continue
                _row_cluster_sums_sym(
                    G[r],
                    sq[i],
                    sq[j0:j1],
                    starts,
                    j0,
                    first,
                    out[i],
                    col[tid, sorted_codes[i], j0:j1],
                    tmp,
                )
    for i in prange(n):
        for t in range(n_threads):
            for c in range(n_clusters):
                out[i, c] += col[t, c, i]
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


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _dunn_extremes(Xs, sq, cluster_end, row_tile, col_tile):  # pragma: no cover
    """Squared (min inter-cluster, max intra-cluster) pairwise distances.

    ``cluster_end[i]`` is the (exclusive) end row of row i's cluster. Only pairs j > i
    are visited (column tiles from the row tile's start); long and short row tiles are
    interleaved so that the triangular work is balanced across threads.
    """
    n = Xs.shape[0]
    n_rt = (n + row_tile - 1) // row_tile
    min_inter = np.full(n_rt, 1.7976931348623157e308)
    max_intra = np.zeros(n_rt)
    for q in prange(n_rt):
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
    return min_inter.min(), max_intra.max()
