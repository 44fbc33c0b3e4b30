"""The Gaussian-mixture model family (``cluster.model: gmm``): a mixture per k, k by BIC.

For every k in k_min..k_max, EM from ``cluster.n_init`` seeded k-means starts
(`tasks.compute.gmm`), keeping the most likely run; each fit is scored like a k-means fit on
its hard labels (argmax responsibility), so silhouette, stability and the promotion gate read
the same numbers, plus its ``bic`` and mean ``log_likelihood``. The chosen k is the one with
the lowest BIC. EM's convergence tolerance and covariance regularisation are scikit-learn's
defaults (on the mean log-likelihood; ``cluster.tol`` is k-means' centroid shift).

A fit can collapse a component onto a few rows (a singleton, duplicated rows, rows on a line in
a plane): their covariance is singular and only ``reg_covar`` keeps its density finite, so the
likelihood soars and the BIC favours it for no reason in the data. scikit-learn fits such a
component as well (and with ``reg_covar=0`` refuses the whole fit: "ill-defined empirical
covariance"). Here a k with such a component is recorded (metric ``degenerate_components``)
and skipped by `select_by_bic`, which says so in its reason.
"""

from __future__ import annotations

import logging

import numpy as np

from tasks.chain import GaussianMixtureStep, gaussian_log_density
from tasks.cluster import (
    KFit,
    SweepResult,
    k_range,
    metric_functions,
    score_fit,
    silhouette_subset,
    sweep_result,
)
from tasks.compute.gmm import GaussianMixtureFit, degenerate_components, fit_gaussian_mixture
from tasks.config import ClusterConfig
from tasks.progress import progress
from tasks.select import Selection

logger = logging.getLogger(__name__)

EM_TOL = 1e-3  # stop when the mean log-likelihood per row gains less than this
REG_COVAR = 1e-6  # added to each covariance's diagonal (keeps it positive definite)
CRITERION = "bic"
SURE = 0.8  # a row assigned with a posterior below this is "unsure" in the report
DEGENERATE = "degenerate_components"  # per-k metric: components with a singular covariance


def fit_mixture(
    values: np.ndarray,
    k: int,
    config: ClusterConfig,
    n_init: int | None = None,
    seed_offset: int = 0,
) -> GaussianMixtureFit:
    """One k's mixture with the ``cluster`` params (best of ``n_init`` EM runs)."""
    return fit_gaussian_mixture(
        values,
        k,
        covariance=config.covariance,
        n_init=config.n_init if n_init is None else n_init,
        max_iter=config.max_iter,
        tol=EM_TOL,
        reg_covar=REG_COVAR,
        random_state=config.seed + seed_offset,
    )


def sweep(values: np.ndarray, config: ClusterConfig) -> SweepResult:
    """A mixture for every k in range, each scored on its hard labels plus BIC."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    n_rows = len(values)
    ks = k_range(config, n_rows)
    for note in ks.notes():
        logger.warning(note)
    sample = silhouette_subset(n_rows, config)
    functions = metric_functions(config.backend)
    fits = {}
    description = f"Gaussian mixture ({config.covariance}) k={ks.k_values[0]}..{ks.k_values[-1]}"
    with progress(f"{description} ({n_rows} rows)", len(ks.k_values), "k") as done:
        for k in ks.k_values:
            mixture = fit_mixture(values, k, config)
            labels = np.asarray(mixture.labels, dtype=np.int64)
            inertia = float(((values - mixture.means[labels]) ** 2).sum())
            metrics = score_fit(values, mixture.means, labels, inertia, sample, functions)
            metrics["bic"] = mixture.bic(n_rows)
            metrics["log_likelihood"] = mixture.mean_log_likelihood
            metrics[DEGENERATE] = float(
                len(degenerate_components(values, labels, k, config.covariance))
            )
            fits[k] = KFit(
                k=k,
                centroids=mixture.means,
                labels=labels,
                inertia=inertia,
                n_iter=mixture.n_iter,
                metrics=metrics,
                mixture=serving_step(mixture),
            )
            done(len(fits), last_k=k, iterations=mixture.n_iter)
    return sweep_result(fits, config, ks, n_rows, len(sample))


def select_by_bic(result: SweepResult) -> Selection:
    """The k with the lowest BIC, with its reason as the other criteria record theirs. Only
    the k values with the fewest degenerate components compete (none, unless every k has
    one: a group of identical rows collapses at every k); the others are skipped, and said so."""
    ks = result.k_values
    bic = {k: result.fits[k].metrics["bic"] for k in ks}
    degenerate = {k: int(result.fits[k].metrics.get(DEGENERATE, 0.0)) for k in ks}
    fewest = min(degenerate.values())
    ranked = sorted(
        (k for k in ks if degenerate[k] == fewest),
        key=lambda candidate: (bic[candidate], candidate),
    )
    k = ranked[0]
    runner_up = [f"k={other}: {bic[other]:.6g}" for other in ranked[1:3]]
    reason = f"k={k}: lowest BIC ({bic[k]:.6g}) of the Gaussian mixtures"
    if runner_up:
        reason += "; next: " + ", ".join(runner_up)
    if fewest:
        reason += (
            f"; every k has {fewest} or more degenerate component(s) (collapsed onto rows too "
            "few or too alike for a covariance)"
        )
    skipped = [other for other in ks if degenerate[other] > fewest]
    if skipped:
        listed = ", ".join(f"k={other} (BIC {bic[other]:.6g})" for other in skipped)
        reason += (
            f"; skipped {listed}: a component collapsed onto rows too few or too alike for "
            "its covariance, which only the regularisation kept finite"
        )
    details = {"k_values": ks, "bic": bic, DEGENERATE: degenerate}
    return Selection(k, CRITERION, reason, {}, details)


def serving_step(mixture: GaussianMixtureFit) -> GaussianMixtureStep:
    """The chain's model step of a fitted mixture (the means are the chain's centroids)."""
    return GaussianMixtureStep(mixture.covariance, mixture.weights, mixture.precisions_cholesky)


def mahalanobis_to_own(values: np.ndarray, fit: KFit) -> np.ndarray:
    """Each row's Mahalanobis distance to its own (most probable) component, of a mixture's
    fit: the ``distance_to_cluster`` serving answers for a mixture."""
    assert fit.mixture is not None
    _, squared = gaussian_log_density(
        values, fit.centroids, fit.mixture.precisions_cholesky, fit.mixture.covariance
    )
    own = squared[np.arange(len(values)), fit.labels]
    return np.sqrt(np.maximum(own, 0.0))


def membership_probabilities(values: np.ndarray, fit: KFit) -> np.ndarray:
    """Each row's posterior probability of its own (most probable) component, of a mixture's
    fit: the ``membership_probability`` serving answers for a mixture."""
    assert fit.mixture is not None
    log_resp, _ = fit.mixture.responsibilities(values, fit.centroids)
    return np.exp(log_resp[np.arange(len(values)), fit.labels])


def membership_summary(probabilities: np.ndarray) -> dict[str, float]:
    """How sure the assignments are: the mean and median posterior of the rows' own segment,
    the smallest, and the shares of rows below 0.5, 0.8 (`SURE`) and 0.95."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not len(probabilities):
        return {"rows": 0}
    return {
        "rows": len(probabilities),
        "mean": float(probabilities.mean()),
        "median": float(np.median(probabilities)),
        "min": float(probabilities.min()),
        "share_below_0.5": float((probabilities < 0.5).mean()),
        f"share_below_{SURE}": float((probabilities < SURE).mean()),
        "share_below_0.95": float((probabilities < 0.95).mean()),
    }
