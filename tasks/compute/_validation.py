"""Input validation shared by the public wrappers (clear ``ValueError`` messages)."""

from __future__ import annotations

import numbers

import numpy as np


def as_2d_float(X, name: str = "X", *, allow_nan: bool = False, dtype=None) -> np.ndarray:
    """Return ``X`` as a C-contiguous 2-D float array, or raise ``ValueError``.

    float32 and float64 are kept as they are unless ``dtype`` is given; every other
    dtype becomes float64.
    """
    try:
        arr = np.asarray(X)
    except Exception as exc:  # pragma: no cover - defensive
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got an array with {arr.ndim} dimension(s).")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} is empty (shape {arr.shape}); need at least one sample and feature."
        )
    if allow_nan:
        if np.isinf(arr).any():
            raise ValueError(f"{name} contains infinity.")
    elif not np.isfinite(arr).all():
        what = "NaN" if np.isnan(arr).any() else "infinity"
        raise ValueError(f"{name} contains {what}; impute or drop missing values first.")
    return arr


def numeric_2d(X, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 2-D array (empty allowed, NaN not checked),
    or raise ``ValueError``."""
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got {arr.ndim} dimension(s).")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
    return np.ascontiguousarray(arr, dtype=np.float64)


def check_labels(labels, n_samples: int) -> np.ndarray:
    """Return labels as a 1-D array of length ``n_samples`` or raise ``ValueError``."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        lab = lab.ravel() if lab.ndim == 2 and 1 in lab.shape else lab
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {np.asarray(labels).shape}.")
    if lab.shape[0] != n_samples:
        raise ValueError(
            f"labels has length {lab.shape[0]} but X has {n_samples} samples; they must match."
        )
    return lab


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)
