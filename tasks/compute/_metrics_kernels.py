"""Numba kernels for clustering quality metrics (private: inputs are assumed valid).

All kernels work on data that the public wrappers have already sorted by label, in a
transposed, feature-major layout ``XT`` of shape ``(n_features, n_samples)`` (float64),
so that the innermost loops run over contiguous samples and vectorise. Pairwise
distances are computed blockwise (a tile of rows against a tile of columns); no
``n x n`` matrix is ever materialised.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reassociation/contraction only: no 'nnan'/'ninf', so inf/NaN checks stay valid.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# Tile sizes: a column tile of XT (n_features x _JB float64) stays in L1/L2.
_IB = 32
_JB = 256


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _cluster_distance_sums(XT, starts):  # pragma: no cover - compiled
    """For each sample i, the sum of Euclidean distances to every sample of each cluster.

    ``XT`` is (n_features, n_samples) with samples sorted by label; cluster ``c``
    occupies columns ``starts[c]:starts[c+1]``. Returns ``(n_samples, n_clusters)``.
    """
    d, n = XT.shape
    n_clusters = starts.shape[0] - 1
    out = np.zeros((n, n_clusters))
    n_iblocks = (n + _IB - 1) // _IB
    for bi in prange(n_iblocks):
        i0 = bi * _IB
        i1 = min(n, i0 + _IB)
        acc = np.empty(_JB)
        xi = np.empty(d)
        for c in range(n_clusters):
            j_end = starts[c + 1]
            for jb in range(starts[c], j_end, _JB):
                m = min(_JB, j_end - jb)
                for i in range(i0, i1):
                    for f in range(d):
                        xi[f] = XT[f, i]
                    for t in range(m):
                        acc[t] = 0.0
                    for f in range(d):
                        v = xi[f]
                        for t in range(m):
                            diff = v - XT[f, jb + t]
                            acc[t] += diff * diff
                    s = 0.0
                    for t in range(m):
                        s += np.sqrt(acc[t])
                    out[i, c] += s
    return out


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _dunn_extremes(XT, cluster_end):  # pragma: no cover - compiled
    """Squared (min inter-cluster, max intra-cluster) pairwise distances.

    ``cluster_end[i]`` is the (exclusive) end column of sample i's cluster in the
    label-sorted layout. Only pairs j > i are visited; row blocks are paired
    (b, n_blocks-1-b) so that the triangular work is balanced across threads.
    """
    d, n = XT.shape
    n_iblocks = (n + _IB - 1) // _IB
    n_pairs = (n_iblocks + 1) // 2
    min_inter = np.full(n_pairs, np.inf)
    max_intra = np.zeros(n_pairs)
    for p in prange(n_pairs):
        acc = np.empty(_JB)
        xi = np.empty(d)
        mn = np.inf
        mx = 0.0
        n_sides = 1 if n_iblocks - 1 - p == p else 2
        for side in range(n_sides):
            bi = p if side == 0 else n_iblocks - 1 - p
            i0 = bi * _IB
            i1 = min(n, i0 + _IB)
            for jb in range(i0, n, _JB):
                m = min(_JB, n - jb)
                for i in range(i0, i1):
                    if jb + m <= i + 1:
                        continue
                    for f in range(d):
                        xi[f] = XT[f, i]
                    for t in range(m):
                        acc[t] = 0.0
                    for f in range(d):
                        v = xi[f]
                        for t in range(m):
                            diff = v - XT[f, jb + t]
                            acc[t] += diff * diff
                    # columns j in (i, end) are same-cluster, j >= end other clusters
                    lo = max(i + 1 - jb, 0)
                    mid = min(max(cluster_end[i] - jb, lo), m)
                    for t in range(lo, mid):
                        mx = max(mx, acc[t])
                    for t in range(mid, m):
                        mn = min(mn, acc[t])
        min_inter[p] = mn
        max_intra[p] = mx
    return min_inter.min(), max_intra.max()



@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _cluster_distance_sums(Xs, sq, starts, sorted_codes, row_tile, col_tile):  # pragma: no cover
    """(n, n_clusters) sums of Euclidean distances from each row to each cluster.

    ``Xs`` (n, d) float64 is sorted by label (cluster c = rows ``starts[c]:starts[c+1]``),
    ``sq`` its squared row norms. Each thread takes a tile of rows; for each tile of
    columns the dot products come from BLAS (``np.dot``, one thread) and the distances
    ``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0))`` (scikit-learn's formula) are reduced per
    cluster segment. The self-distance is exactly 0, as in scikit-learn. Memory: one
    row_tile x col_tile block per thread.
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
                a = sq[i]
                for c in range(n_clusters):
                    lo = max(starts[c], j0)
                    hi = min(starts[c + 1], j1)
                    if lo >= hi:
                        continue
                    acc = 0.0
                    for j in range(lo, hi):
                        acc += np.sqrt(max(a + sq[j] - 2.0 * G[r, j - j0], 0.0))
                    out[i, c] += acc
                if j0 <= i < j1:
                    out[i, sorted_codes[i]] -= np.sqrt(max(a + a - 2.0 * G[r, i - j0], 0.0))
    return out
