"""MiniBatchKMeans against scikit-learn: same random stream, same steps, same centres."""

import warnings

import numpy as np
import pytest
import sklearn.cluster as skc
from sklearn.datasets import make_blobs

from tasks.compute import MiniBatchKMeans
from tasks.compute._minibatch_kernels import (
    _exact_equal_step,
    _sampling_cdf,
    _searchsorted_right,
    labels_inertia_counts,
)


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=3000, n_features=6, centers=5, cluster_std=1.5, random_state=0)
    return X


def _data(n, d, k, seed, dtype):
    X, _ = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=2.0, random_state=seed)
    return X.astype(dtype)


def _numpy_cdf(sw):
    """numpy's RandomState.choice cdf for sklearn's p = sw / sw.sum() (sw's dtype)."""
    cdf = np.asarray(sw / np.sum(sw), dtype=np.float64).cumsum()
    cdf /= cdf[-1]
    return cdf


def _fit_both(X, k, sample_weight=None, **kw):
    ours = MiniBatchKMeans(k, **kw).fit(X, sample_weight=sample_weight)
    ref = skc.MiniBatchKMeans(k, **kw).fit(X, sample_weight=sample_weight)
    return ours, ref


# ----------------------------------------------------------------------- sampling kernel
def _check_search(cdf, u, p=0.0, n=None):
    out = np.empty(u.shape[0], dtype=np.int64)
    n = cdf.shape[0] if n is None else n
    _searchsorted_right(cdf, p, n, u, out)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["uniform", "random", "skewed", "zeros"])
def test_sampling_kernel_equals_searchsorted(dtype, kind):
    rng = np.random.default_rng(3)
    n = 20_011
    sw = {
        "uniform": np.ones(n),
        "random": rng.random(n),
        # a few heavy rows hold almost all the mass: long flat / steep stretches
        "skewed": np.where(rng.random(n) < 0.001, 1e9, 1e-6) * rng.random(n) ** 8,
        # zero weights at both ends and in runs: flat stretches of the cdf
        "zeros": np.where((np.arange(n) // 97) % 3 == 0, 0.0, rng.random(n)),
    }[kind].astype(dtype)
    if kind == "zeros":
        sw[:50] = 0
        sw[-50:] = 0
    cdf = _sampling_cdf(sw, np.sum(sw))
    ref_cdf = _numpy_cdf(sw)
    np.testing.assert_array_equal(cdf, ref_cdf)  # bit-identical boundaries
    u = np.random.RandomState(0).random_sample(50_000)
    # u exactly on boundaries (and just around them), 0, the largest double below 1
    on = ref_cdf[rng.integers(0, n, 2000)]
    u = np.concatenate(
        [u, on, np.nextafter(on, 0), np.nextafter(on, 1), [0.0, np.nextafter(1.0, 0)]]
    )
    u = u[u < 1]
    np.testing.assert_array_equal(_check_search(cdf, u), np.searchsorted(ref_cdf, u, "right"))


def test_sampling_replays_random_state_choice():
    rng = np.random.default_rng(1)
    n, b = 7919, 512
    for sw in (rng.random(n).astype(np.float32), rng.random(n) ** 6):
        p = sw / np.sum(sw)
        rs_ref, rs = np.random.RandomState(5), np.random.RandomState(5)
        cdf = _sampling_cdf(sw, np.sum(sw))
        for _ in range(3):
            ref = rs_ref.choice(n, b, p=p, replace=True)
            np.testing.assert_array_equal(_check_search(cdf, rs.random_sample(b)), ref)


@pytest.mark.parametrize("n", [1, 2, 1000, 999_983, 1 << 20])
def test_equal_weights_closed_form(n):
    """Equal float32 weights: the O(1) cdf is numpy's, boundaries included."""
    sw = np.ones(n, dtype=np.float32)
    p = float((sw[:1] / np.sum(sw))[0])
    assert _exact_equal_step(p, n)
    cdf = _numpy_cdf(sw)
    i = np.random.default_rng(0).integers(0, n, 3000)
    u = np.concatenate([np.random.RandomState(1).random_sample(3000), cdf[i], [0.0]])
    u = np.concatenate([u, np.nextafter(u, 0)])
    u = u[u < 1]
    empty = np.empty(0)
    np.testing.assert_array_equal(_check_search(empty, u, p, n), np.searchsorted(cdf, u, "right"))


def test_exact_equal_step_rule():
    assert _exact_equal_step(float(np.float32(1 / 3)), 1 << 28)
    assert not _exact_equal_step(1 / 3, 3)  # 53-bit significand: the cumsum rounds
    assert _exact_equal_step(1 / 1024, 1024)
    assert not _exact_equal_step(0.0, 10)


# ------------------------------------------------------------------ final labels kernel
def _numpy_labels_inertia(X, C, sw):
    D = ((X.astype(np.float64)[:, None, :] - C.astype(np.float64)[None]) ** 2).sum(axis=2)
    return D, np.argmin(D, axis=1), float(np.sum(sw * D.min(axis=1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 3, 8, 9, 20])
@pytest.mark.parametrize("d", [1, 3, 20])
@pytest.mark.parametrize("weighted", [False, True])
def test_labels_kernel_matches_numpy(dtype, k, d, weighted):
    """The SIMD labels pass (centres in groups of eight lanes, the last group padded)
    against float64 numpy: the same labels wherever the nearest centre is not within
    rounding of the second, the inertia and the rows per centre."""
    rng = np.random.default_rng(k * 100 + d)
    X = (rng.normal(size=(3001, d)) * 3 + 10).astype(dtype)  # off-origin: no cancellation
    C = (rng.normal(size=(k, d)) * 3 + 10).astype(dtype)
    sw = rng.random(3001).astype(dtype) if weighted else np.ones(3001, dtype=dtype)
    labels, inertia, counts = labels_inertia_counts(
        X, sw if weighted else np.empty(0, dtype=dtype), C
    )
    D, ref_labels, ref_inertia = _numpy_labels_inertia(X, C, sw)
    assert labels.dtype == np.int32 and counts.dtype == np.int64
    two = np.sort(D, axis=1)[:, :2] if k > 1 else np.c_[D, D + 1]
    clear = (two[:, 1] - two[:, 0]) > 1e-4 * two[:, 1]
    np.testing.assert_array_equal(labels[clear], ref_labels[clear])
    # a row off the argmin is within rounding of it
    np.testing.assert_allclose(D[np.arange(3001), labels], D.min(axis=1), rtol=1e-5)
    assert inertia == pytest.approx(ref_inertia, rel=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))


def test_labels_kernel_ties_and_non_finite_rows():
    """Equal centres: the first one wins (the padded lanes repeat a centre, so they never
    win); a NaN or inf in a row makes the inertia non-finite."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4)).astype(np.float32)
    C = np.repeat(rng.normal(size=(3, 4)).astype(np.float32), 3, axis=0)  # 0=1=2, 3=4=5, 6=7=8
    labels, inertia, counts = labels_inertia_counts(X, np.empty(0, np.float32), C)
    assert set(np.unique(labels)) <= {0, 3, 6}
    assert counts.sum() == 500 and np.isfinite(inertia)
    for value in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[123, 2] = value
        assert not np.isfinite(labels_inertia_counts(Y, np.empty(0, np.float32), C)[1])
        zero = np.ones(500, np.float32)
        zero[123] = 0  # a zero weight does not hide it
        assert not np.isfinite(labels_inertia_counts(Y, zero, C)[1])


@pytest.mark.filterwarnings(
    "ignore::RuntimeWarning", "ignore::sklearn.exceptions.ConvergenceWarning"
)
def test_float32_distance_overflow_falls_back_to_float64():
    """Finite float32 data whose squared distances overflow float32 (|x| ~ 1e19 and
    above): the fit's inertia is recomputed with float64 distances, finite."""
    X = (_data(2000, 3, 3, 0, np.float64) * 1e19).astype(np.float32)
    m = MiniBatchKMeans(3, batch_size=100, random_state=0, max_iter=1).fit(X)
    assert not np.isfinite(labels_inertia_counts(X, np.empty(0, X.dtype), m.cluster_centers_)[1])
    assert np.isfinite(m.inertia_) and m.inertia_ > 0
    C = m.cluster_centers_.astype(np.float64)
    ref = np.sum((X.astype(np.float64) - C[m.labels_]) ** 2)
    assert m.inertia_ == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("k", [64, 65])
def test_labels_pass_either_side_of_the_simd_limit(k):
    """Up to _SIMD_MAX_K centres the SIMD pass, beyond it the BLAS pass: both give the
    labels and the inertia of the fitted centres, and predict gives labels_."""
    from tasks.compute.minibatch import _SIMD_MAX_K

    assert _SIMD_MAX_K == 64
    X = _data(6000, 5, 10, 3, np.float64)
    m = MiniBatchKMeans(k, batch_size=256, random_state=0).fit(X)
    D, _, ref_inertia = _numpy_labels_inertia(X, m.cluster_centers_, np.ones(6000))
    np.testing.assert_allclose(D[np.arange(6000), m.labels_], D.min(axis=1), rtol=1e-9)
    assert m.inertia_ == pytest.approx(ref_inertia, rel=1e-9)
    np.testing.assert_array_equal(m.predict(X), m.labels_)


# -------------------------------------------------------------------- replay of the fit
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("n", "d", "k", "batch", "dtype"),
    [
        (5000, 4, 4, 100, np.float64),
        (20000, 10, 8, 256, np.float32),
        (3000, 6, 5, 1024, np.float32),
    ],
)
def test_same_steps_as_sklearn(seed, n, d, k, batch, dtype):
    X = _data(n, d, k, seed, dtype)
    ours, ref = _fit_both(X, k, batch_size=batch, random_state=seed)
    assert ours.n_steps_ == ref.n_steps_
    assert ours.n_iter_ == ref.n_iter_
    assert ours.inertia_ <= 1.02 * ref.inertia_
    assert ours.cluster_centers_.dtype == X.dtype
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(n_init=3),
        dict(init="random"),
        dict(init="random", n_init=2),
        dict(init_size=100_000),  # >= n_samples: no subset drawn
        dict(init_size=50),
        dict(reassignment_ratio=0.5),  # frequent reassignments
        dict(batch_size=5000),  # batch > n_samples
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_batches_as_sklearn(kw, dtype):
    """Fixed number of steps: the same batches (and inits, reassignments) give the same
    centres as scikit-learn."""
    X = _data(4000, 5, 6, 7, dtype)
    kw = {"batch_size": 128, **kw}
    ours, ref = _fit_both(X, 10, random_state=11, max_iter=2, max_no_improvement=None, **kw)
    assert ours.n_steps_ == ref.n_steps_ == (2 * 4000) // min(kw["batch_size"], 4000)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)


def test_array_init_and_warnings():
    X = _data(2000, 3, 4, 0, np.float64)
    init = X[:4].copy()
    with pytest.warns(RuntimeWarning, match="Explicit initial center"):
        ours = MiniBatchKMeans(4, init=init, n_init=3, random_state=0, max_iter=1).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = skc.MiniBatchKMeans(4, init=init, n_init=3, random_state=0, max_iter=1).fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    np.testing.assert_array_equal(init, X[:4])  # the init array is not modified
    with pytest.warns(RuntimeWarning, match="init_size=2 should be larger"):
        ours = MiniBatchKMeans(4, init_size=2, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = skc.MiniBatchKMeans(4, init_size=2, random_state=0).fit(X)
    assert ours.n_steps_ == ref.n_steps_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-6)


# -------------------------------------------------------------------------- sample_weight
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sample_weight_like_sklearn(dtype):
    X = _data(6000, 4, 5, 3, dtype)
    rng = np.random.default_rng(0)
    sw = rng.random(6000) * 3
    sw[::10] = 0  # never drawn
    ours, ref = _fit_both(X, 5, sample_weight=sw, batch_size=200, random_state=2)
    assert ours.n_steps_ == ref.n_steps_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-4, atol=1e-4)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)
    fixed = dict(max_iter=1, max_no_improvement=None, batch_size=200, random_state=2)
    ours, ref = _fit_both(X, 5, sample_weight=sw, **fixed)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unit_weights_same_as_none(dtype):
    X = _data(3000, 4, 4, 1, dtype)
    a = MiniBatchKMeans(4, batch_size=64, random_state=0).fit(X)
    b = MiniBatchKMeans(4, batch_size=64, random_state=0).fit(X, sample_weight=np.ones(3000))
    assert a.n_steps_ == b.n_steps_
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_


def test_bad_sample_weight():
    X = _data(500, 2, 3, 0, np.float64)
    with pytest.raises(ValueError, match="sample_weight"):
        MiniBatchKMeans(3).fit(X, sample_weight=-np.ones(500))
    with pytest.raises(ValueError, match="(?i)sample.weight"):
        MiniBatchKMeans(3).fit(X, sample_weight=np.zeros(500))


# ------------------------------------------------------------------------ basic behaviour
def test_minibatch_close_to_sklearn(blobs):
    ours = MiniBatchKMeans(5, batch_size=256, random_state=0, n_init=3).fit(blobs)
    ref = skc.MiniBatchKMeans(5, batch_size=256, random_state=0, n_init=3).fit(blobs)
    assert ours.inertia_ <= 1.02 * ref.inertia_
    np.testing.assert_array_equal(ours.predict(blobs), ours.labels_)
    f32 = MiniBatchKMeans(5, random_state=0).fit(blobs.astype(np.float32))
    assert f32.cluster_centers_.dtype == np.float32


def test_minibatch_fixed_steps_and_params():
    X, _ = make_blobs(n_samples=5000, n_features=4, centers=4, random_state=2)
    m = MiniBatchKMeans(4, batch_size=100, max_iter=1, max_no_improvement=None, random_state=0).fit(
        X
    )
    assert m.n_steps_ == 50  # one epoch: n_samples // batch_size steps
    assert m.n_iter_ == 1
    ref = skc.KMeans(4, n_init=3, random_state=0).fit(X)
    assert m.inertia_ <= 1.05 * ref.inertia_
    for kw, name in [
        (dict(batch_size=0), "batch_size"),
        (dict(init_size=0), "init_size"),
        (dict(max_no_improvement=-1), "max_no_improvement"),
        (dict(reassignment_ratio=-0.1), "reassignment_ratio"),
    ]:
        with pytest.raises(ValueError, match=name):
            MiniBatchKMeans(2, **kw).fit(X)


def test_warns_on_fewer_distinct_clusters():
    from sklearn.exceptions import ConvergenceWarning

    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 50, axis=0)
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        m = MiniBatchKMeans(3, batch_size=10, random_state=0).fit(X)
    assert len(np.unique(m.labels_)) == 2


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("kw", [{}, dict(n_init=3)])
@pytest.mark.parametrize("rows", [slice(None), 0, 2500, 4999])
def test_non_finite_rows_give_sklearns_error_and_no_fit(value, kw, rows):
    """X's NaN/inf check is made on the init/validation subsets and by the final full
    pass, not by a pass of its own: a bad value in any row (most single rows are outside
    the 300-row init subsets) still gets scikit-learn's error, with the same message, and
    leaves the estimator unfitted."""
    X = _data(5000, 4, 3, 0, np.float32)
    X[rows, 2] = value
    ours = MiniBatchKMeans(3, batch_size=100, random_state=0, **kw)
    with pytest.raises(ValueError) as ours_error:
        ours.fit(X)
    with pytest.raises(ValueError) as sk_error:
        skc.MiniBatchKMeans(3, batch_size=100, random_state=0, **kw).fit(X)
    assert str(ours_error.value) == str(sk_error.value)
    assert not hasattr(ours, "cluster_centers_")
