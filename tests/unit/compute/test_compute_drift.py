"""Population stability index."""

import numpy as np
import pytest

from tasks.compute import population_stability_index
from tasks.compute.drift import PSI_EPSILON


def test_psi_hand_computed():
    expected = np.arange(1, 11, dtype=float)  # quartile edges 1, 3.25, 5.5, 7.75, 10
    actual = np.array([1.0] * 4 + [10.0] * 4)
    # expected shares per bin: 3/10, 2/10, 2/10, 3/10 ; actual: 4/8, 0, 0, 4/8
    e = np.array([0.3, 0.2, 0.2, 0.3])
    a = np.maximum(np.array([0.5, 0.0, 0.0, 0.5]), PSI_EPSILON)
    ref = np.sum((a - e) * np.log(a / e))
    assert population_stability_index(expected, actual, bins=4) == pytest.approx(ref, rel=1e-12)


def test_psi_identical_is_zero_and_2d_per_column():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 3))
    assert population_stability_index(X[:, 0], X[:, 0]) == pytest.approx(0.0, abs=1e-12)
    same_dist = population_stability_index(X, rng.normal(size=(5000, 3)))
    assert same_dist.shape == (3,)
    assert np.all(same_dist < 0.02)
    shifted = population_stability_index(X, rng.normal(loc=1.0, size=(5000, 3)))
    assert np.all(shifted > 0.25)


def test_psi_bad_input():
    with pytest.raises(ValueError, match="bins must be an integer"):
        population_stability_index([1.0, 2.0], [1.0], bins=0)
    with pytest.raises(ValueError, match="both be 1-D or both be 2-D"):
        population_stability_index(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="columns"):
        population_stability_index(np.zeros((3, 2)), np.zeros((3, 3)))
