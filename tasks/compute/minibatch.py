"""Mini-batch k-means on numba kernels, scikit-learn compatible.

:class:`MiniBatchKMeans` replays :class:`sklearn.cluster.MiniBatchKMeans`' random stream
(scikit-learn 1.9): the same ``random_state`` picks the same validation set, init
subset, k-means++ seeds, batches and reassignments, so both take the same steps and
stop at the same step, up to floating-point rounding. What differs is the cost of a
step: scikit-learn's ``RandomState.choice(n, batch, p=w / w.sum())`` rebuilds an O(n)
cumulative sum every step; here the cdf is built once and each batch is mapped through
it by a local search (:mod:`tasks.compute._minibatch_kernels`).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight

from tasks.compute._kmeans_kernels import n_chunks_for, row_sq_norms
from tasks.compute._minibatch_kernels import (
    _exact_equal_step,
    _label_counts,
    _minibatch_step,
    _sampling_cdf,
    _searchsorted_right,
    labels_inertia_counts,
)
from tasks.compute._threads import blas_single_thread, kernel_threads
from tasks.compute.kmeans import (
    _BaseKMeans,
    _check_init_params,
    _kmeanspp_lockstep,
    _labels_inertia,
    _n_local_trials,
    _Run,
    _set_lloyd_params,
    _tolerance,
)

__all__ = ["MiniBatchKMeans"]

#: Most centres for the SIMD labels pass (:func:`labels_inertia_counts`). Measured against
#: the BLAS pass, 1M x 20 float32 / 300k x 20 float64, under load (min of 5): k = 8 13 vs
#: 37 ms, k = 64 40 vs 86 ms (float64 44 vs 47 ms), k = 100 about even (float64 63 vs
#: 61 ms): its cost grows with every group of eight centres, BLAS's less.
_SIMD_MAX_K = 64


def _check_int(value, name, low, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {low}{extra}, got {value!r}.")


class MiniBatchKMeans(_BaseKMeans):
    """Mini-batch k-means on numba kernels; drop-in for :class:`sklearn.cluster.MiniBatchKMeans`.

    scikit-learn's algorithm and random stream: batches of ``batch_size`` rows drawn
    with replacement, with probability proportional to ``sample_weight`` (the rows then
    count with unit weight), centres moved by the per-centre learning rate
    ``1 / rows seen``. Stops after ``max_iter`` epochs, when the exponentially weighted
    batch inertia has not improved for ``max_no_improvement`` consecutive batches, or
    (``tol > 0``) when the centre shift is small. Centres seen too rarely move to
    random batch rows (``reassignment_ratio``). The initialisation (k-means++ by
    default) runs on ``init_size`` random rows; with ``n_init > 1`` the best one on a
    random validation subset is kept. ``labels_`` / ``inertia_`` are computed on the
    full data at the end (one parallel pass). ``n_steps_``: batches processed;
    ``n_iter_``: epochs started.
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        max_iter=100,
        batch_size=1024,
        tol=0.0,
        max_no_improvement=10,
        init_size=None,
        n_init="auto",
        reassignment_ratio=0.01,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        _set_lloyd_params(self, init, n_init, max_iter, tol, random_state)
        self.batch_size = batch_size
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.reassignment_ratio = reassignment_ratio

    def _check_params(self):
        _check_init_params(self.n_clusters, self.init, self.n_init, self.max_iter, self.tol)
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.max_no_improvement, "max_no_improvement", 0, allow_none=True)
        _check_int(self.init_size, "init_size", 1, allow_none=True)
        r = self.reassignment_ratio
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not r >= 0:
            raise ValueError(f"reassignment_ratio must be a number >= 0, got {r!r}.")

    def _resolve_sizes(self, n):
        """scikit-learn's ``_batch_size``, ``_init_size`` and ``_n_init`` rules."""
        k = self.n_clusters
        batch = min(self.batch_size, n)
        init_size = self.init_size
        if init_size is None:
            init_size = 3 * batch
            if init_size < k:
                init_size = 3 * k
        elif init_size < k:
            warnings.warn(
                f"init_size={init_size} should be larger than n_clusters={k}. "
                "Setting it to min(3*n_clusters, n_samples)",
                RuntimeWarning,
                stacklevel=3,
            )
            init_size = 3 * k
        init_size = min(init_size, n)
        if isinstance(self.init, str):
            if self.n_init == "auto":
                n_init = 1 if self.init == "k-means++" else 3
            else:
                n_init = int(self.n_init)
        else:
            n_init = 1 if self.n_init == "auto" else int(self.n_init)
            if n_init != 1:
                warnings.warn(
                    "Explicit initial center position passed: performing only one init "
                    f"in {type(self).__name__} instead of n_init={n_init}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                n_init = 1
        return batch, init_size, n_init

    def _init_centers(self, X, sw, init_size, rs):
        """scikit-learn's ``_init_centroids``: a random subset of ``init_size`` rows
        (drawn only when smaller than the data), then k-means++ / random rows / the
        given array."""
        n, d = X.shape
        k = self.n_clusters
        if init_size < n:
            sub = rs.randint(0, n, init_size)
            X, sw = X.take(sub, axis=0), np.ascontiguousarray(sw[sub])
        else:
            sw = np.ascontiguousarray(sw)  # (unit weights: a broadcast view until here)
        if not np.isfinite(X).all():  # k-means++ indexes rows by its potentials: finite only
            self._check_finite(X)
        if isinstance(self.init, str) and self.init == "k-means++":
            r = _Run(k)
            # k-means++'s draws: one for the first centre, n_local_trials per next one
            r.draws = rs.random_sample(1 + (k - 1) * _n_local_trials(k))
            with kernel_threads(X.shape[0] * d * k):
                _kmeanspp_lockstep(X, row_sq_norms(X), sw, [r], n_chunks_for(X.shape[0]))
            return r.centers
        if isinstance(self.init, str):  # "random"
            seeds = rs.choice(X.shape[0], size=k, replace=False, p=sw / sw.sum())
            return X[seeds]
        return np.array(self.init, dtype=X.dtype, order="C")

    def fit(self, X, y=None, sample_weight=None):
        """Compute the centroids of ``X`` by mini-batch k-means."""
        self._check_params()
        # X's NaN/inf check is deferred to the final full pass (it reads every row anyway;
        # a separate check would be one more pass over X, a third of a default fit's time
        # on large data): the rows that steer the fit before it are checked where they are
        # drawn (init and validation subsets), batch rows cannot misindex anything, and a
        # non-finite row makes the final inertia non-finite, which raises the same error.
        # without weights sw is a broadcast view of one 1: no O(n) array of ones, and their
        # sum (numpy's, exact below 2**24 rows: every partial sum is an integer) is n
        unit = sample_weight is None
        X, sw = self._validate_fit_input(X, sample_weight, ensure_all_finite=False, unit_view=True)
        n = X.shape[0]
        k = self.n_clusters
        total = X.dtype.type(n) if unit and n < 2**24 else np.sum(np.ascontiguousarray(sw))
        if sample_weight is not None and not (np.all(sw >= 0) and total > 0):
            raise ValueError("sample_weight must be >= 0 with a positive sum.")
        batch, init_size, n_init = self._resolve_sizes(n)
        rs = check_random_state(self.random_state)

        # validation subset (drawn even with one init, to keep the random stream)
        val_idx = rs.randint(0, n, init_size)
        best_centers, best_inertia = None, np.inf
        for _ in range(n_init):
            centers = self._init_centers(X, sw, init_size, rs)
            if n_init == 1:
                best_centers = centers
                break
            X_val = X.take(val_idx, axis=0)
            inertia = _labels_inertia(X_val, np.ascontiguousarray(sw[val_idx]), centers)[1]
            if not np.isfinite(inertia):  # a non-finite row would never compare as best
                self._check_finite(X_val)
            if inertia < best_inertia:
                best_centers, best_inertia = centers, inertia
        centers = np.array(best_centers, dtype=X.dtype, order="C")

        # seen weight per centre, X's dtype like scikit-learn's (it sets the rounding of
        # the learning rate and of the reassignment threshold)
        weight_sums = np.zeros(k, dtype=X.dtype)
        # the batches' cdf: scikit-learn draws from p = sw / sum(sw) (in sw's dtype)
        p = float((sw[:1] / total)[0])
        if sample_weight is not None or not _exact_equal_step(p, n):
            cdf = _sampling_cdf(np.ascontiguousarray(sw), total)
        else:
            cdf = np.empty(0)  # equal weights: the exact cdf in closed form, no O(n) pass
        idx = np.empty(batch, dtype=np.int64)
        labels_buf = np.empty(batch, dtype=np.int64)
        Xb = np.empty((batch, X.shape[1]), dtype=X.dtype)
        n_steps = (self.max_iter * n) // batch
        alpha = min(1.0, batch * 2.0 / (n + 1))
        tol_abs = _tolerance(X, self.tol)
        ratio = self.reassignment_ratio
        ewa, ewa_min, no_improve = None, None, 0
        since_reassign = 0
        step = 0
        # BLAS on one thread for the small per-step gemm (as scikit-learn)
        with blas_single_thread():
            for step in range(n_steps):
                _searchsorted_right(cdf, p, n, rs.random_sample(batch), idx)
                # scikit-learn's _random_reassign(): decided before the step, on the counts
                # before the update
                since_reassign += batch
                reassign = False
                if (weight_sums == 0).any() or since_reassign >= 10 * k:
                    since_reassign = 0
                    reassign = True
                old = centers.copy() if tol_abs > 0 else None
                inertia = _minibatch_step(X, idx, centers, weight_sums, labels_buf, Xb) / batch
                if reassign and ratio > 0:
                    self._reassign(X, idx, centers, weight_sums, rs)
                if step == 0:
                    continue  # the first batch inertia is the init's: not used (as scikit-learn)
                ewa = inertia if ewa is None else ewa * (1 - alpha) + inertia * alpha
                if tol_abs > 0 and np.sum((centers - old) ** 2) <= tol_abs:
                    break
                if ewa_min is None or ewa < ewa_min:
                    ewa_min, no_improve = ewa, 0
                else:
                    no_improve += 1
                if self.max_no_improvement is not None and no_improve >= self.max_no_improvement:
                    break
        labels, inertia, counts = self._labels_inertia(X, sw, unit, centers)
        self.cluster_centers_ = centers
        self.n_steps_ = step + 1
        self.n_iter_ = int(np.ceil((step + 1) * batch / n))
        self.labels_, self.inertia_ = labels, inertia
        if np.count_nonzero(counts) < k:  # the base class's check sorts every label
            self._warn_distinct()
        return self

    def _labels_inertia(self, X, sw, unit_weights, centers):
        """Labels, inertia and rows per centre in one pass over X, which also checks X
        for NaN/inf: a non-finite inertia raises scikit-learn's error if X holds one, else
        (a float32 distance overflowed) is recomputed with float64 distances. Beyond
        ``_SIMD_MAX_K`` centres the BLAS pass (:func:`_labels_inertia`) is as fast."""
        k = centers.shape[0]
        if k <= _SIMD_MAX_K:
            labels, inertia, counts = labels_inertia_counts(
                X, np.empty(0, dtype=X.dtype) if unit_weights else sw, centers
            )
            if np.isfinite(inertia):
                return labels, inertia, counts
            self._check_finite(X)  # raises on NaN/inf in X; else a float32 overflow
        labels, inertia = _labels_inertia(X, np.ascontiguousarray(sw), centers)
        if not np.isfinite(inertia):  # NaN/inf in X (raises) or a float64 overflow (kept)
            self._check_finite(X)
        return labels, inertia, _label_counts(labels, k)

    def predict(self, X, sample_weight=None):
        """Index of the nearest centroid for each row of ``X`` (the kernel of ``labels_``)."""
        X = self._check_test_data(X)
        sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        centers = np.ascontiguousarray(self.cluster_centers_, dtype=X.dtype)
        return self._labels_inertia(X, np.ascontiguousarray(sw), True, centers)[0]

    def _reassign(self, X, idx, centers, weight_sums, rs):
        """scikit-learn's rule (after the update): centres whose seen weight is below
        ``reassignment_ratio * max`` move to random rows of the batch (at most half the
        batch, the least seen first) and get the smallest remaining seen weight."""
        b = idx.shape[0]
        to_reassign = weight_sums < self.reassignment_ratio * weight_sums.max()
        if to_reassign.sum() > 0.5 * b:
            to_reassign[np.argsort(weight_sums)[int(0.5 * b) :]] = False
        n_re = int(to_reassign.sum())
        if n_re == 0:
            return
        if n_re == centers.shape[0]:
            return  # reassignment_ratio > 1: scikit-learn fails here (min of nothing)
        new = rs.choice(b, replace=False, size=n_re)
        centers[to_reassign] = X[idx[new]]
        weight_sums[to_reassign] = np.min(weight_sums[~to_reassign])
