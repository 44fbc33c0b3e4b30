"""Impute: fill (or drop) missing feature values; report what was filled.

The serving chain fills a missing request value with one number per column (`fill_values`):
the column statistic for mean/median/most_frequent/constant, and the mean of the imputed
training column for knn/iterative/drop, whose training-time fills depend on other rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import ImputeConfig
from tasks.errors import DataError


@dataclass(frozen=True)
class ImputeResult:
    values: np.ndarray  # (n_kept, d) with no NaN
    kept_rows: np.ndarray  # boolean mask over the input rows
    fill_values: np.ndarray  # (d,) used by the serving chain
    report: dict[str, Any] = field(default_factory=dict)

    def kept(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of the input ``frame`` that imputation kept, numbered from 0: the frame
        itself when it kept every row (a boolean selection would copy all of it)."""
        if self.kept_rows.all():
            return frame.reset_index(drop=True)
        return frame[self.kept_rows].reset_index(drop=True)


def _most_frequent(column: np.ndarray) -> float:
    observed = column[~np.isnan(column)]
    values, counts = np.unique(observed, return_counts=True)
    return float(values[np.argmax(counts)])  # ties -> smallest value, like scikit-learn


# The column statistic each per-column strategy fills with: what an engine computes for it
# (None: no statistic). knn and iterative fill from other rows; drop keeps complete rows.
FILL_STATISTIC: dict[str, str | None] = {
    "mean": "mean",
    "median": "median",
    "most_frequent": "most_frequent",
    "constant": None,
}
_ROW_STATISTICS = {
    "mean": lambda values: np.nanmean(values, axis=0),
    "median": lambda values: np.nanmedian(values, axis=0),
    "most_frequent": lambda values: np.array(
        [_most_frequent(values[:, j]) for j in range(values.shape[1])]
    ),
}


def fill_values_from_stats(
    strategy: str, fill_value: float, n_columns: int, statistics: dict[str, np.ndarray]
) -> np.ndarray:
    """The fill per column of a `FILL_STATISTIC` strategy, from its statistic over the
    observed values (``statistics[FILL_STATISTIC[strategy]]``)."""
    statistic = FILL_STATISTIC[strategy]
    if statistic is None:
        return np.full(n_columns, float(fill_value))
    return np.asarray(statistics[statistic], dtype=np.float64)


def column_statistics(values: np.ndarray, strategy: str, fill_value: float) -> np.ndarray:
    statistic = FILL_STATISTIC[strategy]
    computed = {} if statistic is None else {statistic: _ROW_STATISTICS[statistic](values)}
    return fill_values_from_stats(strategy, fill_value, values.shape[1], computed)


def _knn_fill(values: np.ndarray, n_neighbors: int, backend: str) -> np.ndarray:
    """KNN imputation, with progress per part of the rows to fill on the numba backend
    (scikit-learn's imputer has no callback: one step)."""
    from tasks.progress import progress

    incomplete = int(np.isnan(values).any(axis=1).sum())
    with progress(f"KNN imputation ({len(values)} donor rows)", incomplete, "rows") as on_step:
        if backend == "numba":
            from tasks.compute import KNNImputer

            imputer = KNNImputer(n_neighbors=n_neighbors).fit(values)
            return imputer.transform(values, on_step=on_step)
        from sklearn.impute import KNNImputer

        return KNNImputer(n_neighbors=n_neighbors).fit_transform(values)


def _iterative_fill(values: np.ndarray, config: ImputeConfig) -> np.ndarray:
    """Iterative imputation (MICE), with progress per feature model fitted: up to
    ``impute.max_iter`` rounds of one model per feature (fewer when it converges)."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    from tasks.progress import progress

    total = config.max_iter * values.shape[1]

    class _CountingImputer(IterativeImputer):
        # scikit-learn has no progress hook; each round fits one model per feature through
        # this method (the same count as its own verbose output).
        def _impute_one_feature(self, *args, **kwargs):
            result = super()._impute_one_feature(*args, **kwargs)
            fitted[0] += 1
            rounds = -(-fitted[0] // values.shape[1])
            on_step(fitted[0], total, round=f"{rounds}/{config.max_iter}")
            return result

    fitted = [0]
    with progress("iterative imputation", total, "feature fits") as on_step:
        return _CountingImputer(
            max_iter=config.max_iter, random_state=config.seed, sample_posterior=False
        ).fit_transform(values)


def impute(features: pd.DataFrame, config: ImputeConfig, backend: str = "sklearn") -> ImputeResult:
    """Fill missing values per `impute.strategy`; `backend` picks the KNN implementation."""
    values = features.to_numpy(dtype=np.float64, copy=True)
    names = list(features.columns)
    missing = np.isnan(values)
    check_not_all_missing(names, missing.sum(axis=0), len(values))
    kept = np.ones(len(values), dtype=bool)
    strategy = config.strategy
    if strategy == "drop":
        kept = ~missing.any(axis=1)
        if kept.sum() < 2:
            raise DataError(
                f"impute.strategy=drop leaves {int(kept.sum())} complete row(s) of {len(values)}; "
                "choose another strategy"
            )
        filled = values[kept]
    elif strategy in FILL_STATISTIC:
        fill_values = column_statistics(values, strategy, config.fill_value)
        # In place: ``values`` is this function's own copy (one copy of the data, not two).
        rows, columns = np.nonzero(missing)
        values[rows, columns] = fill_values[columns]
        filled = values
    elif strategy == "knn":
        filled = _knn_fill(values, config.n_neighbors, backend)
    else:  # iterative (MICE)
        filled = _iterative_fill(values, config)
    if strategy not in FILL_STATISTIC:
        fill_values = filled.mean(axis=0)
    report = impute_report(
        strategy, names, missing.sum(axis=0), len(values), int((~kept).sum()), fill_values
    )
    return ImputeResult(
        values=np.ascontiguousarray(filled), kept_rows=kept, fill_values=fill_values, report=report
    )


def check_not_all_missing(names: list[str], missing_counts: np.ndarray, n_rows: int) -> None:
    all_missing = [
        name for name, count in zip(names, missing_counts, strict=True) if count == n_rows
    ]
    if all_missing:
        raise DataError(f"column(s) {', '.join(all_missing)} have no values at all; cannot impute")


def impute_report(
    strategy: str,
    names: list[str],
    missing_counts: np.ndarray,
    n_rows: int,
    rows_dropped: int,
    fill_values: np.ndarray,
) -> dict[str, Any]:
    """What imputation did: per column the missing count and fraction and the serving fill."""
    per_column = {
        name: {
            "missing": int(missing_counts[j]),
            "missing_fraction": float(missing_counts[j] / n_rows) if n_rows else 0.0,
            "serving_fill_value": float(fill_values[j]),
        }
        for j, name in enumerate(names)
    }
    return {
        "strategy": strategy,
        "rows_in": int(n_rows),
        "rows_dropped": int(rows_dropped),
        "cells_filled": 0 if strategy == "drop" else int(np.sum(missing_counts)),
        "columns": per_column,
    }
