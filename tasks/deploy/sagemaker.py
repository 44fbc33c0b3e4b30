"""The ``sagemaker`` deploy target, with boto3.

upload ``model.tar.gz`` to S3 -> ``create_model`` (SageMaker scikit-learn 1.4-2-py312 serving image,
``SAGEMAKER_PROGRAM=inference.py``, ``SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code``: the
code travels inside the model archive) -> ``create_endpoint_config`` -> ``create_endpoint``, or
``update_endpoint`` with a blue/green ``DeploymentConfig`` (automatic rollback on the given
CloudWatch alarms) -> wait for InService (boto3 waiter) -> smoke test through
``sagemaker-runtime`` -> tags (model name, version, run id, deploy history, input contract
digest).

An endpoint is not updated to a model whose input contract differs from the served one's
(``popseg:input-contract-sha256`` tag) unless the change is allowed; the refusal comes before
any upload or AWS change. An endpoint deployed before that tag existed has no recorded
contract: it is updated as before, with a warning.

The image URI comes from a small table of the AWS accounts that host the SageMaker
scikit-learn images (the same table as the sagemaker SDK's ``image_uris`` config). We do not
depend on the sagemaker SDK for this one lookup: v3.27.0 pulls ~30 packages into the locked
environment (and downgrades protobuf), for a string we can build from the table.
``deploy.image_uri`` overrides it for any other region or image.

``deploy.capture`` (an s3:// prefix) adds the endpoint config's ``DataCaptureConfig``
(`tasks.deploy.sagemaker_capture`); ``deploy.autoscaling`` registers the variant with Application
Auto Scaling after the endpoint is InService (`tasks.deploy.sagemaker_autoscaling`).
`tasks.deploy.sagemaker_batch` runs the same model as a batch transform job.

``AWS_ENDPOINT_URL`` (honoured by boto3 itself) points every client elsewhere, e.g. at moto.
An emulator's runtime answers canned data instead of running the model: the smoke test then
reports ``verified: false`` and why, instead of passing or failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.chain import SegmentationChain, contract_digest
from tasks.config import DeployConfig
from tasks.deploy.contract import (
    BaseTarget,
    DeployResult,
    EndpointDescription,
    Release,
    check_predictions,
    invoke,
    invoke_rows,
    rows_to_csv,
    runtime_client,
    smoke_sample,
)
from tasks.deploy.sagemaker_autoscaling import apply_autoscaling, remove_autoscaling
from tasks.deploy.sagemaker_capture import data_capture_config
from tasks.errors import DeployError, EndpointError, PopsegError
from tasks.package import RegisteredChain, build_package

logger = logging.getLogger(__name__)

# AWS accounts hosting the SageMaker scikit-learn serving images, per region: the sagemaker
# SDK's image_uri_config/sklearn.json (the same accounts for every version; checked against a
# copy of that file in tests/unit/fixtures). Image: {account}.dkr.ecr.{region}.{domain}/
# sagemaker-scikit-learn:{version}-cpu-py3
SKLEARN_IMAGE_ACCOUNTS = {
    "af-south-1": "510948584623",
    "ap-east-1": "651117190479",
    "ap-northeast-1": "354813040037",
    "ap-northeast-2": "366743142698",
    "ap-northeast-3": "867004704886",
    "ap-south-1": "720646828776",
    "ap-south-2": "628508329040",
    "ap-southeast-1": "121021644041",
    "ap-southeast-2": "783357654285",
    "ap-southeast-3": "951798379941",
    "ap-southeast-4": "106583098589",
    "ca-central-1": "341280168497",
    "ca-west-1": "190319476487",
    "cn-north-1": "450853457545",
    "cn-northwest-1": "451049120500",
    "eu-central-1": "492215442770",
    "eu-central-2": "680994064768",
    "eu-north-1": "662702820516",
    "eu-south-1": "978288397137",
    "eu-south-2": "104374241257",
    "eu-west-1": "141502667606",
    "eu-west-2": "764974769150",
    "eu-west-3": "659782779980",
    "il-central-1": "898809789911",
    "me-central-1": "272398656194",
    "me-south-1": "801668240914",
    "sa-east-1": "737474898029",
    "us-east-1": "683313688378",
    "us-east-2": "257758044811",
    "us-gov-east-1": "237065988967",
    "us-gov-west-1": "414596584902",
    "us-iso-east-1": "833128469047",
    "us-isob-east-1": "281123927165",
    "us-isof-east-1": "108575199400",
    "us-isof-south-1": "124985052026",
    "us-west-1": "746614075791",
    "us-west-2": "246618743249",
}
# The newest scikit-learn serving image (SDK's sklearn.json, inference): Python 3.12, numpy
# 2.1.0, sagemaker-containers 2.8.6.post2 serving. code/ needs Python >= 3.9 and numpy only;
# 1.2-1 (Python 3.9, numpy 1.24) is kept as an option.
SKLEARN_IMAGE_VERSION = "1.4-2-py312"
# DNS suffix of the partitions other than aws (amazonaws.com), by region prefix (botocore's
# partitions; checked against botocore's endpoint data in the tests).
_PARTITION_DOMAINS = (
    ("cn-", "amazonaws.com.cn"),
    ("us-isob-", "sc2s.sgov.gov"),
    ("us-isof-", "csp.hci.ic.gov"),
    ("us-iso-", "c2s.ic.gov"),
)
SUBMIT_DIRECTORY = "/opt/ml/model/code"
VARIANT = "AllTraffic"
TAG_MODEL_NAME = "popseg:model-name"
TAG_MODEL_VERSION = "popseg:model-version"
TAG_RUN_ID = "popseg:run-id"
TAG_ENDPOINT = "popseg:endpoint"
TAG_HISTORY = "popseg:history"  # space-separated versions, oldest first (last 20)
# sha256 of the served model's input contract (a tag value holds 256 chars, not the list).
TAG_CONTRACT = "popseg:input-contract-sha256"
# The variant's Application Auto Scaling resource id, while deploy.autoscaling registered one.
TAG_AUTOSCALING = "popseg:autoscaling"
ROLE_ENV = "POPSEG_SAGEMAKER_ROLE_ARN"
BUCKET_ENV = "POPSEG_DEPLOY_BUCKET"


def sklearn_image_uri(region: str, framework_version: str = SKLEARN_IMAGE_VERSION) -> str:
    account = SKLEARN_IMAGE_ACCOUNTS.get(region)
    if account is None:
        raise DeployError(
            f"no SageMaker scikit-learn image known for region {region!r}; "
            "set deploy.image_uri (or --set deploy.image_uri=URI) to the image to use"
        )
    domain = next(
        (suffix for prefix, suffix in _PARTITION_DOMAINS if region.startswith(prefix)),
        "amazonaws.com",
    )
    return f"{account}.dkr.ecr.{region}.{domain}/sagemaker-scikit-learn:{framework_version}-cpu-py3"


def _default_region(config: DeployConfig, region: str | None) -> str | None:
    return (
        region
        or config.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )


def resolve_settings(
    config: DeployConfig,
    region: str | None = None,
    bucket: str | None = None,
    role_arn: str | None = None,
) -> dict[str, str]:
    """Flags win over params.yaml, which wins over the environment; missing ones are errors."""
    region = _default_region(config, region)
    bucket = bucket or config.bucket or os.environ.get(BUCKET_ENV)
    role_arn = role_arn or config.role_arn or os.environ.get(ROLE_ENV)
    missing = []
    if not region:
        missing.append("a region (--region, deploy.region or AWS_DEFAULT_REGION)")
    if not bucket:
        missing.append(f"a bucket (--bucket, deploy.bucket or {BUCKET_ENV})")
    if not role_arn:
        missing.append(f"an execution role (--role-arn, deploy.role_arn or {ROLE_ENV})")
    if missing:
        raise DeployError("sagemaker deploy needs " + ", ".join(missing))
    return {"region": region, "bucket": bucket, "role_arn": role_arn}


def _clients(region: str):
    import boto3

    return (
        boto3.client("s3", region_name=region),
        boto3.client("sagemaker", region_name=region),
    )


def _aws_message(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return str(error)


def _step(name: str, call, *args, **kwargs):
    """Run one AWS call; failures become a DeployError naming the step."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(*args, **kwargs)
    except (ClientError, BotoCoreError, Boto3Error) as error:
        raise DeployError(f"sagemaker deploy failed at {name}: {_aws_message(error)}") from None


def _tags(
    registered: RegisteredChain,
    endpoint_name: str,
    contract_sha: str,
    history: list[str] | None = None,
):
    tags = [
        {"Key": TAG_MODEL_NAME, "Value": registered.model_name},
        {"Key": TAG_MODEL_VERSION, "Value": registered.model_version},
        {"Key": TAG_RUN_ID, "Value": registered.run_id},
        {"Key": TAG_ENDPOINT, "Value": endpoint_name},
        {"Key": TAG_CONTRACT, "Value": contract_sha},
    ]
    if history is not None:
        tags.append({"Key": TAG_HISTORY, "Value": " ".join(history[-20:])})
    return tags


def _refuse_contract_change(
    endpoint_name: str,
    old_tags: dict[str, str],
    chain: SegmentationChain,
    contract_sha: str,
    version: str,
) -> None:
    served = old_tags.get(TAG_CONTRACT)
    if served is None:
        logger.warning(
            "endpoint %r has no %s tag (deployed before contracts were recorded): its input "
            "contract cannot be compared; updating it",
            endpoint_name,
            TAG_CONTRACT,
        )
        return
    if served != contract_sha:
        raise DeployError(
            f"endpoint {endpoint_name!r} serves version {old_tags.get(TAG_MODEL_VERSION)}, whose "
            f"input contract (sha256 {served[:12]}) differs from version {version}'s "
            f"({', '.join(chain.input_columns)}); not updated (nothing uploaded or changed); "
            "--allow-contract-change or promote.allow_contract_change=true updates it anyway"
        )


def _tag_dict(sagemaker, arn: str) -> dict[str, str]:
    from botocore.exceptions import ClientError

    try:
        tags = sagemaker.list_tags(ResourceArn=arn).get("Tags", [])
    except ClientError:
        return {}
    return {tag["Key"]: tag["Value"] for tag in tags}


def describe(sagemaker, endpoint_name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return sagemaker.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in (
            "ValidationException",
            "ValidationError",
        ):
            return None
        raise DeployError(f"describe_endpoint {endpoint_name!r}: {_aws_message(error)}") from None


def deployment_config(config: DeployConfig) -> dict[str, Any]:
    """Blue/green with automatic rollback: SageMaker keeps the old fleet until the new one is
    healthy (and, with alarms, rolls back when any alarm fires during the baking period)."""
    routing: dict[str, Any] = {
        "Type": config.traffic_routing,
        "WaitIntervalInSeconds": config.wait_interval_s,
    }
    if config.traffic_routing == "CANARY":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": config.canary_percent}
    elif config.traffic_routing == "LINEAR":
        routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": config.canary_percent}
    deployment: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": config.termination_wait_s,
            "MaximumExecutionTimeoutInSeconds": max(600, config.wait_timeout_s),
        }
    }
    if config.rollback_alarms:
        deployment["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": name} for name in config.rollback_alarms]
        }
    return deployment


def _wait_in_service(sagemaker, endpoint_name: str, config: DeployConfig) -> None:
    from botocore.exceptions import WaiterError

    waiter = sagemaker.get_waiter("endpoint_in_service")
    try:
        waiter.wait(
            EndpointName=endpoint_name,
            WaiterConfig={
                "Delay": config.waiter_delay_s,
                "MaxAttempts": max(1, config.wait_timeout_s // config.waiter_delay_s),
            },
        )
    except WaiterError as error:
        current = describe(sagemaker, endpoint_name) or {}
        reason = current.get("FailureReason") or str(error)
        raise DeployError(
            f"endpoint {endpoint_name!r} did not reach InService "
            f"(status {current.get('EndpointStatus', 'unknown')}): {reason}"
        ) from None


def _smoke(
    endpoint_name: str, region: str, chain: SegmentationChain, rows: np.ndarray, deployment: str
) -> dict[str, Any]:
    client = runtime_client(region=region)
    url = client.meta.endpoint_url
    # CustomAttributes (passed through to the container, ignored by inference.py) marks the
    # request as this deployment's smoke test in logs and data capture.
    answer = invoke(
        client,
        endpoint_name,
        rows_to_csv(rows, chain),
        custom_attributes=f"popseg-smoke-test={deployment}",
    )
    if "predictions" not in answer and ".amazonaws.com" not in url:
        return {
            "passed": None,
            "verified": False,
            "rows": len(rows),
            "endpoint_url": url,
            "reason": (
                f"the runtime at {url} answered {answer.get('_raw', answer)!r}, not the model: "
                "an emulator (e.g. moto) returns canned data; the invoke call was made but "
                "the answers could not be checked"
            ),
        }
    return {**check_predictions(answer, chain, rows), "verified": True, "endpoint_url": url}


def create_model(
    s3,
    sagemaker,
    registered: RegisteredChain,
    config: DeployConfig,
    settings: dict[str, str],
    model_name: str,
    image: str,
    stamp: str,
    tags: list[dict[str, str]],
) -> str:
    """Upload the version's package and create the SageMaker model serving it (the one an
    endpoint or a batch transform job runs); returns the package's s3:// URI."""
    region, bucket = settings["region"], settings["bucket"]
    key = f"{config.prefix.strip('/')}/{registered.model_name}/v{registered.model_version}/{stamp}/model.tar.gz"
    with tempfile.TemporaryDirectory(prefix="popseg-sm-") as scratch:
        package = build_package(registered.chain_dir, Path(scratch) / "model.tar.gz")
        _step(
            "S3 upload",
            s3.upload_file,
            str(package),
            bucket,
            key,
            ExtraArgs={"ServerSideEncryption": "AES256"},
        )
    model_data = f"s3://{bucket}/{key}"
    _step(
        "create_model",
        sagemaker.create_model,
        ModelName=model_name,
        ExecutionRoleArn=settings["role_arn"],
        PrimaryContainer={
            "Image": image,
            "ModelDataUrl": model_data,
            "Environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": SUBMIT_DIRECTORY,
                "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                "SAGEMAKER_REGION": region,
            },
        },
        Tags=tags,
    )
    return model_data


def deploy_sagemaker(
    endpoint_name: str,
    registered: RegisteredChain,
    config: DeployConfig,
    settings: dict[str, str],
    sample: np.ndarray | None = None,
    allow_contract_change: bool = False,
    chain: SegmentationChain | None = None,
) -> DeployResult:
    region = settings["region"]
    capture = data_capture_config(config)  # a bad deploy.capture fails before any AWS call
    s3, sagemaker = _clients(region)
    if chain is None:
        chain = SegmentationChain.load(str(registered.chain_dir))
    rows = sample if sample is not None else smoke_sample(chain).rows
    contract_sha = contract_digest(chain.input_contract())
    image = config.image_uri or sklearn_image_uri(region, config.framework_version)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.urandom(2).hex()}"
    suffix = f"-v{registered.model_version}-{stamp}"
    resource_name = endpoint_name[: 63 - len(suffix)] + suffix

    existing = describe(sagemaker, endpoint_name)
    previous_config = existing["EndpointConfigName"] if existing else None
    old_tags = _tag_dict(sagemaker, existing["EndpointArn"]) if existing else {}
    previous_version = old_tags.get(TAG_MODEL_VERSION)
    history = [*old_tags.get(TAG_HISTORY, "").split(), registered.model_version]
    if existing and existing.get("EndpointStatus") not in ("InService", "Failed"):
        raise DeployError(
            f"endpoint {endpoint_name!r} is {existing.get('EndpointStatus')}; wait for it to "
            "settle before deploying again"
        )
    if existing and not allow_contract_change:
        _refuse_contract_change(
            endpoint_name, old_tags, chain, contract_sha, registered.model_version
        )

    tags = _tags(registered, endpoint_name, contract_sha)
    model_data = create_model(
        s3, sagemaker, registered, config, settings, resource_name, image, stamp, tags
    )
    endpoint_config: dict[str, Any] = {}
    if capture is not None:
        endpoint_config["DataCaptureConfig"] = capture
    _step(
        "create_endpoint_config",
        sagemaker.create_endpoint_config,
        EndpointConfigName=resource_name,
        ProductionVariants=[
            {
                "VariantName": VARIANT,
                "ModelName": resource_name,
                "InitialInstanceCount": config.instance_count,
                "InstanceType": config.instance_type,
                "InitialVariantWeight": 1.0,
            }
        ],
        Tags=tags,
        **endpoint_config,
    )
    if existing is None:
        action = "created"
        _step(
            "create_endpoint",
            sagemaker.create_endpoint,
            EndpointName=endpoint_name,
            EndpointConfigName=resource_name,
            Tags=_tags(registered, endpoint_name, contract_sha, history),
        )
    else:
        action = "updated"
        if TAG_AUTOSCALING in old_tags:
            _release_autoscaling_for_update(
                sagemaker, endpoint_name, previous_config, existing["EndpointArn"], config, region
            )
        _step(
            "update_endpoint",
            sagemaker.update_endpoint,
            EndpointName=endpoint_name,
            EndpointConfigName=resource_name,
            DeploymentConfig=deployment_config(config),
        )
    try:
        _wait_in_service(sagemaker, endpoint_name, config)
        current = describe(sagemaker, endpoint_name) or {}
        if current.get("EndpointConfigName") != resource_name:
            raise DeployError(
                f"endpoint {endpoint_name!r} serves {current.get('EndpointConfigName')!r} after "
                f"the update, not {resource_name!r}: the blue/green deployment was rolled back"
            )
        smoke = _smoke(endpoint_name, region, chain, rows, resource_name)
    except PopsegError as error:
        _recover(sagemaker, endpoint_name, previous_config, resource_name, config)
        kept = (
            f"the previous configuration {previous_config!r} keeps serving"
            if previous_config
            else "the new endpoint was deleted"
        )
        raise DeployError(f"{error}; {kept}") from None
    endpoint_arn = (describe(sagemaker, endpoint_name) or {}).get("EndpointArn")
    if endpoint_arn:
        _step(
            "add_tags",
            sagemaker.add_tags,
            ResourceArn=endpoint_arn,
            Tags=_tags(registered, endpoint_name, contract_sha, history),
        )
    scaling = None
    if config.autoscaling is not None:
        try:
            scaling = apply_autoscaling(endpoint_name, VARIANT, config.autoscaling, region)
        except DeployError as error:
            raise DeployError(
                f"{error}; endpoint {endpoint_name!r} serves version "
                f"{registered.model_version} with a fixed {config.instance_count} instance(s)"
            ) from None
        if endpoint_arn:
            _step(
                "add_tags",
                sagemaker.add_tags,
                ResourceArn=endpoint_arn,
                Tags=[{"Key": TAG_AUTOSCALING, "Value": scaling["resource_id"]}],
            )
    elif TAG_AUTOSCALING in old_tags:
        remove_autoscaling(endpoint_name, VARIANT, region)
        if endpoint_arn:
            _step(
                "delete_tags",
                sagemaker.delete_tags,
                ResourceArn=endpoint_arn,
                TagKeys=[TAG_AUTOSCALING],
            )
    return DeployResult(
        endpoint_name=endpoint_name,
        target="sagemaker",
        model_name=registered.model_name,
        model_version=registered.model_version,
        run_id=registered.run_id,
        endpoint_url=None,
        action=action,
        previous_version=previous_version,
        smoke_test=smoke,
        details={
            "region": region,
            "image": image,
            "model_data": model_data,
            "sagemaker_model": resource_name,
            "endpoint_config": resource_name,
            "previous_endpoint_config": previous_config,
            "endpoint_arn": endpoint_arn,
            "history": history[-20:],
            "data_capture": capture,
            "autoscaling": scaling,
        },
    )


def _release_autoscaling_for_update(
    sagemaker, endpoint_name: str, served_config: str, arn: str, config: DeployConfig, region: str
) -> None:
    """SageMaker refuses an update that changes the instance type of a variant registered
    for autoscaling: deregister it first (the deploy registers it again once InService)."""
    described = _step(
        "describe_endpoint_config",
        sagemaker.describe_endpoint_config,
        EndpointConfigName=served_config,
    )
    served = {v["VariantName"]: v["InstanceType"] for v in described["ProductionVariants"]}
    if served.get(VARIANT) == config.instance_type:
        return
    logger.warning(
        "endpoint %s: instance type %s -> %s; autoscaling deregistered for the update",
        endpoint_name,
        served.get(VARIANT),
        config.instance_type,
    )
    remove_autoscaling(endpoint_name, VARIANT, region)
    _step("delete_tags", sagemaker.delete_tags, ResourceArn=arn, TagKeys=[TAG_AUTOSCALING])


def _recover(
    sagemaker, endpoint_name: str, previous_config: str | None, new_config: str, config
) -> None:
    """After a failed update/smoke test: back to the previous config (or remove the new
    endpoint). Best effort; the original error is what the user sees."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        current = describe(sagemaker, endpoint_name)
        if previous_config is None:
            if current is not None:
                sagemaker.delete_endpoint(EndpointName=endpoint_name)
        elif current is not None and current.get("EndpointConfigName") != previous_config:
            sagemaker.update_endpoint(
                EndpointName=endpoint_name,
                EndpointConfigName=previous_config,
                DeploymentConfig=deployment_config(config),
            )
            _wait_in_service(sagemaker, endpoint_name, config)
        _delete_config_and_model(sagemaker, new_config)
    except (ClientError, BotoCoreError, PopsegError) as error:
        logger.error("recovering endpoint %s failed too: %s", endpoint_name, error)


def _delete_config_and_model(sagemaker, config_name: str) -> None:
    from botocore.exceptions import ClientError

    try:
        described = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError:
        return
    sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
    for variant in described.get("ProductionVariants", []):
        with contextlib.suppress(ClientError):
            sagemaker.delete_model(ModelName=variant["ModelName"])


def undeploy_sagemaker(endpoint_name: str, region: str) -> dict[str, Any]:
    _, sagemaker = _clients(region)
    current = describe(sagemaker, endpoint_name)
    if current is None:
        raise EndpointError(f"no SageMaker endpoint named {endpoint_name!r} in {region}")
    scaling_removed = TAG_AUTOSCALING in _tag_dict(
        sagemaker, current["EndpointArn"]
    ) and remove_autoscaling(endpoint_name, VARIANT, region)
    _step("delete_endpoint", sagemaker.delete_endpoint, EndpointName=endpoint_name)
    _delete_config_and_model(sagemaker, current["EndpointConfigName"])
    return {
        "endpoint_name": endpoint_name,
        "target": "sagemaker",
        "deleted_endpoint_config": current["EndpointConfigName"],
        "autoscaling_removed": scaling_removed,
        "stopped": True,
    }


def list_sagemaker(region: str) -> list[dict[str, Any]]:
    """popseg-made endpoints (tagged with a model version) in the region."""
    _, sagemaker = _clients(region)
    rows = []
    paginator = sagemaker.get_paginator("list_endpoints")
    for page in _step("list_endpoints", lambda: list(paginator.paginate())):
        for endpoint in page.get("Endpoints", []):
            tags = _tag_dict(sagemaker, endpoint["EndpointArn"])
            if TAG_MODEL_VERSION not in tags:
                continue
            rows.append(
                {
                    "name": endpoint["EndpointName"],
                    "target": "sagemaker",
                    "status": endpoint.get("EndpointStatus"),
                    "model_name": tags.get(TAG_MODEL_NAME),
                    "model_version": tags.get(TAG_MODEL_VERSION),
                    "run_id": tags.get(TAG_RUN_ID),
                    "history": tags.get(TAG_HISTORY, "").split(),
                    "endpoint_arn": endpoint["EndpointArn"],
                }
            )
    return rows


def endpoint_description(endpoint_name: str, region: str) -> EndpointDescription:
    """The served version and the deploy history, from the endpoint's tags."""
    _, sagemaker = _clients(region)
    current = describe(sagemaker, endpoint_name)
    if current is None:
        raise EndpointError(f"no SageMaker endpoint named {endpoint_name!r} in {region}")
    tags = _tag_dict(sagemaker, current["EndpointArn"])
    return EndpointDescription(
        name=endpoint_name,
        target="sagemaker",
        status=current.get("EndpointStatus"),
        model_version=tags.get(TAG_MODEL_VERSION),
        history=tags.get(TAG_HISTORY, "").split(),
    )


# ----------------------------------------------------------------------------- the target


class SagemakerTarget(BaseTarget):
    """``sagemaker`` behind the ``Target`` protocol: the functions above, with the region,
    bucket and role resolved from the options, params.yaml and the environment."""

    name = "sagemaker"
    extra = "aws"

    def _settings(self) -> dict[str, str]:
        options = self.options
        return resolve_settings(self.config, options.region, options.bucket, options.role_arn)

    def _region(self) -> str:
        found = _default_region(self.config, self.options.region)
        if not found:
            raise DeployError(
                "sagemaker needs a region (--region, deploy.region or AWS_DEFAULT_REGION)"
            )
        return found

    def check(self) -> None:
        """The settings, then the credentials: a missing setting is named before secrets."""
        from tasks.preflight import check_aws_credentials

        self._settings()
        check_aws_credentials("sagemaker deploy", DeployError)

    def _deploy(
        self, endpoint_name: str, release: Release, allow_contract_change: bool
    ) -> DeployResult:
        config = self.config
        if self.options.capture:  # --capture: an s3:// prefix for DataCaptureConfig
            config = config.model_copy(update={"capture": self.options.capture})
        return deploy_sagemaker(
            endpoint_name,
            release.registered,
            config,
            self._settings(),
            release.sample.rows,
            allow_contract_change,
            chain=release.chain,
        )

    def undeploy(self, endpoint_name: str) -> dict[str, Any]:
        return undeploy_sagemaker(endpoint_name, self._region())

    def describe(self, endpoint_name: str) -> EndpointDescription:
        return endpoint_description(endpoint_name, self._region())

    def list(self) -> list[dict[str, Any]]:
        return list_sagemaker(self._region())

    def invoke(
        self, endpoint_name: str, records: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        return invoke_rows(runtime_client(region=self._region()), endpoint_name, records)
