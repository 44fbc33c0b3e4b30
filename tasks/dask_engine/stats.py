"""Column statistics of a partitioned data set, one pass (or a few) over the partitions.

Every statistic is computed per partition and merged on the client in partition order, so a
result depends on the data and its partitioning only, not on the number of workers or the
order they finish in. A `Stage` says which rows a statistic is taken on: the raw features,
or the rows after the fitted steps of a (partly fitted) `SegmentationChain` - the serving
chain's own transform, so training and serving apply the same steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.chain import SegmentationChain
from tasks.dask_engine.session import DaskSession
from tasks.dask_engine.table import Columns, DaskTable
from tasks.errors import ConfigError

_BINS = 1024
_COLLECT_PER_TARGET = 200_000
_MAX_REFINEMENTS = 12
_MAX_DISTINCT = 1_000_000


@contextlib.contextmanager
def numba_threads(count: int):
    """numba threads for one task on a worker (thread-local; restored afterwards)."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(count), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def feature_matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    return frame[names].to_numpy(dtype=np.float64, na_value=np.nan)


#: Rows a per-partition step works on at a time (bounds its temporaries).
SLICE_ROWS = 131_072


def row_slices(n: int, size: int = SLICE_ROWS):
    """(start, stop) of consecutive slices of ``n`` rows."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass(frozen=True)
class Stage:
    """Which rows a statistic is taken on: the raw features (``chain`` None, missing values
    kept as NaN) or the chain's output - `SegmentationChain.prepare` (scaled features) or,
    with ``reduce``, `SegmentationChain.transform` (the PCA space). ``drop_incomplete``
    leaves out rows with a missing feature (``impute.strategy=drop``)."""

    names: list[str]
    chain: SegmentationChain | None = None
    drop_incomplete: bool = False
    reduce: bool = False

    @property
    def width(self) -> int:
        if self.chain is not None and self.reduce:
            return int(self.chain.pca_components.shape[0])
        return len(self.names)

    def rows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(values, mask of the partition's rows kept). Worked through in slices of rows, so
        a partition costs its output plus one slice's temporaries, not several full copies."""
        n = len(frame)
        kept = np.ones(n, dtype=bool)
        pieces = []
        columns = frame[self.names]
        for start, stop in row_slices(n):
            values = columns.iloc[start:stop].to_numpy(dtype=np.float64, na_value=np.nan)
            if self.drop_incomplete:
                complete = ~np.isnan(values).any(axis=1)
                kept[start:stop] = complete
                values = values[complete]
            if self.chain is not None and len(values):
                values = self.chain.transform(values) if self.reduce else self.chain.prepare(values)
            pieces.append(values)
        if not pieces:
            return np.zeros((0, self.width)), kept
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
        return np.ascontiguousarray(out.reshape(-1, self.width)), kept

    def apply(self, frame: pd.DataFrame) -> np.ndarray:
        return self.rows(frame)[0]

    def slices(self, frame: pd.DataFrame):
        """(first row, values, kept mask) of consecutive slices of a partition's rows: for
        steps that reduce as they go, so a partition never needs its whole matrix at once."""
        for start, stop in row_slices(len(frame)):
            values, kept = self.rows(frame.iloc[start:stop])
            yield start, values, kept


def _delayed_over(table: DaskTable, function, *args, with_ids: bool = False) -> list:
    import dask

    return [
        dask.delayed(function)(part, int(offset), *args)
        for part, offset in zip(table.parts(with_ids=with_ids), table.offsets, strict=True)
    ]


# --------------------------------------------------------------------------- moments


@dataclass
class Moments:
    """Per-column count, mean, 2nd/3rd central moment sums, min/max of the finite values,
    missing and infinite counts, rows; optionally the centred cross-product matrix."""

    rows: int
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    n_missing: np.ndarray
    n_posinf: np.ndarray
    n_neginf: np.ndarray
    scatter: np.ndarray | None = None

    @classmethod
    def of(cls, values: np.ndarray, scatter: bool = False) -> Moments:
        """The moments of ``values`` (rows x columns), slice by slice."""
        slices = row_slices(len(values)) or [(0, 0)]
        total = cls._of(values[slices[0][0] : slices[0][1]], scatter)
        for start, stop in slices[1:]:
            total = total.merge(cls._of(values[start:stop], scatter))
        return total

    @classmethod
    def _of(cls, values: np.ndarray, scatter: bool) -> Moments:
        from tasks.compute import column_moments

        found = column_moments(values)
        cross = None
        if scatter:
            if found["n_nan"].any() or found["n_posinf"].any() or found["n_neginf"].any():
                raise ValueError("the covariance needs finite values (impute first)")
            centred = values - found["mean"]
            cross = centred.T @ centred
        return cls(
            rows=values.shape[0],
            count=found["count"],
            mean=found["mean"],
            m2=found["m2"],
            m3=found["m3"],
            minimum=found["min"],
            maximum=found["max"],
            n_missing=found["n_nan"],
            n_posinf=found["n_posinf"],
            n_neginf=found["n_neginf"],
            scatter=cross,
        )

    def merge(self, other: Moments) -> Moments:
        """Chan/Pébay pairwise update: the moments of both sets of rows."""
        na, nb = self.count, other.count
        n = na + nb
        safe = np.maximum(n, 1)
        delta = other.mean - self.mean
        mean = np.where(n > 0, self.mean + delta * nb / safe, 0.0)
        m2 = self.m2 + other.m2 + delta**2 * na * nb / safe
        m3 = (
            self.m3
            + other.m3
            + delta**3 * na * nb * (na - nb) / safe**2
            + 3.0 * delta * (na * other.m2 - nb * self.m2) / safe
        )
        scatter = None
        if self.scatter is not None and other.scatter is not None:
            rows_a, rows_b = float(self.rows), float(other.rows)
            total = max(rows_a + rows_b, 1.0)
            scatter = (
                self.scatter + other.scatter + np.outer(delta, delta) * rows_a * rows_b / total
            )
        return Moments(
            rows=self.rows + other.rows,
            count=n,
            mean=mean,
            m2=m2,
            m3=m3,
            minimum=np.minimum(self.minimum, other.minimum),
            maximum=np.maximum(self.maximum, other.maximum),
            n_missing=self.n_missing + other.n_missing,
            n_posinf=self.n_posinf + other.n_posinf,
            n_neginf=self.n_neginf + other.n_neginf,
            scatter=scatter,
        )

    @property
    def variance(self) -> np.ndarray:
        """Population variance (ddof 0), as ``np.var``."""
        return np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    @property
    def sample_std(self) -> np.ndarray:
        """ddof 1, as pandas' ``std``."""
        return np.where(self.count > 1, np.sqrt(self.m2 / np.maximum(self.count - 1, 1)), np.nan)

    @property
    def skewness(self) -> np.ndarray:
        """Fisher-Pearson (biased), as `tasks.scale.skewness`."""
        second = self.m2 / np.maximum(self.count, 1)
        third = self.m3 / np.maximum(self.count, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            result = third / second**1.5
        return np.where(second > 0, result, 0.0)

    @property
    def covariance(self) -> np.ndarray:
        """ddof 1, as scikit-learn's PCA."""
        if self.scatter is None:
            raise ValueError("moments were taken without the cross products")
        return self.scatter / max(self.rows - 1, 1)

    @classmethod
    def constant(cls, value: np.ndarray, count: np.ndarray) -> Moments:
        """The moments of ``count[j]`` copies of ``value[j]`` per column (imputed cells)."""
        count = np.asarray(count, dtype=np.float64)
        zeros = np.zeros_like(count)
        present = count > 0
        return cls(
            rows=0,
            count=count,
            mean=np.where(present, value, 0.0),
            m2=zeros,
            m3=zeros.copy(),
            minimum=np.where(present, value, np.inf),
            maximum=np.where(present, value, -np.inf),
            n_missing=zeros.astype(np.int64),
            n_posinf=zeros.astype(np.int64),
            n_neginf=zeros.astype(np.int64),
        )


def _moments_part(frame, offset, stage: Stage, scatter: bool, threads: int) -> Moments:
    total = Moments.of(np.zeros((0, stage.width)), scatter=scatter)
    with numba_threads(threads):
        for _, values, _ in stage.slices(frame):
            total = total.merge(Moments.of(values, scatter=scatter))
    return total


def merge_all(pieces: list[Moments]) -> Moments:
    total = pieces[0]
    for piece in pieces[1:]:
        total = total.merge(piece)
    return total


def moments(
    session: DaskSession, table: DaskTable, stage: Stage, scatter: bool = False, step: str = ""
) -> Moments:
    """Column moments of a stage's rows over every partition (one pass)."""
    pieces = session.compute(
        step or "column statistics",
        _delayed_over(table, _moments_part, stage, scatter, session.kernel_threads),
        table.source,
    )
    return merge_all(pieces)


# --------------------------------------------------------------------------- quantiles


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation between neighbouring order statistics (``np.quantile``)."""
    diff = b - a
    return float(b - diff * (1.0 - t)) if t >= 0.5 else float(a + diff * t)


@dataclass
class _Target:
    column: int
    rank: int
    low: float
    high: float
    below: int = 0  # values of the column under ``low``
    inside: int = -1  # values in [low, high]; -1 = not counted yet
    value: float | None = None


def _histogram_part(frame, offset, stage: Stage, targets, bins: int, threads: int):
    counts = np.zeros((len(targets), bins), dtype=np.int64)
    lows = np.full((len(targets), bins), np.inf)
    highs = np.full((len(targets), bins), -np.inf)
    edges = [np.linspace(low, high, bins + 1) for _, low, high in targets]
    with numba_threads(threads):
        for _, values, _ in stage.slices(frame):
            for t, (column, low, high) in enumerate(targets):
                column_values = values[:, column]
                inside = column_values[(column_values >= low) & (column_values <= high)]
                if not len(inside):
                    continue
                index = np.clip(np.searchsorted(edges[t], inside, side="right") - 1, 0, bins - 1)
                counts[t] += np.bincount(index, minlength=bins)
                np.minimum.at(lows[t], index, inside)
                np.maximum.at(highs[t], index, inside)
    return counts, lows, highs


def _collect_part(frame, offset, stage: Stage, targets, threads: int):
    found: list[list[np.ndarray]] = [[] for _ in targets]
    with numba_threads(threads):
        for _, values, _ in stage.slices(frame):
            for t, (column, low, high) in enumerate(targets):
                column_values = values[:, column]
                found[t].append(column_values[(column_values >= low) & (column_values <= high)])
    return [np.concatenate(pieces) if pieces else np.zeros(0) for pieces in found]


def quantiles(
    session: DaskSession,
    table: DaskTable,
    stage: Stage,
    qs: list[float],
    stats: Moments,
    median: bool = False,
    step: str = "quantiles",
) -> np.ndarray:
    """Exact per-column quantiles ``(len(qs), d)`` of a stage's finite values (missing ones
    skipped), equal to ``np.quantile`` (``np.nanmedian`` with ``median``): each needed order
    statistic is narrowed down by histograms over the partitions (a bin's rows are the only
    ones left in play), then the few values of its bin are gathered and sorted.
    ``stats``: the stage's `Moments` (counts and ranges)."""
    d = len(stats.count)
    plans: list[list[tuple[int, int, float]]] = []  # per (q, column): [(rank_lo, rank_hi, t)]
    wanted: dict[tuple[int, int], _Target] = {}
    for q in qs:
        row = []
        for j in range(d):
            m = int(stats.count[j])
            if m == 0:
                row.append(None)
                continue
            if median:
                half = (m - 1) // 2
                ranks = (half, half + 1 if m % 2 == 0 else half)
                row.append((ranks[0], ranks[1], 0.5))
            else:
                virtual = (m - 1) * q
                lo = int(np.floor(virtual))
                hi = min(lo + 1, m - 1)
                row.append((lo, hi, float(virtual - lo)))
            for rank in row[-1][:2]:
                wanted.setdefault(
                    (j, rank), _Target(j, rank, float(stats.minimum[j]), float(stats.maximum[j]))
                )
        plans.append(row)
    pending = [t for t in wanted.values() if t.value is None]
    for _ in range(_MAX_REFINEMENTS):
        for target in pending:
            if target.low == target.high:
                target.value = target.low
        pending = [t for t in pending if t.value is None]
        ready = [t for t in pending if 0 <= t.inside <= _COLLECT_PER_TARGET]
        if ready:
            _collect(session, table, stage, ready, step)
        pending = [t for t in pending if t.value is None]
        if not pending:
            break
        spec = [(t.column, t.low, t.high) for t in pending]
        pieces = session.compute(
            step,
            _delayed_over(table, _histogram_part, stage, spec, _BINS, session.kernel_threads),
            table.source,
        )
        counts = sum(piece[0] for piece in pieces)
        lows = np.minimum.reduce([piece[1] for piece in pieces])
        highs = np.maximum.reduce([piece[2] for piece in pieces])
        for t, target in enumerate(pending):
            cumulative = target.below + np.cumsum(counts[t])
            b = int(np.searchsorted(cumulative, target.rank, side="right"))
            target.below += int(counts[t][:b].sum())
            target.low, target.high = float(lows[t][b]), float(highs[t][b])
            target.inside = int(counts[t][b])
    else:
        _collect(session, table, stage, [t for t in pending if t.value is None], step)
    result = np.full((len(qs), d), np.nan)
    for i, row in enumerate(plans):
        for j, plan in enumerate(row):
            if plan is None:
                continue
            a, b = wanted[(j, plan[0])].value, wanted[(j, plan[1])].value
            if median:
                result[i, j] = np.mean([a, b]) if plan[0] != plan[1] else a
            else:
                result[i, j] = _lerp(a, b, plan[2])
    return result


def _collect(session, table, stage, targets: list[_Target], step: str) -> None:
    if not targets:
        return
    spec = [(t.column, t.low, t.high) for t in targets]
    pieces = session.compute(
        step, _delayed_over(table, _collect_part, stage, spec, session.kernel_threads), table.source
    )
    for t, target in enumerate(targets):
        values = np.sort(np.concatenate([piece[t] for piece in pieces]))
        target.value = float(values[target.rank - target.below])


# --------------------------------------------------------------------------- most frequent


def _distinct_part(frame, offset, stage: Stage, threads: int):
    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(stage.width)]
    with numba_threads(threads):
        for _, values, _ in stage.slices(frame):
            for j in range(values.shape[1]):
                column = values[:, j]
                found[j].append(np.unique(column[~np.isnan(column)], return_counts=True))
    return [_merge_counts(pieces) for pieces in found]


def _merge_counts(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pieces:
        return np.zeros(0), np.zeros(0)
    values = np.concatenate([piece[0] for piece in pieces])
    counts = np.concatenate([piece[1] for piece in pieces])
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, np.bincount(inverse, weights=counts, minlength=len(distinct))


def most_frequent(
    session: DaskSession, table: DaskTable, stage: Stage, step: str = "most frequent values"
) -> np.ndarray:
    """Per column, the most frequent non-missing value (ties: the smallest), as
    ``impute.strategy=most_frequent`` in memory. For discrete columns: over
    1,000,000 distinct values in a column is a ConfigError."""
    pieces = session.compute(
        step, _delayed_over(table, _distinct_part, stage, session.kernel_threads), table.source
    )
    result = np.full(len(stage.names), np.nan)
    for j, name in enumerate(stage.names):
        distinct, totals = _merge_counts([piece[j] for piece in pieces])
        if len(distinct) > _MAX_DISTINCT:
            raise ConfigError(
                f"impute.strategy=most_frequent: column {name!r} has more than "
                f"{_MAX_DISTINCT:,} distinct values; with the Dask engine use median or mean"
            )
        if len(distinct):
            result[j] = float(distinct[np.argmax(totals)])
    return result


# --------------------------------------------------------------------------- validation


@dataclass
class ValidationCounts:
    """What the validation suite checks, counted over every row."""

    rows: int
    id_nulls: int
    id_null_examples: list[int]  # data row numbers (1-based)
    moments: Moments
    out_of_range: dict[str, int] = field(default_factory=dict)
    range_examples: dict[str, list[float]] = field(default_factory=dict)
    duplicate_ids: int = 0
    duplicate_examples: list[str] = field(default_factory=list)


def _validation_part(frame, offset, table: Columns, ranges: dict, threads: int):
    id_nulls, null_rows = 0, []
    if not table.id_generated:
        missing = frame[table.id_column].isna().to_numpy()
        id_nulls = int(missing.sum())
        null_rows = (np.flatnonzero(missing)[:5] + offset + 1).tolist()
    stage = Stage(table.feature_columns)
    found = Moments.of(np.zeros((0, stage.width)))
    out_counts = dict.fromkeys(ranges, 0)
    out_examples: dict[str, list[float]] = {name: [] for name in ranges}
    with numba_threads(threads):
        for _, values, _ in stage.slices(frame):
            found = found.merge(Moments.of(values))
            for name, (low, high) in ranges.items():
                column = values[:, table.feature_columns.index(name)]
                present = ~np.isnan(column)
                bad = present & (
                    ((column < low) if low is not None else False)
                    | ((column > high) if high is not None else False)
                )
                out_counts[name] += int(bad.sum())
                out_examples[name] += column[bad][: 5 - len(out_examples[name])].tolist()
    return len(frame), id_nulls, null_rows, found, out_counts, out_examples


def _id_hashes(frame: pd.DataFrame, offset: int, id_column: str) -> pd.DataFrame:
    ids = frame[id_column]
    present = ids.notna().to_numpy()
    hashes = pd.util.hash_pandas_object(ids[present].astype(str), index=False).to_numpy()
    return pd.DataFrame({"h": hashes})


def _duplicated_hashes(frame: pd.DataFrame) -> pd.DataFrame:
    duplicated = frame["h"].duplicated(keep=False).to_numpy()
    return pd.DataFrame({"h": frame["h"].to_numpy()[duplicated]})


def _ids_with_hash(frame: pd.DataFrame, offset: int, id_column: str, wanted: np.ndarray):
    ids = frame[id_column].dropna().astype(str)
    hashes = pd.util.hash_pandas_object(ids, index=False).to_numpy()
    return ids.to_numpy()[np.isin(hashes, wanted)].tolist()


def duplicate_ids(session: DaskSession, table: DaskTable) -> tuple[int, list[str]]:
    """(rows whose id is not unique, a few such ids): a 64-bit hash of every id, shuffled by
    hash so equal ids meet in one partition (Dask's shuffle spills to disk, so this works
    with worker memory below the data size); the ids behind duplicated hashes are then read
    back to rule out hash collisions."""
    import dask
    import dask.dataframe as dd

    if table.id_generated:
        return 0, []
    meta = pd.DataFrame({"h": pd.Series([], dtype=np.uint64)})
    hashes = dd.from_delayed(
        [
            dask.delayed(_id_hashes)(part, 0, table.id_column)
            for part in table.ddf[[table.id_column]].to_delayed()
        ],
        meta=meta,
        verify_meta=False,
    )
    partitions = max(1, min(table.npartitions, 64))
    shuffled = hashes.shuffle("h", npartitions=partitions)
    found = session.compute(
        "checking id uniqueness",
        [dask.delayed(_duplicated_hashes)(part) for part in shuffled.to_delayed()],
        table.source,
    )
    wanted = np.unique(np.concatenate([frame["h"].to_numpy() for frame in found]))
    if not len(wanted):
        return 0, []
    ids = session.compute(
        "finding duplicate ids",
        _delayed_over(table, _ids_with_hash, table.id_column, wanted[:1000], with_ids=True),
        table.source,
    )
    names = pd.Series([name for part in ids for name in part])
    counts = names.value_counts()
    repeated = counts[counts > 1]
    if len(wanted) <= 1000:
        return int(repeated.sum()), repeated.index[:5].tolist()
    # Too many to read back: count every row in a duplicated hash (collisions are negligible).
    total = sum(len(frame) for frame in found)
    return total, repeated.index[:5].tolist()


def _ranges_key(ranges) -> str:
    return repr(sorted((name, tuple(bounds)) for name, bounds in dict(ranges).items()))


def first_pass(
    session: DaskSession,
    table: DaskTable,
    sample_rows: int,
    seed: int,
    ranges: dict[str, tuple[float | None, float | None]],
) -> tuple[pd.DataFrame, np.ndarray]:
    """One pass over the data for the seeded sample (`draw_sample`) and, in the same pass,
    the validation counts and raw column moments; those are kept in ``table.cache`` for the
    validate and prepare stages. Returns (sample, its rows' positions)."""
    from functools import partial

    from tasks.dask_engine.table import draw_sample

    extra = partial(
        _validation_part,
        table=table.columns,
        ranges=dict(ranges),
        threads=session.kernel_threads,
    )
    sample, positions, pieces = draw_sample(session, table, sample_rows, seed, extra)
    table.cache["validation"] = (_ranges_key(ranges), _counts(pieces, ranges))
    return sample, positions


def _counts(pieces, ranges) -> ValidationCounts:
    counts = ValidationCounts(
        rows=sum(piece[0] for piece in pieces),
        id_nulls=sum(piece[1] for piece in pieces),
        id_null_examples=[row for piece in pieces for row in piece[2]][:5],
        moments=merge_all([piece[3] for piece in pieces]),
    )
    for name in ranges:
        counts.out_of_range[name] = sum(piece[4][name] for piece in pieces)
        counts.range_examples[name] = [v for piece in pieces for v in piece[5][name]][:5]
    return counts


def validation_counts(
    session: DaskSession, table: DaskTable, ranges: dict[str, tuple[float | None, float | None]]
) -> ValidationCounts:
    """What the suite checks, over every row: from the first pass when it was taken with the
    same ranges, else one pass; then the id uniqueness check (a shuffle)."""
    from dataclasses import replace

    cached = table.cache.get("validation")
    if cached is not None and cached[0] == _ranges_key(ranges):
        counts = replace(cached[1])
    else:
        pieces = session.compute(
            "validating the data",
            _delayed_over(
                table,
                _validation_part,
                table.columns,
                dict(ranges),
                session.kernel_threads,
                with_ids=True,
            ),
            table.source,
        )
        counts = _counts(pieces, ranges)
    counts.duplicate_ids, counts.duplicate_examples = duplicate_ids(session, table)
    return counts


def raw_moments(session: DaskSession, table: DaskTable) -> Moments:
    """Moments of the raw features over every row (from the first pass when it ran)."""
    cached = table.cache.get("validation")
    if cached is not None:
        return cached[1].moments
    return moments(session, table, Stage(table.feature_columns), step="missing values and ranges")
