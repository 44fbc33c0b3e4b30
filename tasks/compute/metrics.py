"""Clustering quality metrics: exact, blockwise (no n x n matrix), parallel.

* :func:`silhouette_score` / :func:`silhouette_samples` - same values as scikit-learn's
  (Euclidean metric), computed with numba tiles instead of a chunked distance matrix.
* :func:`dunn_index` - min inter-cluster point distance / max intra-cluster diameter.
* :func:`davies_bouldin_score`, :func:`calinski_harabasz_score` - scikit-learn's values
  from per-cluster sums in two vectorised passes (scikit-learn's loop over the clusters
  makes a pass per cluster), through the ``_from_stats`` forms below.
* :func:`calinski_harabasz_from_stats`, :func:`davies_bouldin_from_stats` - the same two
  scores from per-cluster sums (counts, means, squared / plain distances to the mean), for
  data summed chunk by chunk that is never in one array.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

from tasks.compute._metrics_kernels import (
    cluster_distance_sums,
    cluster_distance_sums_sym,
    dunn_extremes,
)
from tasks.compute._threads import kernel_threads, parts_for
from tasks.compute._validation import as_2d_float, check_labels

__all__ = [
    "calinski_harabasz_from_stats",
    "calinski_harabasz_score",
    "davies_bouldin_from_stats",
    "davies_bouldin_score",
    "dunn_index",
    "silhouette_samples",
    "silhouette_score",
]


def _prepare(X, labels, *, min_labels: int, max_labels_rule: bool):
    X = as_2d_float(X, dtype=np.float64)
    labels = check_labels(labels, X.shape[0])
    uniq, codes = np.unique(labels, return_inverse=True)
    n_labels = uniq.shape[0]
    n = X.shape[0]
    if n_labels < min_labels or (max_labels_rule and n_labels > n - 1):
        upper = "n_samples - 1" if max_labels_rule else "n_samples"
        raise ValueError(
            f"Number of labels is {n_labels}. Valid values are {min_labels} to {upper} (inclusive)."
        )
    codes = codes.astype(np.int64)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_labels)
    starts = np.zeros(n_labels + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    XT = np.ascontiguousarray(X[order].T)
    return XT, codes, order, counts, starts


_ROW_TILE = 64
_COL_TILE = 1024
# Silhouette's register-blocked kernel: a row tile (a multiple of 4 rows) is processed 4
# rows at a time against strips of _SIL_COL_TILE columns. 256 to 1024 columns measured the
# same (20 features); much shorter strips pay the set-up of the vectorised loops per call.
_SIL_ROW_TILE = 64
_SIL_COL_TILE = 512
# per-thread column-sum buffers (threads x n x n_clusters float64) up to 256 MiB
_SYM_BUFFER_MAX = 32 * 1024 * 1024
# Fewer rows than this: the plain kernel (every pair twice, a fraction of a second at this
# size), so that a small run does not compile the micro-kernel (~5 CPU s on first use).
_SYM_MIN_ROWS = 1000


def silhouette_samples(X, labels) -> np.ndarray:
    """Silhouette coefficient of every sample (Euclidean), exact and blockwise.

    Same definition and edge cases as :func:`sklearn.metrics.silhouette_samples`:
    samples in singleton clusters get 0. Memory is O(n * n_clusters).
    """
    XT, codes, order, counts, starts = _prepare(X, labels, min_labels=2, max_labels_rule=True)
    n, d = XT.shape[1], XT.shape[0]
    sorted_codes = codes[order].astype(np.int64)
    with kernel_threads(n * n * d):
        n_parts = parts_for(-(-n // _SIL_ROW_TILE))
        if n >= _SYM_MIN_ROWS and n_parts * n * (starts.shape[0] - 1) <= _SYM_BUFFER_MAX:
            # rows and features zero-padded to multiples of 4 for the 4 x 4 micro-kernel
            Xp = np.zeros((-(-n // 4) * 4, -(-d // 4) * 4))
            Xp[:n, :d] = XT.T
            sq = np.einsum("ij,ij->i", Xp[:n], Xp[:n])
            sums_sorted = cluster_distance_sums_sym(
                Xp,
                np.ascontiguousarray(Xp[:n].T),
                sq,
                starts,
                sorted_codes,
                _SIL_ROW_TILE,
                _SIL_COL_TILE,
                n_parts,
            )
        else:  # few rows, or very many clusters (no per-thread column buffers): 2x the work
            Xs = np.ascontiguousarray(XT.T)
            sq = np.einsum("ij,ij->i", Xs, Xs)
            sums_sorted = cluster_distance_sums(Xs, sq, starts, sorted_codes, _ROW_TILE, _COL_TILE)
    sums = np.empty_like(sums_sorted)
    sums[order] = sums_sorted
    n = codes.shape[0]
    rows = np.arange(n)
    intra = sums[rows, codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        intra = intra / (counts - 1).take(codes)
    mean_d = sums / counts[None, :]
    mean_d[rows, codes] = np.inf
    inter = mean_d.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sil = (inter - intra) / np.maximum(intra, inter)
    return np.nan_to_num(sil)


def silhouette_score(X, labels, sample_size=None, random_state=None) -> float:
    """Mean silhouette coefficient (Euclidean), exact and blockwise.

    With ``sample_size``, the same subsample as scikit-learn's for the same
    ``random_state`` (``random_state.permutation(n)[:sample_size]``).
    """
    X = as_2d_float(X, dtype=np.float64)
    labels = check_labels(labels, X.shape[0])
    if sample_size is not None:
        if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)):
            raise ValueError(f"sample_size must be a positive integer, got {sample_size!r}.")
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}.")
        rs = check_random_state(random_state)
        idx = rs.permutation(X.shape[0])[:sample_size]
        X, labels = X[idx], labels[idx]
    return float(np.mean(silhouette_samples(X, labels)))


def dunn_index(X, labels) -> float:
    """Dunn index: (min distance between points of different clusters) /
    (max distance between two points of the same cluster).

    Exact, Euclidean, computed blockwise over the pairs j > i in parallel. Higher is
    better. Raises ``ValueError`` for fewer than 2 clusters. If every cluster is a
    single point (or all intra-cluster distances are 0) the index is ``inf``.
    """
    XT, codes, order, _counts, starts = _prepare(X, labels, min_labels=2, max_labels_rule=False)
    Xs = np.ascontiguousarray(XT.T)
    sq = np.einsum("ij,ij->i", Xs, Xs)
    cluster_end = starts[1:][codes[order]].astype(np.int64)
    with kernel_threads(Xs.shape[0] ** 2 * Xs.shape[1] / 2):
        min_inter_sq, max_intra_sq = dunn_extremes(Xs, sq, cluster_end, _ROW_TILE, _COL_TILE)
    if max_intra_sq <= 0.0:
        return float("inf")
    return float(np.sqrt(min_inter_sq) / np.sqrt(max_intra_sq))


def _label_codes(labels: np.ndarray) -> np.ndarray:
    """Labels as codes for ``np.bincount``: non-negative integers as they are (k-means
    labels 0..k-1: no sort; a code with no row is an empty cluster, which the scores
    ignore), anything else through ``np.unique``."""
    small_ints = labels.dtype.kind in "iu" and labels.shape[0] > 0
    if small_ints and labels.min() >= 0 and int(labels.max()) < max(1024, 2 * labels.shape[0]):
        return labels.astype(np.intp, copy=False)
    return np.unique(labels, return_inverse=True)[1].ravel()


def _cluster_sums(X, labels):
    """Per cluster: row counts, means, and the sums of the rows' squared and plain
    (Euclidean) distances to their cluster's mean; two passes over X, no loop over
    clusters."""
    X = as_2d_float(X, dtype=np.float64)
    codes = _label_codes(check_labels(labels, X.shape[0]))
    k = int(codes.max()) + 1 if codes.shape[0] else 0
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    sums = np.empty((k, X.shape[1]))
    for j in range(X.shape[1]):
        sums[:, j] = np.bincount(codes, weights=X[:, j], minlength=k)
    means = sums / np.maximum(counts, 1.0)[:, None]
    diff = X - means[codes]
    sq = np.einsum("ij,ij->i", diff, diff)
    squared = np.bincount(codes, weights=sq, minlength=k)
    plain = np.bincount(codes, weights=np.sqrt(sq, out=sq), minlength=k)
    return counts, means, squared, plain


def davies_bouldin_score(X, labels) -> float:
    """Davies-Bouldin index (lower is better): scikit-learn's value, from per-cluster sums
    (scikit-learn loops over the clusters, a pass over the rows each: 5x slower at 500k
    rows and 8 clusters)."""
    counts, means, _, plain = _cluster_sums(X, labels)
    return davies_bouldin_from_stats(counts, means, plain)


def calinski_harabasz_score(X, labels) -> float:
    """Calinski-Harabasz index (higher is better): scikit-learn's value, from per-cluster
    sums (see `davies_bouldin_score`)."""
    counts, means, squared, _ = _cluster_sums(X, labels)
    return calinski_harabasz_from_stats(counts, means, squared)


def _cluster_stats(counts, means, per_cluster):
    counts = np.asarray(counts, dtype=np.float64).ravel()
    means = np.asarray(means, dtype=np.float64)
    per_cluster = np.asarray(per_cluster, dtype=np.float64).ravel()
    if means.ndim != 2 or means.shape[0] != counts.shape[0] or per_cluster.shape != counts.shape:
        raise ValueError(
            f"counts (k,), means (k, d) and per-cluster sums (k,) must agree, got shapes "
            f"{counts.shape}, {means.shape}, {per_cluster.shape}."
        )
    present = counts > 0
    n, n_labels = counts.sum(), int(present.sum())
    if not 1 < n_labels < n:
        raise ValueError(
            f"Number of labels is {n_labels}. Valid values are 2 to n_samples - 1 (inclusive)."
        )
    return counts[present], means[present], per_cluster[present], float(n), n_labels


def calinski_harabasz_from_stats(counts, means, intra_ss) -> float:
    """Calinski-Harabasz index from per-cluster row counts, means (k, d) and within-cluster
    sums of squared distances to the mean; the value of scikit-learn's score on the rows.
    Empty clusters are ignored, as absent labels are there."""
    counts, means, intra_ss, n, n_labels = _cluster_stats(counts, means, intra_ss)
    overall = counts @ means / n
    extra = float((counts * ((means - overall) ** 2).sum(axis=1)).sum())
    intra = float(intra_ss.sum())
    if intra == 0.0:
        return 1.0
    return float(extra * (n - n_labels) / (intra * (n_labels - 1.0)))


def davies_bouldin_from_stats(counts, means, intra_dist_sums) -> float:
    """Davies-Bouldin index from per-cluster row counts, means (k, d) and sums of the
    (Euclidean, not squared) distances of each cluster's rows to its mean; the value of
    scikit-learn's score on the rows. Empty clusters are ignored."""
    counts, means, sums, _, _ = _cluster_stats(counts, means, intra_dist_sums)
    intra = sums / counts
    centroid_distances = np.sqrt(
        np.maximum(((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=2), 0.0)
    )
    if np.allclose(intra, 0.0) or np.allclose(centroid_distances, 0.0):
        return 0.0
    centroid_distances[centroid_distances == 0] = np.inf
    combined = intra[:, None] + intra
    return float(np.mean(np.max(combined / centroid_distances, axis=1)))
