"""Numba kernels for mini-batch k-means (private: inputs are assumed valid and C-contiguous).

scikit-learn draws each batch with ``RandomState.choice(n, b, p=w / w.sum())``, i.e. numpy's
``cdf = p.cumsum(); cdf /= cdf[-1]; idx = cdf.searchsorted(random_sample(b), 'right')``,
which rebuilds the O(n) cumulative sum at every step. Here the cdf is built once, with
the same operations in the same order (bit-identical boundaries), and each batch is one
``random_sample(b)`` mapped through it by a local search: the same random stream picks
the same rows at O(b log) cost per step.

No ``fastmath`` in this module (reassociation or reciprocal division would change the
rounding that these kernels reproduce), except in :func:`_batch_labels`.

The final labels pass (:func:`labels_inertia_counts`) reads every row once and is most
of a default fit's time. Its distances are computed with the centres across SIMD lanes
(:func:`_nearest_lanes`: eight centres, one vector; each feature of a row broadcast
to all lanes): numba's loop vectoriser cannot vectorise a loop of eight and its SLP
vectoriser is off, and a BLAS product per tile of rows costs twice as much at k = 8.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from tasks.compute._kmeans_kernels import _FASTMATH, _chunk_rows, n_chunks_for
from tasks.compute._threads import PARALLEL_MIN_WORK, parts_for, run_parts, share


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


# ----------------------------------------------------------------- the final labels pass
#: Centres per SIMD group (one AVX2 register of float32; two of float64).
_LANES = 8
#: Rows per call of :func:`_nearest4` (they share each load of the centres), and
#: independent partial sums per row (features taken in turn). Fewer chains leave the
#: fused multiply-adds waiting on each other's latency: measured single-threaded, 1M x 20
#: float32, k = 8: 1 row x 4 sums 14.4 ms, 2 x 2 11.4 ms, 4 x 2 9.2 ms, 4 x 4 10.2 ms.
_ROWS = 4  # (the kernel unpacks four)
_N_ACC = 2


def _nearest_lanes(n_rows, n_acc):
    """An intrinsic ``(X, i, CT, g) -> (best_0, lane_0, ..., best_{n_rows-1}, lane_...)``:
    for the rows ``i .. i + n_rows - 1`` of X, ``best_r = min_l D_r[l]`` and the first
    lane reaching it, ``D_r[l] = sum_f (X[i + r, f] - CT[g, f, l])^2`` over the
    ``_LANES`` lanes of centre group ``g`` (``CT``: (groups, d, _LANES)). X and CT
    C-contiguous, of one dtype, which the sums keep. Each ``D_r[l]`` is the direct sum of
    squared differences (no ``|x|^2 + |c|^2 - 2 x.c`` cancellation), in ``n_acc``
    partial sums over the features. A NaN in a row makes all its lanes NaN and its
    minimum NaN (lane 0); an inf makes them inf or NaN."""

    @intrinsic
    def nearest(typingctx, X, i, CT, g):  # pragma: no cover
        if X.layout != "C" or CT.layout != "C" or X.dtype != CT.dtype:
            return None  # the addressing below assumes both; fail at compile time
        fty = X.dtype
        sig = types.Tuple((fty, types.intp) * n_rows)(X, i, CT, g)

        def codegen(context, builder, signature, args):
            xa = context.make_array(signature.args[0])(context, builder, args[0])
            ca = context.make_array(signature.args[2])(context, builder, args[2])
            intp = context.get_value_type(types.intp)
            i32 = ir.IntType(32)
            vt = ir.VectorType(context.get_value_type(fty), _LANES)
            splat0 = ir.Constant(ir.VectorType(i32, _LANES), [0] * _LANES)
            # fmuladd: fused where the CPU has FMA, a multiply and an add elsewhere (llvm.fma
            # would become a libm call per lane there)
            fma = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(vt, [vt, vt, vt]),
                f"llvm.fmuladd.v{_LANES}f{fty.bitwidth}",
            )
            cttz = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.IntType(_LANES), [ir.IntType(_LANES), ir.IntType(1)]),
                f"llvm.cttz.i{_LANES}",
            )
            d = builder.extract_value(xa.shape, 1)
            rows = [
                builder.gep(xa.data, [builder.mul(builder.add(args[1], ir.Constant(intp, r)), d)])
                for r in range(n_rows)
            ]
            first = builder.mul(builder.mul(args[3], d), ir.Constant(intp, _LANES))
            cols = builder.bitcast(builder.gep(ca.data, [first]), vt.as_pointer())
            zero = ir.Constant(vt, [0.0] * _LANES)
            accs = [
                [cgutils.alloca_once_value(builder, zero) for _ in range(n_acc)]
                for _ in range(n_rows)
            ]

            def splat(value):
                v = builder.insert_element(
                    ir.Constant(vt, ir.Undefined), value, ir.Constant(i32, 0)
                )
                return builder.shuffle_vector(v, v, splat0)

            def add_feature(f, a):
                c = builder.load(builder.gep(cols, [f]), align=fty.bitwidth // 8)
                for r in range(n_rows):
                    diff = builder.fsub(splat(builder.load(builder.gep(rows[r], [f]))), c)
                    acc = accs[r][a]
                    builder.store(builder.call(fma, [diff, diff, builder.load(acc)]), acc)

            step = ir.Constant(intp, n_acc)
            n_full = builder.udiv(d, step)
            with cgutils.for_range(builder, n_full) as loop:
                f0 = builder.mul(loop.index, step)
                for a in range(n_acc):
                    add_feature(builder.add(f0, ir.Constant(intp, a)), a)
            one = ir.Constant(intp, 1)
            with cgutils.for_range_slice(builder, builder.mul(n_full, step), d, one) as (f, _):
                add_feature(f, 0)
            out = []
            for r in range(n_rows):
                parts = [builder.load(a) for a in accs[r]]
                while len(parts) > 1:
                    parts = [builder.fadd(parts[j], parts[j + 1]) for j in range(0, len(parts), 2)]
                dist = parts[0]
                # horizontal minimum by halves, then the first lane equal to it
                m, n = dist, _LANES
                while n > 1:
                    h = n // 2
                    lo = ir.Constant(ir.VectorType(i32, h), list(range(h)))
                    hi = ir.Constant(ir.VectorType(i32, h), list(range(h, n)))
                    lo, hi = builder.shuffle_vector(m, m, lo), builder.shuffle_vector(m, m, hi)
                    m = builder.select(builder.fcmp_ordered("<", hi, lo), hi, lo)
                    n = h
                best = builder.extract_element(m, ir.Constant(i32, 0))
                eq = builder.fcmp_ordered("==", dist, splat(best))
                tz = builder.call(
                    cttz, [builder.bitcast(eq, ir.IntType(_LANES)), ir.Constant(ir.IntType(1), 0)]
                )
                # no lane equal (a NaN minimum): cttz gives _LANES, masked to lane 0
                out += [best, builder.and_(builder.zext(tz, intp), ir.Constant(intp, _LANES - 1))]
            return context.make_tuple(builder, signature.return_type, out)

        return sig, codegen

    return nearest


_nearest4 = _nearest_lanes(_ROWS, _N_ACC)
_nearest1 = _nearest_lanes(1, _N_ACC)


@njit(cache=True, nogil=True, inline="always")
def _take(labels, cnt, sample_weight, unit, i, best, label, acc):  # pragma: no cover
    labels[i] = label
    cnt[label] += 1
    if unit:
        return acc + np.float64(best)
    return acc + np.float64(sample_weight[i]) * np.float64(best)


@njit(cache=True, nogil=True)
def _labels_inertia_part(
    part, n_parts, X, sample_weight, CT, labels, inertia, counts
):  # pragma: no cover
    """:func:`labels_inertia_counts` for the chunks of one part: per chunk, the weighted
    inertia (float64) and the rows per centre (padded to whole groups); an empty
    ``sample_weight``: unit weights. Rows in fours (:func:`_nearest4`), the rest of a
    chunk one by one."""
    n = X.shape[0]
    n_chunks = inertia.shape[0]
    n_groups = CT.shape[0]
    unit = sample_weight.shape[0] == 0
    ch0, ch1 = share(part, n_parts, n_chunks)
    for ch in range(ch0, ch1):
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        acc = 0.0
        cnt = counts[ch]
        i = r0
        while i + 4 <= r1:
            b0, l0, b1, l1, b2, l2, b3, l3 = _nearest4(X, i, CT, 0)
            for g in range(1, n_groups):
                c0, m0, c1, m1, c2, m2, c3, m3 = _nearest4(X, i, CT, g)
                off = g * _LANES
                if c0 < b0:
                    b0, l0 = c0, off + m0
                if c1 < b1:
                    b1, l1 = c1, off + m1
                if c2 < b2:
                    b2, l2 = c2, off + m2
                if c3 < b3:
                    b3, l3 = c3, off + m3
            acc = _take(labels, cnt, sample_weight, unit, i, b0, l0, acc)
            acc = _take(labels, cnt, sample_weight, unit, i + 1, b1, l1, acc)
            acc = _take(labels, cnt, sample_weight, unit, i + 2, b2, l2, acc)
            acc = _take(labels, cnt, sample_weight, unit, i + 3, b3, l3, acc)
            i += 4
        for j in range(i, r1):
            best, bi = _nearest1(X, j, CT, 0)
            for g in range(1, n_groups):
                b, lane = _nearest1(X, j, CT, g)
                if b < best:
                    best, bi = b, g * _LANES + lane
            acc = _take(labels, cnt, sample_weight, unit, j, best, bi, acc)
        inertia[ch] = acc


def labels_inertia_counts(X, sample_weight, centers):
    """Nearest centre of every row (int32, first on ties), the inertia (sum of
    ``w * ||x - c||^2``, each distance summed in X's dtype, the rows added in float64 in
    a fixed order whatever the thread count) and the rows per centre (int64), in one
    pass over X. ``sample_weight``: X's rows' weights, or an empty array for unit
    weights; ``centers``: (k, d), X's dtype. A NaN or inf in X makes the inertia
    non-finite; so does a float32 distance overflowing (|x| beyond about 1e19)."""
    n, d = X.shape
    k = centers.shape[0]
    n_groups = (k + _LANES - 1) // _LANES
    # lanes past k repeat their group's first centre: equal distances, and the first lane
    # wins ties, so they are never chosen
    pick = np.arange(n_groups * _LANES)
    pick = np.where(pick < k, pick, (pick // _LANES) * _LANES)
    CT = centers[pick].reshape(n_groups, _LANES, d).transpose(0, 2, 1)
    CT = np.ascontiguousarray(CT, dtype=X.dtype)
    n_chunks = n_chunks_for(n)
    labels = np.empty(n, dtype=np.int32)
    inertia = np.zeros(n_chunks)
    counts = np.zeros((n_chunks, n_groups * _LANES), dtype=np.int64)
    n_parts = parts_for(n_chunks) if n * d * k >= PARALLEL_MIN_WORK else 1
    run_parts(_labels_inertia_part, n_parts, X, sample_weight, CT, labels, inertia, counts)
    total = 0.0
    for ch in range(n_chunks):  # in chunk order, whatever the thread count
        total += inertia[ch]
    return labels, total, counts.sum(axis=0)[:k]
