"""Column statistics of a block of rows, in one numba pass pair (no temporaries the size of
the block): what the Dask engine reduces per partition and merges across partitions."""

from __future__ import annotations

import numpy as np

from tasks.compute._stats_kernels import _column_moments
from tasks.compute._validation import numeric_2d

__all__ = ["column_moments"]


def column_moments(X) -> dict[str, np.ndarray]:
    """Per column of ``X`` (n, d), over its finite values: ``count``, ``mean``, ``m2`` and
    ``m3`` (sums of squared / cubed deviations from the mean), ``min``, ``max``; and the
    counts ``n_nan``, ``n_posinf``, ``n_neginf``. An empty ``X`` gives zero counts."""
    X = numeric_2d(X)
    names = ("count", "mean", "m2", "m3", "min", "max", "n_nan", "n_posinf", "n_neginf")
    return dict(zip(names, _column_moments(X), strict=True))
