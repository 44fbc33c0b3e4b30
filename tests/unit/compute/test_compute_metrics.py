"""Metrics of tasks.compute against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import make_blobs

from tasks.compute import (
    calinski_harabasz_score,
    davies_bouldin_score,
    dunn_index,
    silhouette_samples,
    silhouette_score,
)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=1500, n_features=5, centers=4, random_state=0)
    return X, y


def test_silhouette_equals_sklearn(blobs):
    X, y = blobs
    assert abs(silhouette_score(X, y) - skm.silhouette_score(X, y)) < 1e-9
    np.testing.assert_allclose(silhouette_samples(X, y), skm.silhouette_samples(X, y), atol=1e-9)


def test_silhouette_sample_size_same_subsample_as_sklearn(blobs):
    X, y = blobs
    ours = silhouette_score(X, y, sample_size=300, random_state=7)
    ref = skm.silhouette_score(X, y, sample_size=300, random_state=7)
    assert abs(ours - ref) < 1e-9


def test_silhouette_singletons_and_string_labels():
    X = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [9.0, 9.0]])
    labels = np.array(["a", "a", "b", "c"])
    np.testing.assert_allclose(
        silhouette_samples(X, labels), skm.silhouette_samples(X, labels), atol=1e-12
    )
    assert silhouette_samples(X, labels)[2] == 0.0


def test_dunn_index_hand_computed():
    # cluster 0: (0,0),(0,1) -> diameter 1; cluster 1: (4,0),(4,3) -> diameter 3
    # closest pair across clusters: (0,0)-(4,0) = 4 -> Dunn = 4 / 3
    X = np.array([[0.0, 0.0], [0.0, 1.0], [4.0, 0.0], [4.0, 3.0]])
    assert dunn_index(X, [0, 0, 1, 1]) == pytest.approx(4.0 / 3.0, rel=1e-12)


def test_dunn_index_matches_brute_force(blobs):
    X, y = blobs
    from scipy.spatial.distance import cdist

    D = cdist(X, X)
    same = y[:, None] == y[None, :]
    assert dunn_index(X, y) == pytest.approx(D[~same].min() / D[same].max(), rel=1e-9)


def test_db_ch_match_sklearn(blobs):
    X, y = blobs
    assert davies_bouldin_score(X, y) == pytest.approx(skm.davies_bouldin_score(X, y))
    assert calinski_harabasz_score(X, y) == pytest.approx(skm.calinski_harabasz_score(X, y))


@pytest.mark.parametrize(
    "fn", [silhouette_score, dunn_index, davies_bouldin_score, calinski_harabasz_score]
)
def test_single_cluster_raises(fn):
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match="Number of labels is 1"):
        fn(X, np.zeros(10))


@pytest.mark.parametrize(
    "fn", [silhouette_score, dunn_index, davies_bouldin_score, calinski_harabasz_score]
)
def test_wrong_label_length_raises(fn):
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match="labels has length 9 but X has 10 samples"):
        fn(X, np.arange(9) % 2)


def test_nan_in_X_raises():
    X = np.random.default_rng(0).normal(size=(10, 2))
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        silhouette_score(X, np.arange(10) % 2)


def test_silhouette_both_kernels_agree_across_tiles(monkeypatch):
    # > one row tile and > one column tile, uneven clusters; symmetric (pairs once, per-
    # thread column buffers) and plain (every pair twice) kernels give sklearn's value
    import tasks.compute.metrics as m

    X, y = make_blobs(
        n_samples=2500,
        n_features=3,
        centers=[[0, 0, 0], [4, 4, 4], [0, 6, 0]],
        cluster_std=[1.0, 2.0, 0.5],
        random_state=3,
    )
    y[:7] = 3  # a tiny fourth cluster
    ref = skm.silhouette_samples(X, y)
    np.testing.assert_allclose(silhouette_samples(X, y), ref, atol=1e-9)
    monkeypatch.setattr(m, "_SYM_BUFFER_MAX", 0)
    np.testing.assert_allclose(silhouette_samples(X, y), ref, atol=1e-9)


def test_dunn_index_across_tiles_matches_brute_force():
    from scipy.spatial.distance import cdist

    X, y = make_blobs(n_samples=2300, n_features=2, centers=3, random_state=1)
    D = cdist(X, X)
    same = y[:, None] == y[None, :]
    assert dunn_index(X, y) == pytest.approx(D[~same].min() / D[same].max(), rel=1e-9)


@pytest.mark.parametrize(
    ("n", "d", "k"),
    [
        (3, 2, 2),  # fewer rows than one 4-row block (rows padded to 4)
        (9, 1, 3),  # one feature: padded to 4, no chunk before the fused one
        (1234, 3, 5),  # n, d not multiples of 4; several column strips
        (2501, 5, 7),  # d = 5 -> 8: one plain chunk then the fused one; tail row tile
        (1103, 20, 60),  # many clusters: many short cluster segments per strip
    ],
)
def test_silhouette_shapes_match_sklearn(n, d, k):
    # the register-blocked kernel's padding (rows, features to multiples of 4), 4-row
    # blocks that straddle two clusters, strips cut by cluster boundaries, the diagonal
    # block, and row tiles shared between threads
    rng = np.random.default_rng(n + d + k)
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)  # every label present
    X = rng.normal(size=(k, d))[y] * 3.0 + rng.normal(size=(n, d))
    np.testing.assert_allclose(silhouette_samples(X, y), skm.silhouette_samples(X, y), atol=1e-9)
    assert abs(silhouette_score(X, y) - skm.silhouette_score(X, y)) < 1e-9


def test_silhouette_single_thread_same_as_parallel():
    # one numba thread and the default threads (row tiles shared between threads, column
    # sums in several per-thread buffers) agree
    import numba

    X, y = make_blobs(n_samples=1800, n_features=6, centers=4, random_state=5)
    ref = silhouette_samples(X, y)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = silhouette_samples(X, y)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_allclose(single, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref, skm.silhouette_samples(X, y), atol=1e-9)


@pytest.mark.parametrize(
    "make_labels",
    [
        lambda y: y,  # k-means codes 0..k-1
        lambda y: y * 7 + 3,  # gaps: codes with no row are empty clusters
        lambda y: y - 2,  # negative
        lambda y: y.astype(np.float64) + 0.5,
        lambda y: np.array([f"segment-{v}" for v in y]),
        lambda y: y.astype(np.uint8),
    ],
    ids=["codes", "gaps", "negative", "float", "strings", "uint8"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_db_ch_match_sklearn_on_any_label_kind(make_labels, seed):
    rng = np.random.default_rng(seed)
    k, d = 3 + seed * 2, 2 + seed
    centers = rng.normal(0, 5, size=(k, d))
    y = rng.integers(0, k, size=700)
    X = centers[y] + rng.standard_t(4, size=(700, d)) * rng.uniform(0.3, 2.0, size=d)
    labels = make_labels(y)
    assert davies_bouldin_score(X, labels) == pytest.approx(
        skm.davies_bouldin_score(X, labels), rel=1e-10
    )
    assert calinski_harabasz_score(X, labels) == pytest.approx(
        skm.calinski_harabasz_score(X, labels), rel=1e-10
    )


def test_db_ch_of_identical_rows_per_cluster_match_sklearn():
    X = np.repeat(np.array([[0.0, 0.0], [3.0, 4.0]]), 5, axis=0)
    y = np.repeat([0, 1], 5)
    assert davies_bouldin_score(X, y) == skm.davies_bouldin_score(X, y) == 0.0
    assert calinski_harabasz_score(X, y) == skm.calinski_harabasz_score(X, y) == 1.0


@pytest.mark.parametrize("fn", [davies_bouldin_score, calinski_harabasz_score])
def test_db_ch_one_label_per_row_raises(fn):
    X = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match="Number of labels is 6"):
        fn(X, np.arange(6))
