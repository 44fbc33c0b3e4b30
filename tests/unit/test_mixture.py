"""cluster.model=gmm: the sweep and its BIC choice, the Gaussian-mixture chain (storage, format
1 compatibility, answers against scikit-learn), and the numpy-only serving answering as the
pyfunc model on the same rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture

from tasks import mixture
from tasks.chain import GaussianMixtureStep, SegmentationChain
from tasks.config import load_params
from tasks.errors import ConfigError
from tasks.serving import inference
from tests.chains import identity_chain

NAMES = ["a", "b", "c"]


def _values(seed: int = 0, centers: int = 3) -> np.ndarray:
    values, _ = make_blobs(240, n_features=3, centers=centers, cluster_std=0.6, random_state=seed)
    return values


def _config(**overrides: str):
    sets = ["cluster.model=gmm", "cluster.k_min=2", "cluster.k_max=5", "cluster.n_init=2"]
    return load_params(overrides=sets + [f"{k}={v}" for k, v in overrides.items()]).cluster


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_sweep_picks_the_lowest_bic_and_says_so(covariance):
    values = _values(seed=4, centers=3)
    swept = mixture.sweep(values, _config(**{"cluster.covariance": covariance}))
    assert swept.k_values == [2, 3, 4, 5]
    bic = {k: fit.metrics["bic"] for k, fit in swept.fits.items()}
    selection = mixture.select_by_bic(swept)
    assert selection.k == min(bic, key=bic.get) == 3
    assert selection.criterion == "bic"
    assert selection.reason.startswith(f"k=3: lowest BIC ({bic[3]:.6g})")
    chosen = swept.fits[3]
    assert chosen.mixture is not None and chosen.mixture.covariance == covariance
    # The same BIC as scikit-learn's on that fit's parameters.
    reference = GaussianMixture(3, covariance_type=covariance).fit(values)
    assert bic[3] == pytest.approx(reference.bic(values), rel=1e-4)
    assert {"silhouette", "log_likelihood", "inertia"} <= set(chosen.metrics)


def test_bic_tie_goes_to_the_smaller_k():
    fits = {k: SimpleNamespace(metrics={"bic": 10.0}) for k in (2, 3)}
    result = SimpleNamespace(k_values=[2, 3], fits=fits)
    assert mixture.select_by_bic(result).k == 2


def _gmm_chain(covariance: str, values: np.ndarray, k: int = 3) -> tuple[SegmentationChain, object]:
    reference = GaussianMixture(k, covariance_type=covariance, random_state=0).fit(values)
    chain = identity_chain(
        NAMES,
        reference.means_,
        segment_ids=np.array([5, 6, 7])[:k],
        mixture=GaussianMixtureStep(covariance, reference.weights_, reference.precisions_cholesky_),
    )
    return chain, reference


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_chain_answers_as_sklearn_and_round_trips(covariance, tmp_path):
    values = _values(seed=1)
    chain, reference = _gmm_chain(covariance, values)
    rows = values[:50] + 0.3
    segments, distances, probabilities = chain.predict_membership(rows)
    expected = reference.predict(rows)
    np.testing.assert_array_equal(segments, np.array([5, 6, 7])[expected])
    np.testing.assert_allclose(probabilities, reference.predict_proba(rows).max(axis=1), atol=1e-9)
    # Mahalanobis distance to the chosen component, from its covariance.
    for row, component, distance in zip(rows, expected, distances, strict=True):
        covariance_matrix = reference.covariances_[component]
        if covariance == "diag":
            covariance_matrix = np.diag(covariance_matrix)
        delta = row - reference.means_[component]
        assert distance == pytest.approx(
            np.sqrt(delta @ np.linalg.solve(covariance_matrix, delta)), rel=1e-6
        )
    chain.save(str(tmp_path))
    description = json.loads((tmp_path / "chain.json").read_text())
    assert description["format_version"] == 2
    assert (description["model"], description["covariance"]) == ("gmm", covariance)
    loaded = SegmentationChain.load(str(tmp_path))
    assert loaded.model == "gmm"
    again = loaded.predict_membership(rows)
    np.testing.assert_array_equal(again[0], segments)
    np.testing.assert_allclose(again[1], distances, rtol=1e-12)
    np.testing.assert_allclose(again[2], probabilities, rtol=1e-12)


def test_a_format_1_chain_loads_as_kmeans(tmp_path):
    chain = identity_chain(NAMES, [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    chain.save(str(tmp_path))
    path = tmp_path / "chain.json"
    description = json.loads(path.read_text())
    description["format_version"] = 1
    del description["model"]
    path.write_text(json.dumps(description))
    loaded = SegmentationChain.load(str(tmp_path))
    assert loaded.model == "kmeans"
    segments, distances, probabilities = loaded.predict_membership(np.array([[4.0, 5.0, 5.0]]))
    assert segments.tolist() == [1] and distances[0] == pytest.approx(1.0)
    assert probabilities is None


def test_bad_mixture_shapes_are_refused():
    with pytest.raises(ValueError, match="mixture_precisions_cholesky must have shape"):
        identity_chain(
            NAMES,
            np.zeros((2, 3)),
            mixture=GaussianMixtureStep("full", np.array([0.5, 0.5]), np.ones((2, 3))),
        )
    with pytest.raises(ValueError, match="mixture covariance must be one of full, diag"):
        GaussianMixtureStep("tied", np.ones(2), np.ones((2, 3)))


def _pyfunc(chain: SegmentationChain, tmp_path):
    from tasks.pyfunc_model import SegmentationModel

    chain.save(str(tmp_path / "chain"))
    model = SegmentationModel()
    model.load_context(SimpleNamespace(artifacts={"chain": str(tmp_path / "chain")}))
    return model


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_numpy_serving_answers_as_the_pyfunc(covariance, tmp_path):
    values = _values(seed=2)
    chain, _ = _gmm_chain(covariance, values)
    rows = values[::7]
    body = "\n".join(",".join(repr(float(x)) for x in row) for row in rows)
    served = json.loads(inference.handle(chain, body, "text/csv", "application/json")[0])
    frame = _pyfunc(chain, tmp_path).predict(None, pd.DataFrame(rows, columns=NAMES))
    predictions = served["predictions"]
    assert [p["closest_cluster"] for p in predictions] == frame["closest_cluster"].tolist()
    np.testing.assert_allclose(
        [p["distance_to_cluster"] for p in predictions], frame["distance_to_cluster"], rtol=1e-9
    )
    probabilities = [p["membership_probability"] for p in predictions]
    np.testing.assert_allclose(probabilities, frame["membership_probability"], rtol=1e-9)
    assert all(0.0 < p <= 1.0 for p in probabilities)


def test_kmeans_answers_have_no_membership_probability(tmp_path):
    chain = identity_chain(NAMES, [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    served = json.loads(inference.handle(chain, "1,1,1\n", "text/csv", None)[0])
    assert set(served["predictions"][0]) == {"closest_cluster", "distance_to_cluster"}
    frame = _pyfunc(chain, tmp_path).predict(None, pd.DataFrame([[1.0, 1.0, 1.0]], columns=NAMES))
    assert list(frame.columns) == ["closest_cluster", "distance_to_cluster"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster.model=svm", "cluster.model: Input should be 'kmeans' or 'gmm'"),
        ("cluster.covariance=tied", "cluster.covariance: Input should be 'full' or 'diag'"),
    ],
)
def test_bad_model_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=[override])


def test_the_dask_engine_refuses_gmm():
    from tasks.dask_engine.engine import DaskEngine

    with pytest.raises(ConfigError, match="cluster.model=gmm: the Dask engine fits k-means only"):
        DaskEngine.check_supported(load_params(overrides=["cluster.model=gmm"]))


def test_drift_monitor_reads_a_mixture_chain():
    """Segment shares and the distance shift of a Gaussian-mixture chain (unit variances,
    equal weights: its segments are the nearest centre's, its distances Euclidean)."""
    from tasks.config import MonitorConfig
    from tasks.monitor import compute_drift

    centers = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    step = GaussianMixtureStep("diag", np.full(3, 1 / 3), np.ones((3, 3)))
    chain = identity_chain(NAMES, centers, mixture=step)
    rng = np.random.default_rng(1)
    reference = np.vstack([c + rng.normal(size=(200, 3)) for c in centers])
    labels = chain.predict(reference)[0]
    spread = centers[labels] + 1.8 * (reference - centers[labels])
    report = compute_drift(chain, reference, spread, MonitorConfig(psi_threshold=50.0))
    assert report.distance["median_ratio"] == pytest.approx(1.8, rel=0.05)
    assert report.distance_drifted
    one_segment = centers[1] + rng.normal(size=(150, 3))
    shifted = compute_drift(chain, reference, one_segment, MonitorConfig())
    shares = {s.segment: s.new_share for s in shifted.segments}
    assert shares == {0: 0.0, 1: 1.0, 2: 0.0} and shifted.drift


def test_the_result_cache_round_trips_a_mixture_sweep():
    from flows.result_codec import decode, encode

    values = _values(seed=5)
    swept = mixture.sweep(values, _config(**{"cluster.k_max": "3"}))
    fit = swept.fits[3]
    chain = identity_chain(NAMES, fit.centroids, mixture=fit.mixture)
    back_fit, back_chain = decode(encode((fit, chain)))
    assert back_fit.mixture.covariance == "full"
    np.testing.assert_array_equal(back_fit.mixture.weights, fit.mixture.weights)
    np.testing.assert_array_equal(back_chain.predict(values)[0], chain.predict(values)[0])


def test_degenerate_components_are_those_with_a_singular_covariance():
    """full: the rows must span every dimension; diag: two distinct values in each; a
    component with fewer than two rows (or none) is degenerate either way."""
    rng = np.random.default_rng(3)
    spread = rng.normal(size=(6, 3))
    on_a_line = np.outer(np.arange(5.0), [1.0, 2.0, 0.5])  # 5 rows, rank 1
    twins = np.repeat([[1.0, 2.0, 3.0]], 4, axis=0)  # duplicated rows
    flat = np.column_stack([rng.normal(size=4), rng.normal(size=4), np.full(4, 7.0)])
    values = np.vstack([spread, on_a_line, twins, flat, [[9.0, 9.0, 9.0]]])
    labels = np.repeat([0, 1, 2, 3, 4], [6, 5, 4, 4, 1])
    assert mixture.degenerate_components(values, labels, 6, "full") == [1, 2, 3, 4, 5]
    # A diagonal covariance only needs spread along each axis: the line and the spread pass.
    assert mixture.degenerate_components(values, labels, 6, "diag") == [2, 3, 4, 5]


def test_the_bic_sweep_skips_a_k_that_collapsed_onto_outliers():
    """Two lone outliers beside three blobs: from k=3 on, a full-covariance component
    collapses onto one of them and its BIC (kept finite by reg_covar only) wins without the
    guard; the sweep records it and the selection skips those k, saying so."""
    blobs, _ = make_blobs(48, n_features=3, centers=3, cluster_std=0.5, random_state=1)
    values = np.vstack([blobs, [[30.0, 30.0, 30.0], [-30.0, 30.0, -30.0]]])
    swept = mixture.sweep(values, _config())
    degenerate = {k: fit.metrics["degenerate_components"] for k, fit in swept.fits.items()}
    bic = {k: fit.metrics["bic"] for k, fit in swept.fits.items()}
    assert degenerate[2] == 0 and all(degenerate[k] >= 1 for k in (3, 4, 5))
    assert min(bic, key=bic.get) != 2  # what an unguarded sweep would choose
    selection = mixture.select_by_bic(swept)
    assert selection.k == 2
    assert "skipped k=3 (BIC" in selection.reason and "collapsed" in selection.reason
    assert selection.details["degenerate_components"] == {k: int(v) for k, v in degenerate.items()}


def test_when_every_k_collapses_the_fewest_degenerate_components_compete():
    """A group of identical rows collapses at every k: k values with more degenerate
    components than the fewest are skipped, the rest compete by BIC."""
    fits = {
        k: SimpleNamespace(metrics={"bic": bic, "degenerate_components": count})
        for k, bic, count in [(2, 50.0, 1.0), (3, 40.0, 1.0), (4, 30.0, 2.0)]
    }
    selection = mixture.select_by_bic(SimpleNamespace(k_values=[2, 3, 4], fits=fits))
    assert selection.k == 3
    assert "every k has 1 or more degenerate component(s)" in selection.reason
    assert "skipped k=4 (BIC 30)" in selection.reason
