"""KNNImputer against scikit-learn's."""

import numpy as np
import pytest
from sklearn.impute import KNNImputer as SkKNNImputer

from tasks.compute import KNNImputer


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[0, :5] = np.nan  # row with many NaNs
    X[1, :] = np.nan  # row with nothing observed -> column means
    X[rng.random(400) < 0.9, 3] = np.nan  # column with few donors
    X[2, [0, 1, 2, 4, 5]] = np.nan  # only col 3 observed -> maybe no donor sharing it
    return X


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_knn_imputer_equals_sklearn(weights, k):
    X = _data()
    ours = KNNImputer(n_neighbors=k, weights=weights).fit_transform(X)
    ref = SkKNNImputer(n_neighbors=k, weights=weights).fit_transform(X)
    assert ours.shape == ref.shape
    assert not np.isnan(ours).any()
    assert np.max(np.abs(ours - ref)) < 1e-6


def test_knn_imputer_all_nan_column_and_separate_fit():
    X = _data()
    train = X.copy()
    train[:, 2] = np.nan  # all-nan column in fit -> dropped
    ours = KNNImputer().fit(train).transform(X)
    ref = SkKNNImputer().fit(train).transform(X)
    assert ours.shape == (400, 5)
    assert np.max(np.abs(ours - ref)) < 1e-6
    kept = KNNImputer(keep_empty_features=True).fit(train).transform(X)
    assert kept.shape == (400, 6) and np.all(kept[:, 2] == 0)


def test_knn_imputer_zero_distance_donor():
    X = np.array([[1.0, 2.0, np.nan], [1.0, 2.0, 7.0], [1.5, 2.5, 9.0], [3.0, 3.0, 4.0]])
    ours = KNNImputer(n_neighbors=2, weights="distance").fit_transform(X)
    assert ours[0, 2] == 7.0  # the exact match takes all the weight
    ref = SkKNNImputer(n_neighbors=2, weights="distance").fit_transform(X)
    np.testing.assert_allclose(ours, ref)


def test_knn_imputer_bad_params():
    with pytest.raises(ValueError, match="n_neighbors"):
        KNNImputer(n_neighbors=0).fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="weights"):
        KNNImputer(weights="bogus").fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"infinity|inf"):
        KNNImputer().fit(np.array([[1.0, np.inf], [1.0, 2.0]]))


def test_knn_imputer_many_donor_tiles_equals_sklearn():
    # more donors than one tile (2048) and more receivers than one block
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2600, 4))
    X[rng.random(X.shape) < 0.15] = np.nan
    X[:50, 2] = np.nan
    for weights in ("uniform", "distance"):
        ours = KNNImputer(n_neighbors=4, weights=weights).fit_transform(X)
        ref = SkKNNImputer(n_neighbors=4, weights=weights).fit_transform(X)
        assert np.max(np.abs(ours - ref)) < 1e-6


def test_knn_imputer_numeric_missing_marker_and_float32():
    X = np.array([[1.0, -1.0], [2.0, 3.0], [1.1, 2.0], [5.0, 9.0]])
    ours = KNNImputer(missing_values=-1.0, n_neighbors=2).fit_transform(X)
    ref = SkKNNImputer(missing_values=-1.0, n_neighbors=2).fit_transform(X)
    np.testing.assert_allclose(ours, ref)
    Xf = np.array([[1.0, np.nan], [2.0, 3.0], [1.1, 2.0]], dtype=np.float32)
    assert KNNImputer(n_neighbors=1).fit_transform(Xf).dtype == np.float32
