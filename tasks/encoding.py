"""The encoding of a table's columns as model features, in one place.

One-hot: the feature ``"<column>=<level>"`` is 1.0 where the column holds ``level`` and 0.0
elsewhere; a missing value is a level of its own, ``Unknown``. Training
(`tasks.ingest.select_features`) learns the levels from the data; scoring and monitoring
rebuild a fitted chain's features from its feature names (`feature_matrix`), so a level absent
from new data is a column of zeros and a level the model never saw sets none of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from tasks.errors import DataError

MISSING_LEVEL = "Unknown"


def category_values(column: pd.Series) -> pd.Series:
    """A categorical column's values as text, a missing value as ``MISSING_LEVEL``."""
    return column.astype("object").where(column.notna(), MISSING_LEVEL).astype(str)


def category_levels(column: pd.Series) -> list[str]:
    """The levels of a categorical column, sorted."""
    return sorted(category_values(column).unique())


def onehot(column: pd.Series, name: str, levels: Iterable[str]) -> dict[str, np.ndarray]:
    """The one-hot features ``name=level`` of ``column``, one float array per level."""
    values = category_values(column)
    return {f"{name}={level}": (values == level).to_numpy(dtype=np.float64) for level in levels}


def source_columns(columns: Iterable[object], feature_names: Sequence[str]) -> list[str]:
    """The columns of a table the features are read from: a feature's own column, or for a
    one-hot feature absent as such, its categorical column. `DataError`-free; see
    `missing_features` for the features that have neither."""
    present = {str(name) for name in columns}
    needed: list[str] = []
    for name in feature_names:
        base, sep, _ = name.partition("=")
        column = name if name in present or not sep else base
        if column in present and column not in needed:
            needed.append(column)
    return needed


def missing_features(columns: Iterable[object], feature_names: Sequence[str]) -> list[str]:
    """The features a table with ``columns`` cannot provide (no column, no categorical column
    to rebuild a one-hot feature from)."""
    present = {str(name) for name in columns}
    return [
        name
        for name in feature_names
        if name not in present and name.partition("=")[0] not in present
    ]


def missing_features_error(source: str, missing: list[str], columns: Iterable[object]) -> DataError:
    return DataError(
        f"{source}: missing feature column(s) {', '.join(missing)} that the model uses; "
        f"the data has {', '.join(map(str, columns))}"
    )


def feature_matrix(frame: pd.DataFrame, feature_names: list[str], source: str) -> np.ndarray:
    """The model's feature columns of ``frame`` as floats (NaN = missing), one-hot features
    rebuilt from their categorical column. Missing columns, non-numeric values and infinities
    are `DataError`s naming ``source`` and the column."""
    missing = missing_features(frame.columns, feature_names)
    if missing:
        raise missing_features_error(source, missing, frame.columns)
    by_name = {str(name): name for name in frame.columns}
    levels: dict[str, list[str]] = {}
    for name in feature_names:
        base, _, level = name.partition("=")
        if name not in by_name:
            levels.setdefault(base, []).append(level)
    encoded: dict[str, np.ndarray] = {}
    for base, wanted in levels.items():
        encoded.update(onehot(frame[by_name[base]], base, wanted))
    columns = []
    for name in feature_names:
        if name in encoded:
            columns.append(encoded[name])
            continue
        column = frame[by_name[name]]
        if pd.api.types.is_bool_dtype(column):
            column = column.astype(float)
        elif not pd.api.types.is_numeric_dtype(column):
            converted = pd.to_numeric(column, errors="coerce")
            bad = converted.isna() & column.notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{source}: feature column {name!r} is not numeric: data row {row + 1} "
                    f"holds {column.iloc[row]!r}"
                )
            column = converted
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(values).any():
            row = int(np.flatnonzero(np.isinf(values))[0])
            raise DataError(f"{source}: feature column {name!r} is infinite in data row {row + 1}")
        columns.append(values)
    return np.column_stack(columns) if columns else np.empty((len(frame), 0))
