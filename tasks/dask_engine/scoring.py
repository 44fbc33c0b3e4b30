"""Batch scoring on a Dask cluster: Parquet/CSV data (local or s3://; a file, a folder of
parts, a glob) scored partition by partition by `tasks.score.score_rows` (the fitted chain's
own predict, as in memory) and written by the workers as one Parquet part per input partition,
``part-00000.parquet`` ... in data order. Only counts come back to the client: rows per
segment, and the values per categorical column whose level the model never saw, added up over
the partitions and logged once (as in memory, where the table is one frame).

Each file is opened on its own, so a file lacking the id column or a feature column is named
before anything runs. The parts go to a hidden folder beside the output, moved into place
once all are written: a failed run leaves no partial output. The output must be a path every
worker can write (this machine's disk for a LocalCluster; a shared folder or s3:// otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tasks.chain import SegmentationChain
from tasks.config import DataConfig
from tasks.dask_engine.session import DaskSession
from tasks.dask_engine.table import CSV_SUFFIXES, data_files, first_rows, read_frame
from tasks.encoding import missing_features, missing_features_error, source_columns
from tasks.errors import DataError
from tasks.score import UNSEEN_LEVELS_ATTR, ScoreIds, log_unseen_levels, score_ids, score_rows

logger = logging.getLogger(__name__)

PART_NAME = "part-{:05d}.parquet"
_PART = re.compile(r"part-\d{5}\.parquet")


@dataclass(frozen=True)
class ScoredParts:
    """What a Dask scoring run wrote: the folder, its parts and the rows per segment."""

    output: str
    parts: int
    rows: int
    segments: dict[int, int]
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # {column: {level: n}}

    def unseen_counts(self) -> dict[str, int]:
        """Values per categorical column whose level the model never saw (as in memory)."""
        return {column: sum(levels.values()) for column, levels in self.unseen.items()}


@dataclass(frozen=True)
class _File:
    """One input file: its name (as errors name it) and its Dask DataFrame."""

    name: str
    ddf: Any


def score_to_parquet(
    session: DaskSession,
    chain: SegmentationChain,
    path: str,
    output: str,
    delimiter: str = ",",
    blocksize: str = "16MiB",
    id_column: str | None = None,
) -> ScoredParts:
    """Score the data at ``path`` into the folder ``output`` (replaced if it holds an earlier
    scoring's parts). The id column is chosen on the first file as `score_ids` chooses it in
    memory; every file must have it and the model's feature columns."""
    import dask

    files = _open_files(path, delimiter, blocksize)
    ids = score_ids(
        first_rows(session, files[0].ddf, files[0].name), chain, files[0].name, id_column
    )
    if not ids.generated and any(f.name.lower().endswith(CSV_SUFFIXES) for f in files):
        # Ids as written in the file (a CSV reader would otherwise guess 7 -> 7.0).
        files = _open_files(path, delimiter, blocksize, {ids.column: "str"})
    parts: list[tuple[str, Any]] = []
    for file in files:
        columns = _columns(file, chain, ids, files[0].name)
        delayed = file.ddf[columns].to_delayed()
        for j, part in enumerate(delayed):
            source = (
                file.name if len(delayed) == 1 else f"{file.name} (part {j + 1} of {len(delayed)})"
            )
            parts.append((source, part))
    offsets = _offsets(session, parts, path) if ids.generated else [0] * len(parts)
    fs, final, staging = _staging(output)
    model = dask.delayed(chain, pure=True)
    try:
        results = session.compute(
            "scoring",
            [
                dask.delayed(_score_part)(
                    part, model, ids, source, offset, _url(fs, f"{staging}/{PART_NAME.format(i)}")
                )
                for i, ((source, part), offset) in enumerate(zip(parts, offsets, strict=True))
            ],
            path,
        )
        rows = sum(n for n, _, _ in results)
        if rows == 0:
            raise DataError(f"{path}: has a header but no data rows")
        _publish(fs, staging, final, output)
    finally:
        with contextlib.suppress(OSError):
            if fs.exists(staging):
                fs.rm(staging, recursive=True)
    segments: Counter[int] = Counter()
    unseen: dict[str, Counter[str]] = {}
    for _, counts, levels in results:
        segments.update(counts)
        for column, found in levels.items():
            unseen.setdefault(column, Counter()).update(found)
    totals = {column: dict(found) for column, found in unseen.items()}
    if totals:
        log_unseen_levels(path, totals)
    logger.info("scored %d rows of %s into %d parts in %s", rows, path, len(parts), output)
    return ScoredParts(output, len(parts), rows, dict(sorted(segments.items())), totals)


def _open_files(
    path: str, delimiter: str, blocksize: str, dtype: dict[str, str] | None = None
) -> list[_File]:
    fs, names = data_files(path)
    remote = path.startswith("s3://")
    config = DataConfig(delimiter=delimiter)
    files = []
    for name in names:
        shown = fs.unstrip_protocol(name) if remote else name
        files.append(_File(shown, read_frame(shown, config, blocksize, dtype)[1]))
    return files


def _columns(file: _File, chain: SegmentationChain, ids: ScoreIds, first: str) -> list[str]:
    """The columns of ``file`` scoring reads (its id column, then the features' sources)."""
    present = [str(name) for name in file.ddf.columns]
    missing = missing_features(present, chain.feature_names)
    if missing:
        raise missing_features_error(file.name, missing, present)
    features = source_columns(present, chain.feature_names)
    if ids.generated:
        return features
    if ids.column not in present:
        raise DataError(
            f"{file.name}: no id column {ids.column!r} (the id column of {first}); "
            f"the data has {', '.join(present)}"
        )
    return [ids.column, *(name for name in features if name != ids.column)]


def _offsets(session: DaskSession, parts: list[tuple[str, Any]], path: str) -> list[int]:
    """The position of each partition's first row in the whole data set (generated ids)."""
    import dask

    counts = session.compute("counting rows", [dask.delayed(len)(part) for _, part in parts], path)
    offsets, total = [], 0
    for count in counts:
        offsets.append(total)
        total += int(count)
    return offsets


def _score_part(
    frame: pd.DataFrame,
    chain: SegmentationChain,
    ids: ScoreIds,
    source: str,
    first_row: int,
    target: str,
) -> tuple[int, dict[int, int], dict[str, dict[str, int]]]:
    """(rows, rows per segment, unseen levels) of one partition, its scores written."""
    scores = score_rows(frame, chain, ids, source, first_row, log_unseen=False)
    unseen = scores.attrs.pop(UNSEEN_LEVELS_ATTR, {})
    scores.to_parquet(target, index=False)
    counts = scores["segment"].value_counts()
    return len(scores), {int(k): int(v) for k, v in counts.items()}, unseen


# --------------------------------------------------------------------------- the output folder


def _url(fs, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def _staging(output: str) -> tuple[Any, str, str]:
    """(file system, the output folder, a new hidden folder beside it for the parts)."""
    import fsspec

    if output.lower().rstrip("/").endswith(CSV_SUFFIXES):
        raise DataError(f"--output {output}: the Dask engine writes a folder of Parquet parts")
    fs, final = fsspec.core.url_to_fs(output)
    final = final.rstrip("/")
    _check_replaceable(fs, final, output)
    parent, _, name = final.rpartition("/")
    staging = f"{parent}/.{name}.partial-{uuid.uuid4().hex[:12]}"
    fs.makedirs(staging, exist_ok=True)
    return fs, final, staging


def _check_replaceable(fs, final: str, output: str) -> None:
    """An existing output is replaced only when it is an earlier scoring's folder of parts."""
    if not fs.exists(final):
        return
    if not fs.isdir(final):
        raise DataError(f"--output {output}: is a file; the Dask engine writes a folder")
    others = [
        entry.rsplit("/", 1)[-1]
        for entry in fs.ls(final, detail=False)
        if not _PART.fullmatch(entry.rsplit("/", 1)[-1])
    ]
    if others:
        raise DataError(
            f"--output {output}: the folder holds other files ({', '.join(sorted(others)[:3])}); "
            "choose a new folder or one an earlier scoring wrote"
        )


def _publish(fs, staging: str, final: str, output: str) -> None:
    """Move the written parts into place (the earlier output, if any, removed after)."""
    fs.invalidate_cache()  # the workers wrote the parts; a remote listing cache misses them
    old = None
    if fs.exists(final):
        old = f"{staging}.old"
        _move(fs, final, old)
    try:
        _move(fs, staging, final)
    except OSError as error:
        if old is not None:
            _move(fs, old, final)
        raise DataError(f"--output {output}: cannot move the scores into place ({error})") from None
    if old is not None:
        fs.rm(old, recursive=True)


def _move(fs, source: str, target: str) -> None:
    if _is_local(fs):
        fs.mv(source, target, recursive=True)  # one rename of the folder
        return
    for name in fs.find(source):  # object stores have no folders: part by part
        fs.mv(name, f"{target}/{name.rsplit('/', 1)[-1]}")
    fs.invalidate_cache()
