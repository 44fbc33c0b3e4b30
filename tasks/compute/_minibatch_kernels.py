"""Numba kernels for mini-batch k-means (private: inputs are assumed valid and C-contiguous).

scikit-learn draws each batch with ``RandomState.choice(n, b, p=w / w.sum())``, i.e. numpy's
``cdf = p.cumsum(); cdf /= cdf[-1]; idx = cdf.searchsorted(random_sample(b), 'right')``,
which rebuilds the O(n) cumulative sum at every step. Here the cdf is built once, with
the same operations in the same order (bit-identical boundaries), and each batch is one
``random_sample(b)`` mapped through it by a local search: the same random stream picks
the same rows at O(b log) cost per step.

No ``fastmath`` in this module (reassociation or reciprocal division would change the
rounding that these kernels reproduce), except in :func:`_batch_labels`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tasks.compute._kmeans_kernels import _FASTMATH


@njit(cache=True, nogil=True)
def _sampling_cdf(sample_weight, total):  # pragma: no cover
    """numpy's ``choice`` cdf for ``p = sample_weight / total`` (``total``: numpy's sum of
    the weights, in their dtype): ``p`` rounded in the weights' dtype then widened to
    float64, sequential float64 cumulative sum (as ``np.cumsum``), divided by its last
    element."""
    n = sample_weight.shape[0]
    cdf = np.empty(n)
    acc = 0.0
    for i in range(n):
        # weight dtype / weight dtype: rounded like numpy's ``sample_weight / total``
        acc += np.float64(sample_weight[i] / total)
        cdf[i] = acc
    last = cdf[n - 1]
    for i in range(n):
        cdf[i] = cdf[i] / last
    return cdf


@njit(cache=True, nogil=True, inline="always")
def _cdf_at(cdf, p, last, i):  # pragma: no cover
    """``cdf[i]``; with an empty ``cdf``, the cdf of ``n`` equal probabilities ``p``
    computed in O(1) - exactly numpy's when every partial sum ``(i + 1) * p`` is a float64
    (see :func:`_exact_equal_step`): then ``np.cumsum`` never rounds and its last element
    ``last`` is ``n * p``."""
    if cdf.shape[0] > 0:
        return cdf[i]
    return ((i + 1) * p) / last


@njit(cache=True, nogil=True)
def _searchsorted_right(cdf, p, n, u, out):  # pragma: no cover
    """``out[q] = np.searchsorted(cdf, u[q], side='right')`` (first i with cdf[i] > u[q]),
    ``cdf`` of length ``n`` given as an array or (empty array) by the equal step ``p``.

    ``cdf`` is non-decreasing and ends at 1, ``u`` in [0, 1). The search starts at
    ``int(u * n)`` - the answer itself, give or take a few rows, when the weights are
    even - and gallops outwards (1, 2, 4, ... rows) to bracket the answer, then bisects
    the bracket: O(log distance), so skewed weights cost O(log n), never more.
    """
    last = n * p
    for q in range(u.shape[0]):
        x = u[q]
        g = int(x * n)
        if g < 0:
            g = 0
        elif g > n - 1:
            g = n - 1
        # bracket (lo, hi]: cdf[lo] <= x (lo == -1: none), cdf[hi] > x (hi == n: none)
        if _cdf_at(cdf, p, last, g) > x:
            hi = g
            lo = g - 1
            step = 1
            while lo >= 0 and _cdf_at(cdf, p, last, lo) > x:
                hi = lo
                step *= 2
                lo = hi - step
            if lo < -1:
                lo = -1
        else:
            lo = g
            hi = g + 1
            step = 1
            while hi < n and _cdf_at(cdf, p, last, hi) <= x:
                lo = hi
                step *= 2
                hi = lo + step
            if hi > n:
                hi = n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _cdf_at(cdf, p, last, mid) > x:
                hi = mid
            else:
                lo = mid
        out[q] = hi


def _exact_equal_step(p: float, n: int) -> bool:
    """Whether numpy's float64 ``cumsum`` of ``n`` copies of ``p`` is exact: true when
    ``n`` times the odd integer significand of ``p`` fits in 53 bits (every partial sum
    ``(i + 1) * p`` is then a float64). Holds for ``p`` rounded from float32 (24 bits)
    whenever ``n < 2**29``."""
    if not (p > 0 and np.isfinite(p)):
        return False
    mant, _ = np.frexp(p)
    m = int(mant * 2.0**53)
    while m % 2 == 0:
        m //= 2
    return m * n < 2**53


# Labels only (no replay at stake): reassociation lets the dot products vectorise.
@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _batch_labels(Xb, centers, labels_buf, count):  # pragma: no cover
    """Nearest centre of each batch row (``Xb``: the gathered rows), the rows per centre
    added to ``count``; returns the batch inertia (sum of ||x - c||^2, float64).
    Dot products go through BLAS (one small gemm, X's dtype, as scikit-learn's); the
    distances of the chosen centres are recomputed exactly in float64."""
    b, d = Xb.shape
    K = centers.shape[0]
    hc = np.empty(K, dtype=Xb.dtype)
    for c in range(K):
        s = 0.0
        for f in range(d):
            v = np.float64(centers[c, f])
            s += v * v
        hc[c] = 0.5 * s
    G = np.dot(Xb, np.ascontiguousarray(centers.T))
    inertia = 0.0
    for r in range(b):
        best = hc[0] - G[r, 0]
        bi = 0
        for c in range(1, K):
            v = hc[c] - G[r, c]
            if v < best:
                best = v
                bi = c
        labels_buf[r] = bi
        count[bi] += 1
        dist = 0.0
        for f in range(d):
            diff = np.float64(Xb[r, f]) - np.float64(centers[bi, f])
            dist += diff * diff
        inertia += dist
    return inertia


@njit(cache=True, nogil=True)
def _minibatch_step(X, idx, centers, weight_sums, labels_buf, Xb):  # pragma: no cover
    """One mini-batch k-means update on rows ``idx`` (unit weights), in place; ``Xb``
    (len(idx), n_features), X's dtype: scratch for the gathered rows.

    scikit-learn's ``_minibatch_update_dense`` in its arithmetic: for each centre that
    received rows, ``(centre * seen + sum of its rows, in batch order) * (1 / (seen +
    count))``, every operation rounded in X's dtype (``centers`` and ``weight_sums`` have
    X's dtype), so that the centres follow scikit-learn's to the last bit whenever the
    labels agree. Returns the batch inertia (sum of ||x - c||^2 before the update,
    float64).
    """
    b = idx.shape[0]
    K, d = centers.shape
    for r in range(b):
        Xb[r] = X[idx[r]]
    count = np.zeros(K, dtype=centers.dtype)
    inertia = _batch_labels(Xb, centers, labels_buf, count)
    acc = np.empty_like(centers)
    for c in range(K):
        if count[c] > 0:
            for f in range(d):
                acc[c, f] = centers[c, f] * weight_sums[c]
    for r in range(b):
        c = labels_buf[r]
        for f in range(d):
            acc[c, f] += Xb[r, f]
    one = np.ones(1, dtype=centers.dtype)
    for c in range(K):
        if count[c] > 0:
            weight_sums[c] += count[c]
            alpha = one[0] / weight_sums[c]
            for f in range(d):
                centers[c, f] = acc[c, f] * alpha
    return inertia


@njit(cache=True, nogil=True)
def _label_counts(labels, k):  # pragma: no cover
    """Rows per label (``np.bincount`` without its int32 -> int64 copy of the labels)."""
    out = np.zeros(k, dtype=np.int64)
    for i in range(labels.shape[0]):
        out[labels[i]] += 1
    return out
