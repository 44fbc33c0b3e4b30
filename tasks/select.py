"""Select: choose k by a named criterion and record the decision and its reasons.

- ``elbow``: knee of the inertia curve (Kneedle: the point farthest below the chord from the
  first to the last normalised point of the decreasing, convex curve).
- ``silhouette`` / ``calinski_harabasz``: the highest; ``davies_bouldin``: the lowest.
- ``consensus``: each of the four votes; most votes wins, ties go to the better silhouette.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.cluster import SweepResult


@dataclass(frozen=True)
class Selection:
    k: int
    criterion: str
    reason: str
    votes: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def knee_point(k_values: list[int], inertia: list[float]) -> tuple[int | None, float]:
    """Kneedle on a decreasing convex curve: (k at the knee, its normalised distance below the
    chord). None when the curve has no knee (a straight or too short line)."""
    if len(k_values) < 3:
        return None, 0.0
    x = np.asarray(k_values, dtype=np.float64)
    y = np.asarray(inertia, dtype=np.float64)
    x_norm = (x - x[0]) / (x[-1] - x[0])
    span = y.max() - y.min()
    if span <= 0:
        return None, 0.0
    y_norm = (y - y.min()) / span
    # The chord from (0, 1) to (1, 0) is y = 1 - x; the knee lies farthest below it.
    gap = (1.0 - x_norm) - y_norm
    best = int(np.argmax(gap))
    if gap[best] <= 1e-9 or best in (0, len(x) - 1):
        return None, float(gap[best])
    return int(x[best]), float(gap[best])


def _best(k_values: list[int], scores: list[float], higher_is_better: bool) -> int | None:
    values = np.asarray(scores, dtype=np.float64)
    if np.all(np.isnan(values)):
        return None
    index = int(np.nanargmax(values) if higher_is_better else np.nanargmin(values))
    return k_values[index]


def candidates(result: SweepResult) -> dict[str, int | None]:
    ks = result.k_values
    table = result.metric_table()
    knee, _ = knee_point(ks, table["inertia"])
    return {
        "elbow": knee,
        "silhouette": _best(ks, table["silhouette"], higher_is_better=True),
        "calinski_harabasz": _best(ks, table["calinski_harabasz"], higher_is_better=True),
        "davies_bouldin": _best(ks, table["davies_bouldin"], higher_is_better=False),
    }


def select_k(result: SweepResult, criterion: str) -> Selection:
    ks = result.k_values
    table = result.metric_table()
    picks = candidates(result)
    silhouette = dict(zip(ks, table["silhouette"], strict=True))
    details: dict[str, Any] = {"candidates": picks, "k_values": ks}
    if criterion == "consensus":
        votes = Counter(k for k in picks.values() if k is not None)
        if not votes:
            k = _best(ks, table["silhouette"], True) or ks[0]
            reason = "no criterion gave a k; fell back to the first k"
            return Selection(k, criterion, reason, {}, details)
        top = max(votes.values())
        tied = [k for k, count in votes.items() if count == top]
        k = max(
            tied, key=lambda candidate: (np.nan_to_num(silhouette[candidate], nan=-2.0), -candidate)
        )
        voters = [name for name, pick in picks.items() if pick == k]
        reason = f"k={k}: chosen by {top} of {len(picks)} criteria ({', '.join(voters)})"
        if len(tied) > 1:
            reason += (
                f"; tie with k={', '.join(str(t) for t in tied if t != k)} broken by silhouette"
            )
        others = [f"{name}: k={pick}" for name, pick in picks.items() if pick != k]
        if others:
            reason += "; others: " + ", ".join(others)
        return Selection(k, criterion, reason, dict(votes), details)
    if criterion == "elbow":
        knee, gap = knee_point(ks, table["inertia"])
        details["knee_gap"] = gap
        if knee is None:
            k = picks["silhouette"] or ks[0]
            reason = f"no clear elbow in the inertia curve; fell back to the best silhouette, k={k}"
        else:
            k = knee
            reason = (
                f"k={k}: knee of the inertia curve (normalised distance below the chord {gap:.3f})"
            )
        return Selection(k, criterion, reason, {}, details)
    pick = picks[criterion]
    if pick is None:
        pick = ks[0]
        reason = f"{criterion} was not computable for any k; fell back to k={pick}"
        return Selection(pick, criterion, reason, {}, details)
    value = dict(zip(ks, table[criterion], strict=True))[pick]
    direction = "lowest" if criterion == "davies_bouldin" else "highest"
    reason = f"k={pick}: {direction} {criterion.replace('_', '-')} ({value:.4g})"
    return Selection(pick, criterion, reason, {}, details)
