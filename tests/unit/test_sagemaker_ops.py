"""The pure parts of SageMaker data capture, batch transform and autoscaling: the
DataCaptureConfig built from deploy.capture, the deploy.autoscaling section's errors, where a
batch job reads and writes, and the join of its output back to the input rows."""

from __future__ import annotations

import json

import pytest

from tasks.config import DeployConfig, load_params
from tasks.deploy.sagemaker_batch import batch_locations, read_transform_output, wait_for_job
from tasks.deploy.sagemaker_capture import capture_prefix, data_capture_config, is_capture_prefix
from tasks.errors import ConfigError, DataError, DeployError


def test_data_capture_config_from_deploy_capture():
    assert data_capture_config(DeployConfig()) is None
    config = DeployConfig(
        capture="s3://bucket/capture/",
        capture_sampling_percent=25,
        capture_kms_key="alias/popseg-capture",
    )
    assert data_capture_config(config) == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 25,
        "DestinationS3Uri": "s3://bucket/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {
            "CsvContentTypes": ["text/csv"],
            "JsonContentTypes": ["application/json"],
        },
        "KmsKeyId": "alias/popseg-capture",
    }
    assert "KmsKeyId" not in data_capture_config(DeployConfig(capture="s3://bucket/c"))
    for local_file in ("capture.jsonl", "s3://"):
        with pytest.raises(DeployError, match="deploy.capture .*captures to S3"):
            data_capture_config(DeployConfig(capture=local_file))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["deploy.capture_sampling_percent=0"], "deploy.capture_sampling_percent"),
        (["deploy.capture_sampling_percent=101"], "deploy.capture_sampling_percent"),
        (["deploy.capture_kms_key=alias/k"], "deploy.capture_kms_key encrypts a SageMaker"),
        (["deploy.capture=c.jsonl", "deploy.capture_kms_key=k"], "it is 'c.jsonl'"),
        (["deploy.autoscaling={min_instances: 3, max_instances: 2}"], "is greater than"),
        (["deploy.autoscaling={min_instances: 0}"], "deploy.autoscaling.min_instances"),
        (["deploy.autoscaling={max_nodes: 4}"], "deploy.autoscaling.max_nodes: unknown key"),
        (
            ["deploy.autoscaling={target_invocations_per_instance: 0}"],
            "deploy.autoscaling.target_invocations_per_instance",
        ),
        (
            ["deploy.autoscaling={min_instances: 2, max_instances: 4}"],
            r"deploy.instance_count \(1\) is outside deploy.autoscaling",
        ),
    ],
)
def test_capture_and_autoscaling_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(None, overrides)


def test_autoscaling_section_parses():
    params = load_params(
        None,
        [
            "deploy.instance_count=2",
            "deploy.autoscaling={min_instances: 1, max_instances: 4, "
            "target_invocations_per_instance: 250}",
        ],
    )
    scaling = params.deploy.autoscaling
    assert (scaling.min_instances, scaling.max_instances) == (1, 4)
    assert scaling.target_invocations_per_instance == 250.0
    assert (scaling.scale_in_cooldown_s, scaling.scale_out_cooldown_s) == (300, 60)


def test_capture_prefix_names():
    assert capture_prefix("s3://b/capture") == "s3://b/capture/"
    assert capture_prefix("s3://b/capture/") == "s3://b/capture/"
    assert capture_prefix("capture.jsonl") == "capture.jsonl"  # a local capture log as it is
    assert is_capture_prefix("s3://b/capture/") and not is_capture_prefix("s3://b/t.csv")


def test_batch_locations():
    assert batch_locations("s3://in/data/crime.parquet", "s3://out/runs/1/") == {
        "input": "s3://out/runs/1/input/crime.csv",
        "output_path": "s3://out/runs/1",
        "transform_output": "s3://out/runs/1/crime.csv.out",
        "scores": "s3://out/runs/1/scores.csv",
    }
    with pytest.raises(DeployError, match="--data 'crime.csv': a sagemaker batch transform"):
        batch_locations("crime.csv", "s3://out/x")
    with pytest.raises(DeployError, match="--output 'scores.csv'"):
        batch_locations("s3://in/crime.csv", "scores.csv")


def _answer(*pairs):
    return json.dumps(
        {"predictions": [{"closest_cluster": s, "distance_to_cluster": d} for s, d in pairs]}
    )


def test_transform_output_is_joined_by_position():
    payload = "\n".join([_answer((2, 0.5), (0, None)), _answer((1, 1.25))]) + "\n"
    segments, distances, probabilities = read_transform_output(
        payload.encode(), "s3://o/x.csv.out", 3
    )
    assert segments.tolist() == [2, 0, 1] and probabilities is None
    assert distances[0] == 0.5 and distances[2] == 1.25 and distances[1] != distances[1]
    with pytest.raises(DataError, match="2 predictions for 3 input rows"):
        read_transform_output(_answer((2, 0.5), (0, 1.0)).encode(), "s3://o/x.csv.out", 3)
    with pytest.raises(DataError, match="x.csv.out: line 2 is not a prediction answer"):
        read_transform_output(b'{"predictions": []}\n{"error": 1}\n', "s3://o/x.csv.out", 0)


def test_a_mixtures_transform_output_carries_the_membership_probability():
    answers = [
        {"closest_cluster": 1, "distance_to_cluster": 0.5, "membership_probability": 0.9},
        {"closest_cluster": 0, "distance_to_cluster": 2.0, "membership_probability": 0.55},
    ]
    payload = json.dumps({"predictions": answers}).encode()
    segments, distances, probabilities = read_transform_output(payload, "s3://o/x.out", 2, True)
    assert segments.tolist() == [1, 0] and distances.tolist() == [0.5, 2.0]
    assert probabilities.tolist() == [0.9, 0.55]
    # A mixture's answer without it (a k-means package answering) cannot be joined.
    with pytest.raises(DataError, match='line 1 is not .*"membership_probability"'):
        read_transform_output(_answer((1, 0.5), (0, 2.0)).encode(), "s3://o/x.out", 2, True)


class TransformJobsStandIn:
    """TEST STAND-IN for SageMaker's transform-job API (describe/stop), playing a job whose
    statuses follow ``statuses``; moto's jobs are Completed at once."""

    def __init__(self, statuses: list[str], reason: str = "") -> None:
        self.statuses = statuses
        self.reason = reason
        self.stopped: list[str] = []

    def describe_transform_job(self, TransformJobName):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"TransformJobStatus": status, "FailureReason": self.reason}

    def stop_transform_job(self, TransformJobName):
        self.stopped.append(TransformJobName)


def test_waiting_on_a_transform_job(caplog):
    fast = DeployConfig(waiter_delay_s=1, wait_timeout_s=5)
    caplog.set_level("INFO", logger="tasks.deploy.sagemaker_batch")
    done = wait_for_job(TransformJobsStandIn(["InProgress", "Completed"]), "job-1", fast)
    assert done["TransformJobStatus"] == "Completed"
    assert [r.getMessage().split(" after ")[0] for r in caplog.records] == [
        "transform job job-1: InProgress",
        "transform job job-1: Completed",
    ]
    failing = TransformJobsStandIn(["InProgress", "Failed"], reason="ClientError: bad row")
    with pytest.raises(DeployError, match="transform job 'job-2' failed: ClientError: bad row"):
        wait_for_job(failing, "job-2", fast)
    never = TransformJobsStandIn(["InProgress"])
    with pytest.raises(DeployError, match=r"still InProgress after 1 s .*; stopped"):
        wait_for_job(never, "job-3", DeployConfig(waiter_delay_s=1, wait_timeout_s=1))
    assert never.stopped == ["job-3"]


def test_an_s3_capture_is_refused_for_the_local_target(tmp_path, monkeypatch):
    from flows.deploy import deploy

    monkeypatch.chdir(tmp_path)  # refused before the registry is read: nothing there
    params = load_params(None, ["deploy.capture=s3://bucket/capture"])
    with pytest.raises(DeployError, match="the local endpoint appends to a local file"):
        deploy(params, target="local")
    assert list(tmp_path.iterdir()) == []
