"""Parquet/CSV data (local or s3://; a file, a folder of Parquet files or a glob) as a Dask
DataFrame that is never collected: the columns are chosen from the first partition by the
in-memory `select_features`, rows are counted per partition (global row positions), a seeded
sample is drawn by row hash (the same rows whatever the partitioning) and the data is hashed
file by file on the workers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import DataConfig, FeaturesConfig
from tasks.dask_engine.session import DaskSession
from tasks.errors import ConfigError, DataError
from tasks.ingest import RawTable, select_features

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".csv.bz2", ".csv.zst")
_HEAD_ROWS = 2000


@dataclass(frozen=True)
class Columns:
    """What a per-partition function needs to know about the table (no Dask objects)."""

    feature_columns: list[str]
    id_column: str
    id_generated: bool


@dataclass(frozen=True)
class DaskTable:
    """The chosen columns of a data set, partitioned; ``partition_rows`` counted once."""

    source: str
    format: str  # parquet | csv
    ddf: Any  # dask DataFrame
    id_column: str
    id_generated: bool  # no id column in the data: ids are row_<position + 1>, as in memory
    feature_columns: list[str]
    partition_rows: np.ndarray
    # Results of passes over the data kept for later stages (the first pass's statistics).
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_rows(self) -> int:
        return int(self.partition_rows.sum())

    @property
    def npartitions(self) -> int:
        return len(self.partition_rows)

    @property
    def columns(self) -> Columns:
        return Columns(list(self.feature_columns), self.id_column, self.id_generated)

    @property
    def offsets(self) -> np.ndarray:
        """Global position of each partition's first row."""
        return np.concatenate([[0], np.cumsum(self.partition_rows)[:-1]]).astype(np.int64)

    def parts(self, with_ids: bool = False) -> list[Any]:
        """One delayed pandas frame per partition: the feature columns (and the id column)."""
        columns = list(self.feature_columns)
        if with_ids and not self.id_generated:
            columns = [self.id_column, *columns]
        return list(self.ddf[columns].to_delayed())


def _is_csv(path: str) -> bool:
    return path.lower().rstrip("/").endswith(CSV_SUFFIXES)


def _storage_options(path: str) -> dict[str, Any] | None:
    return {} if path.startswith("s3://") else None


def _filesystem(path: str):
    import fsspec

    try:
        fs, _, paths = fsspec.core.get_fs_token_paths(path, storage_options=_storage_options(path))
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: cannot open ({error})") from None
    return fs, paths


def data_files(path: str) -> tuple[Any, list[str]]:
    """The files a path names (a file, every file under a folder, or a glob's matches),
    sorted; DataError when there are none."""
    fs, paths = _filesystem(path)
    files: list[str] = []
    try:
        for entry in paths:
            if fs.isdir(entry):
                files += [
                    found
                    for found in sorted(fs.find(entry))
                    if not found.rsplit("/", 1)[-1].startswith(("_", "."))
                ]
            elif fs.exists(entry):
                files.append(entry)
    except PermissionError as error:
        raise DataError(f"{path}: access denied ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot list ({error})") from None
    if not files:
        where = "no such object in S3" if path.startswith("s3://") else "file not found"
        raise DataError(f"{path}: {where}")
    return fs, sorted(files)


def _md5_file(fs, name: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with fs.open(name, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_md5(session: DaskSession, path: str) -> str:
    """md5 of the data, hashed on the workers: a single file's is the md5 of its bytes (as DVC
    and the in-memory engine record it); several files give the md5 of their sorted
    ``"<md5> <relative path>"`` lines."""
    fs, files = data_files(path)
    digests = session.map(f"hashing {path}", _md5_file, [fs] * len(files), files)
    if len(files) == 1:
        return digests[0]
    root = files[0].rsplit("/", 1)[0] if len(files) > 1 else ""
    lines = "".join(
        f"{digest} {name.removeprefix(root).lstrip('/')}\n"
        for digest, name in zip(digests, files, strict=True)
    )
    return hashlib.md5(lines.encode(), usedforsecurity=False).hexdigest()


def read_frame(
    path: str, data_config: DataConfig, blocksize: str, dtype: dict[str, str] | None = None
):
    """(format, the Dask DataFrame of ``path``); ``dtype`` fixes CSV columns' types."""
    import dask.dataframe as dd

    options = _storage_options(path)
    try:
        if _is_csv(path):
            return "csv", dd.read_csv(
                path,
                blocksize=blocksize,
                sep=data_config.delimiter,
                assume_missing=True,  # integer columns with gaps further down stay float
                dtype=dtype,
                storage_options=options,
            )
        return "parquet", dd.read_parquet(path, blocksize=blocksize, storage_options=options)
    except FileNotFoundError:
        where = "no such object in S3" if path.startswith("s3://") else "file not found"
        raise DataError(f"{path}: {where}") from None
    except PermissionError as error:
        raise DataError(f"{path}: access denied ({error})") from None
    except (ValueError, OSError) as error:
        kind = "CSV" if _is_csv(path) else "Parquet"
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: not readable as {kind}: {message}") from None
    except Exception as error:  # pyarrow's ArrowInvalid and friends
        if type(error).__module__.startswith("pyarrow"):
            raise DataError(f"{path}: not a readable Parquet data set: {error}") from None
        raise


def first_rows(session: DaskSession, ddf, path: str) -> pd.DataFrame:
    """The first rows (from the first partitions that have any)."""
    import dask

    for count in (1, 4, 16):
        parts = list(ddf.to_delayed())[: min(count, ddf.npartitions)]
        frames = session.compute(
            "reading the first partition", [dask.delayed(_head_rows)(p) for p in parts], path
        )
        head = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(head) >= 2 or len(parts) == ddf.npartitions:
            return head
    return head


def _head_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.head(_HEAD_ROWS)


def _partition_len(frame: pd.DataFrame) -> int:
    return len(frame)


def open_table(
    session: DaskSession,
    path: str,
    data_config: DataConfig,
    features_config: FeaturesConfig,
    blocksize: str,
) -> tuple[DaskTable, list[str], list[str]]:
    """The data set at ``path`` with its id and feature columns chosen as the in-memory
    engine chooses them (on the first rows); returns (table, dropped columns, warnings)."""
    import dask

    fmt, ddf = read_frame(path, data_config, blocksize)
    columns = [str(name) for name in ddf.columns]
    if len(set(columns)) != len(columns):
        duplicate = next(name for name in columns if columns.count(name) > 1)
        raise DataError(f"{path}: duplicate column name {duplicate!r}; column names must be unique")
    head = first_rows(session, ddf, path)
    if len(head) == 0:
        raise DataError(f"{path}: has a header but no data rows")
    chosen = select_features(RawTable(head, path, "", path), data_config, features_config)
    missing = [name for name in chosen.feature_columns if name not in ddf.columns]
    if missing:
        raise ConfigError(
            "features.categorical=onehot is not supported by the Dask engine (the levels of "
            f"{', '.join(missing[:3])}... would have to be known across all partitions); "
            "use features.categorical=drop or encode the columns before training"
        )
    id_generated = chosen.id_column not in ddf.columns
    keep = chosen.feature_columns if id_generated else [chosen.id_column, *chosen.feature_columns]
    ddf = ddf[keep]
    first = chosen.feature_columns[:1]
    counts = session.compute(
        "counting rows",
        [dask.delayed(_partition_len)(part) for part in ddf[first].to_delayed()],
        path,
    )
    table = DaskTable(
        source=path,
        format=fmt,
        ddf=ddf,
        id_column=chosen.id_column,
        id_generated=id_generated,
        feature_columns=list(chosen.feature_columns),
        partition_rows=np.asarray(counts, dtype=np.int64),
    )
    if table.n_rows == 0:
        raise DataError(f"{path}: has a header but no data rows")
    return table, list(chosen.dropped_columns), list(chosen.warnings)


# --------------------------------------------------------------------------- row hashes


def _hash_key(seed: int) -> str:
    return f"popseg{abs(int(seed)) % 10**10:010d}"  # pandas wants exactly 16 characters


def _mix(seed: int) -> np.uint64:
    """splitmix64 of the seed: positions are XORed with it before hashing."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(z ^ (z >> 31))


def row_hashes(ids: pd.Series | None, positions: np.ndarray, seed: int) -> np.ndarray:
    """A uint64 per row from its id (or, without an id column, its global position) and the
    seed: a row keeps its hash whatever the partitioning."""
    if ids is None:
        return pd.util.hash_array(positions.astype(np.uint64) ^ _mix(seed))
    return pd.util.hash_pandas_object(
        ids.astype(str), index=False, hash_key=_hash_key(seed)
    ).to_numpy()


def row_ids(frame: pd.DataFrame, table: Columns, offset: int, rows: np.ndarray) -> np.ndarray:
    """The ids (strings) of some of a partition's rows (``rows``: positions in the partition);
    without an id column, ``row_<global position + 1>`` as `select_features` numbers them."""
    if table.id_generated:
        return np.array([f"row_{offset + int(i) + 1}" for i in rows], dtype=object)
    return frame[table.id_column].iloc[rows].astype(str).to_numpy(dtype=object)


def _sample_part(
    frame: pd.DataFrame,
    offset: int,
    id_column: str | None,
    names: list[str],
    threshold: np.uint64,
    seed: int,
    extra: Callable[[pd.DataFrame, int], Any] | None = None,
):
    """The partition's rows in the sample; with ``extra``, also ``extra(frame, offset)`` (other
    statistics taken in the same pass)."""
    positions = np.arange(offset, offset + len(frame), dtype=np.int64)
    ids = frame[id_column] if id_column is not None else None
    hashes = row_hashes(ids, positions, seed)
    keep = np.flatnonzero(hashes < threshold)
    out = pd.DataFrame({"_pos": positions[keep], "_hash": hashes[keep]})
    chosen = frame.iloc[keep]
    if id_column is not None:
        out[id_column] = chosen[id_column].astype(str).to_numpy(dtype=object)
    values = chosen[names].to_numpy(dtype=np.float64, na_value=np.nan)
    for j, name in enumerate(names):
        out[name] = values[:, j]
    return out if extra is None else (out, extra(frame, offset))


def draw_sample(
    session: DaskSession,
    table: DaskTable,
    size: int,
    seed: int,
    extra: Callable[[pd.DataFrame, int], Any] | None = None,
) -> tuple[pd.DataFrame, np.ndarray, list[Any] | None]:
    """A seeded sample of ``size`` rows (all of them if fewer), in data order, as the
    in-memory engine's table (the id column as strings, then the features as float64), the
    rows' global positions, and ``extra(frame, offset)`` of every partition (None without
    ``extra``), computed in the same pass. The sample is the rows with the smallest row
    hashes: the same rows on any cluster and partitioning."""
    import dask

    extras = None
    n = table.n_rows
    size = min(size, n)
    id_column = None if table.id_generated else table.id_column
    fraction = 1.0 if size >= n else min(1.0, (1.1 * size + 10 * np.sqrt(size) + 100) / n)
    while True:
        threshold = (
            np.uint64(np.iinfo(np.uint64).max)
            if fraction >= 1.0
            else np.uint64(int(fraction * 2.0**64))
        )
        pieces = session.compute(
            "drawing the sample",
            [
                dask.delayed(_sample_part)(
                    part,
                    int(offset),
                    id_column,
                    table.feature_columns,
                    threshold,
                    seed,
                    extra if extras is None else None,
                )
                for part, offset in zip(table.parts(with_ids=True), table.offsets, strict=True)
            ],
            table.source,
        )
        if extra is not None and extras is None:
            extras = [piece[1] for piece in pieces]
            pieces = [piece[0] for piece in pieces]
        sample = pd.concat(pieces, ignore_index=True)
        if len(sample) >= size or fraction >= 1.0:
            break
        fraction = min(1.0, fraction * 2)
    sample = sample.nsmallest(size, "_hash").sort_values("_pos", kind="stable")
    frame = pd.DataFrame(index=pd.RangeIndex(len(sample)))
    if table.id_generated:
        frame[table.id_column] = [f"row_{p + 1}" for p in sample["_pos"].to_numpy()]
    else:
        frame[table.id_column] = sample[table.id_column].to_numpy()
    frame[table.id_column] = frame[table.id_column].astype(str)
    for name in table.feature_columns:
        frame[name] = sample[name].to_numpy(dtype=np.float64)
    return frame, sample["_pos"].to_numpy(), extras
