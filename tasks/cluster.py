"""Cluster: a seeded k-means sweep over a k range, with quality metrics per k.

The engine is a parameter: ``numba`` (tasks.compute's KMeansSweep, the default) or
``sklearn`` (a scikit-learn KMeans loop, for comparison). Silhouette and Dunn are O(n²):
above ``cluster.silhouette_sample`` rows they run on one seeded sample, shared by every k,
and the result says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tasks.config import ClusterConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KFit:
    k: int
    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepResult:
    fits: dict[int, KFit]
    engine: str
    silhouette_rows: int  # rows the silhouette/Dunn were computed on
    n_rows: int
    k_capped: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def k_values(self) -> list[int]:
        return sorted(self.fits)

    def metric_table(self) -> dict[str, list[float]]:
        names = list(next(iter(self.fits.values())).metrics)
        return {name: [self.fits[k].metrics[name] for k in self.k_values] for name in names}


def k_range(config: ClusterConfig, n_rows: int) -> tuple[list[int], list[str]]:
    """k_min..k_max, with k_max capped at rows - 1 (a warning, not an error)."""
    notes = []
    k_max = config.k_max
    if k_max > n_rows - 1:
        k_max = n_rows - 1
        notes.append(f"cluster.k_max={config.k_max} capped at {k_max} (rows - 1)")
    if config.k_min > k_max:
        from tasks.errors import DataError

        raise DataError(
            f"{n_rows} rows are too few for cluster.k_min={config.k_min} (need at least k_min + 1)"
        )
    return list(range(config.k_min, k_max + 1)), notes


def _sklearn_fits(
    values: np.ndarray, k_values: list[int], config: ClusterConfig, progress: Callable[[str], None]
) -> dict[int, tuple[np.ndarray, np.ndarray, float, int]]:
    from sklearn.cluster import KMeans

    fits = {}
    for position, k in enumerate(k_values, start=1):
        model = KMeans(
            n_clusters=k,
            n_init=config.n_init,
            max_iter=config.max_iter,
            tol=config.tol,
            random_state=config.seed,
        ).fit(values)
        fits[k] = (model.cluster_centers_, model.labels_, float(model.inertia_), int(model.n_iter_))
        progress(f"k={k}: inertia {model.inertia_:.4g} ({position}/{len(k_values)})")
    return fits


def _numba_fits(
    values: np.ndarray, k_values: list[int], config: ClusterConfig, progress: Callable[[str], None]
) -> dict[int, tuple[np.ndarray, np.ndarray, float, int]]:
    from tasks.compute import KMeansSweep

    sweep = KMeansSweep(
        k_values=k_values,
        n_init=config.n_init,
        max_iter=config.max_iter,
        tol=config.tol,
        random_state=config.seed,
    ).fit(values)
    fits = {}
    for k in k_values:
        model = sweep.models_[k]
        fits[k] = (model.cluster_centers_, model.labels_, float(model.inertia_), int(model.n_iter_))
    progress(f"fitted k={k_values[0]}..{k_values[-1]} in one sweep")
    return fits


def fit_k_values(
    values: np.ndarray,
    k_values: list[int],
    config: ClusterConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray, float, int]]:
    """k-means for every k with ``cluster.engine`` (best of ``n_init`` seeded runs each):
    ``{k: (centroids, labels, inertia, n_iter)}``, unscored."""
    fitter = _numba_fits if config.engine == "numba" else _sklearn_fits
    values = np.ascontiguousarray(values, dtype=np.float64)
    return fitter(values, k_values, config, progress or logger.info)


def metric_functions(engine: str) -> dict[str, Callable[..., float]]:
    """Quality metrics for an engine: numba kernels, or scikit-learn (Dunn has no sklearn form)."""
    from tasks import compute

    if engine == "numba":
        return {
            "silhouette": compute.silhouette_score,
            "calinski_harabasz": compute.calinski_harabasz_score,
            "davies_bouldin": compute.davies_bouldin_score,
            "dunn": compute.dunn_index,
        }
    from sklearn import metrics

    return {
        "silhouette": metrics.silhouette_score,
        "calinski_harabasz": metrics.calinski_harabasz_score,
        "davies_bouldin": metrics.davies_bouldin_score,
        "dunn": compute.dunn_index,
    }


def score_fit(
    values: np.ndarray,
    centroids: np.ndarray,
    labels: np.ndarray,
    inertia: float,
    sample: np.ndarray,
    functions: dict[str, Callable[..., float]],
) -> dict[str, float]:
    distances = np.linalg.norm(values - centroids[labels], axis=1)
    sample_labels = labels[sample]
    enough = len(np.unique(sample_labels)) >= 2
    return {
        "inertia": float(inertia),
        "mean_distance_to_centroid": float(distances.mean()),
        "silhouette": float(functions["silhouette"](values[sample], sample_labels))
        if enough
        else float("nan"),
        "calinski_harabasz": float(functions["calinski_harabasz"](values, labels)),
        "davies_bouldin": float(functions["davies_bouldin"](values, labels)),
        "dunn": float(functions["dunn"](values[sample], sample_labels)) if enough else float("nan"),
    }


def sweep(
    values: np.ndarray,
    config: ClusterConfig,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Fit k-means for every k in range and score each fit."""
    progress = progress or logger.info
    values = np.ascontiguousarray(values, dtype=np.float64)
    n_rows = len(values)
    k_values, notes = k_range(config, n_rows)
    for note in notes:
        logger.warning(note)
    raw_fits = fit_k_values(values, k_values, config, progress)
    if n_rows > config.silhouette_sample:
        rng = np.random.default_rng(config.seed)
        sample = np.sort(rng.choice(n_rows, size=config.silhouette_sample, replace=False))
        notes.append(
            f"silhouette and Dunn index on a seeded sample of {config.silhouette_sample} "
            f"of {n_rows} rows"
        )
    else:
        sample = np.arange(n_rows)
    functions = metric_functions(config.engine)
    fits = {}
    for k, (centroids, labels, inertia, n_iter) in raw_fits.items():
        labels = np.asarray(labels, dtype=np.int64)
        centroids = np.asarray(centroids, dtype=np.float64)
        fits[k] = KFit(
            k=k,
            centroids=centroids,
            labels=labels,
            inertia=inertia,
            n_iter=n_iter,
            metrics=score_fit(values, centroids, labels, inertia, sample, functions),
        )
    return SweepResult(
        fits=fits,
        engine=config.engine,
        silhouette_rows=len(sample),
        n_rows=n_rows,
        k_capped=bool(notes and "capped" in notes[0]),
        notes=notes,
    )
