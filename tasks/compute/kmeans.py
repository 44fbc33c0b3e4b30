"""k-means estimators on numba kernels, scikit-learn compatible.

* :class:`KMeans` - Lloyd's algorithm with assignment and centroid update fused into one
  parallel pass over the data; scikit-learn's k-means++ (same random draws, so the same
  ``random_state`` gives the same seeds as :class:`sklearn.cluster.KMeans` up to
  floating-point rounding), scikit-learn's tolerance and empty-cluster rules. After the
  first pass, Hamerly's distance bounds skip the rows that cannot have changed cluster
  and the centroid sums are updated only by the rows that moved: the same iterations and
  answers as plain Lloyd (tests compare the trajectory with scikit-learn's
  ``algorithm="lloyd"``), at a fraction of the work once the centroids settle.
* :class:`KMeansSweep` - fits many ``k`` (and all their ``n_init`` runs) at once: every
  Lloyd iteration is one pass over the data for the whole sweep (all centroids stacked),
  k-means++ seeding of all runs proceeds in lockstep (one pass per seeding step), and
  converged runs drop out of the pass.

:class:`~tasks.compute.minibatch.MiniBatchKMeans` lives in :mod:`tasks.compute.minibatch`.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import euclidean_distances
from sklearn.utils import check_random_state
from sklearn.utils.validation import (
    _assert_all_finite,
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from tasks.compute._hamerly_kernels import _bound_stats, bounded_pass
from tasks.compute._kmeans_kernels import (
    _assign,
    _lloyd_accumulate,
    _pp_candidate_pots,
    _pp_search,
    _pp_update_closest,
    center,
    n_chunks_for,
    row_sq_norms,
)
from tasks.compute._threads import kernel_threads
from tasks.compute._validation import numeric_2d

__all__ = [
    "BoundedLloyd",
    "KMeans",
    "KMeansSweep",
    "absolute_tolerance",
    "assign_partial",
    "lloyd_partial_sums",
    "lloyd_pass",
    "lloyd_update",
    "relocate_empty_clusters",
    "stack_centers",
]


# --------------------------------------------------------------------------- helpers
def _tolerance(X, tol):
    if tol == 0:
        return 0.0
    return absolute_tolerance(np.var(X, axis=0), tol)


def _n_local_trials(k: int) -> int:
    return 2 + int(np.log(k))


def _check_init_params(n_clusters, init, n_init, max_iter, tol, name="n_clusters"):
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= 1, got {n_clusters!r}.")
    if n_clusters < 1:
        raise ValueError(f"{name} must be >= 1, got {n_clusters}.")
    if isinstance(init, str):
        if init not in ("k-means++", "random"):
            raise ValueError(f"init must be 'k-means++', 'random' or an array, got {init!r}.")
    elif callable(init):
        raise ValueError("callable init is not supported; pass 'k-means++', 'random' or an array.")
    if not (n_init == "auto" or (isinstance(n_init, numbers.Integral) and n_init >= 1)):
        raise ValueError(f"n_init must be 'auto' or an integer >= 1, got {n_init!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
    if not isinstance(tol, numbers.Real) or tol < 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}.")


def _resolve_n_init(n_init, init) -> int:
    if isinstance(init, np.ndarray) or not isinstance(init, str):
        return 1
    if n_init == "auto":
        return 1 if init == "k-means++" else 10
    return int(n_init)


class _Run:
    """One k-means run (one k, one init) inside a lockstep batch."""

    __slots__ = ("centers", "done", "draws", "init_ids", "k", "n_iter")

    def __init__(self, k):
        self.k = k
        self.centers = None
        self.draws = None
        self.n_iter = 0
        self.done = False  # converged, or stopped at max_iter


def _kmeanspp_lockstep(X, x_sq, sample_weight, runs, n_chunks):
    """k-means++ (scikit-learn's greedy variant) for several runs in lockstep.

    Each run has pre-drawn uniforms (``run.draws``): the number of random draws of
    scikit-learn's k-means++ does not depend on the data, so drawing them up front
    keeps the random stream identical while one pass over X serves every run.
    The first centre replays ``RandomState.choice(n, p=w / w.sum())``; each next centre
    is the best of ``2 + log(k)`` candidates sampled proportionally to the squared
    distance to the nearest chosen centre (``searchsorted`` on its cumulative sum).
    """
    n = X.shape[0]
    jobs = [r for r in runs if r.draws is not None]
    if not jobs:
        return
    n_jobs = len(jobs)
    p = np.asarray(sample_weight / sample_weight.sum(), dtype=np.float64)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    first = np.array(
        [int(np.searchsorted(cdf, r.draws[0], side="right")) for r in jobs], dtype=np.int64
    )
    # X's dtype, like scikit-learn's closest_dist_sq (halves the traffic for float32)
    closest = np.full((n_jobs, n), np.inf, dtype=X.dtype)
    chunk_sums = _pp_update_closest(X, x_sq, sample_weight, closest, first, n_chunks)
    pots = chunk_sums.sum(axis=1)
    ids = [[int(f)] for f in first]
    # each job's centre chosen in the last step: its update of ``closest`` is done by the
    # next step's candidate pass (whose chunk sums already give the updated potential)
    pending = np.full(n_jobs, -1, dtype=np.int64)
    max_k = max(r.k for r in jobs)
    for step in range(1, max_k):
        targets, owners, spans = [], [], []
        for j, r in enumerate(jobs):
            if r.k <= step:
                spans.append(None)
                pending[j] = -1  # no further step needs its distances
                continue
            T = _n_local_trials(r.k)
            spans.append((len(targets), len(targets) + T))
            targets.extend(r.draws[1 + (step - 1) * T : 1 + step * T] * pots[j])
            owners.extend([j] * T)
        owners = np.asarray(owners, dtype=np.int64)
        data = (X, sample_weight, x_sq)
        cand = _pp_search(data, closest, chunk_sums, owners, np.asarray(targets), pending, n_chunks)
        chunk_pots = _pp_candidate_pots(
            X, x_sq, sample_weight, closest, cand, owners, pending, n_chunks
        )
        cand_pots = np.zeros(cand.shape[0])
        for ch in range(n_chunks):  # in chunk order, whatever the thread count
            cand_pots += chunk_pots[ch]
        for j in range(n_jobs):
            if spans[j] is None:
                continue
            a, b = spans[j]
            best = a + int(np.argmin(cand_pots[a:b]))
            pending[j] = cand[best]
            chunk_sums[j] = chunk_pots[:, best]
            pots[j] = cand_pots[best]
            ids[j].append(int(cand[best]))
    for j, r in enumerate(jobs):
        r.init_ids = np.asarray(ids[j])
        r.centers = X[r.init_ids].copy()


def _half_sq_norms(C):
    """|c|^2 / 2 of every row of ``C``, computed in float64, in C's dtype."""
    C64 = C.astype(np.float64)
    return (0.5 * np.einsum("ij,ij->i", C64, C64)).astype(C.dtype)


def _stack(runs):
    """The runs' centroids stacked, and each run's ``offsets`` in the stack."""
    C = np.concatenate([r.centers for r in runs], axis=0)
    offsets = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum([r.k for r in runs], out=offsets[1:])
    return C, offsets


def _relocate_empty(X, sample_weight, old_centers, S, W):
    """scikit-learn's empty-cluster rule: move each empty centre to one of the points
    farthest from their centre (sums ``S`` / weights ``W`` are updated in place)."""
    empty = np.flatnonzero(W == 0)
    n_empty = empty.shape[0]
    labels, _, dist = _nearest(X, sample_weight, old_centers, None, True)
    labels, dist = labels[0], dist[0]
    far = np.argpartition(dist, -n_empty)[: -n_empty - 1 : -1]
    relocate_empty_clusters(S, W, X[far], sample_weight[far], labels[far])


def _nearest(X, sample_weight, C, offsets, want_dist):
    """:func:`_assign` (labels, inertia, squared distances) of the stacked centroids
    ``C`` (X's dtype; ``offsets`` None: one clustering) on the kernel threads."""
    n, d = X.shape
    if offsets is None:
        offsets = np.array([0, C.shape[0]], dtype=np.int64)
    with kernel_threads(n * d * C.shape[0]):
        return _assign(X, sample_weight, C, _half_sq_norms(C), offsets, n_chunks_for(n), want_dist)


#: Memory for the per-row bounds and labels of the bounded Lloyd passes (12 bytes per row
#: and run); runs beyond it are fitted in further groups, each with its own passes.
_BOUNDS_BYTES_MAX = 1 << 30
#: A clustering whose bounds left more than this share of rows unsettled in the last pass
#: gets its next pass dense (every distance, one BLAS call for all such clusterings):
#: gathering most rows and calling BLAS per clustering costs more than that.
_DENSE_SHARE = 0.5
#: Fewer rows than this: plain Lloyd passes (measured: at 2,000 rows the bounded passes'
#: per-pass overhead made a 110-run sweep 1.8x slower; at 50,000 they are already even).
_BOUNDED_MIN_ROWS = 50_000


def _lloyd_lockstep(X, sample_weight, runs, max_iter, tol, x_sq, passed=None):
    """Lloyd iterations for all runs; one pass over X per iteration for all of the
    still-active runs (converged runs leave the pass). Returns (labels (n_runs, n),
    inertia (n_runs,)) computed with the final centroids. ``passed(iteration)``, if given,
    is called after each pass (the runs that left it have ``done`` set).

    Above ``_BOUNDED_MIN_ROWS`` rows the first two passes compute every distance (BLAS;
    the first without bounds, the second sets them) and later passes use Hamerly's
    bounds (see :mod:`tasks.compute._hamerly_kernels`), which give the same assignments
    while skipping the rows that cannot have changed cluster.
    Below it, every pass computes every distance: on little data the bounds' bookkeeping
    costs more than the distances it saves. ``x_sq``: squared row norms of X.
    """
    n = X.shape[0]
    passed = passed or (lambda iteration: None)
    if n < _BOUNDED_MIN_ROWS:
        return _lloyd_plain(X, sample_weight, runs, max_iter, tol, passed)
    labels = np.empty((len(runs), n), dtype=np.int32)
    inertia = np.empty(len(runs))
    group = max(1, _BOUNDS_BYTES_MAX // max(1, 12 * n))
    for g0 in range(0, len(runs), group):
        g1 = min(len(runs), g0 + group)
        inertia[g0:g1] = _lloyd_bounded(
            X, sample_weight, runs[g0:g1], max_iter, tol, x_sq, labels[g0:g1], passed
        )
    return labels, inertia


def _lloyd_step(X, sample_weight, run, sums, counts, it):
    """Move ``run``'s centroids to the means of its Lloyd sums (scikit-learn's
    empty-cluster rule) as iteration ``it``. Returns the squared shift summed over the
    centroids (the convergence test) and each centroid's move (Euclidean)."""

    def relocate(S, W):
        _relocate_empty(X, sample_weight, run.centers, S, W)

    new, sq_shift = lloyd_update(run.centers, sums, counts, relocate)
    moved = new.astype(np.float64) - run.centers.astype(np.float64)
    run.centers = new
    run.n_iter = it + 1
    return sq_shift, np.sqrt(np.einsum("ij,ij->i", moved, moved))


def _stack_dense(C, half, offsets, dense, n_runs):
    """The centroids (and |c|^2 / 2) of the runs in ``dense`` stacked for one BLAS call
    per tile, and where each run's start in that stack (-1: not dense)."""
    dense_at = np.full(n_runs, -1, dtype=np.int64)
    pos = 0
    for b in dense:
        dense_at[b] = pos
        pos += offsets[b + 1] - offsets[b]
    if not len(dense):
        return np.empty((0, C.shape[1]), C.dtype), np.empty(0, half.dtype), dense_at
    C_dense = np.concatenate([C[offsets[b] : offsets[b + 1]] for b in dense])
    half_dense = np.concatenate([half[offsets[b] : offsets[b + 1]] for b in dense])
    return C_dense, half_dense, dense_at


def _lloyd_plain(X, sample_weight, runs, max_iter, tol, passed):
    """:func:`_lloyd_lockstep` with every distance in every pass (one fused pass over X
    per iteration for all the still-active runs)."""
    active = list(runs)
    for it in range(max_iter):
        if not active:
            break
        C, offsets = _stack(active)
        S, W = lloyd_pass(X, sample_weight, C, offsets)
        still = []
        for b, r in enumerate(active):
            sl = slice(offsets[b], offsets[b + 1])
            if _lloyd_step(X, sample_weight, r, S[sl], W[sl], it)[0] > tol:
                still.append(r)
            else:
                r.done = True
        active = still
        passed(it + 1)
    for r in runs:
        r.done = True
    C, offsets = _stack(runs)
    labels, inertia, _ = _nearest(X, sample_weight, C, offsets, False)
    return labels, inertia


class BoundedLloyd:
    """Lloyd passes with Hamerly's bounds for several clusterings of the same rows at once
    (see :mod:`tasks.compute._hamerly_kernels`), and their running per-centroid sums.

    ``X`` (n, d) float32/float64 C-contiguous, ``sample_weight`` (n,) in X's dtype,
    ``x_sq`` (n,) its rows' squared norms (None: computed here), ``ks``: the
    clusterings' numbers of centroids. Call :meth:`run_pass` with every clustering's
    centroids; ``S``, ``W`` and ``Q`` then hold, per centroid (stacked as ``offsets``),
    the weighted sums of its rows, their weights and their |x|^2, and ``labels``
    (n_blocks, n) each row's centroid. After a pass, give ``shift`` each centroid's move
    (Euclidean) before the next one.
    """

    def __init__(self, X, sample_weight, x_sq, ks, labels=None):
        n = X.shape[0]
        n_blocks = len(ks)
        self.data = (X, sample_weight, row_sq_norms(X) if x_sq is None else x_sq)
        self.n_chunks = n_chunks_for(n)
        self.offsets = np.zeros(n_blocks + 1, dtype=np.int64)
        np.cumsum(ks, out=self.offsets[1:])
        K = int(self.offsets[-1])
        self.labels = np.empty((n_blocks, n), dtype=np.int32) if labels is None else labels
        self.upper = np.empty((n_blocks, n), dtype=np.float32)
        self.lower = np.empty((n_blocks, n), dtype=np.float32)
        # running per-centroid sums of the rows (S), their weights (W) and |x|^2 (Q)
        self.S = np.zeros((K, X.shape[1]))
        self.W = np.zeros(K)
        self.Q = np.zeros(K)
        self.shift = np.zeros(K)
        # a clustering whose sums are (re)built from every row on its next pass: all of
        # them on the first pass
        self.full = np.ones(n_blocks, dtype=np.bool_)
        # share of rows the bound test sent to a distance computation in the last pass
        self.unsure_share = np.ones(n_blocks)

    def copy(self):
        """An independent copy of the state (passes update it in place)."""
        other = object.__new__(BoundedLloyd)
        for name, value in vars(self).items():
            setattr(other, name, value.copy() if isinstance(value, np.ndarray) else value)
        return other

    def plain_pass(self, centers):
        """A pass without bounds for every clustering: its sums ``S`` and ``W`` from
        every row, one fused BLAS pass. For a fit's first pass: bounds set there would
        be loosened by the first, largest centroid moves before any use, so the next
        pass computes every distance anyway; ``full`` stays set, so that pass rebuilds
        all the sums (``Q`` too) and sets the bounds."""
        X, sample_weight, _x_sq = self.data
        self.S[:], self.W[:] = lloyd_pass(X, sample_weight, np.concatenate(centers), self.offsets)
        self.full[:] = True

    def run_pass(self, centers, active, dense=None):
        """One pass of the clusterings ``active`` (int64 indices) with the centroids
        ``centers`` (one array per clustering, X's dtype); adds its changes to S, W and Q.

        ``dense``: the clusterings whose distances are all computed in this pass; by
        default those that need complete sums and those whose bounds left more than
        ``_DENSE_SHARE`` of the rows unsettled in their last pass."""
        X = self.data[0]
        n, offsets, full = X.shape[0], self.offsets, self.full
        C = np.concatenate(centers, axis=0)
        half = _half_sq_norms(C)
        s_half, max1, arg1, max2 = _bound_stats(C.astype(np.float64), offsets, self.shift, active)
        if dense is None:
            dense = [b for b in active if full[b] or self.unsure_share[b] > _DENSE_SHARE]
        C_dense, half_dense, dense_at = _stack_dense(C, half, offsets, dense, len(centers))
        with kernel_threads(n * X.shape[1] * C.shape[0]):
            parts = bounded_pass(
                self.data,
                (C, half, offsets),
                (self.labels, self.upper, self.lower),
                (self.shift, s_half, max1, arg1, max2),
                (active, full, C_dense, half_dense, dense_at),
                self.n_chunks,
            )
        dS, dW, dQ, unsure = (part.sum(axis=0) for part in parts)
        self.unsure_share[active] = np.where(full[active], 1.0, unsure[active] / n)
        for b in active:
            sl = slice(offsets[b], offsets[b + 1])
            if full[b]:
                self.S[sl], self.W[sl], self.Q[sl] = dS[sl], dW[sl], dQ[sl]
                full[b] = False
            else:
                self.S[sl] += dS[sl]
                self.W[sl] += dW[sl]
                self.Q[sl] += dQ[sl]


def _lloyd_bounded(X, sample_weight, runs, max_iter, tol, x_sq, labels, passed):
    """:func:`_lloyd_lockstep` for one group of runs; fills ``labels`` (n_runs, n) and
    returns the inertia per run."""
    n_runs = len(runs)
    lloyd = BoundedLloyd(X, sample_weight, x_sq, [r.k for r in runs], labels)
    offsets = lloyd.offsets
    active = np.arange(n_runs, dtype=np.int64)
    for it in range(max_iter):
        if it == 0:
            lloyd.plain_pass([r.centers for r in runs])
        else:
            lloyd.run_pass([r.centers for r in runs], active)
        still = []
        for b in active:
            r = runs[b]
            sl = slice(offsets[b], offsets[b + 1])
            Sb, Wb = lloyd.S[sl], lloyd.W[sl]
            # running sums: a cluster that lost all its rows may keep a rounding residue
            gone = Wb <= 1e-12 * max(float(Wb.sum()), 1e-300)
            if gone.any():
                Sb[gone] = 0.0
                Wb[gone] = 0.0
                lloyd.full[b] = True  # relocation moves rows between clusters: rebuild the sums
            sq_shift, lloyd.shift[sl] = _lloyd_step(X, sample_weight, r, Sb, Wb, it)
            if sq_shift > tol:
                still.append(b)
            else:
                r.done = True
        active = np.asarray(still, dtype=np.int64)
        passed(it + 1)
        if active.shape[0] == 0:
            break
    for r in runs:
        r.done = True
    # final assignment with the final centroids; the inertia from the per-centroid sums:
    # sum over rows of w |x - c|^2 = Q - 2 c.S + W |c|^2 (X is centred, so no cancellation
    # beyond float64's reach)
    lloyd.run_pass([r.centers for r in runs], np.arange(n_runs, dtype=np.int64))
    S, W, Q = lloyd.S, lloyd.W, lloyd.Q
    inertia = np.empty(n_runs)
    for b, r in enumerate(runs):
        sl = slice(offsets[b], offsets[b + 1])
        c = r.centers.astype(np.float64)
        per_centroid = Q[sl] - 2.0 * np.einsum("ij,ij->i", c, S[sl]) + W[sl] * (c * c).sum(axis=1)
        inertia[b] = max(float(per_centroid.sum()), 0.0)
    return inertia


def _fit_runs(X, sample_weight, specs, init, max_iter, tol, on_step=None):
    """Fit every ``(k, random_state)`` spec (each possibly with several inits).

    ``specs``: list of ``(k, n_init, random_state_instance)``. Returns, per spec, the
    best run as ``(centers, labels, inertia, n_iter)`` in the original data frame.
    ``on_step(done, total, iteration=..., runs_moving=...)``, if given, is called after the
    seeding and after each Lloyd pass: ``done`` of the ``total`` specs have every run
    finished.
    """
    n = X.shape[0]
    n_chunks = n_chunks_for(n)
    with kernel_threads(n * X.shape[1] * 8):
        X_mean, Xc, x_sq, variances = center(X, n_chunks)
    tol_abs = absolute_tolerance(variances, tol)
    groups = []
    all_runs = []
    for k, n_init, rs in specs:
        group = []
        for _ in range(n_init):
            r = _Run(k)
            if isinstance(init, str) and init == "k-means++":
                r.draws = rs.random_sample(1 + (k - 1) * _n_local_trials(k))
            elif isinstance(init, str) and init == "random":
                p = sample_weight / sample_weight.sum()
                seeds = rs.choice(n, size=k, replace=False, p=p)
                r.centers = Xc[seeds].copy()
            else:
                r.centers = (np.asarray(init, dtype=X.dtype) - X_mean).astype(X.dtype)
            group.append(r)
        groups.append(group)
        all_runs.extend(group)
    passed = None
    if on_step is not None:

        def passed(iteration):
            finished = sum(all(r.done for r in group) for group in groups)
            moving = sum(not r.done for r in all_runs)
            on_step(finished, len(groups), iteration=iteration, runs_moving=moving)

    with kernel_threads(n * X.shape[1] * sum(r.k for r in all_runs)):
        _kmeanspp_lockstep(Xc, x_sq, sample_weight, all_runs, n_chunks)
        if passed is not None:
            passed(0)
        labels, inertia = _lloyd_lockstep(
            Xc, sample_weight, all_runs, max_iter, tol_abs, x_sq, passed
        )
        if passed is not None:  # every run is done now, those stopped at max_iter too
            passed(max(r.n_iter for r in all_runs))
    out = []
    pos = 0
    for group in groups:
        best = None
        for r in group:
            if best is None or inertia[pos] < best[2]:
                best = (
                    r.centers + X_mean,
                    labels[pos].astype(np.int32),
                    float(inertia[pos]),
                    r.n_iter,
                )
            pos += 1
        out.append(best)
    return out


def _labels_inertia(X, sample_weight, centers):
    centers = np.ascontiguousarray(centers, dtype=X.dtype)
    labels, inertia, _ = _nearest(X, sample_weight, centers, None, False)
    return labels[0].astype(np.int32), float(inertia[0])


# ------------------------------------------------------------- one chunk of a larger data set
# The pieces of a Lloyd iteration for data that is not in one array (Dask partitions, files
# read in turn): each chunk gives its partial sums, the caller adds them up in a fixed order
# and takes the step. The same kernels as the in-memory fit, and the same update rule.


def absolute_tolerance(variances, tol) -> float:
    """scikit-learn's stopping tolerance: ``tol`` times the mean per-feature variance."""
    if tol == 0:
        return 0.0
    return float(np.mean(variances) * tol)


def stack_centers(blocks):
    """Several clusterings' centroids stacked into one ``(K_total, d)`` array, and the
    ``offsets`` (n_blocks + 1) of each block (block b = rows ``offsets[b]:offsets[b+1]``)."""
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
    if not blocks:
        raise ValueError("stack_centers needs at least one block of centroids.")
    d = blocks[0].shape[1] if blocks[0].ndim == 2 else -1
    for b in blocks:
        if b.ndim != 2 or b.shape[0] < 1 or b.shape[1] != d:
            raise ValueError(
                f"every block of centroids must be 2-D with {d} columns and at least one row, "
                f"got shape {b.shape}."
            )
    C = np.ascontiguousarray(np.concatenate(blocks, axis=0))
    offsets = np.zeros(len(blocks) + 1, dtype=np.int64)
    np.cumsum([b.shape[0] for b in blocks], out=offsets[1:])
    return C, offsets


def _check_chunk(X, C, offsets):
    X = numeric_2d(X)
    C = np.ascontiguousarray(C, dtype=np.float64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if C.ndim != 2 or C.shape[1] != X.shape[1]:
        raise ValueError(
            f"centers must have shape (K, {X.shape[1]}) to match X, got {np.shape(C)}."
        )
    if (
        offsets.ndim != 1
        or offsets.shape[0] < 2
        or offsets[0] != 0
        or offsets[-1] != C.shape[0]
        or (np.diff(offsets) < 1).any()
    ):
        raise ValueError(
            f"offsets must run from 0 to {C.shape[0]} in increasing steps, got {offsets.tolist()}."
        )
    if X.shape[0] and not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity; impute or drop missing values first.")
    return X, C, offsets


def lloyd_partial_sums(X, centers, offsets):
    """One chunk's share of a Lloyd step for every clustering in ``centers`` at once.

    ``centers`` / ``offsets`` as from :func:`stack_centers`. Each row of ``X`` goes to its
    nearest centroid within each block. Returns ``sums`` (K, d): the sum of the rows
    assigned to each centroid, and ``counts`` (K,), both float64. Adding these over all
    chunks (in a fixed order) and calling :func:`lloyd_update` is one Lloyd iteration.
    An empty chunk gives zeros.
    """
    X, C, offsets = _check_chunk(X, centers, offsets)
    n, d = X.shape
    if n == 0:
        return np.zeros((C.shape[0], d)), np.zeros(C.shape[0])
    return lloyd_pass(X, np.ones(n), C, offsets)


def lloyd_pass(X, sample_weight, C, offsets):
    """One plain Lloyd pass over ``X`` for every clustering in ``C`` at once: each row
    goes to its nearest centroid within each block (``offsets`` as from
    :func:`stack_centers`). Returns the weighted sums (K, d) and weights (K,) of the rows
    of every centroid, float64, added up in an order that depends only on the number
    of rows.

    No validation: ``X`` (n, d) float32 or float64 C-contiguous with ``n >= 1``,
    ``sample_weight`` (n,) and ``C`` (K, d) C-contiguous in X's dtype, ``offsets``
    int64."""
    n, d = X.shape
    with kernel_threads(n * d * C.shape[0]):
        sums, weights = _lloyd_accumulate(
            X, sample_weight, C, _half_sq_norms(C), offsets, n_chunks_for(n)
        )
    return sums.sum(axis=0), weights.sum(axis=0)


def assign_partial(X, centers, offsets, want_dist=True):
    """Nearest centroid of every row of ``X`` within each block of ``centers``.

    Returns ``labels`` (n_blocks, n) int32 (indices local to the block), ``sq_dist``
    (n_blocks, n) float64 squared distances to the assigned centroid (None unless
    ``want_dist``) and ``inertia`` (n_blocks,) float64.
    """
    X, C, offsets = _check_chunk(X, centers, offsets)
    n = X.shape[0]
    n_blocks = offsets.shape[0] - 1
    if n == 0:
        empty = np.zeros((n_blocks, 0))
        return np.zeros((n_blocks, 0), np.int32), (empty if want_dist else None), np.zeros(n_blocks)
    labels, inertia, dist = _nearest(X, np.ones(n), C, offsets, bool(want_dist))
    return labels, (dist if want_dist else None), inertia


def relocate_empty_clusters(sums, counts, points, point_weights, point_labels):
    """scikit-learn's empty-cluster rule on one clustering's Lloyd sums, in place.

    ``points``: the rows farthest from their centroid (farthest first), with their weights
    and current labels. Each empty centroid (count 0) takes one of them, which leaves the
    centroid it was assigned to."""
    empty = np.flatnonzero(counts == 0)
    for new_id, point, weight, old_id in zip(
        empty, points, point_weights, point_labels, strict=False
    ):
        w = float(weight)
        sums[old_id] -= point * w
        sums[new_id] = point * w
        counts[new_id] = w
        counts[old_id] -= w


def lloyd_update(centers, sums, counts, relocate):
    """One clustering's new centroids from the summed Lloyd pieces, and the squared shift
    (summed over centroids) from ``centers``.

    If a centroid got no rows, ``relocate(sums, counts)`` is called on copies of the two
    arrays and must fill them (see :func:`relocate_empty_clusters`)."""
    if (counts == 0).any():
        sums, counts = sums.copy(), counts.copy()
        relocate(sums, counts)
    new = (sums / counts[:, None]).astype(centers.dtype)
    shift = float(((new.astype(np.float64) - centers.astype(np.float64)) ** 2).sum())
    return new, shift


# ------------------------------------------------------------------------ estimators
_LLOYD_PARAMS = ("init", "n_init", "max_iter", "tol", "random_state")


def _set_lloyd_params(estimator, init, n_init, max_iter, tol, random_state):
    """The parameters :class:`KMeans`, :class:`KMeansSweep` and ``MiniBatchKMeans`` share,
    stored as given
    (scikit-learn's convention: validated in ``fit``)."""
    estimator.init = init
    estimator.n_init = n_init
    estimator.max_iter = max_iter
    estimator.tol = tol
    estimator.random_state = random_state


def _lloyd_params(estimator):
    """The parameters :func:`_set_lloyd_params` stored, by name."""
    return {name: getattr(estimator, name) for name in _LLOYD_PARAMS}


class _BaseKMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    def _set_fitted(self, centers, labels, inertia, n_iter):
        """The fitted attributes, from one run's (centroids, labels, inertia, iterations)."""
        self.cluster_centers_ = centers
        self.labels_ = labels
        self.inertia_ = inertia
        self.n_iter_ = n_iter

    def _validate_fit_input(self, X, sample_weight, ensure_all_finite=True, unit_view=False):
        """``X`` and the sample weights as the kernels take them; ``ensure_all_finite=False``
        leaves X's NaN/inf check to the caller (who must then make it before trusting a
        result: see :meth:`_check_finite`). ``unit_view``: no weights given gives a
        read-only broadcast view of one 1 (no O(n) array; the caller makes a contiguous
        copy of whatever part of it a kernel takes)."""
        X = validate_data(
            self,
            X,
            dtype=[np.float64, np.float32],
            order="C",
            reset=True,
            ensure_all_finite=ensure_all_finite,
        )
        n = X.shape[0]
        if n < self.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        lazy_units = sample_weight is None and unit_view
        if lazy_units:
            sample_weight = np.broadcast_to(np.ones(1, dtype=X.dtype), (n,))
        else:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        if isinstance(self.init, np.ndarray) or not isinstance(self.init, str):
            init = np.asarray(self.init)
            if init.shape != (self.n_clusters, X.shape[1]):
                raise ValueError(
                    f"init array has shape {init.shape}, expected "
                    f"(n_clusters, n_features) = ({self.n_clusters}, {X.shape[1]})."
                )
        if lazy_units:
            return X, sample_weight
        return X, np.ascontiguousarray(sample_weight)

    def _check_finite(self, X):
        """scikit-learn's NaN/inf error for ``X`` (the message ``validate_data`` gives), if any."""
        _assert_all_finite(X, input_name="X", estimator_name=type(self).__name__)

    def _check_test_data(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=False)

    def _warn_distinct(self):
        distinct = len(np.unique(self.labels_))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than n_clusters "
                f"({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def predict(self, X, sample_weight=None):
        """Index of the nearest centroid for each row of ``X``."""
        X = self._check_test_data(X)
        sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        return _labels_inertia(X, np.ascontiguousarray(sw), self.cluster_centers_)[0]

    def transform(self, X):
        """Euclidean distance of each row to every centroid, shape (n, n_clusters)."""
        X = self._check_test_data(X)
        return euclidean_distances(X, self.cluster_centers_.astype(X.dtype, copy=False))

    def fit_transform(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the inertia of ``X`` on the fitted centroids."""
        X = self._check_test_data(X)
        sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        return -_labels_inertia(X, np.ascontiguousarray(sw), self.cluster_centers_)[1]

    @property
    def _n_features_out(self):
        return self.cluster_centers_.shape[0]


class KMeans(_BaseKMeans):
    """k-means (Lloyd) on numba kernels; drop-in for :class:`sklearn.cluster.KMeans`.

    Parameters
    ----------
    n_clusters : int, default 8
    init : {"k-means++", "random"} or array (n_clusters, n_features), default "k-means++"
    n_init : "auto" or int, default "auto" (1 for k-means++, 10 for "random")
    max_iter : int, default 300
    tol : float, default 1e-4 - relative to the mean feature variance of X; the run
        stops when the squared centroid shift (summed over centroids) is <= that.
    random_state : None, int or RandomState

    float32 input is kept float32 (centroids float32, sums in float64); float64 stays
    float64; other dtypes become float64.
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        _set_lloyd_params(self, init, n_init, max_iter, tol, random_state)

    def fit(self, X, y=None, sample_weight=None):
        """Compute the k-means clustering of ``X`` (sample_weight optional)."""
        _check_init_params(self.n_clusters, self.init, self.n_init, self.max_iter, self.tol)
        X, sw = self._validate_fit_input(X, sample_weight)
        rs = check_random_state(self.random_state)
        n_init = _resolve_n_init(self.n_init, self.init)
        (run,) = _fit_runs(
            X, sw, [(self.n_clusters, n_init, rs)], self.init, self.max_iter, self.tol
        )
        self._set_fitted(*run)
        self._warn_distinct()
        return self


class KMeansSweep(BaseEstimator):
    """Fit k-means for every k in ``k_values`` at once; ``models_[k]`` is a fitted
    :class:`KMeans`.

    All runs share each pass over the data: per Lloyd iteration, one pass computes for
    every row its nearest centroid within each k's block of the stacked centroids and
    accumulates every k's new centroids; converged k's leave the pass. Seeding
    (k-means++) of all k's runs in lockstep too.

    ``random_state``: with an int (or None-free seed), each k uses a fresh
    ``RandomState(random_state)`` - so ``models_[k]`` is seeded exactly like
    ``KMeans(k, random_state=random_state)``; a ``RandomState`` instance is shared
    across k's in order; None uses numpy's global state.
    """

    def __init__(
        self,
        k_values=range(2, 13),
        *,
        init="k-means++",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        random_state=None,
    ):
        self.k_values = k_values
        _set_lloyd_params(self, init, n_init, max_iter, tol, random_state)

    def fit(self, X, y=None, sample_weight=None, *, on_step=None):
        """Fit every k. ``on_step(done, total, iteration=..., runs_moving=...)``, if given,
        is called between passes over the data (never inside a kernel): ``done`` of the
        ``total`` k values have all their ``n_init`` runs converged (or at ``max_iter``)."""
        ks = [k for k in self.k_values]
        if not ks:
            raise ValueError("k_values is empty; give at least one number of clusters.")
        if not isinstance(self.init, str):
            raise ValueError("KMeansSweep supports init='k-means++' or 'random' only.")
        for k in ks:
            _check_init_params(k, self.init, self.n_init, self.max_iter, self.tol, "k_values")
        if len(set(ks)) != len(ks):
            raise ValueError(f"k_values contains duplicates: {ks}.")
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=True)
        if max(ks) > X.shape[0]:
            raise ValueError(f"n_samples={X.shape[0]} should be >= max(k_values)={max(ks)}.")
        sw = np.ascontiguousarray(_check_sample_weight(sample_weight, X, dtype=X.dtype))
        n_init = _resolve_n_init(self.n_init, self.init)
        if isinstance(self.random_state, numbers.Integral):
            states = [np.random.RandomState(self.random_state) for _ in ks]
        else:
            shared = check_random_state(self.random_state)
            states = [shared for _ in ks]
        results = _fit_runs(
            X,
            sw,
            [(k, n_init, rs) for k, rs in zip(ks, states, strict=True)],
            self.init,
            self.max_iter,
            self.tol,
            on_step,
        )
        self.models_ = {}
        for k, result in zip(ks, results, strict=True):
            m = KMeans(n_clusters=k, **_lloyd_params(self))
            m.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                m.feature_names_in_ = self.feature_names_in_
            m._set_fitted(*result)
            self.models_[k] = m
        self.k_values_ = ks
        self.inertias_ = {k: self.models_[k].inertia_ for k in ks}
        return self
