"""The encoding of a table's columns as model features, training side; the encoding itself is
the chain's (`tasks.chain.encode_categories`), so training, serving, scoring and monitoring
agree on every value.

One-hot: the feature ``"<column>=<level>"`` is 1.0 where the column holds ``level`` and 0.0
elsewhere; a level is the value's text without surrounding blanks, a missing value (empty,
blank, NaN) is the level ``Unknown``. Training (`tasks.ingest.select_features`) learns the
levels from the data and the chain stores them (format 2); scoring and monitoring encode a
table's raw categorical columns with them (`encode_frame`): a level absent from new data is a
column of zeros, a level the model never saw sets none of them and is counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from tasks import chain as chain_module
from tasks.chain import MISSING_LEVEL, EncodedRows, SegmentationChain, encode_categories
from tasks.errors import DataError

__all__ = ["MISSING_LEVEL", "category_levels", "encode_frame", "feature_matrix", "onehot"]


def raw_values(column: pd.Series) -> np.ndarray:
    """A categorical column's values as Python objects, every kind of missing value None."""
    return column.astype("object").where(column.notna(), None).to_numpy(dtype=object)


def category_levels(column: pd.Series) -> list[str]:
    """The levels of a categorical column, sorted."""
    return chain_module.category_levels(raw_values(column.drop_duplicates()))


def onehot(column: pd.Series, name: str, levels: Sequence[str]) -> dict[str, np.ndarray]:
    """The one-hot features ``name=level`` of ``column``, one float array per level."""
    indicators, _ = encode_categories(raw_values(column), list(levels))
    return {
        chain_module.indicator_name(name, level): indicators[:, i] for i, level in enumerate(levels)
    }


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
    rebuilt from their categorical column (format-1 chains: the levels are those the names
    list). Missing columns, non-numeric values and infinities are `DataError`s naming
    ``source`` and the column."""
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
    columns = [
        encoded[name] if name in encoded else numeric_column(frame[by_name[name]], name, source)
        for name in feature_names
    ]
    return np.column_stack(columns) if columns else np.empty((len(frame), 0))


def numeric_column(column: pd.Series, name: str, source: str) -> np.ndarray:
    """A numeric feature column as floats (NaN = missing); text that is not a number and
    infinities are `DataError`s naming ``source``, the column and the row."""
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
    return values


def encode_frame(frame: pd.DataFrame, chain: SegmentationChain, source: str) -> EncodedRows:
    """A table's rows in ``chain``'s feature space, with the unseen levels counted. A
    categorical column is read raw; a table without it but with all of its level indicators
    (the training data the run logged) is read as encoded. Format-1 chains: `feature_matrix`."""
    if not chain.categories:
        return EncodedRows(feature_matrix(frame, chain.feature_names, source), {})
    by_name = {str(name): name for name in frame.columns}
    indicators = chain.indicator_features
    encoded_columns = [
        column
        for column in chain.categories
        if column not in by_name
        and all(name in by_name for name, of in indicators.items() if of == column)
    ]
    missing = [
        name for name in chain.input_columns if name not in by_name and name not in encoded_columns
    ]
    if missing:
        raise missing_features_error(source, missing, frame.columns)
    columns: dict[str, object] = {}
    for name in chain.input_columns:
        if name in encoded_columns:
            continue
        column = frame[by_name[name]]
        columns[name] = (
            raw_values(column)
            if chain.is_categorical(name)
            else numeric_column(column, name, source)
        )
    rows = chain.encode_columns(columns, len(frame))
    for name, column in indicators.items():
        if column in encoded_columns:
            rows.values[:, chain.feature_names.index(name)] = numeric_column(
                frame[by_name[name]], name, source
            )
    return rows


def unseen_summary(unseen: dict[str, dict[str, int]], limit: int = 5) -> str:
    """``region: 3 value(s) (e.g. 'XX' x2, 'YY')`` per column, for logs and notes."""
    parts = []
    for column, counts in unseen.items():
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
        examples = ", ".join(f"{level!r}" + (f" x{n}" if n > 1 else "") for level, n in ordered)
        more = ", ..." if len(counts) > limit else ""
        parts.append(f"{column}: {sum(counts.values())} value(s) ({examples}{more})")
    return "; ".join(parts)
