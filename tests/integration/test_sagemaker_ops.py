"""SageMaker data capture, batch transform and autoscaling on moto's server.

What moto verifies here: the calls and their parameters as AWS's API models define them
(DataCaptureConfig on the endpoint config; the transform job's input, split, strategy, output
location and resources; the Application Auto Scaling target and policy), the objects in S3,
and that the product code waits on the job and cleans up. What it does not: moto never runs a
container. Its transform jobs are "Completed" at once and write nothing, and it writes no
capture files. So the capture files are written here in SageMaker's documented format
(captureData.endpointInput/endpointOutput with observedContentType, mode, data, encoding), and
the batch output is written where SageMaker writes it (``<S3OutputPath>/<input file>.out``) by
`ContainerTransformStandIn`, which runs the package's own inference.py on the job's input the
way the serving container would. Whether AWS itself runs the job, scales the variant or
writes the capture is not verified anywhere in these tests.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tarfile
import tempfile

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError

from flows import deploy as deploy_flow
from tasks.config import MonitorConfig, load_params
from tasks.errors import DataError
from tasks.ingest import load_crime
from tasks.monitor import compute_drift, read_monitor_data
from tasks.register import load_chain
from tasks.score import score_frame
from tests.e2e.helpers import invoke
from tests.integration import test_sagemaker_deploy as deploy_tests
from tests.unit.test_monitor import blobs, make_chain, post_with_capture

NAME = "popseg-ops"
REGION = deploy_tests.REGION
# The CloudFormation stack of infra/sagemaker.yaml and the UpdateEndpoint stand-in.
stack = deploy_tests.stack
update_endpoint_stand_in = deploy_tests.update_endpoint_stand_in
MODEL = "popseg-segmentation"


def _capture_record(body: str, content_type: str, encoding: str, answer: str) -> dict:
    """One line of a SageMaker capture file, as its documentation shows it."""
    data = base64.b64encode(body.encode()).decode() if encoding == "BASE64" else body
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": content_type,
                "mode": "INPUT",
                "data": data,
                "encoding": encoding,
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": answer,
                "encoding": "JSON",
            },
        },
        "eventMetadata": {
            "eventId": "9f1d2d35-3cdb-4a6f-a2f6-6c3e3a2b8c71",
            "inferenceTime": "2026-12-02T09:00:01Z",
        },
        "eventVersion": "0",
    }


def _put_capture_files(s3, bucket: str, prefix: str, files: dict[str, list[dict]]) -> None:
    for relative, records in files.items():
        body = "".join(json.dumps(record) + "\n" for record in records)
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{relative}", Body=body.encode())


def _rows(values) -> list[tuple]:
    return [tuple(row) for row in np.nan_to_num(np.asarray(values, dtype=float), nan=-1.0)]


def test_sagemaker_capture_reads_as_the_local_capture(moto_s3, tmp_path):
    chain = make_chain()
    requests = [
        ("0,0,0\n10,0,1\n", "text/csv"),
        ("gamma,alpha\n5,\n", "text/csv"),
        (json.dumps({"instances": [{"features": [1, 2, 3]}]}), "application/json"),
        (json.dumps([{"alpha": 4, "beta": 5, "gamma": 6}]), "application/json"),
    ]
    local_log = tmp_path / "capture.jsonl"
    assert post_with_capture(chain, tmp_path, local_log, requests) == [200] * 4
    local = read_monitor_data(str(local_log), chain)

    # The same four requests as SageMaker captures them: three files over two hours, text
    # (CSV / JSON) and base64 encodings.
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="capture-bucket")
    answer = '{"predictions": []}'
    variant = "demo/AllTraffic/2026/12/02"
    _put_capture_files(
        s3,
        "capture-bucket",
        "capture",
        {
            f"{variant}/09/00-01-123-7d1f.jsonl": [
                _capture_record(requests[0][0], "text/csv", "CSV", answer),
                _capture_record(requests[1][0], "text/csv", "CSV", answer),
            ],
            f"{variant}/09/30-00-001-a0c2.jsonl": [
                _capture_record(requests[2][0], "application/json", "JSON", answer)
            ],
            f"{variant}/10/00-00-500-51e9.jsonl": [
                _capture_record(requests[3][0], "application/json", "BASE64", answer)
            ],
        },
    )
    remote = read_monitor_data("s3://capture-bucket/capture/", chain)
    assert remote.kind == "capture" and remote.source == "s3://capture-bucket/capture/"
    # Oldest file first, records in file order: the requests' own order.
    expected = [[0, 0, 0], [10, 0, 1], [np.nan, np.nan, 5], [1, 2, 3], [4, 5, 6]]
    assert _rows(remote.values) == _rows(expected)
    assert sorted(_rows(remote.values)) == sorted(_rows(local.values))
    reference = blobs(200, seed=1)
    config = MonitorConfig(min_rows=2)
    assert (
        compute_drift(chain, reference, remote.values, config).to_json()
        == compute_drift(chain, reference, local.values, config).to_json()
    )
    # A deeper prefix (one variant, one day) reads the same files.
    day = read_monitor_data(f"s3://capture-bucket/capture/{variant}/", chain)
    assert _rows(day.values) == _rows(expected)

    _put_capture_files(
        s3,
        "capture-bucket",
        "capture",
        {
            "other/AllTraffic/2026/12/02/09/00-00-000-0000.jsonl": [
                _capture_record("1,1,1\n", "text/csv", "CSV", answer)
            ]
        },
    )
    with pytest.raises(DataError, match=r"several endpoint variants \(demo/AllTraffic, other/"):
        read_monitor_data("s3://capture-bucket/capture/", chain)
    with pytest.raises(DataError, match="no SageMaker capture files"):
        read_monitor_data("s3://capture-bucket/nothing/", chain)


def test_monitor_cli_reads_a_sagemaker_capture(trained_project, moto_s3):
    frame = load_crime()
    features = ["Murder", "Assault", "UrbanPop", "Rape", "Density"]
    bodies = [
        frame[features].iloc[start : start + 10].to_csv(index=False)
        for start in range(0, len(frame), 10)
    ]
    records = [_capture_record(body, "text/csv", "CSV", "{}") for body in bodies]
    (trained_project / "local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="capture-bucket")
    _put_capture_files(
        s3,
        "capture-bucket",
        "sm",
        {
            f"popseg/AllTraffic/2026/12/02/0{i}/00-00-000-{i}.jsonl": [r]
            for i, r in enumerate(records)
        },
    )

    local = invoke("monitor", "--data", "local.jsonl", "--json")
    remote = invoke("monitor", "--capture", "s3://capture-bucket/sm", "--json")
    assert local.exit_code == 0 and remote.exit_code == 0, local.stderr + remote.stderr
    local, remote = json.loads(local.stdout), json.loads(remote.stdout)
    assert remote["data_source"] == "s3://capture-bucket/sm/"
    assert remote["data_kind"] == local["data_kind"] == "capture"
    assert remote["n_rows"] == local["n_rows"] == 50
    for key in ("features", "segments", "segment_psi", "distance", "reasons", "drift"):
        assert remote[key] == local[key], key

    both = invoke("monitor", "--data", "local.jsonl", "--capture", "s3://capture-bucket/sm")
    assert both.exit_code == 3 and "with --data or --capture (one of them)" in both.stderr


def _targets(client):
    return client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]


def _endpoint_tags(client, name):
    arn = client.describe_endpoint(EndpointName=name)["EndpointArn"]
    return deploy_tests.resource_tags(client, arn)


def test_deploy_sets_data_capture_and_autoscaling(
    trained_project, moto_s3, stack, update_endpoint_stand_in
):
    capture = f"s3://{stack['BucketName']}/popseg/capture"
    scaled = [
        "deploy.waiter_delay_s=1",
        f"deploy.capture={capture}",
        "deploy.capture_sampling_percent=20",
        "deploy.capture_kms_key=alias/popseg-capture",
        "deploy.autoscaling={min_instances: 1, max_instances: 3, "
        "target_invocations_per_instance: 500, scale_in_cooldown_s: 600}",
    ]
    target = deploy_tests.sagemaker_target(stack, NAME)
    client = boto3.client("sagemaker", region_name=REGION)
    scaling = boto3.client("application-autoscaling", region_name=REGION)

    first = deploy_flow.deploy(load_params("params.yaml", scaled), version="1", **target)
    described = client.describe_endpoint_config(EndpointConfigName=first.details["endpoint_config"])
    assert described["DataCaptureConfig"] == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 20,
        "DestinationS3Uri": capture,
        "KmsKeyId": "alias/popseg-capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {
            "CsvContentTypes": ["text/csv"],
            "JsonContentTypes": ["application/json"],
        },
    }
    resource = f"endpoint/{NAME}/variant/AllTraffic"
    [registered] = _targets(scaling)
    assert (registered["ResourceId"], registered["ScalableDimension"]) == (
        resource,
        "sagemaker:variant:DesiredInstanceCount",
    )
    assert (registered["MinCapacity"], registered["MaxCapacity"]) == (1, 3)
    [policy] = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert (policy["ResourceId"], policy["PolicyType"]) == (resource, "TargetTrackingScaling")
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 500.0
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (600, 60)
    assert first.details["autoscaling"]["resource_id"] == resource
    assert _endpoint_tags(client, NAME)["popseg:autoscaling"] == resource

    # The next deploy without deploy.autoscaling removes the registration (config is the truth).
    second = deploy_flow.deploy(load_params("params.yaml", scaled[:1]), version="2", **target)
    assert second.action == "updated" and second.details["autoscaling"] is None
    assert second.details["data_capture"] is None
    assert _targets(scaling) == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert "popseg:autoscaling" not in _endpoint_tags(client, NAME)

    # Registered again, then undeploy removes the target and its policy with the endpoint.
    deploy_flow.deploy(load_params("params.yaml", scaled), version="2", **target)
    assert len(_targets(scaling)) == 1

    # AWS refuses to change the instance type of a registered variant: deregistered for the
    # update (seen by UpdateEndpoint), registered again after it.
    at_update = []
    boto3.DEFAULT_SESSION.events.register_first(
        "before-call.sagemaker.UpdateEndpoint",
        lambda **kwargs: at_update.append(_targets(scaling)),
    )
    bigger = load_params("params.yaml", [*scaled, "deploy.instance_type=ml.c5.xlarge"])
    resized = deploy_flow.deploy(bigger, version="2", **target)
    assert at_update == [[]]
    [registered] = _targets(scaling)
    assert (registered["MinCapacity"], registered["MaxCapacity"]) == (1, 3)
    assert resized.details["autoscaling"]["resource_id"] == resource
    assert _endpoint_tags(client, NAME)["popseg:autoscaling"] == resource
    deploy_flow.deploy(bigger, version="2", **target)  # same type: left registered
    assert at_update[1:] == [_targets(scaling)] and len(at_update[1]) == 1
    removed = deploy_flow.undeploy(load_params("params.yaml"), NAME, "sagemaker", REGION)
    assert removed["autoscaling_removed"] is True
    assert _targets(scaling) == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []


# The serving container's path for one mini-batch, run on the package's own code/ (the files
# SageMaker puts on the container's sys.path): model_fn, then transform_fn per request.
CONTAINER_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import inference
model = inference.model_fn(sys.argv[2])
for body in json.load(sys.stdin):
    answer, _ = inference.transform_fn(model, body, "text/csv", "application/json")
    print(answer)
"""


class ContainerTransformStandIn:
    """TEST STAND-IN for what moto does not do: run the transform job's container.

    A botocore ``before-parameter-build`` hook on CreateTransformJob (the product code's call
    is unchanged and still reaches moto): it reads the job's input object, splits it by line
    into mini-batches of ``lines_per_batch`` records (SplitType=Line, MultiRecord), answers
    each with the model package's own inference.py, and assembles the answers by line into
    ``<S3OutputPath>/<input file>.out``, where SageMaker writes them."""

    def __init__(self, lines_per_batch: int = 7) -> None:
        self.lines_per_batch = lines_per_batch
        self.requests: list[dict] = []
        self.batches = 0

    def __call__(self, params, **kwargs):
        self.requests.append(params)
        s3 = boto3.client("s3", region_name=REGION)
        sagemaker = boto3.client("sagemaker", region_name=REGION)

        def read(uri):
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

        source = params["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        lines = read(source).decode().splitlines(keepends=True)
        batches = [
            "".join(lines[i : i + self.lines_per_batch])
            for i in range(0, len(lines), self.lines_per_batch)
        ]
        self.batches += len(batches)
        model = sagemaker.describe_model(ModelName=params["ModelName"])
        package = read(model["PrimaryContainer"]["ModelDataUrl"])
        with tempfile.TemporaryDirectory() as model_dir:
            with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as archive:
                archive.extractall(model_dir, filter="data")
            answers = subprocess.run(
                [sys.executable, "-c", CONTAINER_SCRIPT, f"{model_dir}/code", model_dir],
                input=json.dumps(batches),
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        output = params["TransformOutput"]["S3OutputPath"].rstrip("/")
        bucket, prefix = output.removeprefix("s3://").split("/", 1)
        name = source.rsplit("/", 1)[1]
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}.out", Body=answers.encode())


@pytest.fixture
def transform_stand_in(update_endpoint_stand_in):
    """Hooked into the boto3 session the UpdateEndpoint stand-in installs (on moto)."""
    stand_in = ContainerTransformStandIn()
    boto3.DEFAULT_SESSION.events.register(
        "before-parameter-build.sagemaker.CreateTransformJob", stand_in
    )
    return stand_in


def test_batch_transform_scores_through_the_cli(trained_project, stack, transform_stand_in):
    bucket, role = stack["BucketName"], stack["RoleArn"]
    s3 = boto3.client("s3", region_name=REGION)
    crime = load_crime()
    crime.loc[3, "UrbanPop"] = np.nan  # a missing value travels as an empty CSV cell
    s3.put_object(Bucket=bucket, Key="batch/in/crime.csv", Body=crime.to_csv(index=False))

    result = invoke(
        "score",
        "--target",
        "sagemaker",
        "--data",
        f"s3://{bucket}/batch/in/crime.csv",
        "--output",
        f"s3://{bucket}/batch/out/run-1",
        "--region",
        REGION,
        "--bucket",
        bucket,
        "--role-arn",
        role,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["rows"] == 50 and payload["model_version"] == "2"
    assert payload["output"] == f"s3://{bucket}/batch/out/run-1/scores.csv"
    assert payload["transform_output"] == f"s3://{bucket}/batch/out/run-1/crime.csv.out"
    assert transform_stand_in.batches == 8  # 50 lines in mini-batches of 7

    # What moto recorded of the job: the model, the line split, the output location.
    client = boto3.client("sagemaker", region_name=REGION)
    job = client.describe_transform_job(TransformJobName=payload["transform_job"])
    assert job["TransformJobStatus"] == "Completed" and job["BatchStrategy"] == "MultiRecord"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformInput"]["ContentType"] == "text/csv"
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == (
        f"s3://{bucket}/batch/out/run-1/input/crime.csv"
    )
    assert job["TransformOutput"] == {
        "S3OutputPath": f"s3://{bucket}/batch/out/run-1",
        "Accept": "application/json",
        "AssembleWith": "Line",
    }
    assert job["TransformResources"]["InstanceType"] == "ml.m5.large"
    [request] = transform_stand_in.requests
    assert request["ModelName"] == payload["transform_job"]
    with pytest.raises(ClientError):  # the job's model is deleted once it ends
        client.describe_model(ModelName=payload["transform_job"])

    # The staged input: features only, in the model's order, no header, no ids.
    staged = s3.get_object(Bucket=bucket, Key="batch/out/run-1/input/crime.csv")["Body"].read()
    lines = staged.decode().splitlines()
    assert len(lines) == 50 and lines[3].split(",")[2] == ""
    assert "Alabama" not in staged.decode()

    # Joined back to the ids: the same answers as `popseg score` here.
    scores = pd.read_csv(
        io.BytesIO(s3.get_object(Bucket=bucket, Key="batch/out/run-1/scores.csv")["Body"].read())
    )
    run_id = mlflow.MlflowClient().get_model_version(MODEL, "2").run_id
    crime.to_csv(trained_project / "crime.csv", index=False)
    here = score_frame(load_chain(run_id), str(trained_project / "crime.csv"))
    assert list(scores.columns) == list(here.columns) == ["State", "segment", "distance_to_cluster"]
    assert scores["State"].tolist() == here["State"].tolist()
    assert scores["segment"].tolist() == here["segment"].tolist()
    np.testing.assert_allclose(
        scores["distance_to_cluster"], here["distance_to_cluster"], rtol=1e-9
    )


def test_batch_transform_output_that_does_not_match_the_input_fails(
    trained_project, stack, transform_stand_in
):
    bucket = stack["BucketName"]
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=bucket, Key="in/crime.csv", Body=load_crime().to_csv(index=False))

    def drop_last_answer(params, **kwargs):  # runs after the stand-in wrote the output
        output = params["TransformOutput"]["S3OutputPath"].removeprefix("s3://")
        out_bucket, prefix = output.split("/", 1)
        key = f"{prefix}/crime.csv.out"
        lines = s3.get_object(Bucket=out_bucket, Key=key)["Body"].read().decode().splitlines()
        s3.put_object(Bucket=out_bucket, Key=key, Body="\n".join(lines[:-1]).encode())

    boto3.DEFAULT_SESSION.events.register(
        "before-parameter-build.sagemaker.CreateTransformJob", drop_last_answer
    )
    result = invoke(
        "score",
        "--target",
        "sagemaker",
        "--data",
        f"s3://{bucket}/in/crime.csv",
        "--output",
        f"s3://{bucket}/out",
        "--bucket",
        bucket,
        "--role-arn",
        stack["RoleArn"],
    )
    assert result.exit_code == 3, result.stderr
    assert f"s3://{bucket}/out/crime.csv.out: 49 predictions for 50 input rows" in result.stderr
    assert "Traceback" not in result.stderr
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]
    assert "out/scores.csv" not in [item["Key"] for item in listed]
    load_crime().to_csv(trained_project / "crime.csv", index=False)
    bad = invoke("score", "--target", "sagemaker", "--data", "crime.csv", "--output", "s3://b/o")
    assert bad.exit_code != 0 and "--data 'crime.csv': a sagemaker batch transform" in bad.stderr


def _mixture_chain():
    """`tests.chains.categorical_chain` (x and the raw column region) as a Gaussian mixture:
    unit variances, weights 0.5, 0.3, 0.2."""
    from tasks.chain import GaussianMixtureStep
    from tests.chains import categorical_chain

    chain = categorical_chain()
    chain.mixture = GaussianMixtureStep("diag", np.array([0.5, 0.3, 0.2]), np.ones((3, 4)))
    return chain


def test_a_mixture_is_smoke_checked_and_batch_scored_with_its_probability(
    moto_s3, stack, transform_stand_in, tmp_path
):
    """A Gaussian mixture's membership_probability travels through the SageMaker paths: the
    deploy's smoke check compares it with the chain's (a wrong one fails the deploy), and the
    batch transform's scores carry it, equal to `popseg score` here."""
    from tasks.config import DeployConfig
    from tasks.deploy.sagemaker import deploy_sagemaker, resolve_settings
    from tasks.deploy.sagemaker_batch import batch_transform
    from tasks.errors import DeployError
    from tasks.package import RegisteredChain

    chain = _mixture_chain()
    chain.save(str(tmp_path / "chain"))
    registered = RegisteredChain(MODEL, "1", "run-gmm", tmp_path / "chain")
    bucket = stack["BucketName"]
    settings = resolve_settings(DeployConfig(), REGION, bucket, stack["RoleArn"])
    config = DeployConfig(waiter_delay_s=1)
    rows = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [9, 0, 0, 1], [1.2, 0, 1, 0]], dtype=float)
    segments, distances, probabilities = chain.predict_membership(rows)
    answers = [
        {"closest_cluster": int(s), "distance_to_cluster": float(d), "membership_probability": p}
        for s, d, p in zip(segments, distances, probabilities.tolist(), strict=True)
    ]
    off = [dict(answer, membership_probability=0.5) for answer in answers]
    deploy_tests._queue_runtime_answers(
        moto_s3, [json.dumps({"predictions": off}), json.dumps({"predictions": answers})]
    )
    with pytest.raises(DeployError, match="and membership probabilities"):
        deploy_sagemaker("gmm", registered, config, settings, sample=rows, chain=chain)
    deployed = deploy_sagemaker("gmm", registered, config, settings, sample=rows, chain=chain)
    assert deployed.smoke_test["verified"] and deployed.smoke_test["passed"]
    assert deployed.smoke_test["answers"] == answers

    table = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(9)],
            "x": [0.0, 0.0, 9.0, 1.2, 0.4, 3.0, 0.0, 8.0, 2.0],
            "region": ["MW", "NE", None, "NE", "Atlantis", "MW", "NE", "NE", "MW"],
        }
    )
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=bucket, Key="gmm/in/people.csv", Body=table.to_csv(index=False)
    )
    result = batch_transform(
        registered, f"s3://{bucket}/gmm/in/people.csv", f"s3://{bucket}/gmm/out", config, settings
    )
    assert result["rows"] == 9 and transform_stand_in.batches == 2
    body = boto3.client("s3", region_name=REGION).get_object(
        Bucket=bucket, Key="gmm/out/scores.csv"
    )
    scores = pd.read_csv(io.BytesIO(body["Body"].read()))
    table.to_csv(tmp_path / "people.csv", index=False)
    here = score_frame(chain, str(tmp_path / "people.csv"))
    assert list(scores.columns) == list(here.columns)
    assert list(here.columns) == ["id", "segment", "distance_to_cluster", "membership_probability"]
    assert scores["segment"].tolist() == here["segment"].tolist()
    np.testing.assert_allclose(
        scores["membership_probability"], here["membership_probability"], rtol=1e-9
    )
    assert scores["membership_probability"].between(0.34, 1.0).all()
