"""Numba kernels for column statistics (private: inputs are assumed valid, C-contiguous)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _column_moments(X):  # pragma: no cover
    """Per column of ``X`` (n, d): count, mean, sum of squared and cubed deviations from the
    mean, min and max of the finite values; counts of NaN, +inf and -inf. Two passes over the
    rows (row-major, so both read ``X`` in memory order)."""
    n, d = X.shape
    count = np.zeros(d)
    total = np.zeros(d)
    low = np.full(d, np.inf)
    high = np.full(d, -np.inf)
    n_nan = np.zeros(d, dtype=np.int64)
    n_posinf = np.zeros(d, dtype=np.int64)
    n_neginf = np.zeros(d, dtype=np.int64)
    for i in range(n):
        for j in range(d):
            v = X[i, j]
            if v != v:
                n_nan[j] += 1
            elif v == np.inf:
                n_posinf[j] += 1
            elif v == -np.inf:
                n_neginf[j] += 1
            else:
                count[j] += 1.0
                total[j] += v
                if v < low[j]:
                    low[j] = v
                if v > high[j]:
                    high[j] = v
    mean = np.zeros(d)
    for j in range(d):
        if count[j] > 0:
            mean[j] = total[j] / count[j]
    m2 = np.zeros(d)
    m3 = np.zeros(d)
    for i in range(n):
        for j in range(d):
            v = X[i, j]
            if v == v and v != np.inf and v != -np.inf:
                c = v - mean[j]
                c2 = c * c
                m2[j] += c2
                m3[j] += c2 * c
    return count, mean, m2, m3, low, high, n_nan, n_posinf, n_neginf
