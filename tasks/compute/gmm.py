"""Gaussian mixture by expectation-maximisation (full or diagonal covariance).

The algorithm of scikit-learn's ``GaussianMixture`` with ``init_params="kmeans"``: each of
``n_init`` runs starts from the hard labels of a k-means fit (one k-means++ start, its own
seed), then alternates E and M steps until the mean log-likelihood gains less than ``tol``;
the run with the highest final mean log-likelihood wins. Components are parametrised by the
Cholesky factor of their precision matrix (as ``precisions_cholesky_``), with ``reg_covar``
added to every covariance's diagonal. numpy only: each step is a few matrix products per
component, already at BLAS speed, so there is no numba kernel (benchmarks/gmm.py compares the
fit time with scikit-learn's). The Gaussian log-density is the serving chain's
(`tasks.chain.gaussian_log_density`), so training and serving score alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.chain import COVARIANCES, gaussian_log_density, log_sum_exp
from tasks.compute._validation import as_2d_float, check_positive_int

# 10 x machine epsilon added to each component's weight sum, as scikit-learn does, so an
# empty component divides by a tiny number instead of zero.
_WEIGHT_FLOOR = 10 * np.finfo(np.float64).eps


@dataclass(frozen=True)
class GaussianMixtureFit:
    """A fitted mixture: ``weights`` (k,), ``means`` (k, d), ``covariances`` ((k, d, d) full,
    (k, d) diag), ``precisions_cholesky`` (same shapes), the mean log-likelihood per row of the
    training data, whether EM converged, its iterations, and the hard labels (argmax
    responsibility) of the training rows."""

    covariance: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    mean_log_likelihood: float
    converged: bool
    n_iter: int
    labels: np.ndarray

    @property
    def k(self) -> int:
        return int(self.means.shape[0])

    def n_parameters(self) -> int:
        """Free parameters: means, covariances and k - 1 weights (scikit-learn's count)."""
        k, d = self.means.shape
        covariance = k * d * (d + 1) // 2 if self.covariance == "full" else k * d
        return covariance + k * d + k - 1

    def bic(self, n_rows: int) -> float:
        """Bayesian information criterion on the ``n_rows`` training rows (lower is better)."""
        total = self.mean_log_likelihood * n_rows
        return float(-2.0 * total + self.n_parameters() * math.log(n_rows))

    def log_responsibilities(self, values: np.ndarray) -> np.ndarray:
        """log posterior of each component per row, (n, k)."""
        return _e_step(values, self.weights, self.means, self.precisions_cholesky, self.covariance)[
            1
        ]

    def predict(self, values: np.ndarray) -> np.ndarray:
        """The most probable component of each row."""
        values = as_2d_float(values, dtype=np.float64)
        return self.log_responsibilities(values).argmax(axis=1)

    def score(self, values: np.ndarray) -> float:
        """Mean log-likelihood per row of ``values`` (scikit-learn's ``score``)."""
        values = as_2d_float(values, dtype=np.float64)
        return _e_step(values, self.weights, self.means, self.precisions_cholesky, self.covariance)[
            0
        ]


def fit_gaussian_mixture(
    values: np.ndarray,
    k: int,
    *,
    covariance: str = "full",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    random_state: int = 0,
) -> GaussianMixtureFit:
    """The best of ``n_init`` EM runs, each from a seeded k-means start (see the module)."""
    values, k = _check(values, k, covariance, max_iter, tol, reg_covar)
    n_init = check_positive_int(n_init, "n_init")
    seeds = np.random.default_rng(random_state).integers(0, 2**31 - 1, size=n_init)
    best: GaussianMixtureFit | None = None
    for seed in seeds:
        labels = kmeans_start_labels(values, k, int(seed))
        weights, means, precisions_cholesky = parameters_from_labels(
            values, labels, k, covariance, reg_covar
        )
        fit = fit_from_parameters(
            values,
            weights,
            means,
            precisions_cholesky,
            covariance=covariance,
            max_iter=max_iter,
            tol=tol,
            reg_covar=reg_covar,
        )
        if best is None or fit.mean_log_likelihood > best.mean_log_likelihood:
            best = fit
    assert best is not None
    return best


def degenerate_components(
    values: np.ndarray, labels: np.ndarray, k: int, covariance: str
) -> list[int]:
    """The components whose own rows (hard labels) give a singular covariance: a full
    covariance needs rows spanning every dimension (at least d + 1 distinct ones), a diagonal
    one two distinct values in each dimension. A component with no rows counts too."""
    found = []
    for component in range(k):
        members = values[labels == component]
        if len(members) < 2:
            found.append(component)
        elif covariance == "full":
            centred = members - members.mean(axis=0)
            if np.linalg.matrix_rank(centred) < values.shape[1]:
                found.append(component)
        elif (np.ptp(members, axis=0) == 0).any():
            found.append(component)
    return found


def kmeans_start_labels(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Hard labels of one seeded k-means++ run: EM's starting responsibilities."""
    from tasks.compute.kmeans import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit(values).labels_


def parameters_from_labels(
    values: np.ndarray, labels: np.ndarray, k: int, covariance: str, reg_covar: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, precisions_cholesky) of one-hot responsibilities: the M step on a
    hard partition, as scikit-learn initialises from k-means labels."""
    responsibilities = np.zeros((len(values), k))
    responsibilities[np.arange(len(values)), labels] = 1.0
    weights, means, covariances = _gaussian_parameters(
        values, responsibilities, covariance, reg_covar
    )
    return weights / len(values), means, precision_cholesky(covariances, covariance)


def fit_from_parameters(
    values: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray,
    precisions_cholesky: np.ndarray,
    *,
    covariance: str = "full",
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
) -> GaussianMixtureFit:
    """EM from given parameters until the mean log-likelihood gains less than ``tol`` (or
    ``max_iter`` iterations); the labels come from a last E step on the final parameters."""
    values, _ = _check(values, len(means), covariance, max_iter, tol, reg_covar)
    weights = np.asarray(weights, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    precisions_cholesky = np.asarray(precisions_cholesky, dtype=np.float64)
    covariances = np.empty(0)
    lower_bound = -np.inf
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        previous = lower_bound
        lower_bound, log_resp = _e_step(values, weights, means, precisions_cholesky, covariance)
        weights, means, covariances = _gaussian_parameters(
            values, np.exp(log_resp), covariance, reg_covar
        )
        weights = weights / weights.sum()
        precisions_cholesky = precision_cholesky(covariances, covariance)
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    mean_log_likelihood, log_resp = _e_step(values, weights, means, precisions_cholesky, covariance)
    return GaussianMixtureFit(
        covariance=covariance,
        weights=weights,
        means=means,
        covariances=covariances,
        precisions_cholesky=precisions_cholesky,
        mean_log_likelihood=float(mean_log_likelihood),
        converged=converged,
        n_iter=n_iter,
        labels=log_resp.argmax(axis=1),
    )


def precision_cholesky(covariances: np.ndarray, covariance: str) -> np.ndarray:
    """Cholesky factors of the precisions from covariances (an error names the component
    whose covariance is not positive definite)."""
    if covariance == "diag":
        if np.any(covariances <= 0.0):
            raise ValueError("a diagonal covariance is not positive; increase reg_covar or lower k")
        return 1.0 / np.sqrt(covariances)
    try:
        lower = np.linalg.cholesky(covariances)  # every component at once
    except np.linalg.LinAlgError:
        bad = next(c for c in range(len(covariances)) if not _positive_definite(covariances[c]))
        raise ValueError(
            f"the covariance of component {bad} is not positive definite; "
            "increase reg_covar, lower k or use diag covariance"
        ) from None
    # precision = inverse(L L^T) = inverse(L)^T inverse(L): its factor is inverse(L)^T. A
    # batched inverse: per-component triangular solves cost more in call overhead at these sizes.
    return np.linalg.inv(lower).transpose(0, 2, 1)


def _positive_definite(matrix: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return False
    return True


def _e_step(
    values: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray,
    precisions_cholesky: np.ndarray,
    covariance: str,
) -> tuple[float, np.ndarray]:
    """(mean log-likelihood per row, log responsibilities (n, k))."""
    log_density, _ = gaussian_log_density(values, means, precisions_cholesky, covariance)
    weighted = log_density + np.log(weights)
    log_norm = log_sum_exp(weighted)
    return float(log_norm.mean()), weighted - log_norm[:, None]


def _gaussian_parameters(
    values: np.ndarray, responsibilities: np.ndarray, covariance: str, reg_covar: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The M step: (weight sums (k,), means, covariances) of soft responsibilities."""
    totals = responsibilities.sum(axis=0) + _WEIGHT_FLOOR
    means = responsibilities.T @ values / totals[:, None]
    if covariance == "diag":
        squares = responsibilities.T @ (values * values) / totals[:, None]
        return totals, means, squares - means**2 + reg_covar
    k, d = means.shape
    covariances = np.empty((k, d, d))
    for component in range(k):
        centred = values - means[component]
        covariances[component] = (responsibilities[:, component] * centred.T) @ centred
        covariances[component] /= totals[component]
        covariances[component].flat[:: d + 1] += reg_covar
    return totals, means, covariances


def _check(
    values: np.ndarray, k: int, covariance: str, max_iter: int, tol: float, reg_covar: float
) -> tuple[np.ndarray, int]:
    values = as_2d_float(values, dtype=np.float64)
    k = check_positive_int(k, "k")
    check_positive_int(max_iter, "max_iter")
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    if k > len(values):
        raise ValueError(f"k={k} is more than the {len(values)} rows")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not reg_covar >= 0.0:
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar!r}")
    return values, k
