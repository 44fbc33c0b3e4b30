"""Autoscaling of a SageMaker endpoint's production variant with Application Auto Scaling.

``deploy.autoscaling`` registers the variant's instance count as a scalable target
(``sagemaker:variant:DesiredInstanceCount``, between ``min_instances`` and ``max_instances``)
and one target-tracking policy on ``SageMakerVariantInvocationsPerInstance`` (invocations per
instance per minute). Registering updates an existing target in place. The endpoint's
``popseg:autoscaling`` tag records a registration, so a later deploy with ``autoscaling: null``
and undeploy remove it, and an endpoint that never had one needs no autoscaling permission.
"""

from __future__ import annotations

import logging
from typing import Any

from tasks.config import AutoscalingConfig
from tasks.errors import DeployError

logger = logging.getLogger(__name__)

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
POLICY_NAME = "popseg-invocations-per-instance"


def resource_id(endpoint_name: str, variant: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def _client(region: str):
    import boto3

    return boto3.client("application-autoscaling", region_name=region)


def _call(what: str, call, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(**kwargs)
    except ClientError as error:
        err = error.response.get("Error", {})
        raise DeployError(
            f"autoscaling failed at {what} for {kwargs.get('ResourceId')}: "
            f"{err.get('Code', 'Error')}: {err.get('Message', '')}"
        ) from None
    except BotoCoreError as error:
        raise DeployError(
            f"autoscaling failed at {what} for {kwargs.get('ResourceId')}: {error}"
        ) from None


def apply_autoscaling(
    endpoint_name: str, variant: str, config: AutoscalingConfig, region: str
) -> dict[str, Any]:
    """Register the variant and its target-tracking policy; returns what was registered."""
    client = _client(region)
    target = {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name, variant),
        "ScalableDimension": DIMENSION,
    }
    _call(
        "register_scalable_target",
        client.register_scalable_target,
        **target,
        MinCapacity=config.min_instances,
        MaxCapacity=config.max_instances,
    )
    policy = _call(
        "put_scaling_policy",
        client.put_scaling_policy,
        **target,
        PolicyName=POLICY_NAME,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": config.target_invocations_per_instance,
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": config.scale_in_cooldown_s,
            "ScaleOutCooldown": config.scale_out_cooldown_s,
        },
    )
    logger.info(
        "autoscaling %s: %d..%d instances, target %s invocations per instance",
        target["ResourceId"],
        config.min_instances,
        config.max_instances,
        config.target_invocations_per_instance,
    )
    return {
        "resource_id": target["ResourceId"],
        "min_instances": config.min_instances,
        "max_instances": config.max_instances,
        "target_invocations_per_instance": config.target_invocations_per_instance,
        "policy_arn": policy.get("PolicyARN"),
    }


def remove_autoscaling(endpoint_name: str, variant: str, region: str) -> bool:
    """Delete the variant's scaling policies and deregister it; False when none was
    registered."""
    client = _client(region)
    target = {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name, variant),
        "ScalableDimension": DIMENSION,
    }
    registered = _call(
        "describe_scalable_targets",
        client.describe_scalable_targets,
        ServiceNamespace=NAMESPACE,
        ResourceIds=[target["ResourceId"]],
        ScalableDimension=DIMENSION,
    ).get("ScalableTargets", [])
    if not registered:
        return False
    policies = _call(
        "describe_scaling_policies",
        client.describe_scaling_policies,
        ServiceNamespace=NAMESPACE,
        ResourceId=target["ResourceId"],
        ScalableDimension=DIMENSION,
    ).get("ScalingPolicies", [])
    for policy in policies:
        _call(
            "delete_scaling_policy",
            client.delete_scaling_policy,
            **target,
            PolicyName=policy["PolicyName"],
        )
    _call("deregister_scalable_target", client.deregister_scalable_target, **target)
    logger.info("autoscaling of %s removed", target["ResourceId"])
    return True
