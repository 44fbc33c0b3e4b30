"""The local endpoint (a real ``python -m tasks.serving.server`` process) refuses every request
of ``tests/serving_contract.py`` with its 4xx status and a short JSON message, through the
stock boto3 sagemaker-runtime client, and keeps serving: the same table the SageMaker
container's serving stack is held to (tests/integration/test_container_serving.py)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from tests.reliability import endpoint_process
from tests.reliability.endpoint_process import NAME, ROW, start_endpoint, stop_endpoint
from tests.serving_contract import BAD_REQUESTS, BadRequest

model_dir = endpoint_process.model_dir


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    endpoint = start_endpoint(tmp_path_factory.mktemp("contract-endpoint"), model_dir)
    yield endpoint, endpoint.runtime_client()
    stop_endpoint(endpoint)


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.name)
def test_bad_requests_are_4xx_and_the_server_keeps_serving(served, case: BadRequest):
    endpoint, client = served
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(
            EndpointName=NAME, ContentType=case.content_type, Accept=case.accept, Body=case.body
        )
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == case.status
    assert case.message in response["Error"]["Message"]
    assert len(response["Error"]["Message"]) < 400
    assert endpoint.ping()["status"] == "ok"
    reply = client.invoke_endpoint(EndpointName=NAME, ContentType="text/csv", Body=ROW)
    assert len(json.loads(reply["Body"].read())["predictions"]) == 1
