"""Column statistics of a block of rows, in one numba pass pair (no temporaries the size of
the block): what the Dask engine reduces per partition and merges across partitions."""

from __future__ import annotations

import numpy as np

from tasks.compute._stats_kernels import _column_moments

__all__ = ["column_moments"]


def column_moments(X) -> dict[str, np.ndarray]:
    """Per column of ``X`` (n, d), over its finite values: ``count``, ``mean``, ``m2`` and
    ``m3`` (sums of squared / cubed deviations from the mean), ``min``, ``max``; and the
    counts ``n_nan``, ``n_posinf``, ``n_neginf``. An empty ``X`` gives zero counts."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array, got {X.ndim} dimension(s).")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must be numeric, got dtype {X.dtype}.")
    X = np.ascontiguousarray(X, dtype=np.float64)
    names = ("count", "mean", "m2", "m3", "min", "max", "n_nan", "n_posinf", "n_neginf")
    return dict(zip(names, _column_moments(X), strict=True))
