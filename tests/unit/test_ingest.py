import numpy as np
import pandas as pd
import pytest

from tasks.config import load_params
from tasks.errors import DataError
from tasks.ingest import (
    load_counties,
    load_crime,
    make_synthetic,
    md5_bytes,
    read_table,
    select_features,
)


def _ingest(path, *overrides):
    p = load_params(overrides=list(overrides))
    return select_features(read_table(str(path), p.data.delimiter), p.data, p.features)


def test_crime_is_usarrests_with_density():
    frame = load_crime()
    assert frame.shape == (50, 6)
    assert list(frame.columns) == ["State", "Murder", "Assault", "UrbanPop", "Rape", "Density"]
    alabama = frame.set_index("State").loc["Alabama"]
    # state.x77: Population 3615 (thousands), Area 50708 sq mi.
    assert alabama["Density"] == pytest.approx(3615 * 1000 / 50708)
    assert alabama["Murder"] == 13.2


def test_counties_have_unique_ids_and_no_record_numbers():
    frame = load_counties()
    assert frame.shape[0] == 437
    assert frame["county_state"].is_unique
    assert "PID" not in frame.columns and "rownames" not in frame.columns


def test_bundled_crime_round_trip(tmp_path):
    p = load_params(overrides=[f"data.raw_dir={tmp_path}"])
    from tasks.ingest import ingest

    raw = ingest(p.data)
    data = select_features(raw, p.data, p.features)
    written = tmp_path / "crime.csv"
    assert raw.md5 == md5_bytes(written.read_bytes())
    assert data.id_column == "State"
    assert data.feature_columns == ["Murder", "Assault", "UrbanPop", "Rape", "Density"]
    assert data.features.dtypes.unique().tolist() == [np.dtype("float64")]
    before = written.stat().st_mtime_ns
    ingest(p.data)  # unchanged data is not rewritten (DVC sees the same file)
    assert written.stat().st_mtime_ns == before


def test_synthetic_is_seeded_skewed_and_has_missing_values():
    a = make_synthetic(500, 6, 3, 0.05, seed=1)
    b = make_synthetic(500, 6, 3, 0.05, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert a["x00"].min() >= 0 and a["x00"].skew() > 1
    missing = a.drop(columns="entity_id").isna().mean().mean()
    assert 0.03 < missing < 0.07


def test_parquet_and_csv_agree(tmp_path, small_csv):
    frame = pd.read_csv(small_csv)
    parquet = tmp_path / "small.parquet"
    frame.to_parquet(parquet, index=False)
    from_csv, from_parquet = _ingest(small_csv), _ingest(parquet)
    assert from_csv.id_column == from_parquet.id_column == "name"
    np.testing.assert_allclose(from_csv.features.to_numpy(), from_parquet.features.to_numpy())


def test_categorical_drop_warns_and_onehot_encodes(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("id,x,colour\na,1,red\nb,2,blue\nc,3,\nd,4,red\n")
    dropped = _ingest(path)
    assert dropped.feature_columns == ["x"]
    assert dropped.dropped_columns == ["colour"]
    assert "colour" in dropped.warnings[0]
    encoded = _ingest(path, "features.categorical=onehot")
    assert encoded.feature_columns == ["x", "colour=Unknown", "colour=blue", "colour=red"]
    assert encoded.frame["colour=red"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert encoded.frame["colour=Unknown"].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_id_column_configured_and_synthesised(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("code,x,y\n10,1,2\n11,2,3\n12,3,5\n")
    data = _ingest(path, "data.id_column=code")
    assert data.id_column == "code" and data.feature_columns == ["x", "y"]
    assert data.ids.tolist() == ["10", "11", "12"]
    data = _ingest(path)  # no text id: rows get one, and `code` stays a feature
    assert data.id_column == "row_id" and data.ids.tolist() == ["row_1", "row_2", "row_3"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"\n\n", "the file is empty"),
        (b"a,b,c\n", "has a header but no data rows"),
        (b"a,b\n1,2\n3,4,5\n", "ragged rows: line 3 has 3 fields, the header has 2"),
        (b"a,b\n1,2\n3\n", "ragged rows: line 3 has 1 fields"),
        (b"a;b;c\n1;2;3\n", "wrong delimiter"),
        (b"a,a,b\n1,2,3\n", "duplicate column name 'a'"),
        (b"\x00\x01\x02\xff\xfe binary", "binary"),
        (
            b"id,x\nq,1\nr,oops\ns,3\nt,4\n",
            "column 'x' is numeric but data row 2 holds text 'oops'",
        ),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        _ingest(path)
    assert message in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        _ingest(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        _ingest(tmp_path)


def test_bad_id_and_feature_selection(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("name,x,y\na,1,2\na,2,3\nb,3,4\n")
    with pytest.raises(DataError, match="id column 'name' has duplicate values"):
        _ingest(path, "data.id_column=name")
    with pytest.raises(DataError, match="data.id_column 'nope' is not a column"):
        _ingest(path, "data.id_column=nope")
    with pytest.raises(
        DataError, match="features.include names columns that are not in the data: z"
    ):
        _ingest(path, "features.include=[x, z]")
    with pytest.raises(
        DataError, match="features.exclude names columns that are not in the data: q"
    ):
        _ingest(path, "features.exclude=[q]")


def test_no_numeric_columns(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text("name,colour\na,red\nb,blue\n")
    with pytest.raises(DataError, match="no numeric feature columns"):
        _ingest(path)


@pytest.mark.parametrize("name", ["id", "ID", "customer_id", "Key", "name"])
def test_id_named_text_column_with_duplicates_is_reported(tmp_path, name, caplog):
    """Demoted to a dropped text column as before, but the duplicates are now named."""
    path = tmp_path / "dup.csv"
    ids = ["a", "b", "a", "c", "d", "b", "e", "a"]
    path.write_text(f"{name},x\n" + "".join(f"{v},{i}\n" for i, v in enumerate(ids)))
    with caplog.at_level("WARNING", logger="tasks.ingest"):
        data = _ingest(path)
    assert data.id_column == "row_id" and data.dropped_columns == [name]
    warning = next(w for w in data.warnings if "duplicate" in w)
    assert f"column {name!r}" in warning
    assert "2 values occur more than once" in warning
    assert "'a' (3 times)" in warning and "'b' (2 times)" in warning
    assert warning in caplog.text


def test_mostly_unique_text_column_with_duplicates_is_reported(tmp_path):
    """Not named like an id, but 95 % unique: an id with a few repeats."""
    path = tmp_path / "codes.csv"
    codes = [f"C{i:03d}" for i in range(40)] + ["C007", "C011"]
    path.write_text("code,x\n" + "".join(f"{c},{i}\n" for i, c in enumerate(codes)))
    data = _ingest(path)
    warning = next(w for w in data.warnings if "duplicate" in w)
    assert "column 'code'" in warning and "95% unique" in warning
    assert "2 values occur more than once" in warning and "'C007'" in warning


def test_category_columns_are_not_mistaken_for_ids(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("id,x,colour\na,1,red\nb,2,blue\nc,3,red\nd,4,blue\n")
    data = _ingest(path)
    assert data.id_column == "id"
    assert not any("duplicate" in w for w in data.warnings)


def test_configured_id_column_with_duplicates_names_them(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("name,x\na,1\na,2\nb,3\nc,4\nb,5\nd,6\n")
    with pytest.raises(DataError) as excinfo:
        _ingest(path, "data.id_column=name")
    message = str(excinfo.value)
    assert str(path) in message and "id column 'name'" in message
    assert "2 values occur more than once" in message
    assert "'a' (2 times)" in message and "'b' (2 times)" in message
    assert "\n" not in message


def test_the_raw_copy_is_rewritten_only_when_its_bytes_differ(tmp_path):
    from tasks.ingest import ingest

    source = tmp_path / "people.csv"
    source.write_text("id,x\na,1.5\nb,2.5\nc,3.5\n")
    config = load_params(overrides=[f"data.path={source}", f"data.raw_dir={tmp_path / 'raw'}"]).data
    copy = tmp_path / "raw" / "people.csv"
    ingest(config)
    assert copy.read_bytes() == source.read_bytes()
    before = copy.stat().st_mtime_ns
    ingest(config)
    assert copy.stat().st_mtime_ns == before  # the same bytes: left alone
    source.write_text("id,x\na,1.5\nb,2.5\nc,3.6\n")  # same size, one byte differs
    ingest(config)
    assert copy.read_bytes() == source.read_bytes()


def test_feature_selection_leaves_the_read_table_as_it_was():
    from tasks.ingest import RawTable, select_features

    frame = pd.DataFrame(
        {"x": [1, 2, 3], "flag": [True, False, True], "y": [0.5, 1.5, 2.5], "note": list("abc")}
    )
    before = frame.copy()
    p = load_params()
    data = select_features(RawTable(frame, "t.csv", "0"), p.data, p.features)
    assert data.feature_columns == ["x", "flag", "y"]
    assert all(data.frame[name].dtype == np.float64 for name in data.feature_columns)
    pd.testing.assert_frame_equal(frame, before)
    data.frame.loc[0, "y"] = 99.0
    pd.testing.assert_frame_equal(frame, before)
