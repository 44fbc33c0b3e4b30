"""The scikit-learn serving image: the region table and the chosen version against the
sagemaker SDK's published image table (a copy in tests/unit/fixtures, source and commit named
there), and each region's registry host against botocore's endpoint data, as the SDK builds it."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import botocore.loaders
import botocore.regions
import pytest

from tasks.config import DeployConfig
from tasks.deploy.sagemaker import SKLEARN_IMAGE_ACCOUNTS, SKLEARN_IMAGE_VERSION, sklearn_image_uri

FIXTURE = Path(__file__).parent / "fixtures" / "sagemaker_sdk_sklearn_image_uris.json"
SDK = json.loads(FIXTURE.read_text())
INFERENCE = SDK["config"]["inference"]["versions"]
ALLOWED_VERSIONS = typing.get_args(DeployConfig.model_fields["framework_version"].annotation)


def _release(version: str) -> tuple[int, ...]:
    """'1.4-2-py312' -> (1, 4, 2, 312): scikit-learn version, image build, Python."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def test_the_fixture_names_its_source():
    assert SDK["repository"] == "aws/sagemaker-python-sdk"
    assert re.fullmatch(r"[0-9a-f]{40}", SDK["commit"])
    assert SDK["source"].endswith(SDK["path"]) and SDK["commit"] in SDK["source"]


def test_the_default_image_is_the_newest_serving_image_the_sdk_lists():
    assert DeployConfig().framework_version == SKLEARN_IMAGE_VERSION
    assert max(INFERENCE, key=_release) == SKLEARN_IMAGE_VERSION
    for version in ALLOWED_VERSIONS:
        assert version in INFERENCE, version
        assert INFERENCE[version]["processors"] == ["cpu"]
        assert INFERENCE[version]["repository"] == "sagemaker-scikit-learn"


@pytest.mark.parametrize("version", ALLOWED_VERSIONS)
def test_the_region_table_is_the_sdks(version):
    assert INFERENCE[version]["registries"] == SKLEARN_IMAGE_ACCOUNTS


def test_every_region_gets_the_image_uri_the_sdk_would_build():
    # The SDK: "{registry}.dkr.{hostname}/{repository}:{version}-{processor}-{py_version}",
    # hostname from botocore's endpoint resolver for "ecr".
    resolver = botocore.regions.EndpointResolver(
        botocore.loaders.create_loader().load_data("endpoints")
    )
    for region, account in INFERENCE[SKLEARN_IMAGE_VERSION]["registries"].items():
        hostname = resolver.construct_endpoint("ecr", region)["hostname"]
        assert sklearn_image_uri(region) == (
            f"{account}.dkr.{hostname}/sagemaker-scikit-learn:{SKLEARN_IMAGE_VERSION}-cpu-py3"
        ), region
