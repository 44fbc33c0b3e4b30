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


def _most_frequent(column: np.ndarray) -> float:
    observed = column[~np.isnan(column)]
    values, counts = np.unique(observed, return_counts=True)
    return float(values[np.argmax(counts)])  # ties -> smallest value, like scikit-learn


def column_statistics(values: np.ndarray, strategy: str, fill_value: float) -> np.ndarray:
    if strategy == "constant":
        return np.full(values.shape[1], float(fill_value))
    if strategy == "median":
        return np.nanmedian(values, axis=0)
    if strategy == "most_frequent":
        return np.array([_most_frequent(values[:, j]) for j in range(values.shape[1])])
    return np.nanmean(values, axis=0)


def _knn_imputer(n_neighbors: int, backend: str):
    if backend == "numba":
        from tasks.compute import KNNImputer
    else:
        from sklearn.impute import KNNImputer
    return KNNImputer(n_neighbors=n_neighbors)


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
    elif strategy in ("mean", "median", "most_frequent", "constant"):
        statistics = column_statistics(values, strategy, config.fill_value)
        filled = np.where(missing, statistics[None, :], values)
    elif strategy == "knn":
        filled = _knn_imputer(config.n_neighbors, backend).fit_transform(values)
    else:  # iterative (MICE)
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        filled = IterativeImputer(
            max_iter=config.max_iter, random_state=config.seed, sample_posterior=False
        ).fit_transform(values)
    if strategy in ("mean", "median", "most_frequent", "constant"):
        fill_values = column_statistics(values, strategy, config.fill_value)
    else:
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
