"""Numba kernels for k-means (private: inputs are assumed valid and C-contiguous).

Layout conventions
------------------
* ``X`` is (n_samples, n_features), float32 or float64; centroids have X's dtype.
* Several clusterings can be evaluated in one pass over ``X``: their centroids are
  stacked in ``C`` (K_total, n_features) and ``offsets`` (n_blocks + 1) gives each
  block's rows (block b = centroids ``offsets[b]:offsets[b+1]``). A single k-means is
  the special case of one block. This is how :class:`KMeansSweep` reads the data once
  per iteration for every k at the same time.
* Rows are processed in tiles of ``_TILE`` rows; the centroids-times-tile dot products
  go through BLAS (``np.dot(C, X_tile.T)``, centroids x rows, so that the per-block
  argmin runs over contiguous rows and vectorises), the accumulation is a plain loop.
  Tiles are grouped into ``n_chunks`` contiguous chunks (:func:`_chunk_rows`), each with
  its own partial sums; the chunking depends only on ``n_samples`` so results do not
  depend on the number of threads.
* Each ``*_part`` kernel takes one part of the chunks (serial, ``nogil``); the plain
  Python function of the same name without ``_part`` allocates the outputs, runs the
  parts on the kernel threads (:func:`tasks.compute._threads.run_parts`) and reduces
  the per-chunk results in chunk order.
* Assignment uses the expanded distance ``||c||^2 / 2 - x.c`` (argmin-equivalent);
  sums are accumulated in float64 whatever the input dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tasks.compute._threads import parts_for, run_parts, share

# Reassociation/contraction only: no 'nnan'/'ninf', so inf/NaN checks stay valid.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_TILE = 256


def n_chunks_for(n_samples: int) -> int:
    """Number of parallel chunks for ``n_samples`` rows (independent of thread count)."""
    n_tiles = (n_samples + _TILE - 1) // _TILE
    return max(1, min(64, n_tiles))


@njit(cache=True, nogil=True)
def _chunk_rows(ch, n, n_chunks):  # pragma: no cover
    """Rows ``(r0, r1)`` of chunk ``ch``: whole tiles, the same number per chunk (the last
    chunks may be shorter or empty)."""
    n_tiles = (n + _TILE - 1) // _TILE
    rows_per_chunk = ((n_tiles + n_chunks - 1) // n_chunks) * _TILE
    r0 = min(n, ch * rows_per_chunk)
    return r0, min(n, r0 + rows_per_chunk)


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _tile_block_argmin(GT, half_cnorm, c0, c1, best, lab):  # pragma: no cover
    """``lab[r]`` = the centroid ``c`` in ``c0:c1`` minimising ``half_cnorm[c] - GT[c, r]``
    (first one on ties), for every row r of the tile. The loop over rows is innermost
    and contiguous, so the compare/select vectorises."""
    m_rows = GT.shape[1]
    h = half_cnorm[c0]
    g = GT[c0]
    for r in range(m_rows):
        best[r] = h - g[r]
        lab[r] = np.int32(c0)
    for c in range(c0 + 1, c1):
        h = half_cnorm[c]
        g = GT[c]
        for r in range(m_rows):
            v = h - g[r]
            m = v < best[r]
            best[r] = v if m else best[r]
            lab[r] = np.int32(c) if m else lab[r]


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _tile_assign_accumulate(GT, i0, data, centroids, acc, scratch):  # pragma: no cover
    """For the rows ``i0 + r`` of a tile (dot products ``GT``, centroids x rows): nearest
    centroid within each block, and the weighted row added to its partial sum (``acc``:
    sums, weights). A separate function so that LLVM optimises its loops fully. With
    several blocks, the weighted rows are converted to float64 once per tile (``xw``)
    and reused by every block."""
    X, sample_weight = data
    _C, half_cnorm, offsets = centroids
    s_loc, w_loc = acc
    xw, best, lab = scratch
    d = X.shape[1]
    n_blocks = offsets.shape[0] - 1
    m_rows = GT.shape[1]
    if n_blocks > 1:
        for r in range(m_rows):
            w = np.float64(sample_weight[i0 + r])
            for f in range(d):
                xw[r, f] = w * np.float64(X[i0 + r, f])
    for b in range(n_blocks):
        _tile_block_argmin(GT, half_cnorm, offsets[b], offsets[b + 1], best, lab)
        if n_blocks > 1:
            for r in range(m_rows):
                bi = lab[r]
                w_loc[bi] += sample_weight[i0 + r]
                srow = s_loc[bi]
                xr = xw[r]
                for f in range(d):
                    srow[f] += xr[f]
        else:
            for r in range(m_rows):
                bi = lab[r]
                w = np.float64(sample_weight[i0 + r])
                w_loc[bi] += w
                srow = s_loc[bi]
                xr = X[i0 + r]
                for f in range(d):
                    srow[f] += w * np.float64(xr[f])


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _lloyd_accumulate_part(part, n_parts, data, centroids, out):  # pragma: no cover
    """:func:`_lloyd_accumulate` for the chunks of one part (see :func:`_chunk_rows`)."""
    X = data[0]
    C = centroids[0]
    sums, weights = out
    n, d = X.shape
    n_chunks = sums.shape[0]
    scratch = (np.empty((_TILE, d)), np.empty(_TILE, dtype=X.dtype), np.empty(_TILE, np.int32))
    ch0, ch1 = share(part, n_parts, n_chunks)
    for ch in range(ch0, ch1):
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        for i0 in range(r0, r1, _TILE):
            GT = np.dot(C, X[i0 : min(r1, i0 + _TILE)].T)
            _tile_assign_accumulate(GT, i0, data, centroids, (sums[ch], weights[ch]), scratch)


def _lloyd_accumulate(X, sample_weight, C, half_cnorm, offsets, n_chunks):
    """One fused Lloyd pass: assign each row to its nearest centroid within every block
    and accumulate the weighted sums / weights of the new centroids (``C``: the stacked
    centroids, (K, d) C-contiguous).

    Returns ``sums`` (n_chunks, K, d) and ``weights`` (n_chunks, K), both float64, one
    slice per chunk (the caller reduces them in a fixed order).
    """
    K, d = C.shape
    out = (np.zeros((n_chunks, K, d)), np.zeros((n_chunks, K)))
    run_parts(
        _lloyd_accumulate_part,
        parts_for(n_chunks),
        (X, sample_weight),
        (C, half_cnorm, offsets),
        out,
    )
    return out


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _tile_labels_dist(GT, i0, data, centroids, out, scratch):  # pragma: no cover
    """For the rows ``i0 + r`` of a tile: label and squared distance within each block,
    and the weighted distances added to each block's ``inertia`` (``out``: labels,
    min_dist, the chunk's inertia)."""
    X, sample_weight = data
    C, half_cnorm, offsets = centroids
    labels, min_dist, inertia = out
    best, lab = scratch
    d = X.shape[1]
    n_blocks = offsets.shape[0] - 1
    m_rows = GT.shape[1]
    want_dist = min_dist.shape[1] > 0
    for b in range(n_blocks):
        c0 = offsets[b]
        _tile_block_argmin(GT, half_cnorm, c0, offsets[b + 1], best, lab)
        acc = 0.0
        for r in range(m_rows):
            i = i0 + r
            bi = lab[r]
            dist = 0.0
            for f in range(d):
                diff = np.float64(X[i, f]) - np.float64(C[bi, f])
                dist += diff * diff
            labels[b, i] = bi - c0
            if want_dist:
                min_dist[b, i] = dist
            acc += sample_weight[i] * dist
        inertia[b] += acc


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _assign_part(part, n_parts, data, centroids, out):  # pragma: no cover
    """:func:`_assign` for the chunks of one part (``out``: labels, min_dist and the
    per-chunk inertia (n_chunks, n_blocks))."""
    X = data[0]
    C = centroids[0]
    labels, min_dist, inertia = out
    n = X.shape[0]
    n_chunks = inertia.shape[0]
    scratch = (np.empty(_TILE, dtype=X.dtype), np.empty(_TILE, dtype=np.int32))
    ch0, ch1 = share(part, n_parts, n_chunks)
    for ch in range(ch0, ch1):
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        for i0 in range(r0, r1, _TILE):
            GT = np.dot(C, X[i0 : min(r1, i0 + _TILE)].T)
            _tile_labels_dist(GT, i0, data, centroids, (labels, min_dist, inertia[ch]), scratch)


def _assign(X, sample_weight, C, half_cnorm, offsets, n_chunks, want_dist):
    """Labels of every row within every block, and the exact weighted inertia per block.

    Returns ``labels`` (n_blocks, n) int32 (indices local to the block), ``inertia``
    (n_blocks,) float64 computed as sum of w * ||x - c||^2 with the exact difference,
    and ``min_dist`` (n_blocks, n) the squared distance of each row to its centroid
    (only if ``want_dist``; otherwise a (n_blocks, 0) array).
    """
    n = X.shape[0]
    n_blocks = offsets.shape[0] - 1
    labels = np.empty((n_blocks, n), dtype=np.int32)
    min_dist = np.empty((n_blocks, n if want_dist else 0))
    inertia = np.zeros((n_chunks, n_blocks))
    run_parts(
        _assign_part,
        parts_for(n_chunks),
        (X, sample_weight),
        (C, half_cnorm, offsets),
        (labels, min_dist, inertia),
    )
    out = np.zeros(n_blocks)
    for ch in range(n_chunks):  # in chunk order, whatever the thread count
        out += inertia[ch]
    return labels, out, min_dist


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _tile_min_pot(g, c_sq, x_sq, w, cl):  # pragma: no cover
    """sum over the tile's rows of w * min(cl, max(x_sq + c_sq - 2 g, 0)): contiguous
    arrays, so the loop vectorises."""
    acc = 0.0
    for r in range(g.shape[0]):
        dist = max(x_sq[r] + c_sq - 2.0 * np.float64(g[r]), 0.0)
        acc += np.float64(w[r]) * min(np.float64(cl[r]), dist)
    return acc


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _pp_candidate_pots_part(
    part, n_parts, data, closest, candidates, pending, pots
):  # pragma: no cover
    """:func:`_pp_candidate_pots` for the chunks of one part (``candidates``: their rows,
    jobs, and the coordinates and |x|^2 of the candidates followed by the pending
    centres; ``pending``: the jobs with a pending centre and its row; ``pots``:
    (n_chunks, n_cand))."""
    X, sample_weight, x_sq = data
    cand, owner, Cc, c_sq = candidates
    p_jobs, p_rows = pending
    n = X.shape[0]
    n_cand = cand.shape[0]
    n_chunks = pots.shape[0]
    ch0, ch1 = share(part, n_parts, n_chunks)
    for ch in range(ch0, ch1):
        p_loc = pots[ch]
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        for i0 in range(r0, r1, _TILE):
            i1 = min(r1, i0 + _TILE)
            # candidates (and pending centres) x rows, so that each one's loop runs over
            # contiguous rows
            GT = np.dot(Cc, X[i0:i1].T)
            # first the last step's chosen centres: the candidates' pots need the closest
            # distances that include them
            for q in range(p_jobs.shape[0]):
                j = p_jobs[q]
                i = p_rows[q]
                if i0 <= i < i1:  # the chosen row itself: distance exactly 0
                    closest[j, i] = 0.0
                _tile_update_closest(
                    GT[n_cand + q],
                    c_sq[n_cand + q],
                    x_sq[i0:i1],
                    sample_weight[i0:i1],
                    closest[j, i0:i1],
                )
            for c in range(n_cand):
                j = owner[c]
                p_loc[c] += _tile_min_pot(
                    GT[c], c_sq[c], x_sq[i0:i1], sample_weight[i0:i1], closest[j, i0:i1]
                )
                i = cand[c]
                if i0 <= i < i1:  # the candidate's own row: distance 0, not rounding noise
                    dist = max(x_sq[i] + c_sq[c] - 2.0 * np.float64(GT[c, i - i0]), 0.0)
                    p_loc[c] -= np.float64(sample_weight[i]) * min(np.float64(closest[j, i]), dist)


def _pp_candidate_pots(X, x_sq, sample_weight, closest, cand, owner, pending, n_chunks):
    """k-means++ trial step for several independent initialisations at once.

    ``closest`` (n_jobs, n): squared distance of each row to the nearest chosen centre of
    each job, except for the job's ``pending`` centre (n_jobs,: the row chosen in the
    last step, -1 for none), whose update this pass applies first, in place (one pass
    over X per step instead of two). ``cand`` (n_cand,) row indices of candidate
    centres; ``owner`` (n_cand,) the job of each candidate. Returns each candidate's
    potential (sum of w * min(closest, d(x, cand))) per chunk, (n_chunks, n_cand)
    float64: the chosen candidate's column is the chunk sums of its job's next
    ``closest`` (:func:`_pp_search`). A candidate's distance to itself is taken as
    exactly 0.
    """
    pots = np.zeros((n_chunks, cand.shape[0]))
    p_jobs = np.flatnonzero(pending >= 0)
    p_rows = pending[p_jobs]
    rows = np.concatenate((cand, p_rows))
    run_parts(
        _pp_candidate_pots_part,
        parts_for(n_chunks),
        (X, sample_weight, x_sq),
        closest,
        (cand, owner, np.ascontiguousarray(X[rows]), x_sq[rows]),
        (p_jobs, p_rows),
        pots,
    )
    return pots


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _tile_update_closest(g, c_sq, x_sq, w, cl):  # pragma: no cover
    """cl = min(cl, max(x_sq + c_sq - 2 g, 0)) over the tile's rows (in place); returns
    the sum of w * cl (the stored values, X's dtype)."""
    acc = 0.0
    for r in range(g.shape[0]):
        dist = max(x_sq[r] + c_sq - 2.0 * np.float64(g[r]), 0.0)
        v = min(cl[r], dist)
        cl[r] = v
        acc += np.float64(w[r]) * np.float64(cl[r])
    return acc


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _pp_update_closest_part(part, n_parts, data, closest, centres, chunk_sums):  # pragma: no cover
    """:func:`_pp_update_closest` for the chunks of one part (``centres``: each job's
    chosen row, the jobs that chose one, those rows' coordinates and |x|^2)."""
    X, sample_weight, x_sq = data
    chosen, jobs, Cc, c_sq = centres
    n = X.shape[0]
    n_chunks = chunk_sums.shape[1]
    ch0, ch1 = share(part, n_parts, n_chunks)
    for ch in range(ch0, ch1):
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        for i0 in range(r0, r1, _TILE):
            i1 = min(r1, i0 + _TILE)
            GT = np.dot(Cc, X[i0:i1].T)
            for q in range(jobs.shape[0]):
                j = jobs[q]
                i = chosen[j]
                if i0 <= i < i1:  # the chosen row itself: distance exactly 0
                    closest[j, i] = 0.0
                chunk_sums[j, ch] += _tile_update_closest(
                    GT[q], c_sq[q], x_sq[i0:i1], sample_weight[i0:i1], closest[j, i0:i1]
                )


def _pp_update_closest(X, x_sq, sample_weight, closest, chosen, n_chunks):
    """``closest[j] = min(closest[j], d(x, X[chosen[j]]))`` for each job j (in place).

    ``chosen[j] < 0`` leaves job j's distances untouched. With ``closest`` filled with
    +inf this also initialises it. Returns the per-chunk sums of
    ``sample_weight * closest`` (n_jobs, n_chunks; 0 for untouched jobs, which have
    no further steps), used by :func:`_pp_search`.
    """
    jobs = np.flatnonzero(chosen >= 0)
    rows = chosen[jobs]
    chunk_sums = np.zeros((chosen.shape[0], n_chunks))
    run_parts(
        _pp_update_closest_part,
        parts_for(n_chunks),
        (X, sample_weight, x_sq),
        closest,
        (chosen, jobs, np.ascontiguousarray(X[rows]), x_sq[rows]),
        chunk_sums,
    )
    return chunk_sums


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _pending_closest(data, closest, j, p, i0, i1, out):  # pragma: no cover
    """``out`` = job j's closest distances of rows ``i0:i1`` with its pending centre (row
    ``p``, -1: none) applied, as :func:`_pp_candidate_pots` will store them (up to
    rounding), times the rows' weights."""
    X, sample_weight, x_sq = data
    d = X.shape[1]
    for i in range(i0, i1):
        v = np.float64(closest[j, i])
        if p >= 0:
            g = 0.0
            for f in range(d):
                g += np.float64(X[i, f]) * np.float64(X[p, f])
            v = min(v, max(x_sq[i] + x_sq[p] - 2.0 * g, 0.0))
        out[i - i0] = np.float64(sample_weight[i]) * v
    if i0 <= p < i1:
        out[p - i0] = 0.0


@njit(cache=True, nogil=True)
def _pp_search_part(part, n_parts, data, closest, chunk_sums, queries, out):  # pragma: no cover
    """:func:`_pp_search` for the queries of one part."""
    job, targets, pending = queries
    n = closest.shape[1]
    n_chunks = chunk_sums.shape[1]
    wd = np.empty(_chunk_rows(0, n, n_chunks)[1])
    q0, q1 = share(part, n_parts, targets.shape[0])
    for q in range(q0, q1):
        j = job[q]
        target = targets[q]
        cum = 0.0
        found = n - 1
        for ch in range(n_chunks):
            if cum + chunk_sums[j, ch] < target and ch < n_chunks - 1:
                cum += chunk_sums[j, ch]
                continue
            i0, i1 = _chunk_rows(ch, n, n_chunks)
            _pending_closest(data, closest, j, pending[j], i0, i1, wd)
            done = False
            for i in range(i0, i1):
                cum += wd[i - i0]
                if cum >= target:
                    found = i
                    done = True
                    break
            if done:
                break
        out[q] = found


def _pp_search(data, closest, chunk_sums, job, targets, pending, n_chunks):
    """For each query q, the first row i of job ``job[q]`` where the running sum of
    ``sample_weight * closest`` reaches ``targets[q]`` (``np.searchsorted`` on the
    cumulative sum, clipped to n-1), with each job's ``pending`` centre (see
    :func:`_pp_candidate_pots`) applied on the fly - located via the chunk sums, so only
    one chunk is scanned per query instead of a full cumulative sum. ``data``: (X,
    sample_weight, x_sq)."""
    out = np.empty(targets.shape[0], dtype=np.int64)
    run_parts(
        _pp_search_part,
        parts_for(targets.shape[0] if closest.shape[1] >= 4 * _TILE else 1),
        data,
        closest,
        chunk_sums,
        (job, targets, pending),
        out,
    )
    return out


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _center_part(part, n_parts, X, mean, Xc, x_sq, sq_dev):  # pragma: no cover
    """:func:`center` for the chunks of one part (``sq_dev``: (n_chunks, d))."""
    n, d = X.shape
    n_chunks = sq_dev.shape[0]
    ch0, ch1 = share(part, n_parts, n_chunks)
    for ch in range(ch0, ch1):
        acc = sq_dev[ch]
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        for i in range(r0, r1):
            s = 0.0
            for f in range(d):
                v = X[i, f] - mean[f]
                Xc[i, f] = v
                v64 = np.float64(Xc[i, f])
                s += v64 * v64
                dev = np.float64(X[i, f]) - np.float64(mean[f])
                acc[f] += dev * dev
            x_sq[i] = s


def center(X, n_chunks):
    """X's column means (X's dtype), ``X - mean`` in X's dtype, its squared row norms
    (float64) and the per-column variances (float64): two passes over X instead of
    numpy's four (mean, subtract, variance, norms)."""
    n, d = X.shape
    mean = (X.sum(axis=0, dtype=np.float64) / n).astype(X.dtype)
    Xc = np.empty_like(X)
    x_sq = np.empty(n)
    sq_dev = np.zeros((n_chunks, d))
    run_parts(_center_part, parts_for(n_chunks), X, mean, Xc, x_sq, sq_dev)
    return mean, Xc, x_sq, sq_dev.sum(axis=0) / n


@njit(cache=True, nogil=True)
def _row_sq_norms_part(part, n_parts, X, out):  # pragma: no cover
    lo, hi = share(part, n_parts, X.shape[0])
    for i in range(lo, hi):
        s = 0.0
        for f in range(X.shape[1]):
            v = np.float64(X[i, f])
            s += v * v
        out[i] = s


def row_sq_norms(X):
    """Squared norm of every row of ``X``, float64."""
    out = np.empty(X.shape[0])
    run_parts(_row_sq_norms_part, parts_for(n_chunks_for(X.shape[0])), X, out)
    return out
