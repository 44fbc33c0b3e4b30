"""The sagemaker target's pure parts: image URI, settings resolution, blue/green config."""

from __future__ import annotations

import pytest

from tasks.config import DeployConfig, load_params
from tasks.deploy.sagemaker import deployment_config, resolve_settings, sklearn_image_uri
from tasks.errors import ConfigError, DeployError

ROLE = "arn:aws:iam::123456789012:role/popseg-sagemaker-execution"


def test_image_uri_per_region():
    assert (
        sklearn_image_uri("us-east-1")
        == "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.4-2-py312-cpu-py3"
    )
    assert (
        sklearn_image_uri("us-east-1", "1.2-1")
        == "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
    )
    assert sklearn_image_uri("eu-west-1").startswith("141502667606.dkr.ecr.eu-west-1.")
    assert sklearn_image_uri("cn-north-1", "1.2-1").endswith(
        ".amazonaws.com.cn/sagemaker-scikit-learn:1.2-1-cpu-py3"
    )
    with pytest.raises(DeployError, match="set deploy.image_uri"):
        sklearn_image_uri("mars-east-1")


def test_settings_flags_then_params_then_environment(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("POPSEG_DEPLOY_BUCKET", "env-bucket")
    monkeypatch.setenv("POPSEG_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.delenv("AWS_REGION", raising=False)
    config = DeployConfig(bucket="params-bucket")
    assert resolve_settings(config) == {
        "region": "eu-west-1",
        "bucket": "params-bucket",
        "role_arn": ROLE,
    }
    assert resolve_settings(config, region="us-west-2", bucket="flag")["bucket"] == "flag"


def test_missing_settings_are_named(monkeypatch):
    for name in (
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "POPSEG_DEPLOY_BUCKET",
        "POPSEG_SAGEMAKER_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DeployError) as caught:
        resolve_settings(DeployConfig())
    message = str(caught.value)
    assert "a region" in message and "a bucket" in message and "--role-arn" in message


def test_blue_green_with_alarms():
    config = DeployConfig(traffic_routing="CANARY", canary_percent=20, rollback_alarms=["p99"])
    deployment = deployment_config(config)
    routing = deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing == {
        "Type": "CANARY",
        "WaitIntervalInSeconds": 300,
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20},
    }
    assert deployment["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": "p99"}]}
    assert "AutoRollbackConfiguration" not in deployment_config(DeployConfig())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("deploy.targte=local", "unknown key deploy.targte"),
        ("deploy.target=k8s", "deploy.target"),
        ("deploy.role_arn=admin", "deploy.role_arn"),
        ("deploy.endpoint_name=bad_name", "deploy.endpoint_name"),
        ("deploy.instance_type=m5.large", "deploy.instance_type"),
    ],
)
def test_deploy_section_is_validated(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_params(None, [override])


def test_params_yaml_deploy_defaults(params):
    assert params.deploy.target == "local" and params.deploy.endpoint_name == "popseg"
    assert params.deploy.framework_version == "1.4-2-py312"
