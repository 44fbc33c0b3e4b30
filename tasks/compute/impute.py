"""KNN imputation on numba kernels, same output as :class:`sklearn.impute.KNNImputer`."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from tasks.compute._knn_kernels import knn_impute
from tasks.compute._threads import kernel_threads

_BLOCK = 32  # receivers per block (one block per thread at a time)
_TILE = 2048  # donors per tile: a block x tile of distances stays in L2
#: With a progress callback the receivers go to the kernel in up to this many calls, each
#: of at least `_PART_MIN` rows (enough blocks to keep every thread busy).
_PARTS = 20
_PART_MIN = 64 * _BLOCK

__all__ = ["KNNImputer"]


def _missing_mask(X, missing_values):
    if isinstance(missing_values, float) and np.isnan(missing_values):
        return np.isnan(X)
    return missing_values == X


class KNNImputer(TransformerMixin, BaseEstimator):
    """Impute missing values from the ``n_neighbors`` nearest training rows.

    Same rules and output as scikit-learn's ``KNNImputer`` (metric ``nan_euclidean``):

    * distance over the coordinates present in both rows, scaled by
      ``n_features / n_present``; rows with no common coordinate never donate;
    * donors for a column must have that column observed; the k nearest such donors
      are averaged (``weights="uniform"``) or weighted by 1/distance
      (``weights="distance"``; donors at distance 0, if any, get all the weight);
    * a receiver with no donor at a defined distance gets the column's training mean;
    * columns that are missing everywhere in the training data are dropped from the
      output (or set to 0 with ``keep_empty_features=True``).

    Ties in distance are broken by the lower training-row index (scikit-learn leaves
    the order of exact ties to ``np.argpartition``). Work is parallel over receiver
    rows; memory is O(n_threads * n_train) beyond the input and output.
    """

    def __init__(
        self, *, missing_values=np.nan, n_neighbors=5, weights="uniform", keep_empty_features=False
    ):
        self.missing_values = missing_values
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.keep_empty_features = keep_empty_features

    def _check_params(self):
        k = self.n_neighbors
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"n_neighbors must be an integer >= 1, got {k!r}.")
        if self.weights not in ("uniform", "distance"):
            raise ValueError(f"weights must be 'uniform' or 'distance', got {self.weights!r}.")

    def _validate(self, X, reset):
        nan_missing = isinstance(self.missing_values, float) and np.isnan(self.missing_values)
        X = validate_data(
            self,
            X,
            dtype=[np.float64, np.float32],
            ensure_all_finite="allow-nan" if nan_missing else True,
            reset=reset,
            copy=True,
        )
        return X

    def fit(self, X, y=None):
        """Store the training rows (the donors)."""
        self._check_params()
        X = self._validate(X, reset=True)
        mask = _missing_mask(X, self.missing_values)
        self._fit_X = X
        self._mask_fit_X = mask
        self._valid_mask = ~np.all(mask, axis=0)
        return self

    def transform(self, X, *, on_step=None):
        """Impute all missing values of ``X``. ``on_step(done, total)``, if given, is called
        after each part of the rows to impute (``done`` of ``total`` rows), between kernel
        calls."""
        check_is_fitted(self, "_fit_X")
        self._check_params()
        X = self._validate(X, reset=False)
        mask = _missing_mask(X, self.missing_values)
        valid = self._valid_mask
        impute_mask = mask & valid[None, :]
        rows = np.flatnonzero(impute_mask.any(axis=1))
        if rows.size:
            fit_mask = self._mask_fit_X
            F0 = np.ascontiguousarray(np.where(fit_mask, 0.0, self._fit_X.astype(np.float64)))
            PF = (~fit_mask).astype(np.float64)
            cnt = PF.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                col_mean = np.where(cnt > 0, F0.sum(axis=0) / np.maximum(cnt, 1), np.nan)
            Q = X[rows].astype(np.float64)
            Qm = mask[rows]
            Q0 = np.where(Qm, 0.0, Q)
            A = np.ascontiguousarray(np.hstack([Q0, Q0 * Q0]))
            B = np.ascontiguousarray(np.hstack([-2.0 * F0, PF]))
            miss_ptr = np.zeros(rows.size + 1, dtype=np.int64)
            np.cumsum(Qm.sum(axis=1), out=miss_ptr[1:])
            miss_idx = np.nonzero(Qm)[1].astype(np.int64)
            out = Q.copy()
            receiver_mask = np.ascontiguousarray(impute_mask[rows])
            donors = (
                B,
                np.einsum("ij,ij->i", F0, F0),
                np.ascontiguousarray((F0 * F0).T),
                np.ascontiguousarray(PF.T),
                fit_mask.sum(axis=1).astype(np.float64),
                F0,
                col_mean,
            )
            settings = (
                int(self.n_neighbors),
                self.weights == "distance",
                float(X.shape[1]),
                _BLOCK,
                _TILE,
            )
            n_rows = rows.size
            part = n_rows if on_step is None else max(_PART_MIN, -(-n_rows // _PARTS))
            for r0 in range(0, n_rows, part):
                r1 = min(n_rows, r0 + part)
                # Receivers are independent: a slice of them (miss_ptr keeps its offsets
                # into the whole miss_idx) imputes exactly as the whole.
                with kernel_threads((r1 - r0) * F0.shape[0] * X.shape[1]):
                    knn_impute(
                        (A[r0:r1], miss_idx, miss_ptr[r0 : r1 + 1], receiver_mask[r0:r1]),
                        donors,
                        settings,
                        out[r0:r1],
                    )
                if on_step is not None:
                    on_step(r1, n_rows)
            X[rows] = out.astype(X.dtype, copy=False)
        if self.keep_empty_features:
            X[:, ~valid] = 0
            return X
        return X[:, valid]
