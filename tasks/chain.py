"""The fitted segmentation chain: raw feature rows in, (segment, distance) out.

One artifact holds the whole chain (fill values, log1p flags, clip bounds, scaler, PCA,
centroids, segment-id map, feature names) as ``chain.npz`` + ``chain.json``, loaded with
``allow_pickle=False``. The model step is k-means (nearest centroid, Euclidean distance) or,
from format 2, a Gaussian mixture (``model: gmm``: weights, means = the centroids, and the
Cholesky factors of the precisions; most probable component, Mahalanobis distance to it, and
its posterior probability). Format-1 chains load as k-means. This module is the serving path's only model code: it imports
numpy and the standard library only and stays valid Python 3.9 (the SageMaker
scikit-learn 1.2-1 serving image), so it is copied as-is into ``model.tar.gz``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

CHAIN_NPZ = "chain.npz"
CHAIN_JSON = "chain.json"
FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)
MODELS = ("kmeans", "gmm")
COVARIANCES = ("full", "diag")

_ARRAYS = (
    "fill_values",
    "log1p_mask",
    "clip_low",
    "clip_high",
    "scale_center",
    "scale_scale",
    "pca_mean",
    "pca_components",
    "centroids",
    "segment_ids",
)
# Present only in a Gaussian-mixture chain (absent = k-means).
_MIXTURE_ARRAYS = ("mixture_weights", "mixture_precisions_cholesky")


class ChainInputError(ValueError):
    """A request that does not fit the chain (wrong feature count/names, non-numbers)."""


class SegmentationChain:
    """Every fitted transform of a training run, applied in order:
    fill missing -> log1p -> clip -> (x - center) / scale -> PCA -> nearest centroid."""

    def __init__(
        self,
        feature_names: Sequence[str],
        fill_values: np.ndarray,
        log1p_mask: np.ndarray,
        clip_low: np.ndarray,
        clip_high: np.ndarray,
        scale_center: np.ndarray,
        scale_scale: np.ndarray,
        pca_mean: np.ndarray,
        pca_components: np.ndarray,
        centroids: np.ndarray,
        segment_ids: np.ndarray,
        metadata: Optional[Dict[str, Any]] = None,
        mixture: Optional[GaussianMixtureStep] = None,
    ) -> None:
        self.feature_names = [str(name) for name in feature_names]
        d = len(self.feature_names)
        self.fill_values = np.asarray(fill_values, dtype=np.float64).reshape(d)
        self.log1p_mask = np.asarray(log1p_mask, dtype=bool).reshape(d)
        self.clip_low = np.asarray(clip_low, dtype=np.float64).reshape(d)
        self.clip_high = np.asarray(clip_high, dtype=np.float64).reshape(d)
        self.scale_center = np.asarray(scale_center, dtype=np.float64).reshape(d)
        self.scale_scale = np.asarray(scale_scale, dtype=np.float64).reshape(d)
        self.pca_mean = np.asarray(pca_mean, dtype=np.float64).reshape(d)
        self.pca_components = np.asarray(pca_components, dtype=np.float64)
        self.centroids = np.asarray(centroids, dtype=np.float64)
        self.segment_ids = np.asarray(segment_ids, dtype=np.int64)
        self.metadata = dict(metadata or {})
        if self.pca_components.ndim != 2 or self.pca_components.shape[1] != d:
            raise ValueError("pca_components must have shape (n_components, n_features)")
        if self.centroids.ndim != 2 or self.centroids.shape[1] != self.pca_components.shape[0]:
            raise ValueError("centroids must have shape (k, n_components)")
        if self.segment_ids.shape != (self.centroids.shape[0],):
            raise ValueError("segment_ids must have one id per centroid")
        if mixture is not None:
            mixture.check(self.centroids.shape)
        self.mixture = mixture

    @property
    def model(self) -> str:
        """The model step: ``kmeans`` (nearest centroid) or ``gmm`` (Gaussian mixture)."""
        return "kmeans" if self.mixture is None else "gmm"

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def input_contract(self) -> Dict[str, Any]:
        """What a request must look like: the feature names in order. One-hot columns are
        features, so a categorical's levels are part of it. Equal contracts accept the same
        requests; a different one breaks clients built for the other."""
        return {"features": list(self.feature_names)}

    # ------------------------------------------------------------------ inference

    def prepare(self, rows: np.ndarray) -> np.ndarray:
        """Raw rows (n, n_features) -> the scaled feature space (before PCA)."""
        values = np.array(rows, dtype=np.float64, copy=True)
        if values.ndim == 1:
            values = values.reshape(1, -1)
        if values.ndim != 2 or values.shape[1] != self.n_features:
            raise ChainInputError(
                "expected %d features (%s), got %d"
                % (
                    self.n_features,
                    ", ".join(self.feature_names),
                    values.shape[-1] if values.ndim else 0,
                )
            )
        if np.isinf(values).any():
            row, column = np.argwhere(np.isinf(values))[0]
            raise ChainInputError(
                "row %d, feature %r: infinite value" % (row + 1, self.feature_names[column])
            )
        missing = np.isnan(values)
        if missing.any():
            values[missing] = np.take(self.fill_values, np.nonzero(missing)[1])
        if self.log1p_mask.any():
            logged = values[:, self.log1p_mask]
            # log1p columns were non-negative in training; a negative request value is
            # clamped to 0 rather than producing NaN.
            values[:, self.log1p_mask] = np.log1p(np.maximum(logged, 0.0))
        values = np.clip(values, self.clip_low, self.clip_high)
        return (values - self.scale_center) / self.scale_scale

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """Raw rows -> the space the centroids live in (after PCA)."""
        return (self.prepare(rows) - self.pca_mean) @ self.pca_components.T

    def distances(self, rows: np.ndarray) -> np.ndarray:
        """Euclidean distance from each row to each centroid, shape (n, k)."""
        return self._euclidean(self.transform(rows))

    def _euclidean(self, reduced: np.ndarray) -> np.ndarray:
        squared = (
            (reduced**2).sum(axis=1)[:, None]
            - 2.0 * reduced @ self.centroids.T
            + (self.centroids**2).sum(axis=1)[None, :]
        )
        return np.sqrt(np.maximum(squared, 0.0))

    def predict_internal(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(centroid index, distance) per row, before the segment-id map."""
        closest, distance, _ = self._assign(self.transform(rows))
        return closest, distance

    def predict(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(segment id, distance to its centroid) per row."""
        closest, distance = self.predict_internal(rows)
        return self.segment_ids[closest], distance

    def predict_membership(
        self, rows: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(segment id, distance, membership probability) per row. The probability is the
        mixture's posterior of the chosen component (None for a k-means chain); the distance
        is Euclidean for k-means and Mahalanobis (under that component's covariance) for a
        Gaussian mixture."""
        closest, distance, probability = self._assign(self.transform(rows))
        return self.segment_ids[closest], distance, probability

    def _assign(self, reduced: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        rows = np.arange(len(reduced))
        if self.mixture is None:
            distances = self._euclidean(reduced)
            closest = distances.argmin(axis=1)
            return closest, distances[rows, closest], None
        log_resp, squared = self.mixture.responsibilities(reduced, self.centroids)
        closest = log_resp.argmax(axis=1)
        distance = np.sqrt(np.maximum(squared[rows, closest], 0.0))
        return closest, distance, np.exp(log_resp[rows, closest])

    def rows_from_records(self, records: Sequence[Dict[str, Any]]) -> np.ndarray:
        """Records keyed by feature name -> an (n, n_features) array; missing keys are NaN."""
        rows = np.full((len(records), self.n_features), np.nan)
        known = set(self.feature_names)
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise ChainInputError("record %d is not an object" % (index + 1))
            unknown = sorted(set(record) - known)
            if unknown:
                raise ChainInputError(
                    "record %d: unknown feature(s) %s; expected %s"
                    % (index + 1, ", ".join(unknown), ", ".join(self.feature_names))
                )
            for column, name in enumerate(self.feature_names):
                value = record.get(name)
                rows[index, column] = _to_float(value, index, name)
        return rows

    # ------------------------------------------------------------------ storage

    def save(self, directory: str) -> List[str]:
        """Write chain.npz + chain.json into ``directory``; returns the two paths."""
        os.makedirs(directory, exist_ok=True)
        npz_path = os.path.join(directory, CHAIN_NPZ)
        json_path = os.path.join(directory, CHAIN_JSON)
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        description = {
            "format_version": FORMAT_VERSION,
            "feature_names": self.feature_names,
            "k": self.k,
            "n_components": int(self.pca_components.shape[0]),
            "metadata": self.metadata,
            "model": self.model,
        }
        if self.mixture is not None:
            arrays["mixture_weights"] = self.mixture.weights
            arrays["mixture_precisions_cholesky"] = self.mixture.precisions_cholesky
            description["covariance"] = self.mixture.covariance
        np.savez(npz_path, **arrays)
        with open(json_path, "w") as handle:
            json.dump(
                description,
                handle,
                indent=2,
                sort_keys=True,
            )
        return [npz_path, json_path]

    @classmethod
    def load(cls, directory: str) -> SegmentationChain:
        with open(os.path.join(directory, CHAIN_JSON)) as handle:
            description = json.load(handle)
        if description.get("format_version") not in SUPPORTED_FORMATS:
            raise ValueError(
                "unsupported chain format %r in %s" % (description.get("format_version"), directory)
            )
        model = description.get("model", "kmeans")
        if model not in MODELS:
            raise ValueError("unsupported chain model %r in %s" % (model, directory))
        with np.load(os.path.join(directory, CHAIN_NPZ), allow_pickle=False) as arrays:
            values = {name: arrays[name] for name in _ARRAYS}
            mixture = None
            if model == "gmm":
                mixture = GaussianMixtureStep(
                    covariance=description.get("covariance", ""),
                    weights=arrays["mixture_weights"],
                    precisions_cholesky=arrays["mixture_precisions_cholesky"],
                )
        return cls(
            feature_names=description["feature_names"],
            metadata=description.get("metadata", {}),
            mixture=mixture,
            **values,
        )


class GaussianMixtureStep:
    """A Gaussian mixture's model step: component weights and the Cholesky factors of the
    precision matrices (``full``: (k, d, d), upper-triangular, precision = L @ L.T as
    scikit-learn's ``precisions_cholesky_``; ``diag``: (k, d), 1 / standard deviation). The
    means are the chain's centroids."""

    def __init__(self, covariance: str, weights: np.ndarray, precisions_cholesky: np.ndarray):
        if covariance not in COVARIANCES:
            raise ValueError(
                "mixture covariance must be one of %s, got %r"
                % (", ".join(COVARIANCES), covariance)
            )
        self.covariance = covariance
        self.weights = np.asarray(weights, dtype=np.float64)
        self.precisions_cholesky = np.asarray(precisions_cholesky, dtype=np.float64)

    def check(self, means_shape: Tuple[int, ...]) -> None:
        k, d = means_shape
        expected = (k, d, d) if self.covariance == "full" else (k, d)
        if self.weights.shape != (k,):
            raise ValueError("mixture_weights must have one weight per centroid")
        if self.precisions_cholesky.shape != expected:
            raise ValueError(
                "mixture_precisions_cholesky must have shape %s for %s covariance, got %s"
                % (expected, self.covariance, self.precisions_cholesky.shape)
            )

    def responsibilities(
        self, reduced: np.ndarray, means: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """(log posterior of each component, squared Mahalanobis distance to it), (n, k)."""
        log_density, squared = gaussian_log_density(
            reduced, means, self.precisions_cholesky, self.covariance
        )
        weighted = log_density + np.log(self.weights)
        return weighted - log_sum_exp(weighted)[:, None], squared


def gaussian_log_density(
    values: np.ndarray, means: np.ndarray, precisions_cholesky: np.ndarray, covariance: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Per row and component: (log N(x | mean, covariance), squared Mahalanobis distance),
    each (n, k), with the covariance given by the Cholesky factor of its precision (the
    parametrisation of scikit-learn's GaussianMixture). The one implementation: the EM fit
    (tasks.compute.gmm) and serving both use it."""
    n, d = values.shape
    k = means.shape[0]
    if covariance == "full":
        squared = np.empty((n, k))
        for component in range(k):
            factor = precisions_cholesky[component]
            projected = values @ factor - means[component] @ factor
            squared[:, component] = np.einsum("ij,ij->i", projected, projected)
        log_det = np.log(np.diagonal(precisions_cholesky, axis1=1, axis2=2)).sum(axis=1)
    else:
        precisions = precisions_cholesky**2
        squared = (
            (means**2 * precisions).sum(axis=1)[None, :]
            - 2.0 * values @ (means * precisions).T
            + (values**2) @ precisions.T
        )
        squared = np.maximum(squared, 0.0)
        log_det = np.log(precisions_cholesky).sum(axis=1)
    return -0.5 * (d * np.log(2.0 * np.pi) + squared) + log_det, squared


def log_sum_exp(values: np.ndarray) -> np.ndarray:
    """log(sum(exp(values), axis=1)) without overflow."""
    top = values.max(axis=1)
    top = np.where(np.isfinite(top), top, 0.0)
    return top + np.log(np.exp(values - top[:, None]).sum(axis=1))


def contract_digest(contract: Dict[str, Any]) -> str:
    """sha256 of a contract's canonical JSON: short enough for a SageMaker tag (256 chars)."""
    canonical = json.dumps(contract, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _to_float(value: Any, index: int, name: str) -> float:
    if value is None or value == "":
        return float("nan")
    if isinstance(value, bool):
        raise ChainInputError("row %d, feature %r: %r is not a number" % (index + 1, name, value))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ChainInputError(
            "row %d, feature %r: %r is not a number" % (index + 1, name, value)
        ) from None
