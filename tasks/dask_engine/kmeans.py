"""k-means over partitions: Lloyd's algorithm for every k of the sweep at once, each partition
running the numba kernels of `tasks.compute` on its rows and the partial sums reduced (a
fixed-order tree on the cluster) once per iteration; then the per-k statistics that need all
rows: inertia, mean distance, Calinski-Harabasz and Davies-Bouldin, and for the chosen k the
segment sizes, profiles and the members nearest each centroid.

Rows are the prepared (PCA-space) rows of a `Stage`, kept in worker memory between passes
when they fit (``dask.persist``), otherwise recomputed from the source partitions each pass,
so workers never need more than a partition at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.compute import (
    assign_partial,
    calinski_harabasz_from_stats,
    davies_bouldin_from_stats,
    lloyd_partial_sums,
    lloyd_update,
    relocate_empty_clusters,
    stack_centers,
)
from tasks.dask_engine.session import DaskSession
from tasks.dask_engine.stats import Moments, Stage, merge_all, numba_threads, row_slices
from tasks.dask_engine.table import Columns, DaskTable, row_ids
from tasks.progress import progress

logger = logging.getLogger(__name__)

_SPLIT_EVERY = 16
#: ``dask.persist: auto`` keeps the prepared rows in memory when they fit under this share of
#: each worker's memory limit next to what the worker already uses (Dask starts spilling at
#: 0.6 of the limit).
PERSIST_SHARE = 0.5


# --------------------------------------------------------------------------- the rows


def _block(frame: pd.DataFrame, stage: Stage, threads: int) -> np.ndarray:
    with numba_threads(threads):
        return stage.apply(frame)


@dataclass
class Blocks:
    """One delayed (or persisted) array of prepared rows per partition."""

    items: list
    persisted: bool
    estimate_bytes: int
    fits_in_memory: bool = True

    def describe(self) -> str:
        size = f"~{self.estimate_bytes / 2**20:.0f} MiB"
        if not self.persisted:
            return f"prepared rows ({size}) recomputed from the source each pass"
        if self.fits_in_memory:
            return f"prepared rows ({size}) kept in worker memory"
        return (
            f"prepared rows ({size}) persisted; what does not fit in worker memory is "
            "spilled by Dask to the workers' local disks"
        )


def prepared_blocks(
    session: DaskSession, table: DaskTable, stage: Stage, n_rows: int, width: int, persist: str
) -> Blocks:
    import dask

    items = [dask.delayed(_block)(part, stage, session.kernel_threads) for part in table.parts()]
    estimate = int(n_rows) * int(width) * 8
    room = headroom(session)
    fits = room is not None and estimate <= room
    # auto: persist wherever workers have a memory limit - Dask then spills what does not fit
    # to local disk, and a pass reads the spilled rows back instead of re-reading and
    # re-preparing the source; without limits, only what fits.
    keep = persist == "always" or (persist == "auto" and (room is not None or fits))
    if keep:
        items = session.persist(items)
    return Blocks(items=items, persisted=keep, estimate_bytes=estimate, fits_in_memory=fits)


def headroom(session: DaskSession) -> int | None:
    """Bytes the workers can hold without nearing their spill threshold: per worker,
    `PERSIST_SHARE` of its limit less its current memory; None if a worker has no limit."""
    total = 0
    for worker in session.workers.values():
        limit = int(worker.get("memory_limit") or 0)
        if limit <= 0:
            return None
        used = int(worker.get("metrics", {}).get("memory", 0) or 0)
        total += max(0, int(PERSIST_SHARE * limit) - used)
    return total


def _sum_pieces(*pieces):
    """Element-wise sum of equally shaped tuples/lists of arrays, in the order given."""
    first = pieces[0]
    if isinstance(first, tuple | list):
        return type(first)(_sum_pieces(*parts) for parts in zip(*pieces, strict=True))
    total = first.copy() if hasattr(first, "copy") else first
    for piece in pieces[1:]:
        total = total + piece
    return total


def tree_sum(items: list):
    """A delayed fixed-order tree sum of delayed pieces (results independent of workers)."""
    import dask

    level = list(items)
    while len(level) > 1:
        level = [
            dask.delayed(_sum_pieces)(*level[i : i + _SPLIT_EVERY])
            for i in range(0, len(level), _SPLIT_EVERY)
        ]
    return level[0]


# --------------------------------------------------------------------------- Lloyd


def _lloyd_part(block: np.ndarray, centers: np.ndarray, offsets: np.ndarray, threads: int):
    with numba_threads(threads):
        return lloyd_partial_sums(block, centers, offsets)


def _farthest_part(block: np.ndarray, centers: np.ndarray, count: int, threads: int):
    with numba_threads(threads):
        labels, sq_dist, _ = assign_partial(block, centers, np.array([0, len(centers)]), True)
    order = np.argsort(-sq_dist[0], kind="stable")[:count]
    return sq_dist[0][order], block[order], labels[0][order]


def _farthest(session: DaskSession, blocks: Blocks, centers: np.ndarray, count: int):
    import dask

    pieces = session.compute(
        "relocating empty clusters",
        [
            dask.delayed(_farthest_part)(block, centers, count, session.kernel_threads)
            for block in blocks.items
        ],
    )
    distances = np.concatenate([piece[0] for piece in pieces])
    points = np.concatenate([piece[1] for piece in pieces])
    labels = np.concatenate([piece[2] for piece in pieces])
    order = np.argsort(-distances, kind="stable")[:count]
    return points[order], labels[order]


def lloyd(
    session: DaskSession,
    blocks: Blocks,
    inits: dict[int, np.ndarray],
    max_iter: int,
    tol_abs: float,
) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Lloyd iterations from ``inits`` (k -> centroids) on every row, all k in one pass per
    iteration; a k leaves the pass once its centroids move (squared, summed) no more than
    ``tol_abs``. Returns (k -> centroids, k -> iterations). Progress per pass, out of
    ``max_iter`` (the time left is an upper bound: the k values usually converge sooner);
    each iteration's shifts are logged at debug level."""
    import dask

    centers = {k: np.ascontiguousarray(c, dtype=np.float64) for k, c in inits.items()}
    n_iter = dict.fromkeys(centers, 0)
    active = sorted(centers)
    parts = f"{len(blocks.items)} partition{'' if len(blocks.items) == 1 else 's'}"
    what = f"k-means passes over {parts} (k={active[0]}..{active[-1]})"
    with progress(what, max_iter, "passes") as on_step:
        for iteration in range(1, max_iter + 1):
            if not active:
                break
            C, offsets = stack_centers([centers[k] for k in active])
            shared_c, shared_offsets = dask.delayed(C), dask.delayed(offsets)
            total = tree_sum(
                [
                    dask.delayed(_lloyd_part)(
                        block, shared_c, shared_offsets, session.kernel_threads
                    )
                    for block in blocks.items
                ]
            )
            S, W = session.compute(f"k-means iteration {iteration}", [total])[0]
            still, moved = [], 0.0
            for b, k in enumerate(active):
                part = slice(offsets[b], offsets[b + 1])

                def relocate(sums, counts, old=centers[k]):
                    n_empty = int((counts == 0).sum())
                    points, labels = _farthest(session, blocks, old, n_empty)
                    relocate_empty_clusters(sums, counts, points, np.ones(len(points)), labels)

                new, shift = lloyd_update(centers[k], S[part], W[part], relocate)
                centers[k], n_iter[k] = new, iteration
                moved = max(moved, shift)
                if shift > tol_abs:
                    still.append(k)
            logger.debug(
                "k-means iteration %d: %d k still moving (largest shift %.3g, tolerance %.3g)",
                iteration,
                len(active),
                moved,
                tol_abs,
            )
            active = still
            on_step(iteration, k_moving=len(active))
    return centers, n_iter


# --------------------------------------------------------------------------- per-k statistics


def _per_cluster(labels: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    return np.bincount(labels, weights=weights, minlength=k)


def _per_k_over_slices(block, centers, offsets, threads, want_dist: bool, per_k):
    """``per_k(rows, b, k, labels, sq_dist)`` for every k block of ``centers``, over the
    partition's row slices, summed."""
    pieces = []
    for start, stop in row_slices(len(block)) or [(0, 0)]:
        rows = block[start:stop]
        with numba_threads(threads):
            labels, sq_dist, _ = assign_partial(rows, centers, offsets, want_dist)
        pieces.append(
            [
                per_k(
                    rows,
                    b,
                    int(offsets[b + 1] - offsets[b]),
                    labels[b],
                    sq_dist[b] if want_dist else None,
                )
                for b in range(len(offsets) - 1)
            ]
        )
    return _sum_pieces(*pieces) if len(pieces) > 1 else pieces[0]


def _assign_stats(rows, b, k, lab, sq_dist):
    sums = np.zeros((k, rows.shape[1]))
    for j in range(rows.shape[1]):
        sums[:, j] = _per_cluster(lab, k, rows[:, j])
    return (
        np.bincount(lab, minlength=k).astype(np.float64),
        sums,
        _per_cluster(lab, k, sq_dist),
        _per_cluster(lab, k, np.sqrt(sq_dist)),
    )


def _assign_stats_part(block, centers, offsets, threads):
    """Per k: rows, row sums, inertia and summed distance per centroid."""
    return _per_k_over_slices(block, centers, offsets, threads, True, _assign_stats)


def _mean_distance_part(block, centers, offsets, means, threads):
    """Per k: summed squared and plain distances of each cluster's rows to its mean."""

    def per_k(rows, b, k, lab, _):
        diff = rows - means[offsets[b] : offsets[b + 1]][lab]
        squared = np.einsum("ij,ij->i", diff, diff)
        return _per_cluster(lab, k, squared), _per_cluster(lab, k, np.sqrt(squared))

    return _per_k_over_slices(block, centers, offsets, threads, False, per_k)


@dataclass
class KStats:
    """Statistics of one k's final centroids over all rows."""

    counts: np.ndarray
    means: np.ndarray
    inertia: float
    mean_distance: float
    calinski_harabasz: float
    davies_bouldin: float


def sweep_statistics(
    session: DaskSession, blocks: Blocks, centers: dict[int, np.ndarray]
) -> dict[int, KStats]:
    """Two passes over the rows for every k: assignment (counts, means, inertia, distances),
    then distances to the cluster means (Calinski-Harabasz, Davies-Bouldin, as scikit-learn
    computes them from the labels)."""
    import dask

    ks = sorted(centers)
    C, offsets = stack_centers([centers[k] for k in ks])
    shared = dask.delayed(C), dask.delayed(offsets)
    first = session.compute(
        "per-k statistics",
        [
            tree_sum(
                [
                    dask.delayed(_assign_stats_part)(block, *shared, session.kernel_threads)
                    for block in blocks.items
                ]
            )
        ],
    )[0]
    means = []
    for counts, sums, _, _ in first:
        means.append(sums / np.maximum(counts, 1)[:, None])
    stacked_means = dask.delayed(np.concatenate(means, axis=0))
    second = session.compute(
        "distances to cluster means",
        [
            tree_sum(
                [
                    dask.delayed(_mean_distance_part)(
                        block, *shared, stacked_means, session.kernel_threads
                    )
                    for block in blocks.items
                ]
            )
        ],
    )[0]
    result = {}
    for index, k in enumerate(ks):
        counts, _, inertia, distance = first[index]
        squared_to_mean, distance_to_mean = second[index]
        n = counts.sum()
        result[k] = KStats(
            counts=counts,
            means=means[index],
            inertia=float(inertia.sum()),
            mean_distance=float(distance.sum() / n),
            calinski_harabasz=calinski_harabasz_from_stats(counts, means[index], squared_to_mean),
            davies_bouldin=davies_bouldin_from_stats(counts, means[index], distance_to_mean),
        )
    return result


# --------------------------------------------------------------------------- the chosen k


def _profile_part(
    frame: pd.DataFrame,
    offset: int,
    table: Columns,
    imputed: Stage,
    reduced: Stage,
    centers: np.ndarray,
    members: int,
    threads: int,
):
    """Per cluster: rows, sums of the imputed features, the ``members`` rows nearest the
    centroid (squared distance, position, id); and the imputed features' moments. Slice by
    slice."""
    k, d = len(centers), imputed.width
    counts, sums = np.zeros(k), np.zeros((k, d))
    population = Moments.of(np.zeros((0, d)))
    best: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0, np.int64))] * k
    with numba_threads(threads):
        for start, values, kept in imputed.slices(frame):
            space, _ = reduced.rows(frame.iloc[start : start + len(kept)])
            labels, sq_dist, _ = assign_partial(space, centers, np.array([0, k]), True)
            labels, sq_dist = labels[0], sq_dist[0]
            counts += np.bincount(labels, minlength=k)
            for j in range(d):
                sums[:, j] += _per_cluster(labels, k, values[:, j])
            population = population.merge(Moments.of(values))
            rows = start + np.flatnonzero(kept)  # partition row of each kept row
            for cluster in range(k):
                mine = np.flatnonzero(labels == cluster)
                distances = np.concatenate([best[cluster][0], sq_dist[mine]])
                where = np.concatenate([best[cluster][1], rows[mine]])
                order = np.lexsort((where, distances))[:members]
                best[cluster] = (distances[order], where[order])
    nearest = [
        (distances, offset + where, row_ids(frame, table, offset, where))
        for distances, where in best
    ]
    return counts, sums, population, nearest


@dataclass
class Profile:
    """The chosen k over all rows: sizes, mean imputed feature values per cluster, the
    population's moments, and per cluster the ids of the rows nearest its centroid."""

    counts: np.ndarray
    means: np.ndarray
    population: Moments
    nearest: list[list[str]]


def profile(
    session: DaskSession,
    table: DaskTable,
    imputed: Stage,
    reduced: Stage,
    centers: np.ndarray,
    members: int,
) -> Profile:
    import dask

    pieces = session.compute(
        "segment profiles",
        [
            dask.delayed(_profile_part)(
                part,
                int(offset),
                table.columns,
                imputed,
                reduced,
                centers,
                members,
                session.kernel_threads,
            )
            for part, offset in zip(table.parts(with_ids=True), table.offsets, strict=True)
        ],
        table.source,
    )
    counts = sum(piece[0] for piece in pieces)
    sums = sum(piece[1] for piece in pieces)
    nearest = []
    for cluster in range(len(centers)):
        distances = np.concatenate([piece[3][cluster][0] for piece in pieces])
        positions = np.concatenate([piece[3][cluster][1] for piece in pieces])
        ids = np.concatenate([piece[3][cluster][2] for piece in pieces])
        order = np.lexsort((positions, distances))[:members]
        nearest.append([str(ids[i]) for i in order])
    return Profile(
        counts=counts,
        means=sums / np.maximum(counts, 1)[:, None],
        population=merge_all([piece[2] for piece in pieces]),
        nearest=nearest,
    )
