"""Lloyd iterations with Hamerly's bounds give plain Lloyd's answers (scikit-learn's
``algorithm="lloyd"`` from the same initial centroids).

The bounded passes are used from ``_BOUNDED_MIN_ROWS`` rows on; these tests lower that
to 0 so that they run on small data."""

import numpy as np
import pytest
import sklearn.cluster as skc
from sklearn.datasets import make_blobs

from tasks.compute import KMeans, KMeansSweep
from tasks.compute import kmeans as kmeans_module


@pytest.fixture(autouse=True)
def _bounded_from_the_first_row(monkeypatch):
    monkeypatch.setattr(kmeans_module, "_BOUNDED_MIN_ROWS", 0)


@pytest.fixture(scope="module")
def overlapping():
    # more centroids than blobs, blobs touching: many rows sit near a boundary between
    # two centroids, so the bounds often cannot settle a row and the BLAS fallback runs
    X, _ = make_blobs(n_samples=4000, n_features=5, centers=4, cluster_std=2.5, random_state=7)
    return X


@pytest.mark.parametrize("max_iter", [1, 2, 5, 300])
def test_same_trajectory_as_sklearn_lloyd(overlapping, max_iter):
    X = overlapping
    init = X[np.random.default_rng(0).choice(X.shape[0], 11, replace=False)]
    ours = KMeans(11, init=init, n_init=1, max_iter=max_iter).fit(X)
    ref = skc.KMeans(11, init=init, n_init=1, max_iter=max_iter, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)
    assert ours.n_iter_ == ref.n_iter_


def test_float32_same_answer_as_sklearn(overlapping):
    X = overlapping.astype(np.float32)
    init = X[:9].copy()
    ours = KMeans(9, init=init, n_init=1).fit(X)
    ref = skc.KMeans(9, init=init, n_init=1, algorithm="lloyd").fit(X)
    assert ours.cluster_centers_.dtype == np.float32
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)
    assert (ours.labels_ == ref.labels_).mean() > 0.99
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)


def test_empty_cluster_relocated_like_sklearn(overlapping):
    X = overlapping
    init = X[:6].copy()
    init[2] = 1e4  # no row is nearest to it: relocated to the farthest row on the first update
    init[4] = -1e4
    ours = KMeans(6, init=init, n_init=1).fit(X)
    ref = skc.KMeans(6, init=init, n_init=1, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.n_iter_ == ref.n_iter_
    assert np.bincount(ours.labels_, minlength=6).min() > 0


def test_weighted_rows_same_as_sklearn(overlapping):
    X = overlapping
    w = np.random.default_rng(3).uniform(0.1, 5.0, X.shape[0])
    init = X[10:18].copy()
    ours = KMeans(8, init=init, n_init=1).fit(X, sample_weight=w)
    ref = skc.KMeans(8, init=init, n_init=1, algorithm="lloyd").fit(X, sample_weight=w)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-8)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)


def test_single_cluster_and_duplicate_rows():
    X = np.repeat(np.arange(12.0).reshape(6, 2), 3, axis=0)
    one = KMeans(1, random_state=0).fit(X)
    np.testing.assert_allclose(one.cluster_centers_[0], X.mean(axis=0))
    assert one.inertia_ == pytest.approx(((X - X.mean(axis=0)) ** 2).sum())
    six = KMeans(6, random_state=0, n_init=3).fit(X)
    assert six.inertia_ == pytest.approx(0.0, abs=1e-9)


def test_runs_split_into_groups_give_the_same_sweep(overlapping, monkeypatch):
    whole = KMeansSweep(range(2, 8), n_init=1, random_state=4).fit(overlapping)
    # bounds memory for one run only: every run gets its own group of passes
    monkeypatch.setattr(kmeans_module, "_BOUNDS_BYTES_MAX", 12 * overlapping.shape[0])
    split = KMeansSweep(range(2, 8), n_init=1, random_state=4).fit(overlapping)
    for k in range(2, 8):
        np.testing.assert_array_equal(whole.models_[k].labels_, split.models_[k].labels_)
        assert whole.models_[k].inertia_ == pytest.approx(split.models_[k].inertia_, rel=1e-12)
        assert whole.models_[k].n_iter_ == split.models_[k].n_iter_


def test_bounded_and_plain_passes_agree(overlapping, monkeypatch):
    bounded = KMeansSweep(range(2, 10), n_init=1, random_state=2).fit(overlapping)
    monkeypatch.setattr(kmeans_module, "_BOUNDED_MIN_ROWS", overlapping.shape[0] + 1)
    plain = KMeansSweep(range(2, 10), n_init=1, random_state=2).fit(overlapping)
    for k in range(2, 10):
        a, b = bounded.models_[k], plain.models_[k]
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=0, atol=1e-8)
        assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-10)
        assert a.n_iter_ == b.n_iter_


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_smallest_per_row_with_ties(dtype):
    """The bounds' nearest and second-nearest values per row (the kernel keeps them in two
    vectorised loops): the first smallest wins a tie, and a tie makes the second
    smallest equal to the smallest."""
    from tasks.compute._hamerly_kernels import _tile_block_argmin2

    rng = np.random.default_rng(3)
    k, m = 9, 300
    GT = rng.integers(0, 5, size=(k, m)).astype(dtype)  # few values: many ties
    half = rng.integers(0, 3, size=k).astype(dtype)
    best = np.empty(m, dtype)
    best2 = np.empty(m, dtype)
    lab = np.empty(m, np.int32)
    for c0, c1 in [(0, k), (2, 7), (4, 5)]:
        _tile_block_argmin2(GT, half, c0, c1, best, best2, lab)
        values = half[c0:c1, None] - GT[c0:c1]
        np.testing.assert_array_equal(lab, c0 + values.argmin(axis=0))
        np.testing.assert_array_equal(best, values.min(axis=0))
        second = np.sort(values, axis=0)[1] if c1 - c0 > 1 else np.full(m, np.inf)
        np.testing.assert_array_equal(best2, second)
