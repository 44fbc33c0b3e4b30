"""Population stability index (PSI) for drift monitoring."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["PSI_EPSILON", "population_stability_index"]

#: Bin shares are floored at this value before the log so that an empty bin on either
#: side gives a large but finite contribution instead of infinity.
PSI_EPSILON = 1e-4


def _psi_1d(expected: np.ndarray, actual: np.ndarray, bins: int, eps: float) -> float:
    e = expected[~np.isnan(expected)]
    a = actual[~np.isnan(actual)]
    if e.size == 0 or a.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)))
    inner = edges[1:-1]
    # bin i holds values in (edge_i, edge_{i+1}]; values outside the expected range go to
    # the first / last bin.
    n_bins = inner.size + 1
    e_counts = np.bincount(np.searchsorted(inner, e, side="left"), minlength=n_bins)
    a_counts = np.bincount(np.searchsorted(inner, a, side="left"), minlength=n_bins)
    e_share = np.maximum(e_counts / e.size, eps)
    a_share = np.maximum(a_counts / a.size, eps)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


def population_stability_index(expected, actual, bins: int = 10, epsilon: float = PSI_EPSILON):
    """Population stability index of ``actual`` against ``expected``.

    PSI = sum over bins of (a_i - e_i) * ln(a_i / e_i), where e_i / a_i are the shares of
    the expected / actual values in bin i. Bins are the quantiles of ``expected``
    (``bins`` equal-frequency bins; duplicate edges from ties are merged, so a column
    with few distinct values gets fewer bins); values of ``actual`` outside the range of
    ``expected`` fall in the first / last bin. Empty bins: shares are floored at
    ``epsilon`` (default 1e-4) before taking the log. NaNs are ignored.

    1-D inputs give a float; 2-D inputs (n_samples, n_features) give one PSI per column
    (an array of shape (n_features,)). Rule of thumb: < 0.1 stable, 0.1-0.25 moderate
    shift, > 0.25 major shift.
    """
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}.")
    if not (isinstance(epsilon, numbers.Real) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}.")
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.ndim not in (1, 2) or a.ndim != e.ndim:
        raise ValueError(
            "expected and actual must both be 1-D or both be 2-D, got shapes "
            f"{e.shape} and {a.shape}."
        )
    if e.shape[0] == 0 or a.shape[0] == 0:
        raise ValueError("expected and actual must each contain at least one value.")
    if np.isinf(e).any() or np.isinf(a).any():
        raise ValueError("expected and actual must not contain infinity.")
    if e.ndim == 1:
        return _psi_1d(e, a, int(bins), float(epsilon))
    if e.shape[1] != a.shape[1]:
        raise ValueError(
            f"expected has {e.shape[1]} columns but actual has {a.shape[1]}; they must match."
        )
    return np.array(
        [_psi_1d(e[:, j], a[:, j], int(bins), float(epsilon)) for j in range(e.shape[1])]
    )
