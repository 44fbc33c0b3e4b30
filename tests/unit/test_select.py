"""The refitting k-selection methods of tasks/select.py against hand-checked cases."""

import math

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from tasks.cluster import sweep
from tasks.config import load_params
from tasks.errors import ConfigError
from tasks.select import (
    NO_STRUCTURE,
    _vote,
    gap_k,
    gap_statistic,
    mixture_bic,
    prediction_strength,
    prediction_strength_k,
    sample_rows,
    select_k,
    strength_of_split,
)


def _params(*overrides):
    # few inits and references: the cases are well separated (or have nothing to find)
    return load_params(overrides=["cluster.n_init=3", "select.gap_references=5", *overrides])


def _blobs(centres, n_per, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=np.float64)
    labels = np.repeat(np.arange(len(centres)), n_per)
    return centres[labels] + rng.normal(scale=spread, size=(len(labels), centres.shape[1]))


def test_strength_of_one_split_by_hand():
    # Test half: its own clusters {0, 0.1, 0.2} and {10, 10.1, 4.8}. The train centroids
    # 0 and 10 put 4.8 with the first group: the second cluster keeps 1 of its 3 pairs.
    test = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [4.8]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert strength_of_split(np.array([[0.0], [10.0]]), test, labels) == pytest.approx(1 / 3)
    # Centroids that keep both clusters whole: strength 1.
    assert strength_of_split(np.array([[0.0], [9.0]]), test, labels) == pytest.approx(1.0)


def test_prediction_strength_of_two_far_blobs_is_one_at_k2():
    values = _blobs([[0, 0], [20, 20]], 50)
    strength = prediction_strength(values, [2, 3, 4], _params().cluster, repeats=2, seed=0)
    assert strength[2] == pytest.approx(1.0)
    assert strength[3] < 0.8 and strength[4] < 0.8  # splitting a round blob is not stable
    assert prediction_strength_k(strength, 0.8) == 2


def test_prediction_strength_k_rule():
    assert prediction_strength_k({2: 0.95, 3: 0.85, 4: 0.4}, 0.8) == 3
    assert prediction_strength_k({2: 0.7, 3: 0.3}, 0.8) == 1
    assert prediction_strength_k({}, 0.8) == 1
    # k values a half cannot hold (k > n // 2 - 1) are left out.
    values = _blobs([[0, 0], [9, 9]], 5)
    assert sorted(prediction_strength(values, [2, 3, 4, 5], _params().cluster, 1, 0)) == [2, 3, 4]


def test_gap_statistic_with_given_reference_draws_by_hand():
    # Data 0, 1, 10, 11: W1 = 101, W2 = 1. References 0..3 (W1 = 5, W2 = 1) and 0, 2, 4, 6
    # (W1 = 20, W2 = 4): mean log W = log 10 and log 2, spread log 2 (x sqrt(1 + 1/2)).
    values = np.array([[0.0], [1.0], [10.0], [11.0]])
    references = [np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[0.0], [2.0], [4.0], [6.0]])]
    gap, spread = gap_statistic(values, 2, _params().cluster, 2, 0, reference_sets=references)
    assert gap == pytest.approx([math.log(10 / 101), math.log(2)], abs=1e-9)
    assert spread == pytest.approx([math.log(2) * math.sqrt(1.5)] * 2, abs=1e-9)
    assert gap_k(gap, spread) == 2  # Gap(1) < Gap(2) - s(2): two groups


def test_gap_rule_takes_the_first_k_within_one_standard_error():
    assert gap_k(np.array([0.1, 0.5, 0.55, 0.4]), np.array([0.1, 0.1, 0.1, 0.1])) == 2
    assert gap_k(np.array([0.5, 0.4, 0.3]), np.array([0.1, 0.1, 0.1])) == 1
    assert gap_k(np.array([0.1, 0.2, 0.3]), np.array([0.01, 0.01, 0.01])) == 3


REFITTING = ["gated_vote", "stable_consensus", "prediction_strength", "gap"]


@pytest.mark.parametrize("criterion", REFITTING)
def test_uniform_noise_has_no_cluster_structure(criterion):
    values = np.random.default_rng(3).uniform(-1, 1, size=(120, 2))
    params = _params("cluster.k_max=5")
    result = sweep(values, params.cluster)
    selection = select_k(result, criterion, values, params.select, params.cluster)
    assert not selection.structure_found and selection.chosen_k == 1
    assert selection.k == 2  # the model keeps the smallest swept k
    assert selection.reason.startswith(NO_STRUCTURE)
    assert "smallest k=2" in selection.reason


@pytest.mark.parametrize("criterion", REFITTING)
def test_well_separated_groups_are_found(criterion):
    values = _blobs([[0, 0], [8, 0], [0, 8], [8, 8]], 30, seed=1)
    params = _params("cluster.k_max=6")
    result = sweep(values, params.cluster)
    selection = select_k(result, criterion, values, params.select, params.cluster)
    assert selection.structure_found and selection.k == 4, selection.reason
    assert (
        selection.details["candidates"][
            criterion if criterion in ("prediction_strength", "gap") else "prediction_strength"
        ]
        == 4
    )


def test_stable_consensus_records_each_vote():
    values = _blobs([[0, 0], [8, 0], [4, 7]], 40, seed=2)
    params = _params("cluster.k_max=6")
    selection = select_k(
        sweep(values, params.cluster), "stable_consensus", values, params.select, params.cluster
    )
    assert selection.k == 3 and selection.votes[3] >= 3
    assert selection.reason.startswith("k=3: chosen by ") and "of 5 criteria" in selection.reason
    assert set(selection.details["candidates"]) == {
        "elbow",
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
        "prediction_strength",
    }
    assert selection.details["prediction_strength"][3] >= 0.8


def test_gated_vote_records_each_vote_and_what_did_not_vote():
    values = _blobs([[0, 0], [8, 0], [4, 7]], 40, seed=2)
    params = _params("cluster.k_max=6")
    selection = select_k(
        sweep(values, params.cluster), "gated_vote", values, params.select, params.cluster
    )
    assert selection.k == 3 and selection.votes == {3: 3}
    assert selection.reason.startswith(
        "k=3: chosen by 3 of 3 criteria (calinski_harabasz, prediction_strength, gmm_bic)"
    )
    assert (
        "; not voting: elbow: k=" in selection.reason and "davies_bouldin: k=3" in selection.reason
    )
    assert selection.details["candidates"]["gmm_bic"] == 3
    bic = selection.details["gmm_bic"]
    assert sorted(bic) == [1, 2, 3, 4, 5, 6] and min(bic, key=bic.get) == 3


def _sweep_result(ks, silhouette):
    values = _blobs([[0, 0], [8, 0], [4, 7], [12, 7]], 20, seed=3)
    result = sweep(values, _params(f"cluster.k_max={max(ks)}").cluster)
    for k, value in zip(ks, silhouette, strict=True):
        result.fits[k].metrics["silhouette"] = value
    return result


def test_a_three_way_split_goes_to_calinski_harabasz_not_to_the_silhouette():
    result = _sweep_result([2, 3, 4, 5], [0.9, 0.1, 0.2, 0.3])
    picks = {"calinski_harabasz": 4, "prediction_strength": 3, "gmm_bic": 5}
    selection = _vote(result, picks, "gated_vote", {}, tie_break="calinski_harabasz")
    assert selection.k == 4
    assert "tie with k=3, 5 broken by calinski-harabasz" in selection.reason
    # Two votes beat Calinski-Harabasz; an abstaining mixture leaves a two-way tie to it.
    assert _vote(result, picks | {"gmm_bic": 3}, "gated_vote", {}, "calinski_harabasz").k == 3
    assert _vote(result, picks | {"gmm_bic": None}, "gated_vote", {}, "calinski_harabasz").k == 4
    # The consensus's own tie-break is unchanged: the better silhouette among the tied.
    assert _vote(result, picks, "consensus", {}).k == 5


def test_mixture_bic_matches_scikit_learn_on_tilted_groups():
    # Three tilted, elongated groups (covariance [[4, 1.5], [1.5, 1]]): the lowest BIC is at
    # k=3, and each k's BIC is scikit-learn's GaussianMixture's (same EM, same k-means
    # starts in spirit, not in bits: within EM's tolerance).
    rng = np.random.default_rng(4)
    tilted = np.array([[4.0, 1.5], [1.5, 1.0]])
    values = np.vstack([rng.multivariate_normal(c, tilted, 120) for c in ([0, 0], [0, 7], [9, 3])])
    bic = mixture_bic(values, [2, 3, 4, 5, 6], seed=0)
    reference = {
        k: GaussianMixture(k, covariance_type="full", n_init=2, random_state=0)
        .fit(values)
        .bic(values)
        for k in range(1, 7)
    }
    assert min(bic, key=bic.get) == min(reference, key=reference.get) == 3
    for k in bic:
        assert bic[k] == pytest.approx(reference[k], rel=1e-3)


def test_mixture_vote_abstains_on_one_gaussian_and_skips_collapsed_fits():
    one = np.random.default_rng(5).normal(size=(200, 3))
    bic = mixture_bic(one, [2, 3, 4], seed=0)
    assert min(bic, key=bic.get) == 1
    # Rows repeated on a few points: a component on one point has a singular covariance
    # whatever the regularisation; such k are left out instead of winning on a spiked density.
    spiked = np.vstack([one[:100], np.repeat(one[100:103], 30, axis=0)])
    kept = mixture_bic(spiked, [2, 3, 4, 5, 6], seed=0)
    assert 1 in kept and len(kept) < 6
    assert all(np.isfinite(v) for v in kept.values())
    # 4 rows in 3-D: one Gaussian fits, k=2 and 3 have components too thin for a full
    # covariance (skipped), k >= 4 has as many components as rows (not fitted at all).
    assert sorted(mixture_bic(one[:4], [2, 3, 4, 5], seed=0)) == [1]


def test_refits_run_on_a_seeded_sample_above_sample_rows():
    values = np.arange(300, dtype=np.float64).reshape(100, 3)
    config = _params("select.sample_rows=40").select
    sample = sample_rows(values, config)
    assert sample.shape == (40, 3) and np.array_equal(sample, sample_rows(values, config))
    assert set(map(tuple, sample)) <= set(map(tuple, values))
    assert sample_rows(values, _params().select).shape == (100, 3)


def test_refitting_criterion_needs_the_rows():
    values = _blobs([[0, 0], [8, 8]], 20)
    result = sweep(values, _params("cluster.k_max=4").cluster)
    with pytest.raises(ValueError, match="stable_consensus"):
        select_k(result, "stable_consensus")


def test_too_few_rows_for_prediction_strength_fall_back_to_the_consensus():
    values = np.array([[0.0, 0.0], [0.1, 0.0], [8.0, 8.0], [8.1, 8.0], [8.0, 8.1]])
    params = _params("cluster.k_max=3")  # halves of 2 and 3 rows hold no k >= 2
    selection = select_k(
        sweep(values, params.cluster), "stable_consensus", values, params.select, params.cluster
    )
    assert selection.structure_found and selection.k == 2
    assert "too few rows (5) for prediction strength" in selection.reason


def test_select_config_keys_are_validated():
    assert _params().select.criterion == "gated_vote"
    with pytest.raises(ConfigError, match=r"select\.criterion"):
        _params("select.criterion=bic")
    with pytest.raises(ConfigError, match=r"select\.prediction_strength_threshold"):
        _params("select.prediction_strength_threshold=1.5")
    with pytest.raises(ConfigError, match=r"select\.sample_rows"):
        _params("select.sample_rows=5")
