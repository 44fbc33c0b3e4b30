"""Batch scoring on the Dask engine (`tasks/dask_engine/scoring.py`, one LocalCluster of 2
thread workers for the module) against in-memory scoring (`tasks/score.py`) of the same rows:
a folder of Parquet parts, CSV files, generated ids; and bad input that writes nothing."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tasks.chain import SegmentationChain
from tasks.errors import DataError
from tasks.score import score_frame

FEATURES = ["spend", "visits", "tenure", "basket", "colour=Unknown", "colour=blue", "colour=red"]


@pytest.fixture(scope="module")
def session():
    from tasks.config import DaskConfig
    from tasks.dask_engine.session import open_session

    with open_session(DaskConfig(processes=False, n_workers=2, threads_per_worker=1)) as opened:
        yield opened


@pytest.fixture(scope="module")
def chain() -> SegmentationChain:
    """A chain with every transform at work: fill values, a log1p column, clipping, scaling,
    a 3-component projection, 4 centroids with segment ids out of order."""
    rng = np.random.default_rng(5)
    d = len(FEATURES)
    components = np.linalg.qr(rng.normal(size=(d, d)))[0][:3]
    return SegmentationChain(
        feature_names=FEATURES,
        fill_values=np.array([50.0, 3.0, 12.0, 4.0, 0.0, 0.0, 0.0]),
        log1p_mask=np.array([True, False, False, False, False, False, False]),
        clip_low=np.array([0.0, 0.0, 0.0, -5.0, 0.0, 0.0, 0.0]),
        clip_high=np.array([8.0, 40.0, 60.0, 30.0, 1.0, 1.0, 1.0]),
        scale_center=np.array([3.5, 4.0, 20.0, 5.0, 0.1, 0.4, 0.5]),
        scale_scale=np.array([1.2, 2.5, 15.0, 3.0, 0.3, 0.5, 0.5]),
        pca_mean=np.zeros(d),
        pca_components=components,
        centroids=rng.normal(scale=1.5, size=(4, 3)),
        segment_ids=np.array([2, 0, 3, 1]),
        metadata={"id_column": "customer"},
    )


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """3,000 customers with ~5 % missing values and a categorical column."""
    rng = np.random.default_rng(9)
    n = 3000
    frame = pd.DataFrame(
        {
            "customer": [f"c{i:05d}" for i in range(n)],
            "spend": rng.lognormal(3.5, 1.0, n),
            "visits": rng.poisson(4, n).astype(float),
            "tenure": rng.uniform(0, 70, n),
            "basket": rng.normal(5, 3, n),
            "colour": rng.choice(np.array(["red", "blue", "green", None], dtype=object), n),
            "note": "unused",
        }
    )
    for name in ("spend", "visits", "tenure", "basket"):
        frame.loc[rng.random(n) < 0.05, name] = np.nan
    return frame


def _split(frame: pd.DataFrame, folder, suffix: str, pieces: int = 3) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(frame)), pieces)):
        path = folder / f"part-{i}.{suffix}"
        rows = frame.iloc[part]
        if suffix == "parquet":
            rows.to_parquet(path, index=False, row_group_size=400)
        else:
            rows.to_csv(path, index=False)
        paths.append(path)
    return paths


def _read_parts(folder) -> tuple[list[str], pd.DataFrame]:
    names = sorted(p.name for p in folder.iterdir())
    scores = pd.concat([pd.read_parquet(folder / name) for name in names], ignore_index=True)
    return names, scores


def _assert_same_scores(dask_scores: pd.DataFrame, memory: pd.DataFrame) -> None:
    assert list(dask_scores.columns) == list(memory.columns)
    id_column = memory.columns[0]
    assert dask_scores[id_column].astype(str).tolist() == memory[id_column].tolist()
    assert dask_scores["segment"].tolist() == memory["segment"].tolist()
    np.testing.assert_allclose(
        dask_scores["distance_to_cluster"], memory["distance_to_cluster"], rtol=1e-9, atol=0
    )


def test_parquet_folder_scores_as_in_memory(session, chain, table, tmp_path):
    from tasks.dask_engine.scoring import score_to_parquet

    _split(table, tmp_path / "data", "parquet")
    table.iloc[:0].to_parquet(tmp_path / "data" / "part-3.parquet", index=False)  # no rows
    whole = tmp_path / "whole.parquet"
    table.to_parquet(whole, index=False)
    memory = score_frame(chain, str(whole))
    assert memory["segment"].nunique() == 4

    # Small blocks: each file's row groups make several partitions.
    scored = score_to_parquet(
        session, chain, str(tmp_path / "data"), str(tmp_path / "scores"), blocksize="16KiB"
    )
    names, scores = _read_parts(tmp_path / "scores")
    assert scored.parts == len(names) > 4
    assert names == [f"part-{i:05d}.parquet" for i in range(scored.parts)]
    assert scored.rows == len(table)
    _assert_same_scores(scores, memory)
    # The parts read back as one data set (the empty part has the same column types).
    _assert_same_scores(pd.read_parquet(tmp_path / "scores"), memory)
    assert scored.segments == memory["segment"].value_counts().sort_index().to_dict()
    # A second run replaces the earlier parts; no staging folder is left beside them.
    again = score_to_parquet(session, chain, str(tmp_path / "data"), str(tmp_path / "scores"))
    assert again.parts == 4 and len(_read_parts(tmp_path / "scores")[0]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "scores", "whole.parquet"]


def test_csv_glob_and_generated_ids_score_as_in_memory(session, chain, table, tmp_path):
    from tasks.dask_engine.scoring import score_to_parquet

    _split(table, tmp_path / "csv", "csv", pieces=2)
    whole = tmp_path / "whole.csv"
    table.to_csv(whole, index=False)
    score_to_parquet(session, chain, str(tmp_path / "csv" / "*.csv"), str(tmp_path / "out"))
    _assert_same_scores(_read_parts(tmp_path / "out")[1], score_frame(chain, str(whole)))

    # No id column: rows are numbered across the files as in memory (row_1 ... row_3000).
    bare = table.drop(columns="customer")
    _split(bare, tmp_path / "bare", "parquet")
    bare.to_parquet(tmp_path / "bare.parquet", index=False)
    score_to_parquet(session, chain, str(tmp_path / "bare"), str(tmp_path / "bare-out"))
    memory = score_frame(chain, str(tmp_path / "bare.parquet"))
    assert memory["row_id"].iloc[-1] == "row_3000"
    _assert_same_scores(_read_parts(tmp_path / "bare-out")[1], memory)


def test_bad_input_names_the_file_and_writes_nothing(session, chain, table, tmp_path):
    from tasks.dask_engine.scoring import score_to_parquet

    def score(data, output="out"):
        return score_to_parquet(session, chain, str(data), str(tmp_path / output))

    with pytest.raises(DataError, match=r"nope: file not found$"):
        score(tmp_path / "nope")
    parts = _split(table, tmp_path / "data", "parquet")
    table.iloc[:10].drop(columns="tenure").to_parquet(parts[1], index=False)
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(parts[1]))}: missing feature column\(s\) tenure that the model uses",
    ):
        score(tmp_path / "data")
    table.iloc[:10].drop(columns="customer").to_parquet(parts[1], index=False)
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(parts[1]))}: no id column 'customer' \(the id column"
    ):
        score(tmp_path / "data")
    # Found while scoring (the last part's values): the parts already written are dropped.
    bad = table.iloc[:10].copy()
    bad["basket"] = [f"{value:.3f}" for value in bad["basket"].fillna(1.0)]
    bad.loc[bad.index[4], "basket"] = "n/a"
    bad.to_parquet(parts[1], index=False)
    with pytest.raises(DataError, match=r"feature column 'basket' is not numeric: data row 5"):
        score(tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # An output folder that holds something else is left alone.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    bad.drop(columns="basket").assign(basket=1.0).to_parquet(parts[1], index=False)
    with pytest.raises(DataError, match=r"mine: the folder holds other files \(notes\.txt\)"):
        score(tmp_path / "data", "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_s3_folder_scored_into_an_s3_folder(session, chain, table, moto_s3, tmp_path):
    import boto3
    import s3fs

    from tasks.dask_engine.scoring import score_to_parquet

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="popseg-scoring")
    for path in _split(table, tmp_path / "data", "parquet"):
        s3.upload_file(str(path), "popseg-scoring", f"customers/{path.name}")
    table.to_parquet(tmp_path / "whole.parquet", index=False)
    output = "s3://popseg-scoring/scores"
    scored = score_to_parquet(session, chain, "s3://popseg-scoring/customers/", output)
    assert scored.parts == 3 and scored.rows == len(table)
    fs = s3fs.S3FileSystem()
    # The parts moved into place; nothing staged is left beside them.
    assert sorted(fs.ls("popseg-scoring", refresh=True)) == [
        "popseg-scoring/customers",
        "popseg-scoring/scores",
    ]
    names = sorted(fs.ls("popseg-scoring/scores", refresh=True))
    assert [n.rsplit("/", 1)[-1] for n in names] == [f"part-0000{i}.parquet" for i in range(3)]
    scores = pd.concat([pd.read_parquet(f"s3://{name}") for name in names], ignore_index=True)
    _assert_same_scores(scores, score_frame(chain, str(tmp_path / "whole.parquet")))


def test_unseen_levels_are_added_up_over_the_partitions(session, tmp_path, caplog):
    """Raw category values in three files, unseen levels in two of them: one total per
    column (and per level) for the whole data, logged once, as in memory."""
    from tasks.dask_engine.scoring import score_to_parquet
    from tests.chains import categorical_chain

    chain = categorical_chain()
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(9)],
            "x": [0.0, 0.0, 9.0, 0.0, 1.0, 0.0, 0.0, 0.0, 10.0],
            "region": ["NE", "MW", None, "Atlantis", "NE", "Mu", "Atlantis", "MW", "NE"],
        }
    )
    _split(frame, tmp_path / "data", "parquet")
    frame.to_parquet(tmp_path / "whole.parquet", index=False)
    memory = score_frame(chain, str(tmp_path / "whole.parquet"))
    caplog.clear()  # the in-memory scoring logged its own
    scored = score_to_parquet(session, chain, str(tmp_path / "data"), str(tmp_path / "out"))
    assert scored.unseen == {"region": {"Atlantis": 2, "Mu": 1}}
    assert scored.unseen_counts() == memory.attrs["unseen_categories"] == {"region": 3}
    warnings = [r.getMessage() for r in caplog.records if "never saw" in r.getMessage()]
    assert warnings == [
        f"{tmp_path / 'data'}: category level(s) the model never saw, scored with no "
        "indicator set: region: 3 value(s) ('Atlantis' x2, 'Mu')"
    ]
    _assert_same_scores(_read_parts(tmp_path / "out")[1], memory)
