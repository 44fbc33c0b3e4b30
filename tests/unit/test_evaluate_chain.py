from functools import partial

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from tasks.chain import ChainInputError, SegmentationChain
from tasks.config import load_params
from tasks.evaluate import evaluate, match_to_champion, size_order_ids
from tasks.promote import contract_changes, evaluate_gate
from tests.chains import identity_chain


def _chain(centroids, feature_names=("a", "b"), **overrides):
    return identity_chain(list(feature_names), centroids, **overrides)


def test_size_order_ids():
    labels = np.array([2, 2, 2, 0, 1, 1])
    assert size_order_ids(labels, 3).tolist() == [2, 1, 0]


def test_match_to_champion_pairs_centroids_in_the_champion_space():
    # Champion: identity chain, segments 5, 1, 0 at (0,0), (10,0), (0,10).
    champion = _chain([[0, 0], [10, 0], [0, 10]], segment_ids=np.array([5, 1, 0]))
    rows = np.array(
        [[0.5, 0], [-0.5, 0], [10, 1], [10, -1], [0, 9], [0, 11], [30, 30]], dtype=float
    )
    # New internal clusters: 0 ~ (10,0), 1 ~ (0,10), 2 ~ (0,0), 3 = the far-away point.
    labels = np.array([2, 2, 0, 0, 1, 1, 3])
    ids, mapping = match_to_champion(labels, rows, champion, 4)
    assert ids.tolist() == [1, 0, 5, 6]
    assert mapping["new_segments"] == [6]
    assert mapping["match_cost"] == pytest.approx(0.0)
    assert mapping["segment_match_distance"] == {1: 0.0, 0: 0.0, 5: 0.0}
    # The far point is nearest the champion's segment 1 but is in a new segment now.
    assert mapping["rows_keeping_segment"] == pytest.approx(6 / 7)


def test_match_to_champion_uses_the_champion_transform():
    # The champion scales feature a by 1/10: distances are measured in its space, so new
    # cluster means are compared after the same scaling.
    champion = _chain(
        [[0, 0], [1, 0]], segment_ids=np.array([3, 4]), scale_scale=np.array([10.0, 1.0])
    )
    rows = np.array([[10.0, 0], [12, 0], [0, 0], [-1, 0]])
    ids, mapping = match_to_champion(np.array([0, 0, 1, 1]), rows, champion, 2)
    assert ids.tolist() == [4, 3]
    assert mapping["match_cost"] == pytest.approx(0.1 + 0.05)


def _kmeans3(values):
    from sklearn.cluster import KMeans

    return KMeans(3, n_init=10, random_state=0).fit(values)


def _evaluate(values, model, ids, bootstrap_rounds, champion=None):
    """`evaluate` of a fit on the blobs, the blobs standing for every kind of row."""
    config = load_params(
        overrides=["cluster.backend=sklearn", f"evaluate.bootstrap_rounds={bootstrap_rounds}"]
    )
    return evaluate(
        values,
        model.labels_,
        model.cluster_centers_,
        values,
        values,
        ["a", "b"],
        ids,
        config.cluster,
        config.evaluate,
        champion,
    )


def test_evaluate_profiles_stability_and_examples(blobs):
    values, truth = blobs
    ids = [f"id{i}" for i in range(len(values))]
    result = _evaluate(values, _kmeans3(values), ids, bootstrap_rounds=5)
    assert sorted(result.sizes.values()) == [40, 40, 40]
    assert adjusted_rand_score(truth, result.segments) == 1.0
    assert result.stability == pytest.approx(1.0) and len(result.stability_rounds) == 5
    for segment, members in result.examples.items():
        assert len(members) == 5
        assert all(result.segments[ids.index(m)] == segment for m in members)
    # Profile of the segment around (10, 0): a is "higher".
    right = int(result.profiles["a"].idxmax())
    assert result.profiles.loc[right, "a"] == pytest.approx(10, abs=0.5)
    assert result.distinguishing[right][0]["feature"] == "a"
    assert result.distinguishing[right][0]["direction"] == "higher"


def test_evaluate_with_champion_reuses_segment_ids(blobs):
    values, _ = blobs
    model = _kmeans3(values)
    champion = _chain(model.cluster_centers_[::-1], segment_ids=np.array([7, 8, 9]))
    ids = [str(i) for i in range(len(values))]
    result = _evaluate(values, model, ids, bootstrap_rounds=0, champion=champion)
    champion_segments, _ = champion.predict(values)
    np.testing.assert_array_equal(result.segments, champion_segments)
    assert result.id_mapping["match_cost"] == 0


def test_chain_predict_fill_log_clip_scale_pca(tmp_path):
    chain = _chain(
        [[0.0, 0.0], [3.0, 4.0]],
        fill_values=np.array([1.0, 2.0]),
        log1p_mask=np.array([True, False]),
        clip_high=np.array([np.inf, 10.0]),
        scale_center=np.array([0.0, 1.0]),
        scale_scale=np.array([1.0, 2.0]),
        segment_ids=np.array([4, 9]),
    )
    rows = np.array([[np.e - 1, 1.0], [np.nan, 100.0]])
    prepared = chain.prepare(rows)
    np.testing.assert_allclose(prepared, [[1.0, 0.0], [np.log1p(1.0), 4.5]])
    segments, distances = chain.predict(rows)
    assert segments.tolist() == [4, 9]
    assert distances[0] == pytest.approx(1.0)
    chain.save(str(tmp_path))
    loaded = SegmentationChain.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.predict(rows)[0], segments)
    assert loaded.feature_names == ["a", "b"]
    with np.load(tmp_path / "chain.npz", allow_pickle=False) as arrays:
        assert arrays["centroids"].dtype == np.float64


def test_chain_rejects_bad_rows():
    chain = _chain([[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ChainInputError, match="expected 2 features \\(a, b\\), got 3"):
        chain.predict(np.ones((1, 3)))
    with pytest.raises(ChainInputError, match="feature 'b': infinite"):
        chain.predict(np.array([[1.0, np.inf]]))
    with pytest.raises(ChainInputError, match="unknown feature\\(s\\) c"):
        chain.rows_from_records([{"a": 1, "c": 2}])
    with pytest.raises(ChainInputError, match="'x' is not a number"):
        chain.rows_from_records([{"a": "x", "b": 1}])
    rows = chain.rows_from_records([{"a": 1, "b": None}])
    assert np.isnan(rows[0, 1])


def test_chain_module_is_numpy_and_stdlib_only():
    import ast
    from pathlib import Path

    import tasks.chain

    tree = ast.parse(Path(tasks.chain.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= {"__future__", "hashlib", "json", "os", "typing", "numpy"}


def test_gate_thresholds_and_champion_comparison(blobs):
    values, _ = blobs
    config = load_params().promote
    passed, reasons, _ = evaluate_gate({"silhouette": 0.5, "stability": 0.9}, True, config)
    assert passed and "no current champion" in reasons
    passed, reasons, _ = evaluate_gate({"silhouette": 0.1, "stability": 0.9}, True, config)
    assert not passed and any("< promote.min_silhouette" in r for r in reasons)
    passed, reasons, _ = evaluate_gate({"silhouette": 0.5, "stability": 0.2}, True, config)
    assert not passed and any("stability" in r for r in reasons)
    passed, reasons, _ = evaluate_gate({"silhouette": 0.5, "stability": 0.9}, False, config)
    assert not passed and "data validation did not pass" in reasons
    good = _chain(_kmeans3(values).cluster_centers_)
    bad = _chain([[5.0, 5.0], [5.1, 5.1], [4.9, 4.9]])
    on_the_same_rows = partial(
        evaluate_gate, {"silhouette": 0.5, "stability": 0.9}, True, config, rows=values
    )
    passed, reasons, checks = on_the_same_rows(challenger=bad, champion=good)
    assert not passed and any("worse than the champion" in r for r in reasons)
    assert checks["champion_silhouette_same_data"] > checks["challenger_silhouette_same_data"]
    passed, _, _ = on_the_same_rows(challenger=good, champion=bad)
    assert passed
    # No rows to compare on (the challenger's run logged none): not compared is not passed.
    passed, reasons, checks = evaluate_gate(
        {"silhouette": 0.5, "stability": 0.9}, True, config, challenger=good, champion=bad
    )
    assert not passed and "champion_silhouette_same_data" not in checks
    assert any(r.startswith("cannot compare with the champion on the same data") for r in reasons)


def _features(*names):
    return {"features": list(names)}


def test_contract_changes_name_added_removed_and_reordered_features():
    assert contract_changes(_features("a", "b"), _features("a", "b")) == []
    assert contract_changes(_features("a", "b"), _features("a", "b", "c")) == ["added c"]
    assert contract_changes(_features("a", "b", "c"), _features("a")) == ["removed b, c"]
    assert contract_changes(_features("a", "b"), _features("b", "a")) == [
        "reordered a, b (champion order a, b; challenger order b, a)"
    ]
    mixed = contract_changes(_features("a", "b", "c"), _features("c", "b", "d"))
    assert mixed == [
        "added d",
        "removed a",
        "reordered b, c (champion order b, c; challenger order c, b)",
    ]
    many = contract_changes(_features("a"), _features("a", *[f"x{i}" for i in range(20)]))
    assert many == ["added x0, x1, x2, x3, x4, x5, x6, x7, x8, x9 and 10 more"]


def test_gate_refuses_another_contract_unless_allowed(blobs):
    values, _ = blobs
    config = load_params().promote
    champion = _chain([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    swapped = _chain([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0]], feature_names=["b", "a"])
    metrics = {"silhouette": 0.9, "stability": 0.9}
    passed, reasons, checks = evaluate_gate(
        metrics, True, config, challenger=swapped, champion=champion, rows=values[:, ::-1]
    )
    assert not passed
    assert checks["contract_changes"] == [
        "reordered a, b (champion order a, b; challenger order b, a)"
    ]
    assert any(
        r.startswith("input contract differs from the champion's: reordered a, b") for r in reasons
    )
    assert not any("comparison skipped" in r for r in reasons)
    passed, reasons, _ = evaluate_gate(
        metrics,
        True,
        config,
        challenger=swapped,
        champion=champion,
        rows=values[:, ::-1],
        allow_contract_change=True,
    )
    assert passed
    assert any(r.startswith("input contract change allowed: reordered a, b") for r in reasons)
    # Equal contracts still go through the same-data comparison.
    _, reasons, checks = evaluate_gate(
        metrics, True, config, challenger=champion, champion=champion, rows=values
    )
    assert "contract_changes" in checks and checks["contract_changes"] == []
    assert any("not worse than the champion" in r for r in reasons)


def test_input_contract_and_digest_follow_the_feature_order():
    from tasks.chain import contract_digest

    chain = _chain([[0.0, 0.0], [1.0, 1.0]])
    swapped = _chain([[0.0, 0.0], [1.0, 1.0]], feature_names=["b", "a"])
    assert chain.input_contract() == {"features": ["a", "b"]}
    digest = contract_digest(chain.input_contract())
    assert len(digest) == 64 and digest == contract_digest({"features": ["a", "b"]})
    assert digest != contract_digest(swapped.input_contract())


def test_stability_above_stability_sample_runs_on_a_seeded_sample(monkeypatch):
    from tasks import evaluate as evaluate_module

    rng = np.random.default_rng(11)
    values = np.vstack([c + rng.normal(scale=0.7, size=(400, 2)) for c in ([0, 0], [9, 0], [0, 9])])
    model = _kmeans3(values)
    ids = [f"r{i}" for i in range(len(values))]
    seen = []
    original = evaluate_module.bootstrap_stability

    def recording(rows, labels, *args, **kwargs):
        seen.append((rows.copy(), labels.copy()))
        return original(rows, labels, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "bootstrap_stability", recording)
    config = load_params(
        overrides=[
            "cluster.backend=sklearn",
            "evaluate.bootstrap_rounds=4",
            "evaluate.stability_sample=300",
        ]
    )
    sampled = evaluate(
        values,
        model.labels_,
        model.cluster_centers_,
        values,
        values,
        ["a", "b"],
        ids,
        config.cluster,
        config.evaluate,
    )
    whole = _evaluate(values, model, ids, bootstrap_rounds=4)
    rows, labels = seen[0]
    assert len(rows) == 300 and len(seen[1][0]) == len(values)
    # Real rows with their own labels, in order: a seeded subset, the same every time.
    subset = evaluate_module.stability_subset(len(values), 300, config.cluster.seed)
    np.testing.assert_array_equal(rows, values[subset])
    np.testing.assert_array_equal(labels, model.labels_[subset])
    assert np.all(np.diff(subset) > 0)
    assert (
        sampled.stability == pytest.approx(whole.stability, abs=0.02) and sampled.stability > 0.95
    )
    # Sizes, profiles and examples still cover every row.
    assert sum(sampled.sizes.values()) == len(values)


def test_a_resample_with_fewer_distinct_rows_than_k_is_skipped():
    from tasks.evaluate import _has_distinct_rows

    values = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0], [0.0, 1.0], [4.0, 5.0]])
    for rows in ([0, 1, 3], [0, 2, 1], [0, 1, 2, 3, 4], [2, 4, 2]):
        rows = np.array(rows)
        for k in (1, 2, 3):
            expected = len(np.unique(values[rows], axis=0)) >= k
            assert _has_distinct_rows(values, rows, k) == expected, (rows, k)


def _random_chain(rng, d=4, k=5):
    """A chain with every transform in play (fill, log1p, clipping, scaling, a rotation)."""
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return identity_chain(
        [f"f{j}" for j in range(d)],
        rng.normal(size=(k, d)),
        fill_values=rng.normal(size=d),
        log1p_mask=np.array([True] + [False] * (d - 1)),
        clip_low=np.full(d, -4.0),
        clip_high=np.full(d, 4.0),
        scale_center=rng.normal(size=d),
        scale_scale=rng.uniform(0.5, 2.0, size=d),
        pca_mean=rng.normal(size=d) * 0.1,
        pca_components=rotation,
        segment_ids=np.array([4, 0, 9, 2, 7]),
    )


def test_match_to_champion_in_blocks_gives_the_one_pass_answer(monkeypatch):
    import tasks.chain as chain_module

    rng = np.random.default_rng(3)
    champion = _random_chain(rng)
    rows = np.abs(rng.normal(size=(1000, 4))) * 2.0
    rows[rng.random(rows.shape) < 0.05] = np.nan  # the champion fills them
    labels = rng.integers(0, 6, size=1000)
    whole_ids, whole = match_to_champion(labels, rows, champion, 6)
    monkeypatch.setattr(chain_module, "BLOCK_ROWS", 7)
    ids, blocked = match_to_champion(labels, rows, champion, 6)
    np.testing.assert_array_equal(ids, whole_ids)
    assert blocked["match_cost"] == pytest.approx(whole["match_cost"], rel=1e-12)
    # what the champion itself says of each row, computed the plain way
    champion_segments, _ = champion.predict(rows)
    assert blocked["rows_keeping_segment"] == pytest.approx(
        float(np.mean(ids[labels] == champion_segments))
    )


def test_profiles_are_the_segment_means_and_population_spread():
    from tasks.evaluate import column_mean_std, profiles

    rng = np.random.default_rng(5)
    values = rng.normal(loc=[1.0, -3.0, 100.0], scale=[1.0, 0.1, 20.0], size=(2000, 3))
    segments = rng.choice([9, 2, 5], size=2000)  # sparse ids, as matched to a champion
    means, distinguishing = profiles(values, ["a", "b", "c"], segments, top=2)
    frame = pd.DataFrame(values, columns=["a", "b", "c"]).assign(segment=segments)
    expected = frame.groupby("segment").mean()
    assert means.index.tolist() == [2, 5, 9] and means.index.name == "segment"
    np.testing.assert_allclose(means.to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert sorted(distinguishing) == [2, 5, 9]
    mean, std = column_mean_std(values, block_rows=333)
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(axis=0), rtol=1e-12)


def test_chain_silhouette_in_blocks_is_the_silhouette_of_the_chains_assignment(monkeypatch):
    import tasks.chain as chain_module
    from tasks.compute import silhouette_score
    from tasks.promote import chain_silhouette

    rng = np.random.default_rng(8)
    chain = _random_chain(rng)
    rows = np.abs(rng.normal(size=(900, 4))) * 2.0
    reduced = chain.transform(rows)
    labels, _ = chain.predict_internal(rows)
    sampled = silhouette_score(reduced, labels, sample_size=300, random_state=4)
    every_row = silhouette_score(reduced, labels)
    monkeypatch.setattr(chain_module, "BLOCK_ROWS", 64)
    assert chain_silhouette(chain, rows, 300, 4) == pytest.approx(sampled, rel=1e-12)
    assert chain_silhouette(chain, rows, 5000, 4) == pytest.approx(every_row, rel=1e-12)
    # one centroid for every row: no silhouette
    assert np.isnan(chain_silhouette(chain, np.repeat(rows[:1], 50, axis=0), 10, 0))


def test_a_bad_row_in_a_later_block_is_named_by_its_place_in_all_the_rows(monkeypatch):
    """Matching and the gate's silhouette send rows through the chain in blocks; an
    infinite value is still reported as the row it is in the whole set, not in its block."""
    import tasks.chain as chain_module
    from tasks.chain import ChainInputError
    from tasks.promote import chain_silhouette

    rng = np.random.default_rng(11)
    chain = _random_chain(rng)
    rows = np.abs(rng.normal(size=(300, 4)))
    rows[236, 2] = np.inf
    labels = rng.integers(0, 3, size=300)
    monkeypatch.setattr(chain_module, "BLOCK_ROWS", 50)
    with pytest.raises(ChainInputError, match=r"^row 237, feature 'f2': infinite value$"):
        match_to_champion(labels, rows, chain, 3)
    with pytest.raises(ChainInputError, match=r"^row 237, feature 'f2': infinite value$"):
        chain_silhouette(chain, rows, 100, 0)
    # the same row through the chain in one piece
    with pytest.raises(ChainInputError, match=r"^row 237, feature 'f2': infinite value$"):
        chain.transform(rows)
