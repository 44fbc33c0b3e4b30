"""The sagemaker target end to end on moto's server: infra/sagemaker.yaml created with
CloudFormation, its outputs (bucket, role) used by the deploy; S3 upload, model, endpoint
config, endpoint, tags; blue/green update, rollback, a rolled-back update, undeploy."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import boto3
import mlflow
import pytest
from botocore.awsrequest import AWSResponse

from flows import deploy as deploy_flow
from tasks.config import load_params
from tasks.deploy import sagemaker
from tasks.errors import DeployError, EndpointError
from tasks.register import load_chain, load_training_frame

ROOT = Path(__file__).resolve().parents[2]
MODEL = "popseg-segmentation"
NAME = "popseg-sm"
REGION = "us-east-1"
ALARM = "popseg-endpoint-5xx"


class MotoUpdateEndpointStandIn:
    """TEST STAND-IN for the one SageMaker call moto 5.2.5 does not implement, UpdateEndpoint.

    Installed only by the `update_endpoint_stand_in` fixture, as a botocore ``before-call``
    hook on boto3's default session: the product code's call path is unchanged (it calls
    ``sagemaker.update_endpoint`` exactly as against AWS). The stand-in records each request
    and leaves moto in the end state of a finished blue/green update: the endpoint serves the
    new config, with its tags. With ``roll_back=True`` it plays an update that SageMaker
    rolled back automatically (an alarm fired): the endpoint keeps its old config."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.roll_back = False

    def __call__(self, params, model, **kwargs):
        request = json.loads(params["body"])
        self.requests.append(request)
        client = boto3.client("sagemaker", region_name=REGION)
        name = request["EndpointName"]
        current = client.describe_endpoint(EndpointName=name)
        if not self.roll_back:
            tags = client.list_tags(ResourceArn=current["EndpointArn"]).get("Tags", [])
            client.delete_endpoint(EndpointName=name)
            client.create_endpoint(
                EndpointName=name, EndpointConfigName=request["EndpointConfigName"], Tags=tags
            )
        response = AWSResponse(params.get("url", ""), 200, {}, None)
        return response, {"EndpointArn": current["EndpointArn"]}


@pytest.fixture
def update_endpoint_stand_in(moto_s3, monkeypatch):
    session = boto3.session.Session()
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    stand_in = MotoUpdateEndpointStandIn()
    session.events.register("before-call.sagemaker.UpdateEndpoint", stand_in)
    return stand_in


@pytest.fixture
def stack(moto_s3):
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    cloudformation.create_stack(
        StackName="popseg-infra",
        TemplateBody=(ROOT / "infra" / "sagemaker.yaml").read_text(),
        Parameters=[{"ParameterKey": "BucketName", "ParameterValue": "popseg-models-test"}],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    described = cloudformation.describe_stacks(StackName="popseg-infra")["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}


def _expected_answers(version: str, n: int = 5) -> str:
    """What the real container would answer for version's smoke rows (the chain itself)."""
    run_id = mlflow.MlflowClient().get_model_version(MODEL, version).run_id
    chain = load_chain(run_id)
    rows = load_training_frame(run_id)[chain.feature_names].head(n).to_numpy(dtype=float)
    segments, distances = chain.predict(rows)
    return json.dumps(
        {
            "predictions": [
                {"closest_cluster": int(s), "distance_to_cluster": float(d)}
                for s, d in zip(segments, distances, strict=True)
            ]
        }
    )


def _queue_runtime_answers(moto_url: str, bodies: list[str]) -> None:
    """moto's runtime answers canned data; queue the model's real answers, in order."""
    payload = {
        "results": [
            {
                "Body": body,
                "ContentType": "application/json",
                "InvokedProductionVariant": "AllTraffic",
            }
            for body in bodies
        ]
    }
    request = urllib.request.Request(
        moto_url + "/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10)


def resource_tags(client, arn) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in client.list_tags(ResourceArn=arn)["Tags"]}


def sagemaker_target(stack, endpoint_name: str = NAME) -> dict[str, str]:
    """`flows.deploy.deploy`'s keywords for an endpoint on moto's SageMaker, in the bucket and
    with the role of the stack."""
    return {
        "target": "sagemaker",
        "endpoint_name": endpoint_name,
        "region": REGION,
        "bucket": stack["BucketName"],
        "role_arn": stack["RoleArn"],
    }


def test_sagemaker_deploy_update_rollback_undeploy(
    trained_project, moto_s3, stack, update_endpoint_stand_in
):
    params = load_params(
        "params.yaml", [f"deploy.rollback_alarms=[{ALARM}]", "deploy.waiter_delay_s=1"]
    )
    target = sagemaker_target(stack)
    _queue_runtime_answers(moto_s3, [_expected_answers(v) for v in ("1", "2", "1")])
    client = boto3.client("sagemaker", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)

    # 1. create: version 1
    first = deploy_flow.deploy(params, version="1", **target)
    assert first.action == "created" and first.model_version == "1"
    assert first.smoke_test["verified"] is True and first.smoke_test["passed"] is True
    assert first.smoke_test["endpoint_url"] == moto_s3  # AWS_ENDPOINT_URL honoured
    details = first.details
    bucket, key = details["model_data"].removeprefix("s3://").split("/", 1)
    assert bucket == "popseg-models-test" and key.startswith(
        "popseg/models/popseg-segmentation/v1/"
    )
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    model = client.describe_model(ModelName=details["sagemaker_model"])
    container = model["PrimaryContainer"]
    assert container["Image"] == sagemaker.sklearn_image_uri(REGION)
    assert container["ModelDataUrl"] == details["model_data"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert model["ExecutionRoleArn"] == stack["RoleArn"]
    config = client.describe_endpoint_config(EndpointConfigName=details["endpoint_config"])
    variant = config["ProductionVariants"][0]
    assert (variant["ModelName"], variant["InstanceType"]) == (
        details["sagemaker_model"],
        "ml.m5.large",
    )
    endpoint = client.describe_endpoint(EndpointName=NAME)
    assert endpoint["EndpointStatus"] == "InService"
    run_1 = mlflow.MlflowClient().get_model_version(MODEL, "1").run_id
    for arn in (model["ModelArn"], config["EndpointConfigArn"], endpoint["EndpointArn"]):
        tags = resource_tags(client, arn)
        assert tags["popseg:model-version"] == "1" and tags["popseg:run-id"] == run_1
        assert tags["popseg:model-name"] == MODEL

    # 2. blue/green update to the champion (version 2), through UpdateEndpoint
    second = deploy_flow.deploy(params, **target)
    assert second.action == "updated" and second.model_version == "2"
    assert second.previous_version == "1" and second.smoke_test["verified"] is True
    [request] = update_endpoint_stand_in.requests
    assert request["EndpointConfigName"] == second.details["endpoint_config"]
    policy = request["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["Type"] == "ALL_AT_ONCE"
    assert request["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": ALARM}]
    }
    endpoint = client.describe_endpoint(EndpointName=NAME)
    assert endpoint["EndpointConfigName"] == second.details["endpoint_config"]
    assert resource_tags(client, endpoint["EndpointArn"])["popseg:history"] == "1 2"
    listed = deploy_flow.list_endpoints(params, "sagemaker", REGION)
    assert [(e["name"], e["model_version"]) for e in listed] == [(NAME, "2")]

    # 3. rollback: the endpoint and alias champion back to version 1
    rolled = deploy_flow.rollback(
        params, NAME, "sagemaker", REGION, stack["BucketName"], stack["RoleArn"]
    )
    assert rolled["rolled_back_from"] == "2" and rolled["model_version"] == "1"
    assert rolled["champion_before"] == "2" and rolled["champion"] == "1"
    champion = mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1"
    assert champion.tags["rolled_back_from"] == "2"
    endpoint = client.describe_endpoint(EndpointName=NAME)
    assert resource_tags(client, endpoint["EndpointArn"])["popseg:model-version"] == "1"

    # 4. an update SageMaker rolls back (alarm): the previous config keeps serving
    serving = endpoint["EndpointConfigName"]
    update_endpoint_stand_in.roll_back = True
    with pytest.raises(DeployError, match="blue/green deployment was rolled back") as caught:
        deploy_flow.deploy(params, version="2", **target)
    assert f"the previous configuration '{serving}' keeps serving" in str(caught.value)
    assert client.describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == serving
    update_endpoint_stand_in.roll_back = False

    # 5. the runtime queue is empty now: moto answers canned data, reported as unverified
    unverified = deploy_flow.deploy(params, version="2", **target)
    assert unverified.smoke_test["verified"] is False
    assert "canned data" in unverified.smoke_test["reason"]

    # 6. undeploy
    removed = deploy_flow.undeploy(params, NAME, "sagemaker", REGION)
    assert removed["stopped"]
    assert deploy_flow.list_endpoints(params, "sagemaker", REGION) == []
    with pytest.raises(EndpointError, match="no SageMaker endpoint named"):
        deploy_flow.undeploy(params, NAME, "sagemaker", REGION)


def test_missing_role_and_bad_bucket_fail_clearly(trained_project, moto_s3, monkeypatch):
    monkeypatch.delenv("POPSEG_SAGEMAKER_ROLE_ARN", raising=False)
    params = load_params("params.yaml")
    with pytest.raises(DeployError, match="needs an execution role"):
        deploy_flow.deploy(params, target="sagemaker", region=REGION, bucket="b")
    with pytest.raises(DeployError, match="failed at S3 upload: .*NoSuchBucket"):
        deploy_flow.deploy(
            params,
            target="sagemaker",
            region=REGION,
            bucket="no-such-bucket",
            role_arn="arn:aws:iam::123456789012:role/x",
        )
    assert boto3.client("sagemaker", region_name=REGION).list_endpoints()["Endpoints"] == []
