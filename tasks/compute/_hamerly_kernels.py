"""Numba kernels for Lloyd iterations with Hamerly's distance bounds (private: inputs
are assumed valid and C-contiguous).

Same results as plain Lloyd passes (every row still ends each pass assigned to its
nearest centroid), but most distance computations are skipped: each row keeps, per
clustering, an upper bound on the distance to its centroid and a lower bound on the
distance to every other centroid of that clustering. After the centroids move, the
bounds are loosened by how far they moved; a row whose upper bound stays below both its
lower bound and half the distance from its centroid to the nearest other centroid cannot
have changed cluster, so it costs a few loads instead of k distances. Only rows that
change cluster touch the centroid sums (the caller keeps running sums and adds the
per-pass differences).

Layout as in :mod:`tasks.compute._kmeans_kernels`: several clusterings' centroids are
stacked (``offsets``); ``labels``, ``upper`` and ``lower`` are (n_blocks, n), one row
per clustering. Bounds are stored as float32 (12 bytes per row and clustering with the
labels) and rounded outwards so that float32 storage never makes a bound wrong.

Arguments travel in small tuples, as named in :func:`bounded_pass`: ``data`` (the rows),
``centroids``, ``state`` (per-row labels and bounds), ``bounds`` (per-centroid bound
statistics), ``plan`` (what the pass does), and per part ``scratch`` buffers and ``acc``
(the chunk's sums being built).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tasks.compute._kmeans_kernels import _FASTMATH, _chunk_rows, _tile_block_argmin
from tasks.compute._threads import parts_for, run_parts, share

# Outward rounding of stored bounds (float32 has a 2**-24 relative rounding error).
_UP = 1.0 + 2.0**-20
_DOWN = 1.0 - 2.0**-20


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _sq_dist(xr, C64, c):  # pragma: no cover
    s = 0.0
    for f in range(xr.shape[0]):
        t = xr[f] - C64[c, f]
        s += t * t
    return s


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _tile_block_argmin2(GT, half_cnorm, c0, c1, best, best2, lab):  # pragma: no cover
    """As ``_tile_block_argmin``, also keeping the second smallest value per row (a tie
    for the smallest makes it equal to the smallest). Two loops of plain selects, which
    vectorise; one loop tracking both values did not (LLVM left it scalar, with a
    branch per row and centroid)."""
    _tile_block_argmin(GT, half_cnorm, c0, c1, best, lab)
    m_rows = GT.shape[1]
    for r in range(m_rows):
        best2[r] = np.inf
    for c in range(c0, c1):
        h = half_cnorm[c]
        g = GT[c]
        ci = np.int32(c)
        for r in range(m_rows):
            v = h - g[r]
            b2 = best2[r]
            best2[r] = v if (v < b2) & (lab[r] != ci) else b2


@njit(cache=True, nogil=True)
def _bound_stats(C64, offsets, shift, active):  # pragma: no cover
    """Per centroid: half the distance to the nearest other centroid of its clustering
    (``s_half``); per clustering: the largest centroid move, which centroid made it, and
    the second largest (``max1``, ``arg1``, ``max2``). Only for the ``active`` ones."""
    K = C64.shape[0]
    n_blocks = offsets.shape[0] - 1
    s_half = np.full(K, np.inf)
    max1 = np.zeros(n_blocks)
    max2 = np.zeros(n_blocks)
    arg1 = np.full(n_blocks, -1, dtype=np.int64)
    for q in range(active.shape[0]):
        b = active[q]
        c0 = offsets[b]
        c1 = offsets[b + 1]
        for c in range(c0, c1):
            for e in range(c + 1, c1):
                dist = 0.5 * np.sqrt(_sq_dist(C64[c], C64, e))
                s_half[c] = min(s_half[c], dist)
                s_half[e] = min(s_half[e], dist)
            s = shift[c]
            if s > max1[b]:
                max2[b] = max1[b]
                max1[b] = s
                arg1[b] = c
            elif s > max2[b]:
                max2[b] = s
    return s_half, max1, arg1, max2


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _select_unsure(state, b, c0, i0, i1, bounds, gidx):  # pragma: no cover
    """How many of rows ``i0:i1`` the bounds of clustering b cannot rule out a change of
    centroid for. Given room in ``gidx`` (at least ``i1 - i0`` slots), those rows go
    there and the others get their loosened bounds; given an empty ``gidx``, nothing is
    written (a dense pass, which recomputes every row anyway, only wants the count)."""
    labels, upper, lower = state
    keep = gidx.shape[0] > 0
    shift, s_half, max1, arg1, max2 = bounds
    m = 0
    m1 = max1[b]
    m2 = max2[b]
    a1 = arg1[b]
    for i in range(i0, i1):
        ga = c0 + labels[b, i]
        u = np.float64(upper[b, i]) + shift[ga]
        lo = np.float64(lower[b, i]) - (m2 if ga == a1 else m1)
        unsure = u > max(lo, s_half[ga])
        if keep:
            # branch-free: every row gets its loosened bounds and a slot in gidx that only
            # an unsure row keeps (an unsure row's bounds are set anew once its distances
            # are computed); which rows are unsure follows no pattern a branch predicts
            upper[b, i] = u * _UP
            lower[b, i] = max(lo, 0.0) * _DOWN  # 0 is always a valid lower bound
            gidx[m] = i
        m += unsure
    return m


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _fresh_bounds(xs, best, best2, m, margin_c, ub, lb):  # pragma: no cover
    """Bounds of ``m`` rows from the expanded distances ``best``/``best2`` = |c|^2/2 - x.c
    of the nearest and second nearest centroid (``xs``: the rows' |x|^2). Contiguous
    arrays only, so that the square roots vectorise."""
    for j in range(m):
        # the float32 GEMM's rounding: widen the bounds by a margin well above its error
        margin = 1e-5 * (xs[j] + margin_c)
        ub[j] = np.sqrt(max(xs[j] + 2.0 * np.float64(best[j]), 0.0) + margin) * _UP
        lb[j] = np.sqrt(max(xs[j] + 2.0 * np.float64(best2[j]) - margin, 0.0)) * _DOWN


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _move_row(X, sample_weight, i, new, old, x_sq_i, acc):  # pragma: no cover
    """Row i changed centroid from ``old`` to ``new``: its weight, weighted row and
    weighted |x|^2 leave the one's sums for the other's (``acc``: sums, weights,
    |x|^2 sums)."""
    s_loc, w_loc, q_loc = acc
    w = np.float64(sample_weight[i])
    w_loc[new] += w
    w_loc[old] -= w
    q_loc[new] += w * x_sq_i
    q_loc[old] -= w * x_sq_i
    for f in range(X.shape[1]):
        v = w * np.float64(X[i, f])
        s_loc[new, f] += v
        s_loc[old, f] -= v


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _store_gathered(X, sample_weight, b, c0, k_b, m, scratch, state, acc):  # pragma: no cover
    """New centroid and bounds of the ``m`` gathered rows of clustering b (``scratch``:
    their indices, |x|^2, labels and bounds); rows that changed centroid move their
    weight between the two sums."""
    rows, _xg, xs, _best, _best2, lab, ub, lb = scratch
    labels, upper, lower = state
    for j in range(m):
        i = rows[j]
        new = c0 + lab[j]
        old = c0 + labels[b, i]
        upper[b, i] = ub[j]
        lower[b, i] = lb[j] if k_b > 1 else np.inf
        labels[b, i] = lab[j]
        if new != old:
            _move_row(X, sample_weight, i, new, old, xs[j], acc)


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _store_tile(X, sample_weight, c0, k_b, i0, m, tile, rows_b, absolute, acc):  # pragma: no cover
    """New centroid and bounds of the contiguous rows ``i0:i0+m`` of a tile (``tile``:
    their weighted float64 rows, weights, |x|^2, labels and bounds; ``rows_b``:
    clustering b's rows of labels and bounds): the sums first (the changes need the old
    labels), then plain contiguous stores, which vectorise. With ``absolute`` every row
    is added to the sums; otherwise only rows that changed centroid move their weight
    between the two sums."""
    xw, ws, xs, lab, ub, lb = tile
    lab_row, up_row, lo_row = rows_b
    s_loc, w_loc, q_loc = acc
    d = X.shape[1]
    old_lab = lab_row[i0 : i0 + m]
    if absolute:
        for j in range(m):
            new = c0 + lab[j]
            w_loc[new] += ws[j]
            q_loc[new] += ws[j] * xs[j]
            srow = s_loc[new]
            xr = xw[j]
            for f in range(d):
                srow[f] += xr[f]
    else:
        for j in range(m):
            if lab[j] != old_lab[j]:
                _move_row(X, sample_weight, i0 + j, c0 + lab[j], c0 + old_lab[j], xs[j], acc)
    up_t = up_row[i0 : i0 + m]
    lo_t = lo_row[i0 : i0 + m]
    for j in range(m):
        old_lab[j] = lab[j]
        up_t[j] = ub[j]
        lo_t[j] = lb[j]
    if k_b == 1:
        for j in range(m):
            lo_t[j] = np.inf


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _load_rows(X, sample_weight, x_sq, i0, i1, xs, xw, ws, with_rows):  # pragma: no cover
    """The |x|^2 of rows ``i0:i1``; with ``with_rows`` also their weights and weighted
    float64 copies (for complete sums: converted once per tile, then shared by every
    clustering)."""
    d = X.shape[1]
    for j in range(i1 - i0):
        xs[j] = x_sq[i0 + j]
    if with_rows:
        for j in range(i1 - i0):
            i = i0 + j
            w = np.float64(sample_weight[i])
            ws[j] = w
            for f in range(d):
                xw[j, f] = w * np.float64(X[i, f])


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _gathered_batch(data, centroids, margin_c, b, m, scratch, state, acc):  # pragma: no cover
    """Distances of the ``m`` gathered rows (``scratch[0]``) to clustering b's centroids
    (one BLAS call), then their new centroid, fresh bounds and the sum changes."""
    X, sample_weight, x_sq = data
    C, half_cnorm, offsets = centroids
    rows, xg, xs, best, best2, lab, ub, lb = scratch
    c0 = offsets[b]
    c1 = offsets[b + 1]
    d = X.shape[1]
    for j in range(m):
        i = rows[j]
        for f in range(d):
            xg[j, f] = X[i, f]
        xs[j] = x_sq[i]
    GT = np.dot(C[c0:c1], xg[:m].T)
    _tile_block_argmin2(GT, half_cnorm[c0:c1], 0, c1 - c0, best, best2, lab)
    _fresh_bounds(xs, best, best2, m, margin_c, ub, lb)
    _store_gathered(X, sample_weight, b, c0, c1 - c0, m, scratch, state, acc)


#: Rows per tile; the rows the bound test leaves are gathered into batches of one to two
#: tiles' worth per BLAS call.
_BTILE = 256


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _bounded_pass_part(
    part, n_parts, data, centroids, state, bounds, plan, out
):  # pragma: no cover
    """:func:`bounded_pass` for the chunks of one part."""
    X, sample_weight, x_sq = data
    C, half_cnorm, offsets = centroids
    labels, upper, lower = state
    active, full, C_dense, half_dense, dense_at = plan
    sums, weights, sq_sums, unsure = out
    n, d = X.shape
    n_chunks = sums.shape[0]
    margin_c = 0.0
    for c in range(C.shape[0]):
        margin_c = max(margin_c, 2.0 * np.float64(half_cnorm[c]))
    # counted, not set from constants: a constant flag passed on would be compiled as a
    # copy of the callee of its own
    n_dense = 0
    n_full = 0
    for q in range(active.shape[0]):
        n_dense += dense_at[active[q]] >= 0
        n_full += full[active[q]]
    any_dense = n_dense > 0
    any_full = n_full > 0
    # the tile's rows (dense clusterings, full sums) and the gathered ones (bounded)
    tile = (
        np.empty((_BTILE, d)),
        np.empty(_BTILE),
        np.empty(_BTILE),
        np.empty(2 * _BTILE, dtype=np.int32),
        np.empty(2 * _BTILE),
        np.empty(2 * _BTILE),
    )
    _xw, _ws, xs_t, lab, ub, lb = tile
    best = np.empty(2 * _BTILE, dtype=X.dtype)
    best2 = np.empty(2 * _BTILE, dtype=X.dtype)
    rows_g = np.empty(2 * _BTILE, dtype=np.int64)
    xg = np.empty((2 * _BTILE, d), dtype=X.dtype)
    scratch = (rows_g, xg, np.empty(2 * _BTILE), best, best2, lab, ub, lb)
    ch0, ch1 = share(part, n_parts, n_chunks)
    for ch in range(ch0, ch1):
        acc = (sums[ch], weights[ch], sq_sums[ch])
        un_loc = unsure[ch]
        r0, r_end = _chunk_rows(ch, n, n_chunks)
        # dense clusterings (and full ones): tile by tile, every row
        for i0 in range(r0, r_end, _BTILE):
            i1 = min(r_end, i0 + _BTILE)
            mt = i1 - i0
            if any_dense:  # one BLAS call for all the dense clusterings' centroids
                GT_dense = np.dot(C_dense, X[i0:i1].T)
                _load_rows(X, sample_weight, x_sq, i0, i1, xs_t, tile[0], tile[1], any_full)
            for q in range(active.shape[0]):
                b = active[q]
                c0 = offsets[b]
                c1 = offsets[b + 1]
                at = dense_at[b]
                if at >= 0:
                    if not full[b]:
                        un_loc[b] += _select_unsure(state, b, c0, i0, i1, bounds, rows_g[:0])
                    _tile_block_argmin2(
                        GT_dense[at : at + c1 - c0],
                        half_dense[at : at + c1 - c0],
                        0,
                        c1 - c0,
                        best,
                        best2,
                        lab,
                    )
                elif full[b]:
                    _load_rows(X, sample_weight, x_sq, i0, i1, xs_t, tile[0], tile[1], full[b])
                    GT = np.dot(C[c0:c1], X[i0:i1].T)
                    _tile_block_argmin2(GT, half_cnorm[c0:c1], 0, c1 - c0, best, best2, lab)
                else:
                    continue
                _fresh_bounds(xs_t, best, best2, mt, margin_c, ub, lb)
                rows_b = (labels[b], upper[b], lower[b])
                _store_tile(X, sample_weight, c0, c1 - c0, i0, mt, tile, rows_b, full[b], acc)
        # bounded clusterings: the rows the bounds cannot settle, gathered across tiles so
        # that each BLAS call gets a full batch
        for q in range(active.shape[0]):
            b = active[q]
            if dense_at[b] >= 0 or full[b]:
                continue
            c0 = offsets[b]
            m = 0
            for i0 in range(r0, r_end, _BTILE):
                i1 = min(r_end, i0 + _BTILE)
                k_new = _select_unsure(state, b, c0, i0, i1, bounds, rows_g[m:])
                un_loc[b] += k_new
                m += k_new
                # a batch holds up to 2 tiles' rows: flush once it has one tile's worth
                if m >= _BTILE or (i1 == r_end and m > 0):
                    _gathered_batch(data, centroids, margin_c, b, m, scratch, state, acc)
                    m = 0


def bounded_pass(data, centroids, state, bounds, plan, n_chunks):
    """One Lloyd pass (assignment + centroid sums) of the ``plan``'s active clusterings.

    ``data`` = (X, sample_weight, x_sq): the rows, their weights and |x|^2;
    ``centroids`` = (C, half_cnorm, offsets): every clustering's centroids stacked, |c|^2
    / 2, and each clustering's rows in C; ``state`` = (labels, upper, lower), each
    (n_blocks, n): every row's centroid and bounds per clustering, updated in place;
    ``bounds`` = (shift, s_half, max1, arg1, max2): how far each centroid moved since the
    bounds were set, and :func:`_bound_stats` of the centroids;
    ``plan`` = (active, full, C_dense, half_dense, dense_at): which clusterings run and how.

    Two ways per active clustering b:

    * dense (``dense_at[b] >= 0``): every row's distances, through one BLAS call per
      tile for all the dense clusterings at once (their centroids stacked in
      ``C_dense``/``half_dense``, clustering b's at rows ``dense_at[b]:``). For the
      first pass, and while the bounds would not settle most rows anyway.
    * bounded: the rows the bounds cannot settle are gathered and only their distances
      computed (BLAS on ``C``, X's dtype).

    A clustering with ``full[b]`` set (first pass, or its sums were rebuilt after an
    empty cluster was relocated) gets complete sums; the others get only the changes
    from rows that moved. Returns ``sums`` (n_chunks, K, d), ``weights`` (n_chunks, K),
    ``sq_sums`` (n_chunks, K: the weighted |x|^2 of each centroid's rows, from which the
    caller gets the inertia without another pass over X) and ``unsure``
    (n_chunks, n_blocks): how many rows failed the bound test (for dense clusterings
    with valid bounds: how many would have).
    """
    K, d = centroids[0].shape
    n_blocks = centroids[2].shape[0] - 1
    out = (
        np.zeros((n_chunks, K, d)),
        np.zeros((n_chunks, K)),
        np.zeros((n_chunks, K)),
        np.zeros((n_chunks, n_blocks), dtype=np.int64),
    )
    run_parts(_bounded_pass_part, parts_for(n_chunks), data, centroids, state, bounds, plan, out)
    return out
