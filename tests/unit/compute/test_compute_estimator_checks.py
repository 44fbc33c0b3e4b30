"""scikit-learn's estimator contract for the k-means estimators."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from tasks.compute import KMeans, MiniBatchKMeans

# Same exemption as scikit-learn's own KMeans / MiniBatchKMeans (see
# sklearn/utils/_test_common/instance_generator.py): k-means++ seeding draws points
# with probability proportional to the weight, which is not the same random stream as
# drawing from repeated rows, so the fitted centres differ.
_SW_REASON = "sample_weight is not equivalent to removing/repeating samples (random seeding)."


def _expected_failed(estimator):
    return {"check_sample_weight_equivalence_on_dense_data": _SW_REASON}


@parametrize_with_checks(
    [KMeans(n_clusters=3, random_state=0), MiniBatchKMeans(n_clusters=3, random_state=0)],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
