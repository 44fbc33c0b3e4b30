"""tasks.compute.gmm against scikit-learn's GaussianMixture started from the same parameters:
the same EM, so the same mean log-likelihood (1e-6 relative), labels and BIC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture

from tasks.compute.gmm import (
    fit_from_parameters,
    fit_gaussian_mixture,
    kmeans_start_labels,
    parameters_from_labels,
    precision_cholesky,
)


def _blobs(seed: int) -> np.ndarray:
    values, _ = make_blobs(
        400, n_features=3, centers=4, cluster_std=[0.5, 1.0, 1.5, 2.0], random_state=seed
    )
    return values


def _anisotropic(seed: int) -> np.ndarray:
    values = _blobs(seed)
    return values @ np.array([[0.6, -0.6, 0.1], [-0.4, 0.8, 0.0], [0.2, 0.1, 1.5]])


def _uneven(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big = rng.normal(0.0, 1.0, size=(450, 4))
    small = rng.normal(5.0, 0.3, size=(30, 4))
    return np.vstack([big, small])


FAMILIES = {"blobs": _blobs, "anisotropic": _anisotropic, "uneven": _uneven}


def _precisions(precisions_cholesky: np.ndarray, covariance: str) -> np.ndarray:
    if covariance == "full":
        return np.einsum("kij,klj->kil", precisions_cholesky, precisions_cholesky)
    return precisions_cholesky**2


@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_em_matches_sklearn_from_the_same_start(covariance, family, seed):
    values = FAMILIES[family](seed)
    k = 3
    weights, means, factors = parameters_from_labels(
        values, kmeans_start_labels(values, k, seed), k, covariance
    )
    ours = fit_from_parameters(values, weights, means, factors, covariance=covariance)
    reference = GaussianMixture(
        k,
        covariance_type=covariance,
        weights_init=weights,
        means_init=means,
        precisions_init=_precisions(factors, covariance),
        random_state=seed,
    ).fit(values)
    assert ours.mean_log_likelihood == pytest.approx(reference.score(values), rel=1e-6)
    np.testing.assert_array_equal(ours.labels, reference.predict(values))
    assert ours.n_iter == reference.n_iter_ and ours.converged == reference.converged_
    assert ours.bic(len(values)) == pytest.approx(reference.bic(values), rel=1e-6)
    np.testing.assert_allclose(ours.means, reference.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.weights, reference.weights_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(
        ours.precisions_cholesky, reference.precisions_cholesky_, rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(
        np.exp(ours.log_responsibilities(values)),
        reference.predict_proba(values),
        atol=1e-6,
    )


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_best_of_n_init_is_at_least_as_likely_as_each_start(covariance):
    values = _anisotropic(3)
    best = fit_gaussian_mixture(values, 4, covariance=covariance, n_init=4, random_state=5)
    single = fit_gaussian_mixture(values, 4, covariance=covariance, n_init=1, random_state=5)
    assert best.mean_log_likelihood >= single.mean_log_likelihood - 1e-12
    again = fit_gaussian_mixture(values, 4, covariance=covariance, n_init=4, random_state=5)
    assert again.mean_log_likelihood == pytest.approx(best.mean_log_likelihood, rel=1e-12)
    assert best.weights.sum() == pytest.approx(1.0)


def test_parameters_count_as_sklearn():
    values = _blobs(0)
    for covariance in ("full", "diag"):
        fit = fit_gaussian_mixture(values, 3, covariance=covariance)
        reference = GaussianMixture(3, covariance_type=covariance).fit(values)
        assert fit.n_parameters() == reference._n_parameters()


def test_separated_groups_are_recovered():
    values, truth = make_blobs(300, n_features=2, centers=3, cluster_std=0.4, random_state=2)
    fit = fit_gaussian_mixture(values, 3, n_init=2)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, fit.predict(values)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": 999}, "k=999 is more than the 400 rows"),
        ({"covariance": "tied"}, "covariance must be one of full, diag"),
        ({"tol": -1.0}, "tol must be >= 0"),
        ({"reg_covar": -1.0}, "reg_covar must be >= 0"),
        ({"n_init": 0}, "n_init must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    arguments = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit_gaussian_mixture(_blobs(0), **arguments)


def test_nan_input_is_refused():
    values = _blobs(0)
    values[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian_mixture(values, 2)


def test_a_singular_covariance_names_its_component():
    covariances = np.stack([np.eye(2), np.array([[1.0, 1.0], [1.0, 1.0]]) - 1e-3 * np.eye(2)])
    with pytest.raises(ValueError, match="component 1 is not positive definite"):
        precision_cholesky(covariances, "full")
    with pytest.raises(ValueError, match="diagonal covariance is not positive"):
        precision_cholesky(np.array([[1.0, 0.0]]), "diag")
