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
  argmin runs over contiguous rows and vectorises), the accumulation is a plain loop. Tiles are
  grouped into ``n_chunks`` contiguous chunks run in parallel (``prange``), each with
  its own partial sums; the chunking depends only on ``n_samples`` so results do not
  depend on the number of threads.
* Assignment uses the expanded distance ``||c||^2 / 2 - x.c`` (argmin-equivalent);
  sums are accumulated in float64 whatever the input dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reassociation/contraction only: no 'nnan'/'ninf', so inf/NaN checks stay valid.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_TILE = 256


def n_chunks_for(n_samples: int) -> int:
    """Number of parallel chunks for ``n_samples`` rows (independent of thread count)."""
    n_tiles = (n_samples + _TILE - 1) // _TILE
    return max(1, min(64, n_tiles))


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
def _tile_assign_accumulate(
    GT, X, sample_weight, i0, half_cnorm, offsets, s_loc, w_loc, xw, best, lab
):  # pragma: no cover
    """For the rows ``i0 + r`` of a tile (dot products ``GT``, centroids x rows): nearest
    centroid within each block, and the weighted row added to its partial sum. A
    separate function (not inlined into the parallel loop body) so that LLVM optimises
    its loops fully. With several blocks, the weighted rows are converted to float64
    once per tile (``xw``) and reused by every block."""
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


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _lloyd_accumulate(X, sample_weight, C, half_cnorm, offsets, n_chunks):  # pragma: no cover
    """One fused Lloyd pass: assign each row to its nearest centroid within every block
    and accumulate the weighted sums / weights of the new centroids (``C``: the stacked
    centroids, (K, d) C-contiguous).

    Returns ``sums`` (n_chunks, K, d) and ``weights`` (n_chunks, K), both float64, one
    slice per chunk (the caller reduces them in a fixed order).
    """
    n, d = X.shape
    K = C.shape[0]
    n_tiles = (n + _TILE - 1) // _TILE
    tiles_per_chunk = (n_tiles + n_chunks - 1) // n_chunks
    sums = np.zeros((n_chunks, K, d))
    weights = np.zeros((n_chunks, K))
    for ch in prange(n_chunks):
        s_loc = np.zeros((K, d))
        w_loc = np.zeros(K)
        xw = np.empty((_TILE, d))
        best = np.empty(_TILE, dtype=X.dtype)
        lab = np.empty(_TILE, dtype=np.int32)
        t0 = ch * tiles_per_chunk
        t1 = min(n_tiles, t0 + tiles_per_chunk)
        for t in range(t0, t1):
            i0 = t * _TILE
            i1 = min(n, i0 + _TILE)
            GT = np.dot(C, X[i0:i1].T)
            _tile_assign_accumulate(
                GT, X, sample_weight, i0, half_cnorm, offsets, s_loc, w_loc, xw, best, lab
            )
        sums[ch] = s_loc
        weights[ch] = w_loc
    return sums, weights


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _tile_labels_dist(
    GT, X, C, sample_weight, i0, half_cnorm, offsets, labels, min_dist, inertia, best, lab
):  # pragma: no cover
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


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _assign(X, sample_weight, C, CT, half_cnorm, offsets, n_chunks, want_dist):  # pragma: no cover
    """Labels of every row within every block, and the exact weighted inertia per block.

    Returns ``labels`` (n_blocks, n) int32 (indices local to the block), ``inertia``
    (n_blocks,) float64 computed as sum of w * ||x - c||^2 with the exact difference,
    and ``min_dist`` (n_blocks, n) the squared distance of each row to its centroid
    (only if ``want_dist``; otherwise a (n_blocks, 0) array). ``CT`` is unused (kept
    for the call signature).
    """
    n = X.shape[0]
    n_blocks = offsets.shape[0] - 1
    n_tiles = (n + _TILE - 1) // _TILE
    tiles_per_chunk = (n_tiles + n_chunks - 1) // n_chunks
    labels = np.empty((n_blocks, n), dtype=np.int32)
    min_dist = np.empty((n_blocks, n if want_dist else 0), dtype=np.float64)
    inertia = np.zeros((n_chunks, n_blocks))
    for ch in prange(n_chunks):
        best = np.empty(_TILE, dtype=X.dtype)
        lab = np.empty(_TILE, dtype=np.int32)
        in_loc = np.zeros(n_blocks)
        t0 = ch * tiles_per_chunk
        t1 = min(n_tiles, t0 + tiles_per_chunk)
        for t in range(t0, t1):
            i0 = t * _TILE
            i1 = min(n, i0 + _TILE)
            GT = np.dot(C, X[i0:i1].T)
            _tile_labels_dist(
                GT,
                X,
                C,
                sample_weight,
                i0,
                half_cnorm,
                offsets,
                labels,
                min_dist,
                in_loc,
                best,
                lab,
            )
        inertia[ch] = in_loc
    out = np.zeros(n_blocks)
    for ch in range(n_chunks):
        for b in range(n_blocks):
            out[b] += inertia[ch, b]
    return labels, out, min_dist


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _pp_candidate_pots(X, x_sq, sample_weight, closest, cand, owner, n_chunks):  # pragma: no cover
    """k-means++ trial step for several independent initialisations at once.

    ``closest`` (n_jobs, n): current squared distance of each row to the nearest chosen
    centre of each job; ``cand`` (n_cand,) row indices of candidate centres; ``owner``
    (n_cand,) the job of each candidate. Returns the potential (sum of w * min(closest,
    d(x, cand))) of every candidate, float64.
    """
    n, d = X.shape
    n_cand = cand.shape[0]
    CT = np.empty((d, n_cand), dtype=X.dtype)
    c_sq = np.empty(n_cand)
    for t in range(n_cand):
        c_sq[t] = x_sq[cand[t]]
        for f in range(d):
            CT[f, t] = X[cand[t], f]
    n_tiles = (n + _TILE - 1) // _TILE
    tiles_per_chunk = (n_tiles + n_chunks - 1) // n_chunks
    pots = np.zeros((n_chunks, n_cand))
    for ch in prange(n_chunks):
        p_loc = np.zeros(n_cand)
        t0 = ch * tiles_per_chunk
        t1 = min(n_tiles, t0 + tiles_per_chunk)
        for t in range(t0, t1):
            i0 = t * _TILE
            i1 = min(n, i0 + _TILE)
            G = np.dot(X[i0:i1], CT)
            for r in range(i1 - i0):
                i = i0 + r
                w = sample_weight[i]
                for c in range(n_cand):
                    dist = max(x_sq[i] + c_sq[c] - 2.0 * G[r, c], 0.0)
                    if cand[c] == i:
                        dist = 0.0
                    cl = closest[owner[c], i]
                    p_loc[c] += w * min(cl, dist)
        pots[ch] = p_loc
    out = np.zeros(n_cand)
    for ch in range(n_chunks):
        for c in range(n_cand):
            out[c] += pots[ch, c]
    return out


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _pp_update_closest(X, x_sq, sample_weight, closest, chosen, n_chunks):  # pragma: no cover
    """``closest[j] = min(closest[j], d(x, X[chosen[j]]))`` for each job j (in place).

    ``chosen[j] < 0`` leaves job j's distances untouched. With ``closest`` filled with
    +inf this also initialises it. Returns the per-chunk sums of
    ``sample_weight * closest`` (n_jobs, n_chunks), used by :func:`_pp_search`.
    """
    n, d = X.shape
    n_jobs = chosen.shape[0]
    CT = np.zeros((d, n_jobs), dtype=X.dtype)
    c_sq = np.zeros(n_jobs)
    for j in range(n_jobs):
        if chosen[j] >= 0:
            c_sq[j] = x_sq[chosen[j]]
            for f in range(d):
                CT[f, j] = X[chosen[j], f]
    n_tiles = (n + _TILE - 1) // _TILE
    tiles_per_chunk = (n_tiles + n_chunks - 1) // n_chunks
    chunk_sums = np.zeros((n_jobs, n_chunks))
    for ch in prange(n_chunks):
        t0 = ch * tiles_per_chunk
        t1 = min(n_tiles, t0 + tiles_per_chunk)
        loc = np.zeros(n_jobs)
        for t in range(t0, t1):
            i0 = t * _TILE
            i1 = min(n, i0 + _TILE)
            G = np.dot(X[i0:i1], CT)
            for r in range(i1 - i0):
                i = i0 + r
                w = sample_weight[i]
                for j in range(n_jobs):
                    if chosen[j] >= 0:
                        dist = max(x_sq[i] + c_sq[j] - 2.0 * G[r, j], 0.0)
                        if chosen[j] == i:
                            dist = 0.0
                        if dist < closest[j, i]:
                            closest[j, i] = dist
                    # the stored value (X's dtype): the sums must match what _pp_search reads
                    loc[j] += w * np.float64(closest[j, i])
        for j in range(n_jobs):
            chunk_sums[j, ch] = loc[j]
    return chunk_sums


@njit(cache=True, nogil=True)
def _pp_search(closest, sample_weight, chunk_sums, job, targets, n_chunks):  # pragma: no cover
    """For each query q, the first row i of job ``job[q]`` where the running sum of
    ``sample_weight * closest`` reaches ``targets[q]`` (``np.searchsorted`` on the
    cumulative sum, clipped to n-1) - located via the chunk sums, so only one chunk is
    scanned per query instead of a full cumulative sum."""
    n = closest.shape[1]
    n_tiles = (n + _TILE - 1) // _TILE
    tiles_per_chunk = (n_tiles + n_chunks - 1) // n_chunks
    rows_per_chunk = tiles_per_chunk * _TILE
    out = np.empty(targets.shape[0], dtype=np.int64)
    for q in range(targets.shape[0]):
        j = job[q]
        target = targets[q]
        cum = 0.0
        found = n - 1
        for ch in range(n_chunks):
            if cum + chunk_sums[j, ch] < target and ch < n_chunks - 1:
                cum += chunk_sums[j, ch]
                continue
            i0 = ch * rows_per_chunk
            i1 = min(n, i0 + rows_per_chunk)
            done = False
            for i in range(i0, i1):
                cum += sample_weight[i] * closest[j, i]
                if cum >= target:
                    found = i
                    done = True
                    break
            if done:
                break
        out[q] = found
    return out


@njit(parallel=True, cache=True, nogil=True)
def _row_sq_norms(X):  # pragma: no cover
    n, d = X.shape
    out = np.empty(n)
    for i in prange(n):
        s = 0.0
        for f in range(d):
            v = np.float64(X[i, f])
            s += v * v
        out[i] = s
    return out


@njit(cache=True, nogil=True)
def _minibatch_step(X, sample_weight, idx, centers, weight_sums, labels_buf):  # pragma: no cover
    """One mini-batch k-means update (scikit-learn's rule) on rows ``idx``, in place.

    Each centre moves to the weighted mean of its previous position (weighted by the
    total weight it has seen so far, ``weight_sums``) and the batch rows assigned to
    it. Returns the batch inertia (sum of w * ||x - c||^2 before the update).
    """
    b = idx.shape[0]
    K, d = centers.shape
    hc = np.empty(K)
    for c in range(K):
        s = 0.0
        for f in range(d):
            s += np.float64(centers[c, f]) * centers[c, f]
        hc[c] = 0.5 * s
    inertia = 0.0
    for r in range(b):
        i = idx[r]
        best = np.inf
        bi = 0
        for c in range(K):
            dot = 0.0
            for f in range(d):
                dot += np.float64(X[i, f]) * centers[c, f]
            v = hc[c] - dot
            if v < best:
                best = v
                bi = c
        labels_buf[r] = bi
        dist = 0.0
        for f in range(d):
            diff = np.float64(X[i, f]) - centers[bi, f]
            dist += diff * diff
        inertia += sample_weight[i] * dist
    # centre update
    sums = np.zeros((K, d))
    wb = np.zeros(K)
    for r in range(b):
        i = idx[r]
        c = labels_buf[r]
        w = sample_weight[i]
        wb[c] += w
        for f in range(d):
            sums[c, f] += w * X[i, f]
    for c in range(K):
        if wb[c] > 0:
            tot = weight_sums[c] + wb[c]
            for f in range(d):
                centers[c, f] = (centers[c, f] * weight_sums[c] + sums[c, f]) / tot
            weight_sums[c] = tot
    return inertia
