"""The fitted segmentation chain: raw feature rows in, (segment, distance) out.

One artifact holds the whole chain (categorical levels, fill values, log1p flags, clip bounds,
scaler, PCA, centroids, segment-id map, feature names) as ``chain.npz`` + ``chain.json``, loaded
with ``allow_pickle=False``. The model step is k-means (nearest centroid, Euclidean distance) or,
from format 2, a Gaussian mixture (``model: gmm``: weights, means = the centroids, and the
Cholesky factors of the precisions; most probable component, Mahalanobis distance to it, and
its posterior probability). Format-1 chains load as k-means, without categorical levels. This
module is the serving path's only model code: it imports
numpy and the standard library only and stays valid Python 3.9 (the SageMaker
scikit-learn 1.2-1 serving image), so it is copied as-is into ``model.tar.gz``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

CHAIN_NPZ = "chain.npz"
CHAIN_JSON = "chain.json"
FORMAT_VERSION = 2
# Versions `load` reads: 1 has no "categories" (one-hot indicators are plain features).
READABLE_VERSIONS = (1, 2)
# The level of a missing categorical value (None, NaN, empty or blank text).
MISSING_LEVEL = "Unknown"
# What `request_rows` sends for a row with no level indicator set (an unseen level).
UNSEEN_VALUE = "(unseen)"
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


#: Rows a blocked pass (`SegmentationChain.blocks_in_space`) sends through the chain at a
#: time: its transform makes temporaries the size of its input (80 MB each on 500k x 20 at
#: once, about 10 MB per block).
BLOCK_ROWS = 65_536


class ChainInputError(ValueError):
    """A request that does not fit the chain (wrong feature count/names, non-numbers)."""


def category_text(value: Any) -> str:
    """The level a raw categorical value belongs to: its text without surrounding blanks;
    ``MISSING_LEVEL`` for a missing value (None, NaN, empty or blank text)."""
    if value is None:
        return MISSING_LEVEL
    if isinstance(value, (float, np.floating)) and value != value:
        return MISSING_LEVEL
    text = value.strip() if isinstance(value, str) else str(value).strip()
    return text or MISSING_LEVEL


def category_levels(values: Iterable[Any]) -> List[str]:
    """The levels of a categorical column's raw values, sorted (what training learns)."""
    return sorted({category_text(value) for value in values})


def encode_categories(
    values: Sequence[Any], levels: Sequence[str]
) -> Tuple[np.ndarray, np.ndarray]:
    """The one encoding of a categorical column, used by training and every serving path:
    raw values -> (indicators, shape (n, len(levels)), 1.0 where the value is that level;
    codes, shape (n,), the level's index or -1 for a level not in ``levels``). An unseen level
    sets no indicator (it is not mistaken for a missing value, whose level is
    ``MISSING_LEVEL``)."""
    index = {level: position for position, level in enumerate(levels)}
    memo: Dict[Tuple[type, Any], int] = {}
    codes = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        key: Optional[Tuple[type, Any]] = (value.__class__, value)  # True, 1, 1.0: 3 levels
        try:
            code = memo.get(key)  # type: ignore[arg-type]
        except TypeError:  # an unhashable value: encoded, never memoised
            code, key = None, None
        if code is None:
            code = index.get(category_text(value), -1)
            if key is not None:
                memo[key] = code
        codes[row] = code
    indicators = np.zeros((len(codes), len(levels)))
    seen = np.flatnonzero(codes >= 0)
    indicators[seen, codes[seen]] = 1.0
    return indicators, codes


def indicator_name(column: str, level: str) -> str:
    """The feature name of a level's one-hot indicator."""
    return "%s=%s" % (column, level)


class EncodedRows:
    """Rows in the chain's feature space and what the encoding could not place: ``unseen``
    maps a categorical column to {raw value's level text: count} of values whose level the
    model never saw (answered with no indicator set)."""

    def __init__(self, values: np.ndarray, unseen: Dict[str, Dict[str, int]]) -> None:
        self.values = values
        self.unseen = unseen

    def unseen_counts(self) -> Dict[str, int]:
        """{column: number of values with an unseen level}, columns with none left out."""
        return {column: sum(levels.values()) for column, levels in self.unseen.items()}


class SegmentationChain:
    """Every fitted transform of a training run, applied in order:
    (one-hot encode categorical columns ->) fill missing -> log1p -> clip -> (x - center) /
    scale -> PCA -> nearest centroid.

    ``feature_names`` are the model's features (a categorical column's level is the feature
    ``column=level``); ``categories`` maps each categorical column to its levels (format 2;
    None or empty: no categorical column, requests carry the features themselves, as in
    format 1). The request columns (`input_columns`) are the numeric features and the
    categorical columns, with raw values; `encode_columns` turns them into features."""

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
        categories: Optional[Dict[str, Sequence[str]]] = None,
        mixture: Optional[GaussianMixtureStep] = None,
    ) -> None:
        self.feature_names = [str(name) for name in feature_names]
        self.categories = {
            str(column): [str(level) for level in levels]
            for column, levels in (categories or {}).items()
        }
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
        self._check_categories()
        if mixture is not None:
            mixture.check(self.centroids.shape)
        self.mixture = mixture

    @property
    def model(self) -> str:
        """The model step: ``kmeans`` (nearest centroid) or ``gmm`` (Gaussian mixture)."""
        return "kmeans" if self.mixture is None else "gmm"

    def _check_categories(self) -> None:
        """Each categorical column is not a feature itself and its levels are distinct."""
        for column, levels in self.categories.items():
            if column in self.feature_names:
                raise ValueError("categorical column %r is also a numeric feature" % column)
            if len(set(levels)) != len(levels):
                raise ValueError("categorical column %r lists a level twice" % column)

    def indicator_positions(self, column: str) -> List[Tuple[int, int]]:
        """(level index, feature index) of each of ``column``'s levels that is a feature (a
        level whose indicator training dropped, e.g. a constant one, is known but has none)."""
        position = {name: index for index, name in enumerate(self.feature_names)}
        return [
            (level_index, position[indicator_name(column, level)])
            for level_index, level in enumerate(self.categories[column])
            if indicator_name(column, level) in position
        ]

    @property
    def indicator_features(self) -> Dict[str, str]:
        """{indicator feature name: its categorical column}."""
        return {
            indicator_name(column, level): column
            for column, levels in self.categories.items()
            for level in levels
            if indicator_name(column, level) in self.feature_names
        }

    @property
    def input_columns(self) -> List[str]:
        """The columns a request carries, in order: each feature, a categorical column in
        place of its first indicator (one without indicators last)."""
        cached = self.__dict__.get("_input_columns")  # parsers ask once per record
        if cached is None:
            cached = self.__dict__["_input_columns"] = self._request_columns()
        return list(cached)

    def _request_columns(self) -> List[str]:
        indicators = self.indicator_features
        columns: List[str] = []
        for name in self.feature_names:
            column = indicators.get(name, name)
            if column not in columns:
                columns.append(column)
        columns.extend(column for column in self.categories if column not in columns)
        return columns

    def is_categorical(self, column: str) -> bool:
        return column in self.categories

    def legacy_indicator(self, name: str) -> Optional[str]:
        """The categorical column of a one-hot feature name (``region=NE``) this chain takes
        raw (the request form of format-1 models), else None."""
        column = name.partition("=")[0]
        return column if "=" in name and column in self.categories else None

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def input_contract(self) -> Dict[str, Any]:
        """What a request must look like: the request columns in order (and, with categorical
        columns, which ones take raw text values; their levels are not part of it, as a new
        level breaks no client). Equal contracts accept the same requests; a different one
        breaks clients built for the other."""
        if not self.categories:
            return {"features": list(self.feature_names)}
        return {"features": self.input_columns, "categorical": sorted(self.categories)}

    # ------------------------------------------------------------------ encoding

    def encode_columns(self, columns: Dict[str, Any], n_rows: int) -> EncodedRows:
        """Request columns -> rows in feature space. ``columns`` maps a request column to its
        n_rows values: numbers (NaN = missing) for a numeric feature, raw values for a
        categorical column; an absent column is missing in every row."""
        values = np.full((n_rows, self.n_features), np.nan)
        position = {name: index for index, name in enumerate(self.feature_names)}
        unseen: Dict[str, Dict[str, int]] = {}
        for column in self.input_columns:
            given = columns.get(column)
            if column not in self.categories:
                if given is not None:
                    values[:, position[column]] = np.asarray(given, dtype=np.float64)
                continue
            raw = [None] * n_rows if given is None else given
            indicators, codes = encode_categories(raw, self.categories[column])
            for level_index, feature_index in self.indicator_positions(column):
                values[:, feature_index] = indicators[:, level_index]
            unseen_rows = np.flatnonzero(codes < 0)
            if unseen_rows.size:
                counts: Dict[str, int] = {}
                for row in unseen_rows.tolist():
                    level = category_text(raw[row])
                    counts[level] = counts.get(level, 0) + 1
                unseen[column] = counts
        return EncodedRows(values, unseen)

    # ------------------------------------------------------------------ inference

    def prepare(self, rows: np.ndarray, first_row: int = 0) -> np.ndarray:
        """Raw rows (n, n_features) -> the scaled feature space (before PCA). An error names
        a row by its number counted from ``first_row`` (a block's place in a larger set)."""
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
                "row %d, feature %r: infinite value"
                % (first_row + row + 1, self.feature_names[column])
            )
        missing = np.isnan(values)
        if missing.any():
            values[missing] = np.take(self.fill_values, np.nonzero(missing)[1])
        if self.log1p_mask.any():
            logged = values[:, self.log1p_mask]
            # log1p columns were non-negative in training; a negative request value is
            # clamped to 0 rather than producing NaN.
            values[:, self.log1p_mask] = np.log1p(np.maximum(logged, 0.0))
        # In place on our own copy: on a 500k-row training set each temporary is 80 MB.
        np.clip(values, self.clip_low, self.clip_high, out=values)
        values -= self.scale_center
        values /= self.scale_scale
        return values

    def transform(self, rows: np.ndarray, first_row: int = 0) -> np.ndarray:
        """Raw rows -> the space the centroids live in (after PCA); ``first_row`` as in
        `prepare`."""
        centered = self.prepare(rows, first_row)
        centered -= self.pca_mean  # prepare's array is a fresh copy: no 80 MB temporary
        return centered @ self.pca_components.T

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

    def assign_reduced(self, reduced: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(centroid index, distance) per row already in model space (`transform`'s output)."""
        closest, distance, _ = self._assign(reduced)
        return closest, distance

    def blocks_in_space(
        self, rows: np.ndarray, block_rows: Optional[int] = None
    ) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """(first row, the block in model space, each of its rows' centroid index) for
        consecutive blocks of ``rows`` (``BLOCK_ROWS`` each by default): a pass over many
        rows without transform temporaries the size of all of them. An error names the row
        by its number in ``rows``."""
        step = block_rows or BLOCK_ROWS
        for start in range(0, len(rows), step):
            space = self.transform(rows[start : start + step], first_row=start)
            yield start, space, self.assign_reduced(space)[0]

    def predict_internal(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(centroid index, distance) per row, before the segment-id map."""
        closest, distance, _ = self._assign(self.transform(rows))
        return closest, distance

    def predict(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(segment id, distance to its centroid) per row."""
        closest, distance = self.predict_internal(rows)
        return self.segment_ids[closest], distance

    def request_rows(self, values: np.ndarray) -> List[List[Any]]:
        """Rows in feature space -> request rows (values of `input_columns`, NaN = missing): a
        categorical column's value is the level of its largest indicator (a training row's own
        level; the most frequent one for averaged rows such as the fill values), or where none
        is set (a scored row of an unseen level) a value that is no level, so that encoding the
        request gives the rows back. What smoke tests, batch transform input and signature
        examples send."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        n = values.shape[0]
        position = {name: index for index, name in enumerate(self.feature_names)}
        columns: List[List[Any]] = []
        for column in self.input_columns:
            if column not in self.categories:
                columns.append(values[:, position[column]].tolist())
                continue
            pairs = self.indicator_positions(column)
            unseen = _unseen_value(self.categories[column])
            if not pairs:
                columns.append([unseen] * n)
                continue
            block = np.nan_to_num(values[:, [feature for _, feature in pairs]], nan=0.0)
            best = block.argmax(axis=1)
            top = block[np.arange(n), best]
            levels = self.categories[column]
            columns.append(
                [
                    levels[pairs[choice][0]] if largest > 0 else unseen
                    for choice, largest in zip(best.tolist(), top.tolist())
                ]
            )
        return [list(row) for row in zip(*columns)] if columns else [[] for _ in range(n)]

    def reencode(self, values: np.ndarray) -> np.ndarray:
        """Feature-space rows as a request of their `request_rows` is encoded (the identity for
        rows of encoded training data; averaged indicators become their largest level)."""
        if not self.categories:
            return np.atleast_2d(np.asarray(values, dtype=np.float64))
        rows = self.request_rows(values)
        columns = {name: [row[i] for row in rows] for i, name in enumerate(self.input_columns)}
        return self.encode_columns(columns, len(rows)).values

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
        """Records keyed by request column -> an (n, n_features) array; missing keys are
        missing values."""
        return self.encode_records(records).values

    def encode_records(self, records: Sequence[Dict[str, Any]]) -> EncodedRows:
        """Records keyed by request column (raw values for categorical columns) -> rows in
        feature space; missing keys are missing values."""
        names = self.input_columns
        known = set(names)
        columns: Dict[str, List[Any]] = {name: [] for name in names}
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise ChainInputError("record %d is not an object" % (index + 1))
            unknown = sorted(set(record) - known)
            if unknown:
                raise ChainInputError(
                    "record %d: %s" % (index + 1, self.unknown_columns_message(unknown))
                )
            for name in names:
                value = record.get(name)
                if name in self.categories:
                    columns[name].append(self.category_value(value, index, name))
                else:
                    columns[name].append(_to_float(value, index, name))
        return self.encode_columns(columns, len(records))

    def category_value(self, value: Any, index: int, name: str) -> Any:
        """A request's raw categorical value: text, a number, a boolean or missing."""
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        raise ChainInputError(
            "row %d, column %r: %r is not a category value (text or a number)"
            % (index + 1, name, value)
        )

    def unknown_columns_message(self, unknown: Sequence[str]) -> str:
        """Why request columns ``unknown`` are refused: one-hot indicators of a column this
        chain takes raw say so, with an example; others list the expected columns."""
        legacy = [name for name in unknown if self.legacy_indicator(name)]
        if legacy:
            column = self.legacy_indicator(legacy[0])
            return (
                "%s: one-hot indicator column(s) are not taken; send the raw value of the "
                'categorical column %r instead (e.g. "%s": "%s"); expected %s'
                % (
                    ", ".join(repr(name) for name in legacy),
                    column,
                    column,
                    legacy[0].partition("=")[2],
                    ", ".join(self.input_columns),
                )
            )
        return "unknown feature(s) %s; expected %s" % (
            ", ".join(unknown),
            ", ".join(self.input_columns),
        )

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
        if self.categories:
            description["categories"] = self.categories
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
        if description.get("format_version") not in READABLE_VERSIONS:
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
            categories=description.get("categories"),
            mixture=mixture,
            **values,
        )


def _unseen_value(levels: Sequence[str]) -> str:
    """A category value that is none of ``levels``."""
    value = UNSEEN_VALUE
    while value in levels:
        value += "_"
    return value


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
