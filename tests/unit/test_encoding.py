"""The table -> model features encoding (`tasks/encoding.py`): one-hot levels as training
learns them and as scoring/monitoring rebuild them, the feature matrix and its errors; and
`tasks.score.score_rows`, the per-frame scoring both engines run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import DataConfig, FeaturesConfig
from tasks.encoding import (
    encode_frame,
    feature_matrix,
    missing_features,
    source_columns,
    unseen_summary,
)
from tasks.errors import DataError
from tasks.ingest import RawTable, select_features
from tasks.score import UNSEEN_ATTR, ScoreIds, score_ids, score_rows
from tests.chains import categorical_chain
from tests.unit.test_monitor import make_chain

NAMES = ["alpha", "beta", "gamma"]


def test_missing_feature_columns_name_file_and_columns():
    frame = pd.DataFrame({"alpha": [1.0], "other": [2.0]})
    with pytest.raises(DataError, match=r"new\.csv: missing feature column\(s\) beta, gamma"):
        feature_matrix(frame, NAMES, "new.csv")


def test_non_numeric_and_infinite_values_name_the_column():
    frame = pd.DataFrame({"alpha": [1.0, 2.0], "beta": ["3", "lots"], "gamma": [1.0, 2.0]})
    with pytest.raises(DataError, match=r"new\.csv: feature column 'beta' is not numeric: "):
        feature_matrix(frame, NAMES, "new.csv")
    frame["beta"] = [1.0, np.inf]
    with pytest.raises(DataError, match="'beta' is infinite in data row 2"):
        feature_matrix(frame, NAMES, "new.csv")
    frame["beta"] = ["3", None]  # numbers as text and empty cells are fine
    assert feature_matrix(frame, NAMES, "new.csv")[:, 1].tolist() == [
        3.0,
        pytest.approx(np.nan, nan_ok=True),
    ]


def test_onehot_features_are_rebuilt_from_the_raw_column():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "colour": ["red", None, "blue"]})
    values = feature_matrix(frame, ["x", "colour=blue", "colour=Unknown"], "t.csv")
    assert values.tolist() == [[1.0, 0.0, 0.0], [2.0, 0.0, 1.0], [3.0, 1.0, 0.0]]


def test_scoring_rebuilds_the_features_training_encoded():
    """The levels training learns, rebuilt on new rows: a level absent from the new rows is
    a column of zeros, a level the model never saw sets none."""
    train = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "x": [1.0, 2.0, 3.0, 4.0],
            "colour": ["red", "blue", None, "red"],
        }
    )
    encoded = select_features(
        RawTable(train, "t.csv", ""), DataConfig(), FeaturesConfig(categorical="onehot")
    )
    names = encoded.feature_columns
    assert names == ["x", "colour=Unknown", "colour=blue", "colour=red"]
    np.testing.assert_array_equal(
        feature_matrix(train, names, "t.csv"), encoded.features.to_numpy()
    )
    new = pd.DataFrame({"x": [5.0, 6.0], "colour": ["green", "red"]})
    assert source_columns(new.columns, names) == ["x", "colour"]
    assert feature_matrix(new, names, "new.csv").tolist() == [
        [5.0, 0.0, 0.0, 0.0],
        [6.0, 0.0, 0.0, 1.0],
    ]
    assert missing_features(["x"], names) == ["colour=Unknown", "colour=blue", "colour=red"]


def _chain():
    """The identity chain of the monitor tests (centroids on the axes, segment ids 0 1 2),
    with the id column ``key`` and a missing beta filled with 10."""
    chain = make_chain()
    chain.metadata["id_column"] = "key"
    chain.fill_values[1] = 10.0
    return chain


def test_score_rows_ids_segments_and_distances():
    chain = _chain()
    frame = pd.DataFrame(
        {"key": [10, 11, 12], "alpha": [0.0, 1.0, 0.0], "beta": [1.0, np.nan, 9.0], "gamma": 0.0}
    )
    ids = score_ids(frame, chain, "new.csv")
    assert ids == ScoreIds("key", generated=False)
    scores = score_rows(frame, chain, ids, "new.csv")
    assert list(scores.columns) == ["key", "segment", "distance_to_cluster"]
    assert scores["key"].tolist() == ["10", "11", "12"]
    assert scores["segment"].tolist() == [0, 2, 2]  # the missing beta is filled with 10
    np.testing.assert_allclose(scores["distance_to_cluster"], [1.0, 1.0, 1.0])
    # Without the model's id column (and no other id): row_<position + 1>, from first_row.
    bare = frame.drop(columns="key")
    generated = score_ids(bare, chain, "new.csv")
    assert generated == ScoreIds("row_id", generated=True)
    assert score_rows(bare, chain, generated, "new.csv", first_row=5)["row_id"].tolist() == [
        "row_6",
        "row_7",
        "row_8",
    ]


def test_score_rows_errors_name_the_source_and_column():
    chain = _chain()
    frame = pd.DataFrame({"key": ["a", None], "alpha": [0.0, 1.0], "beta": 1.0, "gamma": 2.0})
    with pytest.raises(DataError, match=r"^part\.csv: id column 'key' is empty in data row 2$"):
        score_rows(frame, chain, ScoreIds("key", False), "part.csv")
    with pytest.raises(DataError, match=r"^part\.csv: no id column 'code'; the data has key"):
        score_rows(frame, chain, ScoreIds("code", False), "part.csv")
    with pytest.raises(DataError, match=r"^part\.csv: missing feature column\(s\) beta that"):
        score_rows(frame.drop(columns="beta"), chain, ScoreIds("row_id", True), "part.csv")


def test_encode_frame_reads_raw_categorical_columns_and_counts_unseen_levels():
    chain = categorical_chain()
    frame = pd.DataFrame({"x": ["1", None, "3"], "region": ["NE", np.nan, "Atlantis"]})
    encoded = encode_frame(frame, chain, "new.csv")
    np.testing.assert_array_equal(
        encoded.values, [[1.0, 0.0, 1.0, 0.0], [np.nan, 0.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]]
    )
    assert encoded.unseen == {"region": {"Atlantis": 1}}
    assert unseen_summary(encoded.unseen) == "region: 1 value(s) ('Atlantis')"


def test_encode_frame_reads_the_encoded_training_layout_and_names_missing_columns():
    chain = categorical_chain()
    training = pd.DataFrame(
        {"x": [1.0], "region=MW": [0.0], "region=NE": [1.0], "region=Unknown": [0.0]}
    )
    np.testing.assert_array_equal(encode_frame(training, chain, "t").values, [[1.0, 0.0, 1.0, 0.0]])
    with pytest.raises(DataError, match=r"new\.csv: missing feature column\(s\) region that"):
        encode_frame(pd.DataFrame({"x": [1.0]}), chain, "new.csv")
    with pytest.raises(DataError, match="feature column 'x' is not numeric: data row 1"):
        encode_frame(pd.DataFrame({"x": ["NE"], "region": ["NE"]}), chain, "new.csv")


def test_score_rows_report_unseen_levels():
    chain = categorical_chain()
    frame = pd.DataFrame({"x": [0.0, 0.0, 9.0], "region": ["NE", "XX", None]})
    scores = score_rows(frame, chain, ScoreIds("row_id", True), "new.csv")
    assert scores["segment"].tolist() == [1, 0, 2]
    assert scores.attrs[UNSEEN_ATTR] == {"region": 1}
