"""Select: choose k by a named criterion and record the decision and its reasons.

- ``elbow``: knee of the inertia curve (Kneedle: the point farthest below the chord from the
  first to the last normalised point of the decreasing, convex curve).
- ``silhouette`` / ``calinski_harabasz``: the highest; ``davies_bouldin``: the lowest.
- ``consensus``: each of the four votes; most votes wins, ties go to the better silhouette.
- ``prediction_strength`` (Tibshirani & Walther 2005): the largest k whose clusters, fitted
  on one half of the rows, predict the co-membership of the other half's own clusters with
  strength >= ``select.prediction_strength_threshold``; k=1 when no k does.
- ``gap`` (Tibshirani, Walther & Hastie 2001): the smallest k with Gap(k) >= Gap(k+1) -
  s(k+1), uniform reference sets drawn over the principal-axis box of the rows; may be 1.
- ``stable_consensus`` (the default from session 23 to 25): prediction strength first
  decides whether there is any cluster structure (some k >= 2 reaching the threshold); if
  there is none the answer is k=1 ("no cluster structure found"), otherwise the consensus
  vote of the four criteria plus prediction strength, ties to the better silhouette.
- ``gated_vote`` (the default, chosen by benchmarks/k_selection.py in session 26): the same
  prediction-strength gate (k=1 when no k is stable), then three votes built on different
  ideas: Calinski-Harabasz (between/within variance), prediction strength (the largest
  stable k) and the lowest BIC of full-covariance Gaussian mixtures fitted for k = 1 and
  every swept k on the same sample (``gmm_bic``; it abstains when k=1 wins). The majority
  wins; without one, Calinski-Harabasz, the best single criterion on well-separated groups.
  Silhouette, Davies-Bouldin and the elbow are recorded but do not vote: on the benchmark
  they add errors where Calinski-Harabasz is right.

When the answer is k=1 the model still has the smallest swept k (a k-means with one cluster
segments nothing); `Selection.structure_found` is False and the reason says so.
Prediction strength and the gap statistic refit k-means (the pipeline's backend) on a seeded
sample of at most ``select.sample_rows`` rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tasks.cluster import SweepResult, fit_k_values
from tasks.compute.gmm import degenerate_components, fit_gaussian_mixture
from tasks.config import ClusterConfig, SelectConfig

#: criteria that need the prepared rows (refits), not only the sweep's metrics
DATA_CRITERIA = ("prediction_strength", "gap", "stable_consensus", "gated_vote")
#: the voters of ``gated_vote``, the first also breaking a tie
GATED_VOTERS = ("calinski_harabasz", "prediction_strength", "gmm_bic")
NO_STRUCTURE = "no cluster structure found (k=1)"
_NAMES = {"gap": "gap statistic", "prediction_strength": "prediction strength"}
#: the mixture vote of ``gated_vote``: EM's settings as scikit-learn's defaults
BIC_VOTE_INITS = 2
BIC_VOTE_MAX_ITER = 100


@dataclass(frozen=True)
class Selection:
    k: int  # the model's k (the smallest swept k when no structure was found)
    criterion: str
    reason: str
    votes: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    structure_found: bool = True  # False: the criterion answered k=1

    @property
    def chosen_k(self) -> int:
        """The criterion's answer: 1 when it found no cluster structure, else the model's k."""
        return self.k if self.structure_found else 1


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


def sample_rows(values: np.ndarray, config: SelectConfig) -> np.ndarray:
    """The rows the refitting criteria run on: a seeded sample of ``select.sample_rows``
    rows above that size, otherwise all of them (in their order)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if len(values) <= config.sample_rows:
        return values
    rng = np.random.default_rng(config.seed)
    return values[np.sort(rng.choice(len(values), size=config.sample_rows, replace=False))]


def nearest_centroid(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    squared = (values**2).sum(axis=1)[:, None] - 2.0 * values @ centroids.T
    squared += (centroids**2).sum(axis=1)[None, :]
    return np.argmin(squared, axis=1)


def strength_of_split(
    train_centroids: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    """Prediction strength of one split: over the test half's own clusters, the smallest
    share of member pairs that the train half's centroids also put together."""
    k = len(train_centroids)
    predicted = nearest_centroid(test, train_centroids)
    worst = 1.0
    for group in range(k):
        members = predicted[test_labels == group]
        m = len(members)
        if m < 2:  # a singleton has no pairs: it does not bound the strength
            continue
        counts = np.bincount(members, minlength=k).astype(np.float64)
        worst = min(worst, float((counts * (counts - 1.0)).sum() / (m * (m - 1.0))))
    return worst


def prediction_strength(
    values: np.ndarray, k_values: list[int], cluster: ClusterConfig, repeats: int, seed: int
) -> dict[int, float]:
    """Mean prediction strength of each k over ``repeats`` random halvings, each half
    predicting the other (k values a half cannot hold, k > n // 2 - 1, are left out)."""
    n = len(values)
    ks = [k for k in k_values if 2 <= k <= n // 2 - 1]
    if not ks:
        return {}
    rng = np.random.default_rng(seed)
    scores: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(repeats):
        order = rng.permutation(n)
        first, second = values[order[: n // 2]], values[order[n // 2 :]]
        fits_first = fit_k_values(first, ks, cluster, "prediction strength")
        fits_second = fit_k_values(second, ks, cluster, "prediction strength")
        for k in ks:
            scores[k].append(
                strength_of_split(fits_first[k][0], second, np.asarray(fits_second[k][1]))
            )
            scores[k].append(
                strength_of_split(fits_second[k][0], first, np.asarray(fits_first[k][1]))
            )
    return {k: float(np.mean(v)) for k, v in scores.items()}


def prediction_strength_k(strength: dict[int, float], threshold: float) -> int:
    """The largest k with prediction strength >= threshold; 1 when none reaches it."""
    passing = [k for k, value in strength.items() if value >= threshold]
    return max(passing) if passing else 1


def log_within_dispersion(
    values: np.ndarray, k_values: list[int], cluster: ClusterConfig
) -> np.ndarray:
    """log W_k for k = 1 and each of ``k_values`` (W_k: k-means' within-cluster sum of squares)."""
    fits = fit_k_values(values, k_values, cluster, "gap statistic")
    total = float(((values - values.mean(axis=0)) ** 2).sum())
    dispersion = np.array([total] + [fits[k][2] for k in k_values])
    return np.log(np.maximum(dispersion, np.finfo(np.float64).tiny))


def uniform_references(
    values: np.ndarray, references: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Tibshirani et al.'s reference (b): uniform draws over the box of the data's principal
    axes, rotated back."""
    mean = values.mean(axis=0)
    _, _, axes = np.linalg.svd(values - mean, full_matrices=False)
    rotated = (values - mean) @ axes.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    return [rng.uniform(low, high, size=rotated.shape) @ axes + mean for _ in range(references)]


def gap_statistic(
    values: np.ndarray,
    k_max: int,
    cluster: ClusterConfig,
    references: int,
    seed: int,
    reference_sets: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(Gap(k), s(k)) for k = 1..k_max: Gap = mean log W_k of the references - log W_k of
    the data; s = the references' standard deviation * sqrt(1 + 1/B)."""
    k_values = list(range(2, k_max + 1))
    observed = log_within_dispersion(values, k_values, cluster)
    if reference_sets is None:
        reference_sets = uniform_references(values, references, np.random.default_rng(seed))
    drawn = np.array([log_within_dispersion(r, k_values, cluster) for r in reference_sets])
    gap = drawn.mean(axis=0) - observed
    spread = drawn.std(axis=0) * np.sqrt(1.0 + 1.0 / len(reference_sets))
    return gap, spread


def gap_k(gap: np.ndarray, spread: np.ndarray) -> int:
    """The smallest k (from 1) with Gap(k) >= Gap(k+1) - s(k+1); the largest k if none."""
    for k in range(1, len(gap)):
        if gap[k - 1] >= gap[k] - spread[k]:
            return k
    return len(gap)


def mixture_bic(values: np.ndarray, k_values: list[int], seed: int) -> dict[int, float]:
    """BIC of a full-covariance Gaussian mixture for k = 1 and each of ``k_values`` (the best
    of `BIC_VOTE_INITS` EM runs from seeded k-means starts). A k the rows cannot hold (more
    components than rows) or whose fit collapses a component onto rows too few or too alike
    for a covariance (`degenerate_components`: only the regularisation keeps its likelihood
    finite, so its BIC means nothing) is left out."""
    bic: dict[int, float] = {}
    for k in [1, *k_values]:
        if k in bic or k >= len(values):
            continue
        fit = fit_gaussian_mixture(
            values,
            k,
            covariance="full",
            n_init=BIC_VOTE_INITS,
            max_iter=BIC_VOTE_MAX_ITER,
            random_state=seed,
        )
        if not degenerate_components(values, np.asarray(fit.labels), k, "full"):
            bic[k] = fit.bic(len(values))
    return bic


def select_k(
    result: SweepResult,
    criterion: str,
    values: np.ndarray | None = None,
    config: SelectConfig | None = None,
    cluster: ClusterConfig | None = None,
) -> Selection:
    """k by ``criterion``; the refitting criteria (`DATA_CRITERIA`) also need the prepared
    rows the sweep ran on, the ``select`` and the ``cluster`` params."""
    if criterion in DATA_CRITERIA:
        if values is None or config is None or cluster is None:
            raise ValueError(f"select criterion {criterion!r} needs the rows and the params")
        return _refitting_selection(result, criterion, values, config, cluster)
    ks = result.k_values
    table = result.metric_table()
    picks = candidates(result)
    details: dict[str, Any] = {"candidates": picks, "k_values": ks}
    if criterion == "consensus":
        return _vote(result, picks, criterion, details)
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


def _vote(
    result: SweepResult,
    picks: dict[str, int | None],
    criterion: str,
    details: dict[str, Any],
    tie_break: str = "silhouette",
) -> Selection:
    """Most votes wins; a tie goes to the ``tie_break`` voter's k when it is among the tied,
    otherwise to the better silhouette (then the smaller k)."""
    ks = result.k_values
    table = result.metric_table()
    silhouette = dict(zip(ks, table["silhouette"], strict=True))
    votes = Counter(k for k in picks.values() if k is not None)
    if not votes:
        k = _best(ks, table["silhouette"], True) or ks[0]
        reason = "no criterion gave a k; fell back to the first k"
        return Selection(k, criterion, reason, {}, details)
    top = max(votes.values())
    tied = [k for k, count in votes.items() if count == top]
    if picks.get(tie_break) in tied:
        k, broken_by = picks[tie_break], tie_break.replace("_", "-")
    else:
        k, broken_by = (
            max(
                tied,
                key=lambda candidate: (
                    np.nan_to_num(silhouette[candidate], nan=-2.0),
                    -candidate,
                ),
            ),
            "silhouette",
        )
    voters = [name for name, pick in picks.items() if pick == k]
    reason = f"k={k}: chosen by {top} of {len(picks)} criteria ({', '.join(voters)})"
    if len(tied) > 1:
        reason += f"; tie with k={', '.join(str(t) for t in tied if t != k)} broken by {broken_by}"
    others = [f"{name}: k={pick}" for name, pick in picks.items() if pick != k]
    if others:
        reason += "; others: " + ", ".join(others)
    return Selection(k, criterion, reason, dict(votes), details)


def _refitting_selection(
    result: SweepResult,
    criterion: str,
    values: np.ndarray,
    config: SelectConfig,
    cluster: ClusterConfig,
) -> Selection:
    ks = result.k_values
    rows = sample_rows(values, config)
    picks: dict[str, int | None] = dict(candidates(result))
    details: dict[str, Any] = {"candidates": picks, "k_values": ks, "sample_rows": len(rows)}
    if criterion == "gap":
        k_max = min(max(ks), len(rows) - 1)
        gap, spread = gap_statistic(rows, k_max, cluster, config.gap_references, config.seed)
        chosen = gap_k(gap, spread)
        picks["gap"] = chosen
        details["gap"] = {k + 1: round(float(g), 4) for k, g in enumerate(gap)}
        details["gap_s"] = {k + 1: round(float(v), 4) for k, v in enumerate(spread)}
        rule = f"smallest k with Gap(k) >= Gap(k+1) - s(k+1), {config.gap_references} references"
        return _single(result, criterion, chosen, rule, details)
    strength = prediction_strength(
        rows, ks, cluster, config.prediction_strength_repeats, config.seed
    )
    threshold = config.prediction_strength_threshold
    ps_k = prediction_strength_k(strength, threshold)
    picks["prediction_strength"] = ps_k
    details["prediction_strength"] = {k: round(v, 4) for k, v in strength.items()}
    details["prediction_strength_threshold"] = threshold
    best = max(strength.values(), default=float("nan"))
    if not strength:  # too few rows to halve for any swept k
        selection = _vote(result, picks, criterion, details)
        note = f"; too few rows ({len(rows)}) for prediction strength: consensus of the four"
        if criterion == "prediction_strength":
            note = f"; too few rows ({len(rows)}) for prediction strength: used the consensus"
        return replace(selection, reason=selection.reason + note)
    if criterion == "prediction_strength":
        rule = f"largest k with prediction strength >= {threshold:g}"
        return _single(result, criterion, ps_k, rule, details)
    if ps_k == 1:
        reason = (
            f"{NO_STRUCTURE}: no k reaches prediction strength {threshold:g} (best {best:.2f}); "
            f"the model keeps the smallest k={ks[0]}"
        )
        return Selection(ks[0], criterion, reason, {}, details, structure_found=False)
    if criterion == "gated_vote":
        bic = mixture_bic(rows, ks, config.seed)
        details["gmm_bic"] = {k: round(v, 2) for k, v in bic.items()}
        lowest = min(bic, key=bic.__getitem__) if bic else None
        # k=1 winning the BIC says "one Gaussian": an abstention once prediction strength has
        # found structure, not a vote for the smallest swept k.
        picks["gmm_bic"] = lowest if lowest is not None and lowest > 1 else None
        voting = {name: picks[name] for name in GATED_VOTERS}
        selection = _vote(result, voting, criterion, details, tie_break=GATED_VOTERS[0])
        recorded = [f"{name}: k={picks[name]}" for name in picks if name not in voting]
        return replace(selection, reason=selection.reason + "; not voting: " + ", ".join(recorded))
    return _vote(result, picks, criterion, details)


def _single(
    result: SweepResult, criterion: str, chosen: int, rule: str, details: dict[str, Any]
) -> Selection:
    """One refitting criterion's answer; k=1 means no cluster structure."""
    ks = result.k_values
    if chosen == 1:
        reason = (
            f"{NO_STRUCTURE} by the {_NAMES[criterion]} ({rule}); "
            f"the model keeps the smallest k={ks[0]}"
        )
        return Selection(ks[0], criterion, reason, {}, details, structure_found=False)
    if chosen not in result.fits:  # outside the swept range (the gap statistic may be)
        closest = min(ks, key=lambda k: abs(k - chosen))
        reason = (
            f"k={closest}: the {_NAMES[criterion]} said k={chosen} ({rule}), "
            "outside the swept k range"
        )
        return Selection(closest, criterion, reason, {}, details)
    return Selection(chosen, criterion, f"k={chosen}: {rule}", {}, details)
