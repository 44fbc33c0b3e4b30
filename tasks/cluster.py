"""Cluster: a seeded k-means sweep over a k range, with quality metrics per k.

The compute backend is ``cluster.backend``: ``numba`` (tasks.compute's KMeansSweep, the
default) or ``sklearn`` (a scikit-learn KMeans loop, for comparison). Silhouette and Dunn are
O(n²): above ``cluster.silhouette_sample`` rows they run on one seeded sample, shared by every
k. The result carries what was capped or sampled as fields (`SweepResult.k_capped`,
``silhouette_rows``, ``seeding_rows``); its notes are built from them. The Dask engine fits the
same k values over partitions and builds its result with the same `sweep_result`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.chain import GaussianMixtureStep
from tasks.config import ClusterConfig
from tasks.progress import OnStep, progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KFit:
    k: int
    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    metrics: dict[str, float] = field(default_factory=dict)
    mixture: GaussianMixtureStep | None = None  # cluster.model=gmm: weights, precisions


@dataclass(frozen=True)
class KRange:
    """The k values a sweep fits: k_min..k_max, k_max capped at rows - 1."""

    k_values: list[int]
    k_max_requested: int

    @property
    def capped(self) -> bool:
        return self.k_values[-1] < self.k_max_requested

    def notes(self) -> list[str]:
        if not self.capped:
            return []
        return [f"cluster.k_max={self.k_max_requested} capped at {self.k_values[-1]} (rows - 1)"]


@dataclass(frozen=True)
class SweepResult:
    """Every k's fit and metrics, and the facts the run's notes are built from."""

    fits: dict[int, KFit]
    backend: str
    silhouette_rows: int  # rows the silhouette/Dunn were computed on
    n_rows: int
    k_capped: bool = False
    k_max_requested: int | None = None
    seeding_rows: int | None = None  # rows k-means++ seeding ran on, when not all of them
    engine_notes: list[str] = field(default_factory=list)  # what the execution engine did

    @property
    def k_values(self) -> list[int]:
        return sorted(self.fits)

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.k_capped:
            k_range = KRange(self.k_values, self.k_max_requested or self.k_values[-1])
            notes += k_range.notes()
        if self.seeding_rows is not None and self.seeding_rows < self.n_rows:
            notes.append(
                f"k-means++ seeding (cluster.n_init runs per k) on a seeded sample of "
                f"{self.seeding_rows} rows, then Lloyd iterations on all {self.n_rows} rows"
            )
        if self.silhouette_rows < self.n_rows:
            notes.append(
                f"silhouette and Dunn index on a seeded sample of {self.silhouette_rows} "
                f"of {self.n_rows} rows"
            )
        return notes + list(self.engine_notes)

    def metric_table(self) -> dict[str, list[float]]:
        names = list(next(iter(self.fits.values())).metrics)
        return {name: [self.fits[k].metrics[name] for k in self.k_values] for name in names}


def k_range(config: ClusterConfig, n_rows: int) -> KRange:
    """k_min..k_max, with k_max capped at rows - 1 (a note, not an error)."""
    k_max = min(config.k_max, n_rows - 1)
    if config.k_min > k_max:
        from tasks.errors import DataError

        raise DataError(
            f"{n_rows} rows are too few for cluster.k_min={config.k_min} (need at least k_min + 1)"
        )
    return KRange(list(range(config.k_min, k_max + 1)), config.k_max)


def silhouette_subset(n_rows: int, config: ClusterConfig) -> np.ndarray:
    """The rows silhouette and Dunn (O(n²)) run on: a seeded sample of
    ``cluster.silhouette_sample`` rows above that size, otherwise every row."""
    if n_rows <= config.silhouette_sample:
        return np.arange(n_rows)
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(n_rows, size=config.silhouette_sample, replace=False))


def sweep_result(
    fits: dict[int, KFit],
    config: ClusterConfig,
    k_values: KRange,
    n_rows: int,
    silhouette_rows: int,
    seeding_rows: int | None = None,
    engine_notes: list[str] | None = None,
) -> SweepResult:
    return SweepResult(
        fits=fits,
        backend=config.backend,
        silhouette_rows=silhouette_rows,
        n_rows=n_rows,
        k_capped=k_values.capped,
        k_max_requested=k_values.k_max_requested,
        seeding_rows=seeding_rows,
        engine_notes=list(engine_notes or []),
    )


def _lloyd_options(config: ClusterConfig) -> dict[str, Any]:
    """The ``cluster`` params as the keyword arguments of both backends' k-means."""
    return {
        "n_init": config.n_init,
        "max_iter": config.max_iter,
        "tol": config.tol,
        "random_state": config.seed,
    }


def _fit_of(model: Any) -> tuple[np.ndarray, np.ndarray, float, int]:
    """A fitted k-means model as (centroids, labels, inertia, iterations)."""
    return model.cluster_centers_, model.labels_, float(model.inertia_), int(model.n_iter_)


def _sklearn_fits(
    values: np.ndarray, k_values: list[int], config: ClusterConfig, on_step: OnStep
) -> dict[int, tuple[np.ndarray, np.ndarray, float, int]]:
    from sklearn.cluster import KMeans

    fits = {}
    for position, k in enumerate(k_values, start=1):
        fits[k] = _fit_of(KMeans(n_clusters=k, **_lloyd_options(config)).fit(values))
        on_step(position, len(k_values), last_k=k, iterations=fits[k][3])
    return fits


#: The sweep runs every (k, init) in lockstep, each run holding ~12 bytes per row (labels,
#: seeding distances); k values are fitted in groups whose runs stay within this many bytes.
#: Measured on 500k x 6 (k=2..12, n_init=10): 64 MB (one k per group) peaks 130 MB lower
#: than 256 MB (four) at the same time: the extra passes over the rows are cheap next to the
#: per-run work.
SWEEP_GROUP_BYTES = 64 * 2**20


def sweep_groups(k_values: list[int], n_init: int, n_rows: int) -> list[list[int]]:
    """Consecutive groups of ``k_values`` fitted together: each k is seeded with its own
    ``RandomState(seed)``, so grouping changes memory, not results."""
    per_k = max(1, SWEEP_GROUP_BYTES // max(1, 12 * n_rows * n_init))
    return [k_values[i : i + per_k] for i in range(0, len(k_values), per_k)]


def _numba_fits(
    values: np.ndarray, k_values: list[int], config: ClusterConfig, on_step: OnStep
) -> dict[int, tuple[np.ndarray, np.ndarray, float, int]]:
    from tasks.compute import KMeansSweep

    fits: dict[int, tuple[np.ndarray, np.ndarray, float, int]] = {}
    for group in sweep_groups(k_values, config.n_init, len(values)):
        done_before = len(fits)

        def group_step(done: int, total: int, done_before=done_before, **details) -> None:
            on_step(done_before + done, len(k_values), **details)

        sweep = KMeansSweep(k_values=group, **_lloyd_options(config))
        sweep.fit(values, on_step=group_step)
        fits.update({k: _fit_of(sweep.models_[k]) for k in group})
    return fits


def fit_k_values(
    values: np.ndarray, k_values: list[int], config: ClusterConfig, what: str = "k-means"
) -> dict[int, tuple[np.ndarray, np.ndarray, float, int]]:
    """k-means for every k with ``cluster.backend`` (best of ``n_init`` seeded runs each):
    ``{k: (centroids, labels, inertia, n_iter)}``, unscored. Progress per k finished (with
    the Lloyd iteration of the numba sweep, whose k values run in lockstep) as ``what``."""
    fitter = _numba_fits if config.backend == "numba" else _sklearn_fits
    values = np.ascontiguousarray(values, dtype=np.float64)
    description = f"{what} k={k_values[0]}..{k_values[-1]} ({len(values)} rows)"
    with progress(description, len(k_values), "k") as on_step:
        return fitter(values, k_values, config, on_step)


def metric_functions(backend: str) -> dict[str, Callable[..., float]]:
    """Quality metrics for a compute backend: numba kernels, or scikit-learn (Dunn has no sklearn form)."""
    from tasks import compute

    if backend == "numba":
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


def sweep(values: np.ndarray, config: ClusterConfig) -> SweepResult:
    """Fit k-means for every k in range and score each fit (progress per k of each)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    n_rows = len(values)
    ks = k_range(config, n_rows)
    for note in ks.notes():
        logger.warning(note)
    raw_fits = fit_k_values(values, ks.k_values, config)
    sample = silhouette_subset(n_rows, config)
    functions = metric_functions(config.backend)
    fits = {}
    with progress(f"scoring k ({len(sample)} rows for silhouette)", len(raw_fits), "k") as done:
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
            done(len(fits), last_k=k)
    return sweep_result(fits, config, ks, n_rows, len(sample))
