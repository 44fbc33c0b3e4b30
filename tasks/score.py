"""Batch scoring with a fitted chain: a table in, one (id, segment, distance_to_cluster) row out
per input row. Categorical columns hold raw values, encoded by the chain (`encode_frame`); values
whose level the model never saw are scored (no indicator set), logged and counted in the
scores' ``attrs[UNSEEN_ATTR]`` ({column: count}), which `popseg score` reports. `score_rows` scores one frame (the whole table here, one partition on the Dask
engine: `tasks.dask_engine.scoring`); `score_frame` reads a table through `tasks.ingest` (same
CSV/Parquet handling and errors as training) and scores it in memory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.chain import SegmentationChain
from tasks.encoding import encode_frame, unseen_summary
from tasks.errors import DataError
from tasks.ingest import detect_id_column, generated_id_column, read_table

SCORE_COLUMNS = ("segment", "distance_to_cluster")
UNSEEN_ATTR = "unseen_categories"
# {column: {level: count}} of the unseen values, for callers that add several frames' up.
UNSEEN_LEVELS_ATTR = "unseen_levels"

logger = logging.getLogger(__name__)
# A Gaussian-mixture model's output has a third column: the posterior of the segment.
PROBABILITY_COLUMN = "membership_probability"


@dataclass(frozen=True)
class ScoreIds:
    """Where a scored row's id comes from: a column of the data, or (``generated``) its
    position, ``row_<position + 1>`` as training numbers rows without an id column."""

    column: str
    generated: bool


def score_ids(
    frame: pd.DataFrame, chain: SegmentationChain, source: str, id_column: str | None = None
) -> ScoreIds:
    """The id column of a table to score: ``id_column``, else the model's when the table has
    it, else the one training would detect (a unique text column), else generated ids."""
    configured = id_column or chain.metadata.get("id_column")
    if configured is not None and configured not in frame.columns:
        configured = None
    found = detect_id_column(frame, source, configured)
    if found is None:
        return ScoreIds(generated_id_column(frame.columns), generated=True)
    return ScoreIds(str(found), generated=False)


def _id_values(frame: pd.DataFrame, ids: ScoreIds, source: str, first_row: int = 0) -> np.ndarray:
    if ids.generated:
        return np.array([f"row_{first_row + i + 1}" for i in range(len(frame))], dtype=object)
    if ids.column not in frame.columns:
        raise DataError(
            f"{source}: no id column {ids.column!r}; the data has "
            f"{', '.join(map(str, frame.columns))}"
        )
    column = frame[ids.column]
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise DataError(f"{source}: id column {ids.column!r} is empty in data row {row + 1}")
    return column.astype(str).to_numpy(dtype=object)


def scores_table(
    id_name: str,
    ids: np.ndarray,
    segments: np.ndarray,
    distances: np.ndarray,
    probabilities: np.ndarray | None = None,
) -> pd.DataFrame:
    """The scoring output: one (id, segment, distance_to_cluster) row per input row, and
    membership_probability for a Gaussian-mixture model."""
    scores = pd.DataFrame({id_name: ids, SCORE_COLUMNS[0]: segments, SCORE_COLUMNS[1]: distances})
    if probabilities is not None:
        scores[PROBABILITY_COLUMN] = probabilities
    # Text even when there are no rows, so that every Parquet part has the same schema.
    return scores.astype({id_name: "str"})


def score_rows(
    frame: pd.DataFrame,
    chain: SegmentationChain,
    ids: ScoreIds,
    source: str,
    first_row: int = 0,
    log_unseen: bool = True,
) -> pd.DataFrame:
    """Score the rows of ``frame`` (raw columns; ``first_row``: the position of its first row
    in the whole data set, for generated ids): columns id, segment, distance_to_cluster.
    Unseen levels are counted in the attrs; ``log_unseen=False`` leaves logging them to a
    caller that adds up several frames (one Dask partition each)."""
    id_values = _id_values(frame, ids, source, first_row)
    encoded = encode_frame(frame, chain, source)
    segments, distances, probabilities = chain.predict_membership(encoded.values)
    scores = scores_table(ids.column, id_values, segments, distances, probabilities)
    if encoded.unseen:
        if log_unseen:
            log_unseen_levels(source, encoded.unseen)
        scores.attrs[UNSEEN_ATTR] = encoded.unseen_counts()
        scores.attrs[UNSEEN_LEVELS_ATTR] = encoded.unseen
    return scores


def log_unseen_levels(source: str, unseen: dict[str, dict[str, int]]) -> None:
    logger.warning(
        "%s: category level(s) the model never saw, scored with no indicator set: %s",
        source,
        unseen_summary(unseen),
    )


def score_inputs(
    chain: SegmentationChain, path: str, delimiter: str = ",", id_column: str | None = None
) -> tuple[str, np.ndarray, np.ndarray]:
    """(id column name, ids, raw feature rows in the model's order) of a table to score, for
    scoring elsewhere (SageMaker batch transform: `tasks.deploy.sagemaker_batch`)."""
    frame = read_table(path, delimiter).frame
    ids = score_ids(frame, chain, path, id_column)
    return (
        ids.column,
        _id_values(frame, ids, path),
        encode_frame(frame, chain, path).values,
    )


def score_frame(
    chain: SegmentationChain, path: str, delimiter: str = ",", id_column: str | None = None
) -> pd.DataFrame:
    """Read the table at ``path`` and score it in memory."""
    frame = read_table(path, delimiter).frame
    return score_rows(frame, chain, score_ids(frame, chain, path, id_column), path)


def write_scores(scores: pd.DataFrame, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() in (".parquet", ".pq"):
        scores.to_parquet(output, index=False)
    else:
        scores.to_csv(output, index=False)
    return output
