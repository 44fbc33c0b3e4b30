"""The deploy targets behind one protocol: the registry by name, the shared smoke rows, the
answers check and the description of an endpoint (no server, no AWS)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest

from tasks.chain import SegmentationChain
from tasks.config import DeployConfig
from tasks.deploy import TARGETS, get_target
from tasks.deploy.contract import (
    FILL_VALUES_ID,
    EndpointDescription,
    SmokeSample,
    Target,
    TargetOptions,
    answered_sample,
    check_predictions,
    records_to_json,
    smoke_sample,
)
from tasks.errors import DeployError, EndpointError
from tasks.package import transform_chain

PROTOCOL_METHODS = ["check", "deploy", "undeploy", "describe", "list", "rollback", "invoke"]


def _chain(id_column: str | None = "State") -> SegmentationChain:
    """Fill values (1.5, -2) and one segment (id 0) at the origin of the raw feature space."""
    chain = transform_chain(["a", "b"], np.array([1.5, -2.0]))
    chain.metadata = {"id_column": id_column} if id_column else {}
    return chain


@pytest.mark.parametrize("name", ["local", "sagemaker"])
def test_each_target_follows_the_protocol(name):
    target = get_target(name, DeployConfig(), TargetOptions(region="eu-west-1"))
    assert isinstance(target, Target) and target.name == name
    for method in PROTOCOL_METHODS:
        declared = inspect.signature(getattr(Target, method))
        implemented = inspect.signature(getattr(type(target), method))
        assert list(implemented.parameters) == list(declared.parameters), method


def test_an_unknown_target_names_the_valid_ones():
    assert sorted(TARGETS) == ["local", "sagemaker"]
    with pytest.raises(DeployError, match=r"--target 'k8s': .*choose local or sagemaker"):
        get_target("k8s", DeployConfig())


def test_smoke_rows_are_the_first_training_rows_with_their_ids():
    frame = pd.DataFrame({"State": ["x", "y", "z"], "b": [2.0, 4.0, 6.0], "a": [1.0, np.nan, 5.0]})
    sample = smoke_sample(_chain(), frame, n=2)
    assert sample.ids == ["x", "y"]
    np.testing.assert_array_equal(sample.rows, [[1.0, 2.0], [np.nan, 4.0]])
    # Without the id column: positional ids.
    assert smoke_sample(_chain(id_column=None), frame, n=5).ids == ["row_1", "row_2", "row_3"]


def test_smoke_rows_fall_back_on_the_fill_values():
    chain = _chain()
    for frame in (None, pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": [], "b": []})):
        sample = smoke_sample(chain, frame)
        assert sample.ids == [FILL_VALUES_ID]
        np.testing.assert_array_equal(sample.rows, [[1.5, -2.0]])
    sample.rows[0, 0] = 99.0  # a copy: the chain's fill values stay
    assert chain.fill_values[0] == 1.5


def test_check_predictions_compares_with_the_chain_and_labels_the_answers():
    chain = _chain()
    sample = SmokeSample(np.array([[3.0, 4.0], [0.0, -1.0]]), ["p", "q"])
    answer = {
        "predictions": [
            {"closest_cluster": 0, "distance_to_cluster": 5.0},
            {"closest_cluster": 0, "distance_to_cluster": 1.0},
        ]
    }
    smoke = check_predictions(answer, chain, sample.rows)
    assert smoke["passed"] and smoke["rows"] == 2 and smoke["segments"] == [0, 0]
    assert answered_sample(sample, smoke) == [
        {"id": "p", "closest_cluster": 0, "distance_to_cluster": 5.0},
        {"id": "q", "closest_cluster": 0, "distance_to_cluster": 1.0},
    ]
    wrong = {"predictions": [answer["predictions"][1], answer["predictions"][0]]}
    with pytest.raises(DeployError, match="smoke test: the endpoint answered"):
        check_predictions(wrong, chain, sample.rows)
    with pytest.raises(DeployError, match="expected 2 predictions"):
        check_predictions({"_raw": "canned"}, chain, sample.rows)
    # An unverified smoke test (an emulator's canned answer) labels nothing.
    assert answered_sample(sample, {"passed": None, "verified": False}) == []


def test_check_predictions_compares_a_mixtures_membership_probability():
    """Two unit-variance components: the smoke check holds the endpoint to the chain's
    posterior of the chosen segment too, and refuses an answer without it."""
    from tasks.chain import GaussianMixtureStep
    from tests.chains import identity_chain

    step = GaussianMixtureStep("diag", np.array([0.5, 0.5]), np.ones((2, 2)))
    chain = identity_chain(["a", "b"], [[0.0, 0.0], [2.0, 0.0]], mixture=step)
    rows = np.array([[0.0, 0.0], [1.2, 0.0]])
    segments, distances, probabilities = chain.predict_membership(rows)
    assert 0.5 < probabilities[1] < probabilities[0] < 1.0
    right = [
        {"closest_cluster": int(s), "distance_to_cluster": float(d), "membership_probability": p}
        for s, d, p in zip(segments, distances, probabilities.tolist(), strict=True)
    ]
    assert check_predictions({"predictions": right}, chain, rows)["segments"] == [0, 1]
    swapped = [dict(right[0], membership_probability=right[1]["membership_probability"]), right[1]]
    missing = [
        {k: v for k, v in answer.items() if k != "membership_probability"} for answer in right
    ]
    for wrong in (swapped, missing):
        with pytest.raises(DeployError, match="and membership probabilities"):
            check_predictions({"predictions": wrong}, chain, rows)


def test_records_travel_as_json_with_missing_values_null():
    records = [{"x": np.float64(1.5), "region": "NE"}, {"x": float("nan"), "region": None}]
    assert json.loads(records_to_json(records)) == [
        {"x": 1.5, "region": "NE"},
        {"x": None, "region": None},
    ]


def test_previous_version_skips_repeats_of_the_served_one():
    described = EndpointDescription("e", "local", "running", "3", ["1", "2", "3", "3"])
    assert described.previous_version() == "2"
    assert EndpointDescription("e", "local", "running", "1", ["1"]).previous_version() is None


def test_local_target_without_endpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = get_target("local", DeployConfig())
    assert local.list() == []
    for call in (local.describe, local.undeploy):
        with pytest.raises(EndpointError, match="no local endpoint named 'nope'"):
            call("nope")
    with pytest.raises(EndpointError, match="no local endpoint named 'nope'"):
        local.invoke("nope", [{"a": 1.0, "b": 2.0}])


def test_sagemaker_target_names_a_missing_region(monkeypatch):
    for variable in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "POPSEG_DEPLOY_BUCKET",
        "POPSEG_SAGEMAKER_ROLE_ARN",
    ):
        monkeypatch.delenv(variable, raising=False)
    sagemaker = get_target("sagemaker", DeployConfig())
    with pytest.raises(DeployError, match="sagemaker needs a region"):
        sagemaker.describe("e")
    with pytest.raises(DeployError, match="needs a region .*a bucket .*an execution role"):
        sagemaker.check()
