"""Evaluate: segment sizes, profiles in original units, bootstrap stability and stable
segment ids.

Segment ids: without a champion, segments are numbered by size (0 = largest). With a champion
on the same features, each new cluster takes the id of the champion segment it shares the most
rows with (Hungarian assignment on the overlap of the training rows), so "segment 3" keeps its
meaning across retrains; clusters left over get new ids after the champion's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.chain import SegmentationChain
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


def size_order_ids(labels: np.ndarray, k: int) -> np.ndarray:
    """Segment id per internal cluster index: 0 for the largest cluster, ties by index."""
    counts = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda index: (-counts[index], index))
    ids = np.empty(k, dtype=np.int64)
    ids[order] = np.arange(k)
    return ids


def match_to_champion(
    labels: np.ndarray, champion_segments: np.ndarray, k: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Hungarian assignment of new clusters to champion segments by shared rows."""
    from scipy.optimize import linear_sum_assignment

    champion_ids = np.unique(champion_segments)
    overlap = np.zeros((k, len(champion_ids)), dtype=np.int64)
    position = {segment: j for j, segment in enumerate(champion_ids)}
    for label, segment in zip(labels, champion_segments, strict=True):
        overlap[label, position[segment]] += 1
    rows, columns = linear_sum_assignment(-overlap)
    ids = np.full(k, -1, dtype=np.int64)
    ids[rows] = champion_ids[columns]
    next_id = int(champion_ids.max()) + 1
    counts = np.bincount(labels, minlength=k)
    for index in sorted(np.flatnonzero(ids < 0), key=lambda i: -counts[i]):
        ids[index] = next_id
        next_id += 1
    matched = overlap[rows, columns].sum()
    mapping = {
        "method": "hungarian on shared training rows with the champion",
        "matched_rows_fraction": float(matched / len(labels)),
        "match_cost": int(len(labels) - matched),
        "map": {int(internal): int(ids[internal]) for internal in range(k)},
    }
    return ids, mapping


def bootstrap_stability(
    values: np.ndarray,
    labels: np.ndarray,
    k: int,
    config: ClusterConfig,
    rounds: int,
) -> list[float]:
    """ARI between the model's labels and refits on bootstrap resamples (each predicting all
    rows). 1.0 = the same partition every time."""
    from sklearn.metrics import adjusted_rand_score

    if rounds == 0:
        return []
    if config.engine == "numba":
        from tasks.compute import KMeans
    else:
        from sklearn.cluster import KMeans
    rng = np.random.default_rng(config.seed)
    scores = []
    for round_index in range(rounds):
        sample = rng.integers(0, len(values), size=len(values))
        if len(np.unique(values[sample], axis=0)) < k:
            continue
        model = KMeans(
            n_clusters=k,
            n_init=min(config.n_init, 3),
            max_iter=config.max_iter,
            tol=config.tol,
            random_state=config.seed + round_index + 1,
        ).fit(values[sample])
        scores.append(float(adjusted_rand_score(labels, model.predict(values))))
    return scores


def profiles(
    raw_values: np.ndarray, names: list[str], segments: np.ndarray, top: int
) -> tuple[pd.DataFrame, dict[int, list[dict[str, Any]]]]:
    """Segment means in original units, and per segment the features that set it apart
    (largest |segment mean - population mean| in population standard deviations)."""
    frame = pd.DataFrame(raw_values, columns=names)
    frame["segment"] = segments
    means = frame.groupby("segment").mean()
    population_mean = raw_values.mean(axis=0)
    population_std = raw_values.std(axis=0)
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
    return means, distinguishing


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
) -> Evaluation:
    """``raw_values`` are the imputed features in original units (for profiles);
    ``raw_rows_for_champion`` the same rows as the champion would receive them. Example
    members are the rows closest to their segment's centroid."""
    k = len(centroids)
    mapping: dict[str, Any] = {"method": "size order (no comparable champion)"}
    if champion is not None and champion.feature_names == names:
        champion_segments, _ = champion.predict(raw_rows_for_champion)
        segment_ids, mapping = match_to_champion(labels, champion_segments, k)
        mapping["champion_version"] = champion.metadata.get("model_version")
    else:
        segment_ids = size_order_ids(labels, k)
        mapping["map"] = {int(i): int(segment_ids[i]) for i in range(k)}
    segments = segment_ids[labels]
    sizes = {int(s): int(c) for s, c in zip(*np.unique(segments, return_counts=True), strict=True)}
    means, distinguishing = profiles(raw_values, names, segments, config.top_features)
    distance = np.linalg.norm(reduced_values - centroids[labels], axis=1)
    examples = {}
    for segment in sizes:
        members = np.flatnonzero(segments == segment)
        closest = members[np.argsort(distance[members], kind="stable")]
        examples[segment] = [ids[i] for i in closest[: config.example_members]]
    rounds = bootstrap_stability(reduced_values, labels, k, cluster_config, config.bootstrap_rounds)
    return Evaluation(
        segment_ids=segment_ids,
        segments=segments,
        distances=distance,
        sizes=sizes,
        profiles=means,
        distinguishing=distinguishing,
        examples=examples,
        stability=float(np.mean(rounds)) if rounds else float("nan"),
        stability_rounds=rounds,
        id_mapping=mapping,
    )
