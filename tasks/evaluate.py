"""Evaluate: segment sizes, profiles in original units, bootstrap stability and stable
segment ids.

Segment ids: without a champion, segments are numbered by size (0 = largest). With a champion
on the same features, each new cluster takes the id of the champion segment it shares the most
rows with (Hungarian assignment on the overlap of the training rows), so "segment 3" keeps its
meaning across retrains; clusters left over get new ids after the champion's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.chain import BLOCK_ROWS, SegmentationChain
from tasks.config import ClusterConfig, EvaluateConfig


@dataclass(frozen=True)
class Evaluation:
    segment_ids: np.ndarray  # internal cluster index -> segment id
    segments: np.ndarray  # segment id per training row
    distances: np.ndarray  # each training row's distance to its centroid (model space)
    sizes: dict[int, int]
    profiles: pd.DataFrame  # segment x feature means, original units
    distinguishing: dict[int, list[dict[str, Any]]]
    examples: dict[int, list[str]]
    stability: float
    stability_rounds: list[float] = field(default_factory=list)
    id_mapping: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        segment_ids: np.ndarray,
        labels: np.ndarray,
        distances: np.ndarray,
        segments: tuple[dict[int, int], pd.DataFrame, dict, dict[int, list[str]]],
        rounds: list[float],
        id_mapping: dict[str, Any],
    ) -> Evaluation:
        """From the training rows' cluster labels and distances, ``segments`` (sizes,
        profiles, distinguishing features, examples) and the bootstrap rounds."""
        sizes, profiles, distinguishing, examples = segments
        return cls(
            segment_ids=segment_ids,
            segments=segment_ids[labels],
            distances=distances,
            sizes=sizes,
            profiles=profiles,
            distinguishing=distinguishing,
            examples=examples,
            stability=float(np.mean(rounds)) if rounds else float("nan"),
            stability_rounds=rounds,
            id_mapping=id_mapping,
        )


def size_order_ids(labels: np.ndarray, k: int) -> np.ndarray:
    """Segment id per internal cluster index: 0 for the largest cluster, ties by index."""
    return size_order_ids_from_counts(np.bincount(labels, minlength=k))


def size_order_ids_from_counts(counts: np.ndarray) -> np.ndarray:
    """`size_order_ids` from the rows per internal cluster index."""
    k = len(counts)
    order = sorted(range(k), key=lambda index: (-counts[index], index))
    ids = np.empty(k, dtype=np.int64)
    ids[order] = np.arange(k)
    return ids


def _in_champion_space(
    labels: np.ndarray, champion_rows: np.ndarray, champion: SegmentationChain, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per new cluster, the sum of its rows in the champion's model space; and the
    champion's own centroid for each row. One transform per row, in blocks."""
    sums = np.zeros((k, champion.centroids.shape[1]))
    champion_closest = np.empty(len(labels), dtype=np.int64)
    for start, space, closest in champion.blocks_in_space(champion_rows):
        block_labels = labels[start : start + len(space)]
        for j in range(space.shape[1]):
            sums[:, j] += np.bincount(block_labels, weights=space[:, j], minlength=k)
        champion_closest[start : start + len(space)] = closest
    return sums, champion_closest


def match_to_champion(
    labels: np.ndarray, champion_rows: np.ndarray, champion: SegmentationChain, k: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Renumber new clusters with the champion's segment ids: each new cluster's mean, taken
    in the champion's model space (its rows through the champion's chain), is paired with a
    champion centroid by Hungarian assignment on Euclidean distance. New clusters left over
    (k above the champion's) get fresh ids, largest first.

    ``champion_rows`` are the training rows as the champion receives them (original units).
    The mapping records the per-segment distances, their sum (the match cost) and how many
    rows keep the segment the champion gives them."""
    from scipy.optimize import linear_sum_assignment

    sums, champion_closest = _in_champion_space(labels, champion_rows, champion, k)
    counts = np.bincount(labels, minlength=k)
    means = sums / np.maximum(counts, 1)[:, None]
    cost = np.linalg.norm(means[:, None, :] - champion.centroids[None, :, :], axis=2)
    rows, columns = linear_sum_assignment(cost)
    champion_ids = np.asarray(champion.segment_ids)
    ids = np.full(k, -1, dtype=np.int64)
    ids[rows] = champion_ids[columns]
    next_id = int(champion_ids.max()) + 1
    for index in sorted(np.flatnonzero(ids < 0), key=lambda i: -counts[i]):
        ids[index] = next_id
        next_id += 1
    champion_segments = champion_ids[champion_closest]
    kept = float(np.mean(ids[labels] == champion_segments)) if len(labels) else 0.0
    pair_cost = {
        int(ids[r]): round(float(cost[r, c]), 6) for r, c in zip(rows, columns, strict=True)
    }
    mapping = {
        "method": "hungarian on centroid distance in the champion's model space",
        "map": {int(internal): int(ids[internal]) for internal in range(k)},
        "match_cost": round(float(cost[rows, columns].sum()), 6),
        "segment_match_distance": pair_cost,
        "new_segments": [int(ids[i]) for i in range(k) if i not in set(rows.tolist())],
        "rows_keeping_segment": kept,
    }
    return ids, mapping


def segment_ids_for(
    labels: np.ndarray,
    counts: np.ndarray,
    champion_rows: np.ndarray,
    names: list[str],
    champion: SegmentationChain | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment id per internal cluster index and how they were chosen: matched to a champion
    on the same features (on ``labels`` of ``champion_rows``), else by size (``counts``: rows
    per cluster)."""
    k = len(counts)
    if champion is not None and champion.feature_names == names:
        segment_ids, mapping = match_to_champion(labels, champion_rows, champion, k)
        mapping["champion_version"] = champion.metadata.get("model_version")
        return segment_ids, mapping
    segment_ids = size_order_ids_from_counts(counts)
    mapping = {
        "method": "size order (no comparable champion)",
        "map": {int(i): int(segment_ids[i]) for i in range(k)},
    }
    return segment_ids, mapping


def segments_from_summary(
    segment_ids: np.ndarray,
    counts: np.ndarray,
    cluster_means: np.ndarray,
    population_mean: np.ndarray,
    population_std: np.ndarray,
    nearest: list[list[str]],
    names: list[str],
    top: int,
) -> tuple[dict[int, int], pd.DataFrame, dict[int, list[dict[str, Any]]], dict[int, list[str]]]:
    """Sizes, profiles, distinguishing features and example members from per-cluster
    statistics (rows, means in original units, nearest members' ids), keyed by segment id;
    empty clusters left out."""
    order = np.argsort(segment_ids)
    sizes = {int(segment_ids[i]): int(counts[i]) for i in order if counts[i] > 0}
    means = pd.DataFrame(
        cluster_means[order], index=pd.Index(segment_ids[order], name="segment"), columns=names
    )
    means = means.loc[[segment for segment in means.index if segment in sizes]]
    distinguishing = distinguishing_features(means, population_mean, population_std, names, top)
    examples = {int(segment_ids[i]): nearest[i] for i in order if counts[i] > 0}
    return sizes, means, distinguishing, examples


def bootstrap_stability(
    values: np.ndarray,
    labels: np.ndarray,
    k: int,
    config: ClusterConfig,
    rounds: int,
    mapper: Callable[..., list[float | None]] | None = None,
) -> list[float]:
    """ARI between the model's labels and refits on bootstrap resamples (each predicting all
    rows). 1.0 = the same partition every time. ``mapper(function, round_indices, samples)``
    may run the rounds elsewhere (in parallel; it reports their progress); by default they
    run here, in order, with progress per refit."""
    if rounds == 0:
        return []
    rng = np.random.default_rng(config.seed)
    samples = [rng.integers(0, len(values), size=len(values)) for _ in range(rounds)]
    round_fit = functools.partial(bootstrap_round, values, labels, k, config)
    if mapper is None:
        from tasks.progress import progress

        scores = []
        with progress(f"bootstrap refits (k={k}, {len(values)} rows)", rounds, "refits") as done:
            for index, sample in enumerate(samples):
                scores.append(round_fit(index, sample))
                done(index + 1)
    else:
        scores = mapper(round_fit, list(range(rounds)), samples)
    return [score for score in scores if score is not None]


def stability_subset(n_rows: int, sample: int, seed: int) -> slice | np.ndarray:
    """The rows the bootstrap stability runs on: every row up to ``evaluate.stability_sample``,
    else a seeded sample of that many (in their order). Each round refits on a resample of
    them, so its cost follows the sample, not the data; a partition as stable as the default
    checks find on 50,000 rows is not made unstable by more rows of the same population."""
    if n_rows <= sample:
        return slice(None)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=sample, replace=False))


def _has_distinct_rows(values: np.ndarray, rows: np.ndarray, k: int) -> bool:
    """Whether ``values[rows]`` holds at least ``k`` distinct rows; stops at the k-th found
    (`np.unique(..., axis=0)` sorted the whole resample each round)."""
    seen: set[bytes] = set()
    for row in rows:
        seen.add(values[row].tobytes())
        if len(seen) >= k:
            return True
    return False


def bootstrap_round(
    values: np.ndarray,
    labels: np.ndarray,
    k: int,
    config: ClusterConfig,
    round_index: int,
    sample: np.ndarray,
) -> float | None:
    """One bootstrap round: refit on ``values[sample]``, ARI of its prediction of every row
    against ``labels``; None when the resample has fewer than k distinct rows."""
    from sklearn.metrics import adjusted_rand_score

    if not _has_distinct_rows(values, sample, k):
        return None
    if config.model == "gmm":
        from tasks.mixture import fit_mixture

        try:
            refit = fit_mixture(
                values[sample], k, config, n_init=min(config.n_init, 3), seed_offset=round_index + 1
            )
        except ValueError:  # a resample on which a covariance degenerates: no round
            return None
        return float(adjusted_rand_score(labels, refit.predict(values)))
    if config.backend == "numba":
        from tasks.compute import KMeans
    else:
        from sklearn.cluster import KMeans
    model = KMeans(
        n_clusters=k,
        n_init=min(config.n_init, 3),
        max_iter=config.max_iter,
        tol=config.tol,
        random_state=config.seed + round_index + 1,
    ).fit(values[sample])
    return float(adjusted_rand_score(labels, model.predict(values)))


def profiles(
    raw_values: np.ndarray, names: list[str], segments: np.ndarray, top: int
) -> tuple[pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    """Segment means in original units, and per segment the features that set it apart
    (largest |segment mean - population mean| in population standard deviations)."""
    # Per-column sums by segment and a blocked standard deviation: no copy of the table
    # (a frame of it, or np.std's full-size temporary: 80 MB each on 500k x 20).
    counts = np.bincount(segments)
    present = np.flatnonzero(counts)
    sums = np.column_stack(
        [
            np.bincount(segments, weights=raw_values[:, j], minlength=len(counts))
            for j in range(len(names))
        ]
    )
    means = pd.DataFrame(
        sums[present] / counts[present, None],
        index=pd.Index(present, name="segment"),
        columns=names,
    )
    mean, std = column_mean_std(raw_values)
    return means, distinguishing_features(means, mean, std, names, top)


def column_mean_std(
    values: np.ndarray, block_rows: int = BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Per column mean and population standard deviation (``np.std``'s two passes), the
    deviations taken a block of rows at a time."""
    mean = values.mean(axis=0)
    squares = np.zeros(values.shape[1])
    for start in range(0, len(values), block_rows):
        deviation = values[start : start + block_rows] - mean
        squares += np.einsum("ij,ij->j", deviation, deviation)
    return mean, np.sqrt(squares / max(len(values), 1))


def distinguishing_features(
    means: pd.DataFrame,
    population_mean: np.ndarray,
    population_std: np.ndarray,
    names: list[str],
    top: int,
) -> dict[int, list[dict[str, Any]]]:
    """Per segment (a row of ``means``), the ``top`` features furthest from the population
    mean in population standard deviations."""
    population_std = np.array(population_std, dtype=np.float64, copy=True)
    population_std[population_std == 0] = 1.0
    distinguishing = {}
    for segment, row in means.iterrows():
        z = (row.to_numpy() - population_mean) / population_std
        order = np.argsort(-np.abs(z))[:top]
        distinguishing[int(segment)] = [
            {
                "feature": names[j],
                "segment_mean": float(row.iloc[j]),
                "population_mean": float(population_mean[j]),
                "z": float(z[j]),
                "direction": "higher" if z[j] > 0 else "lower",
            }
            for j in order
        ]
    return distinguishing


def evaluate(
    reduced_values: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    raw_values: np.ndarray,
    raw_rows_for_champion: np.ndarray,
    names: list[str],
    ids: list[str],
    cluster_config: ClusterConfig,
    config: EvaluateConfig,
    champion: SegmentationChain | None = None,
    distances: np.ndarray | None = None,
) -> Evaluation:
    """``raw_values`` are the imputed features in original units (for profiles);
    ``raw_rows_for_champion`` the same rows as the champion would receive them. Example
    members are the rows closest to their segment's centroid: by ``distances`` when given
    (a Gaussian mixture's Mahalanobis distances), else Euclidean in model space."""
    k = len(centroids)
    segment_ids, mapping = segment_ids_for(
        labels, np.bincount(labels, minlength=k), raw_rows_for_champion, names, champion
    )
    segments = segment_ids[labels]
    sizes = {int(s): int(c) for s, c in zip(*np.unique(segments, return_counts=True), strict=True)}
    means, distinguishing = profiles(raw_values, names, segments, config.top_features)
    distance = (
        np.linalg.norm(reduced_values - centroids[labels], axis=1)
        if distances is None
        else np.asarray(distances, dtype=np.float64)
    )
    examples = {}
    for segment in sizes:
        members = np.flatnonzero(segments == segment)
        closest = members[np.argsort(distance[members], kind="stable")]
        examples[segment] = [ids[i] for i in closest[: config.example_members]]
    subset = stability_subset(len(labels), config.stability_sample, cluster_config.seed)
    rounds = bootstrap_stability(
        reduced_values[subset], labels[subset], k, cluster_config, config.bootstrap_rounds
    )
    return Evaluation.of(
        segment_ids, labels, distance, (sizes, means, distinguishing, examples), rounds, mapping
    )
