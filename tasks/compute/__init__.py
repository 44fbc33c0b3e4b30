"""popseg compute core: numba kernels and scikit-learn-compatible estimators.

No Prefect, MLflow or I/O here: arrays in, arrays out, explicit random state. Kernels
live in the private ``_*_kernels`` modules (serial ``nogil`` numba functions, compiled
lazily with ``cache=True``, each run in parts on the kernel threads of
:mod:`tasks.compute._threads`); the public modules validate input and raise
``ValueError`` with a clear message.
"""

from tasks.compute.drift import population_stability_index
from tasks.compute.impute import KNNImputer
from tasks.compute.kmeans import (
    BoundedLloyd,
    KMeans,
    KMeansSweep,
    absolute_tolerance,
    assign_partial,
    lloyd_partial_sums,
    lloyd_pass,
    lloyd_update,
    relocate_empty_clusters,
    stack_centers,
)
from tasks.compute.metrics import (
    calinski_harabasz_from_stats,
    calinski_harabasz_score,
    davies_bouldin_from_stats,
    davies_bouldin_score,
    dunn_index,
    silhouette_samples,
    silhouette_score,
)
from tasks.compute.minibatch import MiniBatchKMeans
from tasks.compute.stats import column_moments

__all__ = [
    "BoundedLloyd",
    "KMeans",
    "KMeansSweep",
    "KNNImputer",
    "MiniBatchKMeans",
    "absolute_tolerance",
    "assign_partial",
    "calinski_harabasz_from_stats",
    "calinski_harabasz_score",
    "column_moments",
    "davies_bouldin_from_stats",
    "davies_bouldin_score",
    "dunn_index",
    "lloyd_partial_sums",
    "lloyd_pass",
    "lloyd_update",
    "population_stability_index",
    "relocate_empty_clusters",
    "silhouette_samples",
    "silhouette_score",
    "stack_centers",
]
