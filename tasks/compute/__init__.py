"""popseg compute core: numba kernels and scikit-learn-compatible estimators.

No Prefect, MLflow or I/O here: arrays in, arrays out, explicit random state. Kernels
live in the private ``_*_kernels`` modules (compiled lazily by numba, ``cache=True``);
the public modules validate input and raise ``ValueError`` with a clear message.
"""

from tasks.compute.drift import population_stability_index
from tasks.compute.impute import KNNImputer
from tasks.compute.kmeans import KMeans, KMeansSweep, MiniBatchKMeans
from tasks.compute.metrics import (
    calinski_harabasz_score,
    davies_bouldin_score,
    dunn_index,
    silhouette_samples,
    silhouette_score,
)

__all__ = [
    "KMeans",
    "KMeansSweep",
    "KNNImputer",
    "MiniBatchKMeans",
    "calinski_harabasz_score",
    "davies_bouldin_score",
    "dunn_index",
    "population_stability_index",
    "silhouette_samples",
    "silhouette_score",
]
