import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from tasks.cluster import k_range, sweep
from tasks.config import load_params
from tasks.errors import DataError
from tasks.select import knee_point, select_k


def _config(*overrides):
    return load_params(overrides=["cluster.backend=sklearn", *overrides]).cluster


def test_sweep_matches_sklearn_and_scores_each_k(blobs):
    values, _ = blobs
    result = sweep(values, _config("cluster.k_min=2", "cluster.k_max=5"))
    assert result.k_values == [2, 3, 4, 5]
    for k, fit in result.fits.items():
        reference = KMeans(n_clusters=k, n_init=10, random_state=0).fit(values)
        assert fit.inertia == pytest.approx(reference.inertia_, rel=1e-9)
        assert fit.metrics["silhouette"] == pytest.approx(silhouette_score(values, fit.labels))
        assert fit.metrics["calinski_harabasz"] == pytest.approx(
            calinski_harabasz_score(values, fit.labels)
        )
        assert fit.metrics["davies_bouldin"] == pytest.approx(
            davies_bouldin_score(values, fit.labels)
        )
        distances = np.linalg.norm(values - fit.centroids[fit.labels], axis=1)
        assert fit.metrics["mean_distance_to_centroid"] == pytest.approx(distances.mean())
    # Well separated blobs: k=3 has the best silhouette and a large Dunn index.
    table = result.metric_table()
    assert result.k_values[int(np.argmax(table["silhouette"]))] == 3
    assert result.fits[3].metrics["dunn"] > 1.0


def test_numba_engine_agrees_with_sklearn(blobs):
    values, truth = blobs
    numba = sweep(values, _config("cluster.backend=numba", "cluster.k_max=4"))
    sk = sweep(values, _config("cluster.k_max=4"))
    for k in numba.k_values:
        assert numba.fits[k].inertia <= sk.fits[k].inertia * 1.01
        assert numba.fits[k].metrics["silhouette"] == pytest.approx(
            silhouette_score(values, numba.fits[k].labels), abs=1e-9
        )
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, numba.fits[3].labels) == 1.0


def test_k_max_capped_at_rows_minus_one():
    ks = k_range(_config("cluster.k_max=12"), n_rows=6)
    assert ks.k_values == [2, 3, 4, 5] and ks.capped and ks.k_max_requested == 12
    assert not k_range(_config("cluster.k_max=5"), n_rows=6).capped
    # The sweep carries the cap as a field; its notes are built from it.
    values = np.arange(12, dtype=np.float64).reshape(6, 2)
    swept = sweep(values, _config("cluster.k_max=12", "cluster.n_init=1"))
    assert swept.k_capped and swept.k_max_requested == 12 and swept.k_values == [2, 3, 4, 5]
    assert swept.notes == ks.notes()
    with pytest.raises(DataError, match="too few for cluster.k_min=4"):
        k_range(_config("cluster.k_min=4", "cluster.k_max=6"), n_rows=4)


def test_silhouette_on_stated_sample_above_limit():
    rng = np.random.default_rng(0)
    values = np.vstack([rng.normal(0, 1, (150, 2)), rng.normal(6, 1, (150, 2))])
    result = sweep(values, _config("cluster.k_max=3", "cluster.silhouette_sample=100"))
    assert result.silhouette_rows == 100 and result.n_rows == 300 and not result.k_capped


def test_knee_on_hand_made_curve():
    # Inertia drops steeply to k=4 then flattens: the knee is 4.
    ks = [2, 3, 4, 5, 6, 7, 8]
    inertia = [100, 60, 25, 22, 20, 18.5, 17]
    k, gap = knee_point(ks, inertia)
    assert k == 4 and gap > 0.3
    assert knee_point([2, 3, 4], [3, 2, 1]) == (None, pytest.approx(0.0))  # straight line


def test_criteria_and_consensus(blobs):
    values, _ = blobs
    result = sweep(values, _config("cluster.k_max=8"))
    for criterion in ("silhouette", "calinski_harabasz", "davies_bouldin", "elbow", "consensus"):
        selection = select_k(result, criterion)
        assert selection.k == 3, (criterion, selection.reason)
        assert selection.reason.startswith("k=3")
    consensus = select_k(result, "consensus")
    assert consensus.votes[3] >= 3
    assert set(consensus.details["candidates"]) == {
        "elbow",
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
    }


def test_sweep_notes_are_built_from_its_fields():
    from tasks.cluster import KFit, SweepResult

    fit = KFit(
        k=2, centroids=np.zeros((2, 1)), labels=np.zeros(3, dtype=np.int64), inertia=0, n_iter=1
    )
    swept = SweepResult(
        fits={2: fit},
        backend="numba",
        silhouette_rows=500,
        n_rows=2000,
        k_capped=True,
        k_max_requested=9,
        seeding_rows=1000,
        engine_notes=["on a cluster"],
    )
    assert swept.notes == [
        "cluster.k_max=9 capped at 2 (rows - 1)",
        "k-means++ seeding (cluster.n_init runs per k) on a seeded sample of 1000 rows, "
        "then Lloyd iterations on all 2000 rows",
        "silhouette and Dunn index on a seeded sample of 500 of 2000 rows",
        "on a cluster",
    ]
    everything = SweepResult(fits={2: fit}, backend="numba", silhouette_rows=3, n_rows=3)
    assert everything.notes == []


def test_numba_sweep_in_memory_bounded_groups_gives_the_one_sweep_result(monkeypatch):
    from tasks import cluster
    from tasks.compute import KMeansSweep

    rng = np.random.default_rng(5)
    values = np.vstack([c + rng.normal(size=(300, 3)) for c in rng.uniform(-8, 8, (5, 3))])
    config = _config("cluster.backend=numba", "cluster.k_max=7", "cluster.n_init=4")
    # 12 bytes x 1500 rows x 4 inits per k: two k values a group.
    monkeypatch.setattr(cluster, "SWEEP_GROUP_BYTES", 2 * 12 * 1500 * 4)
    assert cluster.sweep_groups([2, 3, 4, 5, 6, 7], 4, 1500) == [[2, 3], [4, 5], [6, 7]]
    steps = []
    grouped = cluster._numba_fits(
        values, [2, 3, 4, 5, 6, 7], config, lambda *a, **kw: steps.append(a)
    )
    whole = KMeansSweep(k_values=range(2, 8), n_init=4, random_state=0).fit(values)
    for k in range(2, 8):
        centroids, labels, inertia, _ = grouped[k]
        assert inertia == pytest.approx(whole.models_[k].inertia_, rel=1e-9)
        np.testing.assert_allclose(centroids, whole.models_[k].cluster_centers_, atol=1e-9)
        np.testing.assert_array_equal(labels, whole.models_[k].labels_)
    # Progress counts k values over the whole sweep, not per group.
    assert {total for _, total in steps} == {6} and max(done for done, _ in steps) == 6
