"""The Dask engine's reductions against numpy / scikit-learn on the same rows: per-chunk
k-means pieces, cluster scores from per-cluster sums, PCA from a covariance, column moments,
exact quantiles, the seeded sample and id uniqueness over partitions."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.decomposition import PCA

from tasks.compute import (
    assign_partial,
    calinski_harabasz_from_stats,
    davies_bouldin_from_stats,
    lloyd_partial_sums,
    lloyd_update,
    relocate_empty_clusters,
    stack_centers,
)
from tasks.reduce import pca_from_covariance


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(11)
    centers = rng.normal(scale=5, size=(4, 3))
    labels = rng.integers(0, 4, size=3000)
    return centers[labels] + rng.normal(size=(3000, 3))


def _chunks(values, sizes=(0, 700, 1, 1299, 1000)):
    edges = np.cumsum((0, *sizes))
    return [values[a:b] for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------- k-means pieces


def test_lloyd_partial_sums_add_up_to_one_pass(rows):
    rng = np.random.default_rng(0)
    blocks = [rows[rng.choice(len(rows), k, replace=False)] for k in (2, 3, 5)]
    C, offsets = stack_centers(blocks)
    assert offsets.tolist() == [0, 2, 5, 10]
    whole = lloyd_partial_sums(rows, C, offsets)
    parts = [lloyd_partial_sums(chunk, C, offsets) for chunk in _chunks(rows)]
    np.testing.assert_allclose(sum(p[0] for p in parts), whole[0], rtol=1e-12)
    np.testing.assert_array_equal(sum(p[1] for p in parts), whole[1])
    # Against brute force: nearest centroid within each block.
    labels, sq_dist, inertia = assign_partial(rows, C, offsets)
    for b in range(3):
        centers = C[offsets[b] : offsets[b + 1]]
        d2 = ((rows[:, None, :] - centers[None]) ** 2).sum(axis=2)
        np.testing.assert_array_equal(labels[b], d2.argmin(axis=1))
        np.testing.assert_allclose(sq_dist[b], d2.min(axis=1), rtol=1e-10)
        assert inertia[b] == pytest.approx(d2.min(axis=1).sum(), rel=1e-10)
        counts = np.bincount(labels[b], minlength=len(centers))
        np.testing.assert_array_equal(whole[1][offsets[b] : offsets[b + 1]], counts)
    empty = lloyd_partial_sums(rows[:0], C, offsets)
    assert empty[0].shape == (10, 3) and not empty[1].any()


def test_lloyd_update_and_empty_cluster_relocation(rows):
    centers = np.array([[0.0, 0.0, 0.0], [1e6, 1e6, 1e6]])  # the second gets no rows
    C, offsets = stack_centers([centers])
    sums, counts = lloyd_partial_sums(rows, C, offsets)
    assert counts[1] == 0

    def relocate(s, c):
        labels, sq_dist, _ = assign_partial(rows, centers, offsets)
        far = np.argsort(-sq_dist[0], kind="stable")[:1]
        relocate_empty_clusters(s, c, rows[far], np.ones(1), labels[0][far])

    new, shift = lloyd_update(centers, sums, counts, relocate)
    assert np.isfinite(new).all() and shift > 0
    with pytest.raises(ValueError, match="offsets"):
        lloyd_partial_sums(rows, C, np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        lloyd_partial_sums(np.array([[np.nan, 0, 0]]), C, offsets)


def test_cluster_scores_from_sums_match_sklearn(rows):
    labels = assign_partial(rows, rows[:4], np.array([0, 4]))[0][0]
    counts = np.bincount(labels, minlength=4).astype(float)
    means = np.stack([rows[labels == c].mean(axis=0) for c in range(4)])
    diff = rows - means[labels]
    squared = np.bincount(labels, weights=(diff**2).sum(axis=1), minlength=4)
    plain = np.bincount(labels, weights=np.sqrt((diff**2).sum(axis=1)), minlength=4)
    assert calinski_harabasz_from_stats(counts, means, squared) == pytest.approx(
        skm.calinski_harabasz_score(rows, labels), rel=1e-10
    )
    assert davies_bouldin_from_stats(counts, means, plain) == pytest.approx(
        skm.davies_bouldin_score(rows, labels), rel=1e-10
    )
    with pytest.raises(ValueError, match="Number of labels is 1"):
        calinski_harabasz_from_stats([5, 0], np.zeros((2, 3)), [1.0, 0.0])


def test_pca_from_covariance_matches_sklearn(rows):
    skewed = rows @ np.array([[2.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.1, 0.0, 0.2]])
    ref = PCA(svd_solver="covariance_eigh").fit(skewed)
    components, ratios = pca_from_covariance(np.cov(skewed, rowvar=False))
    np.testing.assert_allclose(components, ref.components_, atol=1e-10)
    np.testing.assert_allclose(ratios, ref.explained_variance_ratio_, rtol=1e-10)


# --------------------------------------------------------------------------- moments


def test_moments_merge_matches_numpy():
    from tasks.dask_engine.stats import Moments
    from tasks.scale import skewness

    rng = np.random.default_rng(5)
    values = np.exp(rng.normal(size=(2000, 4)))
    raw = values.copy()
    raw[rng.random(raw.shape) < 0.1] = np.nan
    raw[3, 1], raw[9, 2] = np.inf, -np.inf
    pieces = [Moments.of(chunk) for chunk in _chunks(raw, (0, 500, 1, 1499))]
    total = pieces[0]
    for piece in pieces[1:]:
        total = total.merge(piece)
    finite = np.where(np.isfinite(raw), raw, np.nan)
    np.testing.assert_allclose(total.mean, np.nanmean(finite, axis=0), rtol=1e-12)
    np.testing.assert_allclose(total.variance, np.nanvar(finite, axis=0), rtol=1e-10)
    np.testing.assert_array_equal(total.minimum, np.nanmin(finite, axis=0))
    np.testing.assert_array_equal(total.n_missing, np.isnan(raw).sum(axis=0))
    assert total.n_posinf.tolist() == [0, 1, 0, 0] and total.n_neginf.tolist() == [0, 0, 1, 0]
    # Skewness and covariance of complete rows, merged.
    parts = [Moments.of(chunk, scatter=True) for chunk in _chunks(values, (700, 1300))]
    merged = parts[0].merge(parts[1])
    np.testing.assert_allclose(merged.skewness, skewness(values), rtol=1e-9)
    np.testing.assert_allclose(merged.covariance, np.cov(values, rowvar=False), rtol=1e-10)
    # Filled cells merge in exactly: the imputed column's moments.
    fill = np.nanmedian(finite, axis=0)
    imputed = np.where(np.isnan(raw), fill, raw)
    imputed = np.where(np.isinf(imputed), np.nan, imputed)
    both = total.merge(Moments.constant(fill, total.n_missing))
    np.testing.assert_allclose(both.mean, np.nanmean(imputed, axis=0), rtol=1e-12)
    np.testing.assert_allclose(both.variance, np.nanvar(imputed, axis=0), rtol=1e-10)


# --------------------------------------------------------------------------- over partitions


@pytest.fixture(scope="module")
def session():
    from tasks.config import DaskConfig
    from tasks.dask_engine.session import open_session

    with open_session(DaskConfig(processes=False, n_workers=2, threads_per_worker=1)) as opened:
        yield opened


def _table(session, tmp_path, frame, files=4, name="t"):
    from tasks.config import DataConfig, FeaturesConfig
    from tasks.dask_engine.table import open_table

    folder = tmp_path / name
    folder.mkdir()
    for index, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        frame.iloc[part].to_parquet(folder / f"part-{index}.parquet", index=False)
    table, _, _ = open_table(session, str(folder), DataConfig(), FeaturesConfig(), "64MiB")
    return table


def test_exact_quantiles_over_partitions(session, tmp_path):
    from tasks.dask_engine import stats

    rng = np.random.default_rng(2)
    n = 5001
    frame = pd.DataFrame(
        {
            "name": [f"id{i}" for i in range(n)],
            "smooth": rng.normal(size=n),
            "ties": rng.integers(0, 3, size=n).astype(float),  # heavy ties
            "skewed": np.round(np.expm1(rng.normal(2, 1.5, size=n))),
        }
    )
    frame.loc[rng.random(n) < 0.05, "smooth"] = np.nan
    table = _table(session, tmp_path, frame)
    assert table.npartitions == 4 and table.n_rows == n and table.id_column == "name"
    stage = stats.Stage(table.feature_columns)
    moments = stats.moments(session, table, stage)
    values = frame[table.feature_columns].to_numpy()
    medians = stats.quantiles(session, table, stage, [0.5], moments, median=True)[0]
    np.testing.assert_array_equal(medians, np.nanmedian(values, axis=0))
    qs = [0.01, 0.25, 0.5, 0.75, 0.99]
    found = stats.quantiles(session, table, stage, qs, moments)
    np.testing.assert_allclose(found, np.nanquantile(values, qs, axis=0), rtol=0, atol=1e-12)
    # Many rows per bin: the histograms narrow the interval over several passes.
    old = stats._COLLECT_PER_TARGET
    stats._COLLECT_PER_TARGET = 3
    try:
        narrowed = stats.quantiles(session, table, stage, qs, moments)
    finally:
        stats._COLLECT_PER_TARGET = old
    np.testing.assert_array_equal(narrowed, found)
    assert (
        stats.most_frequent(session, table, stats.Stage(["ties"]))[0]
        == pd.Series(frame["ties"]).mode().min()
    )


def test_sample_is_independent_of_partitioning(session, tmp_path):
    from tasks.dask_engine.table import draw_sample

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"key": [f"k{i:05d}" for i in range(3000)], "x": rng.normal(size=3000)})
    a = _table(session, tmp_path, frame, files=2, name="a")
    b = _table(session, tmp_path, frame, files=7, name="b")
    sample_a, positions_a, _ = draw_sample(session, a, 400, seed=3)
    sample_b, _, _ = draw_sample(session, b, 400, seed=3)
    assert len(sample_a) == 400
    pd.testing.assert_frame_equal(sample_a, sample_b)
    assert (np.diff(positions_a) > 0).all()  # in data order
    np.testing.assert_array_equal(sample_a["x"], frame["x"].to_numpy()[positions_a])
    other, _, _ = draw_sample(session, a, 400, seed=4)
    assert set(other["key"]) != set(sample_a["key"])
    everything, _, _ = draw_sample(session, a, 10_000, seed=3)
    pd.testing.assert_frame_equal(everything, frame.astype({"key": str}), check_dtype=False)


def test_validation_counts_over_partitions(session, tmp_path):
    from tasks.dask_engine import stats

    frame = pd.DataFrame(
        {
            "key": [f"k{i}" for i in range(400)],
            "x": np.linspace(0, 10, 400),
            "y": np.ones(400),
        }
    )
    # Duplicate ids in different partitions (the first partition, where the id column is
    # recognised, has none).
    frame.loc[205, "key"] = "k107"
    frame.loc[399, "key"] = "k0"
    frame.loc[10, "x"] = np.inf
    frame.loc[11, "y"] = np.nan
    table = _table(session, tmp_path, frame)
    counts = stats.validation_counts(session, table, {"x": (0.0, 9.0)})
    assert counts.rows == 400 and counts.id_nulls == 0
    assert counts.duplicate_ids == 4 and sorted(counts.duplicate_examples) == ["k0", "k107"]
    assert counts.out_of_range["x"] == int((frame["x"] > 9).sum())  # inf included
    assert int(counts.moments.n_posinf[0]) == 1 and int(counts.moments.n_missing[1]) == 1
    # The first pass (sample + counts in one go) caches the same counts for the stages.
    sample, _ = stats.first_pass(session, table, 50, 0, {"x": (0.0, 9.0)})
    assert len(sample) == 50
    cached = stats.validation_counts(session, table, {"x": (0.0, 9.0)})
    assert (cached.rows, cached.out_of_range, cached.duplicate_ids) == (
        counts.rows,
        counts.out_of_range,
        counts.duplicate_ids,
    )
    np.testing.assert_array_equal(cached.moments.m2, counts.moments.m2)


def test_per_k_statistics_over_partitions_match_sklearn(session, tmp_path):
    from tasks.dask_engine import kmeans, stats

    rng = np.random.default_rng(4)
    n = 3001
    values = rng.normal(size=(n, 3)) + rng.integers(0, 3, size=(n, 1)) * 4.0
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    frame.insert(0, "name", [f"id{i}" for i in range(n)])
    table = _table(session, tmp_path, frame, name="sweep")
    stage = stats.Stage(table.feature_columns)
    blocks = kmeans.prepared_blocks(session, table, stage, n, 3, "never")
    centers = {k: values[rng.choice(n, size=k, replace=False)] for k in (2, 3, 5)}
    found = kmeans.sweep_statistics(session, blocks, centers)
    for k, stat in found.items():
        sq = ((values[:, None, :] - centers[k][None, :, :]) ** 2).sum(axis=2)
        labels = sq.argmin(axis=1)
        assert stat.inertia == pytest.approx(sq.min(axis=1).sum(), rel=1e-9)
        assert stat.mean_distance == pytest.approx(np.sqrt(sq.min(axis=1)).mean(), rel=1e-9)
        np.testing.assert_array_equal(stat.counts, np.bincount(labels, minlength=k))
        assert stat.calinski_harabasz == pytest.approx(
            skm.calinski_harabasz_score(values, labels), rel=1e-9
        )
        assert stat.davies_bouldin == pytest.approx(
            skm.davies_bouldin_score(values, labels), rel=1e-9
        )
