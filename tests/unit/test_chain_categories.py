"""Categorical columns inside the fitted chain (format 2): the one encode function
(`tasks.chain.encode_categories`) that training and every serving path share, the chain's
request columns and contract, storage (format 1 still loads), and the request rows deploy
smoke tests send."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks import chain as chain_module
from tasks.chain import (
    MISSING_LEVEL,
    ChainInputError,
    SegmentationChain,
    category_text,
    encode_categories,
)
from tasks.config import DataConfig, FeaturesConfig
from tasks.deploy.contract import rows_to_csv
from tasks.encoding import category_levels, onehot
from tasks.ingest import RawTable, select_features
from tasks.promote import contract_changes
from tests.chains import CATEGORICAL_FEATURES, categorical_chain, identity_chain


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("NE", "NE"),
        ("  NE ", "NE"),
        (None, MISSING_LEVEL),
        (float("nan"), MISSING_LEVEL),
        (np.float32("nan"), MISSING_LEVEL),
        ("", MISSING_LEVEL),
        ("   ", MISSING_LEVEL),
        (3, "3"),
        (True, "True"),
    ],
)
def test_category_text_missing_values_are_unknown(value, level):
    assert category_text(value) == level


def test_encode_categories_indicators_and_unseen_codes():
    indicators, codes = encode_categories(
        ["NE", None, "XX", "MW", " NE", ""], ["MW", "NE", "Unknown"]
    )
    assert indicators.tolist() == [
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0],  # unseen: no indicator, not mistaken for Unknown
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
    ]
    assert codes.tolist() == [1, 2, -1, 0, 1, 2]


def test_encode_categories_tells_types_apart_and_takes_unhashable_values():
    # True == 1 == 1.0 in Python; as category values they are the levels True, 1 and 1.0.
    _, codes = encode_categories([True, 1, 1.0, "1", ["x"]], ["1", "1.0", "True"])
    assert codes.tolist() == [2, 0, 1, 0, -1]


def test_training_encodes_with_the_chain_function():
    """`tasks.encoding` (training) and the chain agree on every value: levels learnt from a
    column with blanks, padding and NaN, and the indicators of each row."""
    column = pd.Series(["NE", " NE", None, np.nan, "", "MW"], dtype=object)
    levels = category_levels(column)
    assert levels == ["MW", "NE", MISSING_LEVEL]
    encoded = onehot(column, "region", levels)
    indicators, _ = encode_categories(column.tolist(), levels)
    np.testing.assert_array_equal(np.column_stack(list(encoded.values())), indicators)
    assert list(encoded) == ["region=MW", "region=NE", "region=Unknown"]


def test_select_features_records_the_levels_for_the_chain():
    raw = pd.DataFrame({"id": ["a", "b", "c"], "x": [1.0, 2.0, 3.0], "region": ["NE", None, "MW"]})
    data = select_features(
        RawTable(raw, "t.csv", ""), DataConfig(), FeaturesConfig(categorical="onehot")
    )
    assert data.categories == {"region": ["MW", "NE", MISSING_LEVEL]}
    assert data.feature_columns == ["x", "region=MW", "region=NE", "region=Unknown"]


def test_request_columns_and_contract():
    chain = categorical_chain()
    assert chain.input_columns == ["x", "region"]
    assert chain.input_contract() == {"features": ["x", "region"], "categorical": ["region"]}
    numeric = identity_chain(["a", "b"], [[0.0, 0.0]])
    assert numeric.input_contract() == {"features": ["a", "b"]}  # format 1's, unchanged


def test_encode_records_raw_values_unseen_and_missing():
    chain = categorical_chain()
    encoded = chain.encode_records(
        [{"x": 1, "region": "NE"}, {"x": 2, "region": "XX"}, {"x": 3}, {"region": None}]
    )
    np.testing.assert_array_equal(
        encoded.values,
        [
            [1.0, 0.0, 1.0, 0.0],
            [2.0, 0.0, 0.0, 0.0],
            [3.0, 0.0, 0.0, 1.0],
            [np.nan, 0.0, 0.0, 1.0],
        ],
    )
    assert encoded.unseen == {"region": {"XX": 1}}
    assert encoded.unseen_counts() == {"region": 1}


def test_encode_records_refuses_onehot_columns_and_non_scalar_categories():
    chain = categorical_chain()
    with pytest.raises(
        ChainInputError,
        match=r"""'region=NE'.*the categorical column 'region' instead \(e\.g\. "region": "NE"\)""",
    ):
        chain.encode_records([{"x": 1, "region=NE": 1}])
    with pytest.raises(
        ChainInputError, match=r"row 1, column 'region': \{'a': 1\} is not a category"
    ):
        chain.encode_records([{"x": 1, "region": {"a": 1}}])
    with pytest.raises(ChainInputError, match=r"row 1, feature 'x': 'ten' is not a number"):
        chain.encode_records([{"x": "ten", "region": "NE"}])


def test_format_2_round_trip_and_format_1_still_loads(tmp_path):
    chain = categorical_chain()
    chain.save(str(tmp_path / "v2"))
    stored = json.loads((tmp_path / "v2" / "chain.json").read_text())
    assert stored["format_version"] == chain_module.FORMAT_VERSION == 2
    assert stored["categories"] == {"region": ["MW", "NE", "Unknown"]}
    loaded = SegmentationChain.load(str(tmp_path / "v2"))
    assert loaded.categories == chain.categories
    assert loaded.input_columns == ["x", "region"]
    # A format-1 chain (no categories): its one-hot names are plain request features.
    old = identity_chain(CATEGORICAL_FEATURES, [[0.0, 1.0, 0.0, 0.0]])
    old.save(str(tmp_path / "v1"))
    path = tmp_path / "v1" / "chain.json"
    path.write_text(path.read_text().replace('"format_version": 2', '"format_version": 1'))
    legacy = SegmentationChain.load(str(tmp_path / "v1"))
    assert legacy.categories == {}
    assert legacy.input_columns == CATEGORICAL_FEATURES
    np.testing.assert_array_equal(
        legacy.rows_from_records([{"x": 0, "region=MW": 1}]), [[0.0, 1.0, np.nan, np.nan]]
    )


def test_request_rows_decode_training_rows_and_averaged_rows():
    chain = categorical_chain()
    rows = np.array([[1.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.5, 0.2, 0.5, 0.3]])
    # No indicator set (a scored row of an unseen level): a value that is no level.
    assert chain.request_rows(rows) == [[1.0, "NE"], [2.0, "(unseen)"], [0.5, "NE"]]
    # What a smoke test or batch transform sends and what it expects are the same request.
    assert rows_to_csv(rows, chain) == "1.0,NE\n2.0,(unseen)\n0.5,NE\n"
    np.testing.assert_array_equal(
        chain.reencode(rows), [[1.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.5, 0.0, 1.0, 0.0]]
    )


def test_contract_changes_name_the_one_hot_to_raw_switch():
    old = {"features": ["x", "region=MW", "region=NE"]}
    new = categorical_chain().input_contract()
    changes = contract_changes(old, new)
    assert changes[0] == "added region"
    assert changes[1].startswith("removed region=MW, region=NE")
    retyped = contract_changes({"features": ["x", "region"]}, new)
    assert retyped == ["changed numeric/categorical type of region"]
