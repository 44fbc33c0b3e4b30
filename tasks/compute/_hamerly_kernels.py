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
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tasks.compute._kmeans_kernels import _FASTMATH, _TILE

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
    """As ``_tile_block_argmin``, also keeping the second smallest value per row."""
    m_rows = GT.shape[1]
    h = half_cnorm[c0]
    g = GT[c0]
    for r in range(m_rows):
        best[r] = h - g[r]
        best2[r] = np.inf
        lab[r] = np.int32(c0)
    for c in range(c0 + 1, c1):
        h = half_cnorm[c]
        g = GT[c]
        for r in range(m_rows):
            v = h - g[r]
            m = v < best[r]
            best2[r] = best[r] if m else min(best2[r], v)
            best[r] = v if m else best[r]
            lab[r] = np.int32(c) if m else lab[r]


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
def _select_unsure(
    labels, upper, lower, b, c0, i0, i1, shift, s_half, max1, arg1, max2, gidx, keep
):  # pragma: no cover
    """How many of rows ``i0:i1`` the bounds of clustering b cannot rule out a change of
    centroid for. With ``keep`` those rows go to ``gidx`` and the others get their
    loosened bounds; without, nothing is written (a dense pass, which recomputes every
    row anyway, only wants the count)."""
    m = 0
    m1 = max1[b]
    m2 = max2[b]
    a1 = arg1[b]
    for i in range(i0, i1):
        ga = c0 + labels[b, i]
        u = np.float64(upper[b, i]) + shift[ga]
        lo = np.float64(lower[b, i]) - (m2 if ga == a1 else m1)
        if u > max(lo, s_half[ga]):
            if keep:
                gidx[m] = i
            m += 1
        elif keep:
            upper[b, i] = u * _UP
            lower[b, i] = max(lo, 0.0) * _DOWN  # 0 is always a valid lower bound
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
def _store_assignment(
    X,
    sample_weight,
    b,
    c0,
    k_b,
    rows,
    m,
    lab,
    ub,
    lb,
    labels,
    upper,
    lower,
    absolute,
    xw,
    ws,
    xs,
    s_loc,
    w_loc,
    q_loc,
):  # pragma: no cover
    """New centroid and bounds of the ``m`` rows ``rows`` of clustering b (``xs``: their
    |x|^2, summed per centroid into ``q_loc`` for the inertia). With
    ``absolute`` every row is added to the sums (``xw``/``ws``: the tile's weighted rows
    in float64 and weights); otherwise only rows that changed centroid move their weight
    between the two sums."""
    d = X.shape[1]
    for j in range(m):
        i = rows[j]
        new = c0 + lab[j]
        old = c0 + labels[b, i]
        upper[b, i] = ub[j]
        lower[b, i] = lb[j] if k_b > 1 else np.inf
        labels[b, i] = lab[j]
        if absolute:
            w_loc[new] += ws[j]
            q_loc[new] += ws[j] * xs[j]
            srow = s_loc[new]
            xr = xw[j]
            for f in range(d):
                srow[f] += xr[f]
        elif new != old:
            w = np.float64(sample_weight[i])
            w_loc[new] += w
            w_loc[old] -= w
            q_loc[new] += w * xs[j]
            q_loc[old] -= w * xs[j]
            for f in range(d):
                v = w * np.float64(X[i, f])
                s_loc[new, f] += v
                s_loc[old, f] -= v


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _store_tile(
    X,
    sample_weight,
    c0,
    k_b,
    i0,
    m,
    lab,
    ub,
    lb,
    lab_row,
    up_row,
    lo_row,
    absolute,
    xw,
    ws,
    xs,
    s_loc,
    w_loc,
    q_loc,
):  # pragma: no cover
    """:func:`_store_assignment` for the contiguous rows ``i0:i0+m`` of a tile
    (``lab_row``/``up_row``/``lo_row``: clustering b's rows of labels and bounds): the
    sums first (the changes need the old labels), then plain contiguous stores, which
    vectorise."""
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
                new = c0 + lab[j]
                old = c0 + old_lab[j]
                i = i0 + j
                w = np.float64(sample_weight[i])
                w_loc[new] += w
                w_loc[old] -= w
                q_loc[new] += w * xs[j]
                q_loc[old] -= w * xs[j]
                for f in range(d):
                    v = w * np.float64(X[i, f])
                    s_loc[new, f] += v
                    s_loc[old, f] -= v
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
def _load_rows(X, sample_weight, x_sq, i0, i1, rows, xs, xw, ws, with_rows):  # pragma: no cover
    """Rows ``i0:i1`` as the tile's row list and their |x|^2; with ``with_rows`` also
    their weights and weighted float64 copies (for complete sums: converted once per
    tile, then shared by every clustering)."""
    d = X.shape[1]
    for j in range(i1 - i0):
        rows[j] = i0 + j
        xs[j] = x_sq[i0 + j]
    if with_rows:
        for j in range(i1 - i0):
            i = i0 + j
            w = np.float64(sample_weight[i])
            ws[j] = w
            for f in range(d):
                xw[j, f] = w * np.float64(X[i, f])


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _gathered_batch(
    X,
    sample_weight,
    C,
    half_cnorm,
    x_sq,
    margin_c,
    b,
    c0,
    c1,
    rows,
    m,
    xg,
    xs,
    best,
    best2,
    lab,
    ub,
    lb,
    labels,
    upper,
    lower,
    s_loc,
    w_loc,
    q_loc,
):  # pragma: no cover
    """Distances of the ``m`` gathered rows ``rows`` to clustering b's centroids (one
    BLAS call), then their new centroid, fresh bounds and the sum changes."""
    d = X.shape[1]
    for j in range(m):
        i = rows[j]
        for f in range(d):
            xg[j, f] = X[i, f]
        xs[j] = x_sq[i]
    GT = np.dot(C[c0:c1], xg[:m].T)
    _tile_block_argmin2(GT, half_cnorm[c0:c1], 0, c1 - c0, best, best2, lab)
    _fresh_bounds(xs, best, best2, m, margin_c, ub, lb)
    _store_assignment(
        X,
        sample_weight,
        b,
        c0,
        c1 - c0,
        rows,
        m,
        lab,
        ub,
        lb,
        labels,
        upper,
        lower,
        False,
        xg,
        xs,
        xs,
        s_loc,
        w_loc,
        q_loc,
    )


#: Rows per tile; the rows the bound test leaves are gathered into batches of one to two
#: tiles' worth per BLAS call.
_BTILE = 256


@njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _bounded_pass(
    X,
    sample_weight,
    C,
    half_cnorm,
    offsets,
    x_sq,
    active,
    labels,
    upper,
    lower,
    shift,
    s_half,
    max1,
    arg1,
    max2,
    full,
    C_dense,
    half_dense,
    dense_at,
    n_chunks,
):  # pragma: no cover
    """One Lloyd pass (assignment + centroid sums) of the ``active`` clusterings;
    ``shift`` is how far each centroid moved since the bounds were set.

    Two ways per clustering, chosen by the caller:

    * dense (``dense_at[b] >= 0``): every row's distances, through one BLAS call per
      tile for all the dense clusterings at once (their centroids stacked in
      ``C_dense``/``half_dense``, clustering b's at rows ``dense_at[b]:``). For the
      first pass, and while the bounds would not settle most rows anyway.
    * bounded: the rows the bounds cannot settle are gathered and only their distances
      computed (BLAS on ``C``, X's dtype; ``half_cnorm`` = |c|^2 / 2).

    A clustering with ``full[b]`` set (first pass, or its sums were rebuilt after an
    empty cluster was relocated) gets complete sums; the others get only the changes
    from rows that moved. Returns ``sums`` (n_chunks, K, d), ``weights`` (n_chunks, K),
    ``sq_sums`` (n_chunks, K: the weighted |x|^2 of each centroid's rows, from which the
    caller gets the inertia without another pass over X) and ``unsure``
    (n_chunks, n_blocks): how many rows failed the bound test (for dense clusterings
    with valid bounds: how many would have).
    """
    n, d = X.shape
    K = C.shape[0]
    n_blocks = offsets.shape[0] - 1
    margin_c = 0.0
    for c in range(K):
        margin_c = max(margin_c, 2.0 * np.float64(half_cnorm[c]))
    any_dense = False
    any_full = False
    for q in range(active.shape[0]):
        if dense_at[active[q]] >= 0:
            any_dense = True
        if full[active[q]]:
            any_full = True
    n_tiles = (n + _TILE - 1) // _TILE
    rows_per_chunk = ((n_tiles + n_chunks - 1) // n_chunks) * _TILE
    sums = np.zeros((n_chunks, K, d))
    weights = np.zeros((n_chunks, K))
    sq_sums = np.zeros((n_chunks, K))
    unsure = np.zeros((n_chunks, n_blocks), dtype=np.int64)
    for ch in prange(n_chunks):
        s_loc = np.zeros((K, d))
        w_loc = np.zeros(K)
        q_loc = np.zeros(K)
        un_loc = np.zeros(n_blocks, dtype=np.int64)
        xg = np.empty((2 * _BTILE, d), dtype=X.dtype)
        xw = np.empty((_BTILE, d))
        # the tile's rows (dense clusterings, full sums) and the gathered ones (bounded)
        rows_t = np.empty(_BTILE, dtype=np.int64)
        xs_t = np.empty(_BTILE)
        ws = np.empty(_BTILE)
        rows_g = np.empty(2 * _BTILE, dtype=np.int64)
        xs_g = np.empty(2 * _BTILE)
        best = np.empty(2 * _BTILE, dtype=X.dtype)
        best2 = np.empty(2 * _BTILE, dtype=X.dtype)
        lab = np.empty(2 * _BTILE, dtype=np.int32)
        ub = np.empty(2 * _BTILE)
        lb = np.empty(2 * _BTILE)
        r0 = ch * rows_per_chunk
        r_end = min(n, r0 + rows_per_chunk)
        # dense clusterings (and full ones): tile by tile, every row
        for i0 in range(r0, r_end, _BTILE):
            i1 = min(r_end, i0 + _BTILE)
            mt = i1 - i0
            if any_dense:  # one BLAS call for all the dense clusterings' centroids
                GT_dense = np.dot(C_dense, X[i0:i1].T)
                _load_rows(X, sample_weight, x_sq, i0, i1, rows_t, xs_t, xw, ws, any_full)
            for q in range(active.shape[0]):
                b = active[q]
                c0 = offsets[b]
                c1 = offsets[b + 1]
                at = dense_at[b]
                if at >= 0:
                    if not full[b]:
                        un_loc[b] += _select_unsure(
                            labels,
                            upper,
                            lower,
                            b,
                            c0,
                            i0,
                            i1,
                            shift,
                            s_half,
                            max1,
                            arg1,
                            max2,
                            rows_g,
                            False,
                        )
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
                    _load_rows(X, sample_weight, x_sq, i0, i1, rows_t, xs_t, xw, ws, True)
                    GT = np.dot(C[c0:c1], X[i0:i1].T)
                    _tile_block_argmin2(GT, half_cnorm[c0:c1], 0, c1 - c0, best, best2, lab)
                else:
                    continue
                _fresh_bounds(xs_t, best, best2, mt, margin_c, ub, lb)
                _store_tile(
                    X,
                    sample_weight,
                    c0,
                    c1 - c0,
                    i0,
                    mt,
                    lab,
                    ub,
                    lb,
                    labels[b],
                    upper[b],
                    lower[b],
                    full[b],
                    xw,
                    ws,
                    xs_t,
                    s_loc,
                    w_loc,
                    q_loc,
                )
        # bounded clusterings: the rows the bounds cannot settle, gathered across tiles so
        # that each BLAS call gets a full batch
        for q in range(active.shape[0]):
            b = active[q]
            if dense_at[b] >= 0 or full[b]:
                continue
            c0 = offsets[b]
            c1 = offsets[b + 1]
            m = 0
            for i0 in range(r0, r_end, _BTILE):
                i1 = min(r_end, i0 + _BTILE)
                k_new = _select_unsure(
                    labels,
                    upper,
                    lower,
                    b,
                    c0,
                    i0,
                    i1,
                    shift,
                    s_half,
                    max1,
                    arg1,
                    max2,
                    rows_g[m:],
                    True,
                )
                un_loc[b] += k_new
                m += k_new
                # a batch holds up to 2 tiles' rows: flush once it has one tile's worth
                if m >= _BTILE or (i1 == r_end and m > 0):
                    _gathered_batch(
                        X,
                        sample_weight,
                        C,
                        half_cnorm,
                        x_sq,
                        margin_c,
                        b,
                        c0,
                        c1,
                        rows_g,
                        m,
                        xg,
                        xs_g,
                        best,
                        best2,
                        lab,
                        ub,
                        lb,
                        labels,
                        upper,
                        lower,
                        s_loc,
                        w_loc,
                        q_loc,
                    )
                    m = 0
        sums[ch] = s_loc
        weights[ch] = w_loc
        sq_sums[ch] = q_loc
        unsure[ch] = un_loc
    return sums, weights, sq_sums, unsure
