"""Batch scoring with a registered model: a table in, one (id, segment, distance) row out per
input row. Reads through `tasks.ingest` (same CSV/Parquet handling and errors as training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.chain import ChainInputError, SegmentationChain
from tasks.config import DataConfig, FeaturesConfig
from tasks.errors import DataError
from tasks.ingest import read_table, select_features


def score_frame(
    chain: SegmentationChain, path: str, delimiter: str = ",", id_column: str | None = None
) -> pd.DataFrame:
    id_name, ids, rows = score_inputs(chain, path, delimiter, id_column)
    try:
        segments, distances = chain.predict(rows)
    except ChainInputError as error:
        raise DataError(f"{path}: {error}") from None
    return scores_table(id_name, ids, segments, distances)


def scores_table(
    id_name: str, ids: np.ndarray, segments: np.ndarray, distances: np.ndarray
) -> pd.DataFrame:
    """The scoring output: one (id, segment, distance_to_cluster) row per input row."""
    return pd.DataFrame({id_name: ids, "segment": segments, "distance_to_cluster": distances})


def score_inputs(
    chain: SegmentationChain, path: str, delimiter: str = ",", id_column: str | None = None
) -> tuple[str, np.ndarray, np.ndarray]:
    """(id column name, ids, raw feature rows in the model's order) of a table to score."""
    raw = read_table(path, delimiter)
    configured_id = id_column or chain.metadata.get("id_column")
    if configured_id is not None and configured_id not in raw.frame.columns:
        configured_id = None
    onehot = any("=" in name for name in chain.feature_names)
    data = select_features(
        raw,
        DataConfig(path=path, id_column=configured_id, delimiter=delimiter),
        FeaturesConfig(categorical="onehot" if onehot else "drop", max_categories=10_000),
    )
    frame = data.frame
    missing = [name for name in chain.feature_names if name not in frame.columns]
    dummies = [name for name in missing if "=" in name and name.split("=", 1)[0] in raw.frame]
    for name in dummies:  # a category absent from this table: its indicator is 0
        frame[name] = 0.0
    missing = [name for name in missing if name not in dummies]
    if missing:
        raise DataError(
            f"{path}: the model needs column(s) {', '.join(missing)}; "
            f"the table has {', '.join(map(str, raw.frame.columns))}"
        )
    rows = frame[chain.feature_names].to_numpy(dtype=np.float64)
    return data.id_column, frame[data.id_column].to_numpy(), rows


def write_scores(scores: pd.DataFrame, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() in (".parquet", ".pq"):
        scores.to_parquet(output, index=False)
    else:
        scores.to_csv(output, index=False)
    return output
