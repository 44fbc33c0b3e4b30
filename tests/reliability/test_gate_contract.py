"""Issue 13, promotion gate: a challenger with another input contract (here one feature
fewer) is not promoted and not hot-swapped into a running endpoint unless the change is
allowed; every refusal leaves champion, endpoint and state file as they were."""

from __future__ import annotations

import json
import shutil

import mlflow
import pandas as pd
import pytest

from tasks.deploy import local as deploy
from tests.e2e.helpers import invoke
from tests.integration.test_sagemaker_deploy import (  # noqa: F401 (stack: a fixture)
    resource_tags,
    sagemaker_target,
    stack,
)

MODEL = "popseg-segmentation"
RELAXED = [
    "evaluate.bootstrap_rounds=3",
    "cluster.k_max=4",
    "promote.min_silhouette=0",
    "promote.min_stability=0",
    "promote.max_silhouette_drop=1.0",
]
CRIME_FEATURES = ["Murder", "Assault", "UrbanPop", "Rape", "Density"]


def _champion() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion").version)


@pytest.fixture(scope="module")
def contract_store(trained_store, tmp_path_factory):
    """`trained_store` plus version 3, trained once per module on the crime data less one
    column (UrbanPop) and gated by the training flow itself."""
    from flows.training import training_flow
    from tasks.config import load_params

    store = tmp_path_factory.mktemp("contract-store")
    shutil.copy(trained_store["dir"] / "mlflow.db", store / "mlflow.db")
    (store / "params.yaml").write_text((trained_store["dir"] / "params.yaml").read_text())
    crime = pd.read_csv(trained_store["dir"] / "data" / "raw" / "crime.csv")
    crime.drop(columns="UrbanPop").to_csv(store / "fewer.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        outcome = training_flow(load_params("params.yaml", [*RELAXED, "data.path=fewer.csv"]))
    assert outcome.model_version == "3"
    return {"dir": store, "outcome": outcome}


@pytest.fixture
def challenger(trained_project, contract_store):
    """A project (endpoints stopped after) whose store holds versions 1-3; champion 2."""
    shutil.copy(contract_store["dir"] / "mlflow.db", trained_project / "mlflow.db")
    return contract_store["outcome"]


def test_training_flow_refuses_a_challenger_with_another_contract(challenger):
    assert not challenger.promoted
    refused = [r for r in challenger.gate_reasons if r.startswith("input contract differs")]
    assert refused == [
        "input contract differs from the champion's: removed UrbanPop "
        "(--allow-contract-change or promote.allow_contract_change=true accepts it)"
    ]
    assert not any("comparison skipped" in r for r in challenger.gate_reasons)
    client = mlflow.MlflowClient()
    assert _champion() == "2"
    tags = client.get_model_version(MODEL, "3").tags
    assert tags["gate_passed"] == "false"
    assert json.loads(tags["input_contract"]) == ["Murder", "Assault", "Rape", "Density"]
    assert json.loads(client.get_model_version(MODEL, "2").tags["input_contract"]) == (
        CRIME_FEATURES
    )
    assert (
        tags["input_contract_sha256"]
        != client.get_model_version(MODEL, "2").tags["input_contract_sha256"]
    )


def test_promote_refuses_with_the_same_code_in_text_and_json_then_allows(challenger):
    relaxed = [arg for item in RELAXED for arg in ("--set", item)]
    text = invoke("promote", "--version", "3", *relaxed)
    assert text.exit_code == 12, text.stderr
    assert "NOT promoted (champion unchanged)" in text.stdout
    assert "input contract differs from the champion's: removed UrbanPop" in text.stdout
    as_json = invoke("promote", "--version", "3", "--json", *relaxed)
    assert as_json.exit_code == 12, as_json.stderr
    decision = json.loads(as_json.stdout)
    assert decision["passed"] is False and decision["promoted"] is False
    assert decision["checks"]["contract_changes"] == ["removed UrbanPop"]
    assert _champion() == "2"

    allowed = invoke("promote", "--version", "3", "--allow-contract-change", "--json", *relaxed)
    assert allowed.exit_code == 0, allowed.stderr
    decision = json.loads(allowed.stdout)
    assert decision["promoted"] is True and decision["previous_champion"] == "2"
    assert any(
        r.startswith("input contract change allowed: removed UrbanPop") for r in decision["reasons"]
    )
    assert _champion() == "3"
    tags = mlflow.MlflowClient().get_model_version(MODEL, "3").tags
    assert "input contract change allowed: removed UrbanPop" in tags["gate_reasons"]


def test_running_endpoint_is_not_swapped_to_another_contract_without_the_flag(challenger):
    name = "gate-contract"
    first = invoke("deploy", "--endpoint-name", name, "--json")  # champion: version 2
    assert first.exit_code == 0, first.stderr
    state_file = deploy.state_dir() / f"{name}.json"
    before = state_file.read_bytes()
    state = deploy.read_state(name)
    assert deploy.ping(state.url)["model_version"] == "2"

    refused = invoke("deploy", "--endpoint-name", name, "--model-version", "3")
    assert refused.exit_code == 7, refused.stderr
    message = refused.stderr.strip()
    assert message.startswith("error: endpoint 'gate-contract' serves version 2, whose input")
    assert "removed UrbanPop" in message and "still serves version 2" in message
    assert deploy.ping(state.url)["model_version"] == "2"
    assert state_file.read_bytes() == before
    # Nothing staged for the refused version.
    assert not list((deploy.state_dir() / name).glob("v3-*"))

    swapped = invoke(
        "deploy",
        "--endpoint-name",
        name,
        "--model-version",
        "3",
        "--allow-contract-change",
        "--json",
    )
    assert swapped.exit_code == 0, swapped.stderr
    result = json.loads(swapped.stdout)
    assert result["action"] == "updated" and result["previous_version"] == "2"
    assert result["details"]["pid"] == state.pid
    assert deploy.ping(state.url)["model_version"] == "3"
    assert deploy.read_state(name).model_version == "3"

    # Rollback to version 2 is a contract change too: refused without the flag.
    back = invoke("rollback", name)
    assert back.exit_code == 7 and "added UrbanPop" in back.stderr
    assert deploy.ping(state.url)["model_version"] == "3" and _champion() == "2"
    gone = invoke("undeploy", name)
    assert gone.exit_code == 0, gone.stderr


def test_sagemaker_endpoint_is_not_updated_to_another_contract(challenger, stack):  # noqa: F811
    """On moto: the endpoint records its model's contract digest; an update to version 3 is
    refused before any upload, model or config is created."""
    import boto3

    from flows import deploy as deploy_flow
    from tasks.config import load_params
    from tasks.errors import DeployError

    params = load_params("params.yaml", ["deploy.waiter_delay_s=1"])
    target = sagemaker_target(stack, "gate-sm")
    first = deploy_flow.deploy(params, version="2", **target)
    assert first.action == "created"
    client = boto3.client("sagemaker", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    endpoint = client.describe_endpoint(EndpointName="gate-sm")
    tags = resource_tags(client, endpoint["EndpointArn"])
    assert (
        tags["popseg:input-contract-sha256"]
        == (mlflow.MlflowClient().get_model_version(MODEL, "2").tags["input_contract_sha256"])
    )
    models = client.list_models()["Models"]
    objects = s3.list_objects_v2(Bucket=stack["BucketName"]).get("Contents", [])

    with pytest.raises(DeployError, match=r"serves version 2, whose input contract .* differs"):
        deploy_flow.deploy(params, version="3", **target)
    after = client.describe_endpoint(EndpointName="gate-sm")
    assert after["EndpointConfigName"] == endpoint["EndpointConfigName"]
    assert client.list_models()["Models"] == models
    assert s3.list_objects_v2(Bucket=stack["BucketName"]).get("Contents", []) == objects
    deploy_flow.undeploy(params, "gate-sm", "sagemaker", "us-east-1")
