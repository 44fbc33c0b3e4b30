"""Numba kernels for KNN imputation (private: inputs are assumed valid).

Distances are scikit-learn's ``nan_euclidean``: over the coordinates present in both
rows, ``sqrt(n_features / n_present * sum((x - y)^2))``; rows that share no present
coordinate are at an undefined (NaN) distance and never donate. Each receiver row is
handled by one thread with a private distance buffer of length n_fit (memory is
O(n_threads * n_fit), never receivers x donors). Each thread takes one part of the
blocks of receivers (:func:`tasks.compute._threads.run_parts`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tasks.compute._kmeans_kernels import _FASTMATH
from tasks.compute._threads import parts_for, run_parts, share


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _insert_topk(key, pres, j0, tt, best_d, best_i, m, k_max):  # pragma: no cover
    """Merge donors ``j0 + t`` (t < tt) with ``pres[t] != 0`` and ``key[t] >= 0`` into the
    sorted top-k (``best_d``/``best_i``, ``m`` kept so far); ties keep the lower index.
    Returns the new ``m``. Runs of 64 donors are first tested with a vectorised count
    against the current k-th best, so most of them are skipped in one step."""
    for s0 in range(0, tt, 64):
        s1 = min(tt, s0 + 64)
        thr = best_d[m - 1] if m == k_max else np.inf
        hits = 0
        for t in range(s0, s1):
            v = key[t]
            hits += 1 if (v >= 0.0) & (v < thr) & (pres[t] != 0.0) else 0
        if hits == 0:
            continue
        for t in range(s0, s1):
            dj = key[t]
            if pres[t] == 0.0 or dj < 0.0:
                continue
            if m == k_max and dj >= best_d[m - 1]:
                continue
            pos = m if m < k_max else k_max - 1
            while pos > 0 and best_d[pos - 1] > dj:
                if pos < k_max:
                    best_d[pos] = best_d[pos - 1]
                    best_i[pos] = best_i[pos - 1]
                pos -= 1
            best_d[pos] = dj
            best_i[pos] = j0 + t
            if m < k_max:
                m += 1
    return m


@njit(cache=True, nogil=True)
def _average(best_d, best_i, m, fit_values, c, distance_weights, n_features):  # pragma: no cover
    """(Weighted) mean of column ``c`` over the kept donors; NaN when there is none.
    ``best_d`` holds ranking keys (mean squared difference over common coordinates);
    the nan-Euclidean distance is sqrt(n_features * key)."""
    if m == 0:
        return np.nan
    num = 0.0
    den = 0.0
    n_zero = 0
    if distance_weights:
        for t in range(m):
            if best_d[t] == 0.0:
                n_zero += 1
    for t in range(m):
        if not distance_weights:
            w = 1.0
        elif n_zero > 0:
            # donors at distance 0, if any, take all the weight (sklearn's rule)
            w = 1.0 if best_d[t] == 0.0 else 0.0
        else:
            w = 1.0 / np.sqrt(best_d[t] * n_features)
        num += w * fit_values[best_i[t], c]
        den += w
    return num / den


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _keys(g, ysq, n_miss_fit, F0sqT, FPT, miss, j0, d, key, cnt):  # pragma: no cover
    """Ranking keys of one receiver against a tile of donors (see :func:`_knn_impute`):
    mean squared difference over common coordinates, -1 where there is none. Kept out
    of the parallel loop body so that LLVM vectorises it."""
    tt = g.shape[0]
    base = d - miss.shape[0]
    for t in range(tt):
        key[t] = ysq[t] + g[t]
        cnt[t] = base - n_miss_fit[t]
    for q in range(miss.shape[0]):
        sq = F0sqT[miss[q], j0 : j0 + tt]
        p = FPT[miss[q], j0 : j0 + tt]
        for t in range(tt):
            key[t] -= sq[t]
            cnt[t] += 1.0 - p[t]
    for t in range(tt):
        c = cnt[t]
        v = max(key[t], 0.0) / max(c, 1.0)
        key[t] = v if c > 0.5 else -1.0


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _knn_impute_part(part, n_parts, receivers, donors, settings, out):  # pragma: no cover
    """:func:`knn_impute` for one part's blocks of receivers."""
    A, miss_idx, miss_ptr, impute_mask = receivers
    B, ysq, F0sqT, FPT, n_miss_fit, fit_values, col_mean = donors
    k, distance_weights, n_features_total, block, tile = settings
    n_q = A.shape[0]
    n_f = B.shape[0]
    d = FPT.shape[0]
    key = np.empty(tile)
    cnt = np.empty(tile)
    lo, hi = share(part, n_parts, (n_q + block - 1) // block)
    for b in range(lo, hi):
        r0 = b * block
        r1 = min(n_q, r0 + block)
        R = r1 - r0
        best_d = np.empty((R, d, k))
        best_i = np.empty((R, d, k), dtype=np.int64)
        kept = np.zeros((R, d), dtype=np.int64)
        for j0 in range(0, n_f, tile):
            j1 = min(n_f, j0 + tile)
            tt = j1 - j0
            G = np.dot(A[r0:r1], B[j0:j1].T)
            for rr in range(R):
                r = r0 + rr
                m0 = miss_ptr[r]
                m1 = miss_ptr[r + 1]
                todo = False
                for c in range(d):
                    if impute_mask[r, c]:
                        todo = True
                if not todo:
                    continue
                _keys(
                    G[rr],
                    ysq[j0:j1],
                    n_miss_fit[j0:j1],
                    F0sqT,
                    FPT,
                    miss_idx[m0:m1],
                    j0,
                    d,
                    key,
                    cnt,
                )
                for c in range(d):
                    if impute_mask[r, c]:
                        kept[rr, c] = _insert_topk(
                            key,
                            FPT[c, j0:j1],
                            j0,
                            tt,
                            best_d[rr, c],
                            best_i[rr, c],
                            kept[rr, c],
                            k,
                        )
        for rr in range(R):
            r = r0 + rr
            for c in range(d):
                if impute_mask[r, c]:
                    v = _average(
                        best_d[rr, c],
                        best_i[rr, c],
                        kept[rr, c],
                        fit_values,
                        c,
                        distance_weights,
                        n_features_total,
                    )
                    out[r, c] = col_mean[c] if np.isnan(v) else v


def knn_impute(receivers, donors, settings, out):
    """Impute ``out[r, c]`` for every ``impute_mask[r, c]`` (receivers r, columns c).

    ``receivers`` = (A, miss_idx, miss_ptr, impute_mask), ``donors`` = (B, ysq, F0sqT,
    FPT, n_miss_fit, fit_values, col_mean), ``settings`` = (n_neighbors,
    distance_weights, n_features_total, block, tile).

    Squared nan-Euclidean distances from receiver q (NaN -> 0: ``q0``; missing set
    ``M_q``) to fitted row y (``y0``, missing set ``M_y``), over common coordinates:
    ``S = |y0|^2 - 2 q0.y0 + (q0^2).P_y - sum_{f in M_q} y0_f^2`` and
    ``n_common = d - |M_q| - |M_y| + sum_{f in M_q} [f in M_y]``. The dot-product terms
    come from BLAS on (block of receivers) x (tile of donors) with ``A = [q0, q0^2]``
    and ``B = [-2 y0, P_y]``, so each tile stays in cache; the missing-set terms are
    short loops over the receiver's own missing columns (``miss_idx[miss_ptr[r]:
    miss_ptr[r + 1]]``). Each (receiver, column) keeps a running top-k across donor
    tiles. Distance = sqrt(n_features / n_common * S); an undefined distance
    (n_common = 0) never donates.
    """
    block = settings[3]
    n_blocks = (receivers[0].shape[0] + block - 1) // block
    run_parts(_knn_impute_part, parts_for(n_blocks), receivers, donors, settings, out)
