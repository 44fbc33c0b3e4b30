"""Numba kernels for KNN imputation (private: inputs are assumed valid).

Distances are scikit-learn's ``nan_euclidean``: over the coordinates present in both
rows, ``sqrt(n_features / n_present * sum((x - y)^2))``; rows that share no present
coordinate are at an undefined (NaN) distance and never donate. Each receiver row is
handled by one thread with a private distance buffer of length n_fit (memory is
O(n_threads * n_fit), never receivers x donors).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reassociation/contraction only: no 'nnan'/'ninf', so inf/NaN checks stay valid.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _knn_impute(
    Q0,
    QP,
    impute_mask,
    F0,
    FP,
    fit_values,
    col_mean,
    n_neighbors,
    distance_weights,
    n_features_total,
    out,
):  # pragma: no cover
    """Impute ``out[r, c]`` for every ``impute_mask[r, c]``.

    Q0/QP: receivers with NaN -> 0 and their presence (1.0 / 0.0), (n_q, d).
    F0/FP: the fitted rows, same encoding, (n_f, d). ``fit_values``: fitted rows with
    NaN kept (donor values). ``col_mean``: per-column mean of the observed fit values
    (fallback when a receiver has no donor at a defined distance).
    Neighbours are the ``n_neighbors`` potential donors (column observed, defined
    distance) with smallest distance, ties broken by lower fit-row index.
    """
    n_q, d = Q0.shape
    n_f = F0.shape[0]
    k_max = n_neighbors
    for r in prange(n_q):
        # any column to impute?
        todo = 0
        for c in range(d):
            if impute_mask[r, c]:
                todo += 1
        if todo == 0:
            continue
        dist = np.empty(n_f)
        xm = Q0[r]
        om = QP[r]
        for j in range(n_f):
            s = 0.0
            cnt = 0.0
            for f in range(d):
                diff = xm[f] - F0[j, f]
                w = om[f] * FP[j, f]
                s += w * diff * diff
                cnt += w
            if cnt > 0.0:
                dist[j] = np.sqrt(s / cnt * n_features_total)
            else:
                dist[j] = np.inf  # undefined distance: never a donor
        best_d = np.empty(k_max)
        best_i = np.empty(k_max, dtype=np.int64)
        for c in range(d):
            if not impute_mask[r, c]:
                continue
            m = 0  # number of kept neighbours
            for j in range(n_f):
                if FP[j, c] == 0.0:
                    continue
                dj = dist[j]
                if dj == np.inf:
                    continue
                if m == k_max and dj >= best_d[m - 1]:
                    continue
                # insertion (stable: strictly smaller moves ahead)
                pos = m if m < k_max else k_max - 1
                while pos > 0 and best_d[pos - 1] > dj:
                    if pos < k_max:
                        best_d[pos] = best_d[pos - 1]
                        best_i[pos] = best_i[pos - 1]
                    pos -= 1
                best_d[pos] = dj
                best_i[pos] = j
                if m < k_max:
                    m += 1
            if m == 0:
                out[r, c] = col_mean[c]
                continue
            num = 0.0
            den = 0.0
            if distance_weights:
                n_zero = 0
                for t in range(m):
                    if best_d[t] == 0.0:
                        n_zero += 1
                for t in range(m):
                    # donors at distance 0, if any, take all the weight (sklearn's rule)
                    w = (1.0 if best_d[t] == 0.0 else 0.0) if n_zero > 0 else 1.0 / best_d[t]
                    num += w * fit_values[best_i[t], c]
                    den += w
            else:
                for t in range(m):
                    num += fit_values[best_i[t], c]
                    den += 1.0
            out[r, c] = num / den
