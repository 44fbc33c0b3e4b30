"""infra/sagemaker.yaml passes cfn-lint and keeps its security properties."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "sagemaker.yaml"


class _CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}


_CfnLoader.add_multi_constructor("!", _tag)


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bucket_is_encrypted_and_private_and_role_is_scoped():
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    bucket = template["Resources"]["ModelBucket"]["Properties"]
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    role = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in _statements(p)]
    actions = sorted(
        a
        for s in statements
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    )
    assert not any(a.endswith("*") for a in actions)
    assert "s3:GetObject" in actions
    # The containers write only the data capture and batch transform prefixes, never the
    # model packages they serve.
    writes = sorted(s["Resource"]["Sub"] for s in statements if "s3:PutObject" in s["Action"])
    assert writes == [
        "${ModelBucket.Arn}/${BatchPrefix}/*",
        "${ModelBucket.Arn}/${CapturePrefix}/*",
    ]
    wildcard = [s for s in statements if s["Resource"] == "*"]
    assert [s["Action"] for s in wildcard] == ["ecr:GetAuthorizationToken"]
    assert set(template["Outputs"]) >= {"BucketName", "RoleArn", "CaptureUri", "OperatorPolicyArn"}


def _statements(policy) -> list[dict]:
    return policy["PolicyDocument"]["Statement"]


def test_operator_policy_names_each_action_and_passes_only_the_execution_role():
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    policy = template["Resources"]["OperatorPolicy"]["Properties"]
    statements = _statements(policy)
    by_sid = {s["Sid"]: s for s in statements}
    actions = [
        a
        for s in statements
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    assert not any("*" in a for a in actions)
    assert {
        "sagemaker:CreateTransformJob",
        "sagemaker:DescribeTransformJob",
        "application-autoscaling:RegisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "application-autoscaling:DeregisterScalableTarget",
        "application-autoscaling:DeleteScalingPolicy",
    } <= set(actions)
    # KMS only with a capture key, and only on that key.
    for name, action in [
        ("CaptureEncryptPolicy", ["kms:Encrypt", "kms:GenerateDataKey"]),
        ("OperatorCaptureDecryptPolicy", "kms:Decrypt"),
    ]:
        resource = template["Resources"][name]
        assert resource["Condition"] == "HasCaptureKmsKey"
        [statement] = _statements(resource["Properties"])
        assert statement["Action"] == action
        assert statement["Resource"] == {"Ref": "CaptureKmsKeyArn"}
    assert by_sid["PassExecutionRole"]["Resource"] == {"GetAtt": "SageMakerExecutionRole.Arn"}
    assert by_sid["PassExecutionRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }
    wildcard = sorted(s["Sid"] for s in statements if s["Resource"] == "*")
    assert wildcard == ["Autoscaling", "ListEndpoints"]
    # The operator writes model packages and batch inputs; it never writes the capture.
    writes = sorted(s["Resource"]["Sub"] for s in statements if "s3:PutObject" in s["Action"])
    assert writes == ["${ModelBucket.Arn}/${BatchPrefix}/*", "${ModelBucket.Arn}/${ModelPrefix}/*"]
