"""The bad requests both serving targets must refuse with the same 4xx status: the local
endpoint (``tasks/serving/server.py``, tests/integration/test_local_endpoint.py) and the
SageMaker scikit-learn container's serving stack (tests/integration/test_container_serving.py).
One table, so that the two targets are held to one error contract; and the stock boto3 client
that the tests of a local endpoint invoke it with.

Requests are for the crime model (features Murder, Assault, UrbanPop, Rape, Density).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ROW = "13.2,236,58,21.2,71.3\n"


@dataclass(frozen=True)
class BadRequest:
    name: str
    body: bytes
    content_type: str
    status: int
    message: str  # part of the answer's JSON "message"
    accept: str = "application/json"
    # Where the container words the refusal differently (same status); why, in the table.
    container_message: str | None = None

    @property
    def expected_container_message(self) -> str:
        return self.container_message or self.message


BAD_REQUESTS = [
    BadRequest(
        "csv-too-few-fields", b"1,2\n", "text/csv", 400, "CSV line 1 has 2 field(s); expected 5"
    ),
    BadRequest(
        "csv-unknown-feature", b"Murder,Nope\n1,2\n", "text/csv", 400, "unknown feature(s) 'Nope'"
    ),
    BadRequest(
        "csv-header-only", b"Murder,Assault\n", "text/csv", 400, "has a header but no data rows"
    ),
    BadRequest(
        "json-not-a-number",
        b'{"instances": [{"features": [1, 2, "x", 4, 5]}]}',
        "application/json",
        400,
        "'x' is not a number",
    ),
    BadRequest("json-invalid", b'{"instances": [', "application/json", 400, "not valid JSON"),
    BadRequest(
        "json-nested-too-deep",
        b"[" * 100_000 + b"]" * 100_000,
        "application/json",
        400,
        "nests JSON deeper than 64 levels",
    ),
    BadRequest("empty-body", b"", "text/csv", 400, "the request body is empty"),
    BadRequest(
        "not-utf8",
        b"\xff\xfe" + ROW.encode(),
        "text/csv",
        400,
        "not UTF-8",
        # The container's Request decodes text/csv itself (undecodable bytes replaced), so the
        # row reaches the parser and is refused there.
        container_message="'\\ufffd\\ufffd13.2' is not a number",
    ),
    BadRequest(
        "unsupported-content-type",
        b"1,2,3,4,5",
        "application/octet-stream",
        415,
        "unsupported content type",
    ),
    BadRequest(
        "unacceptable-accept",
        ROW.encode(),
        "text/csv",
        406,
        "unsupported accept type",
        accept="text/html",
    ),
    BadRequest(
        "too-many-rows",
        ROW.encode() * 100_001,
        "text/csv",
        413,
        "too many rows (100001 > 100000)",
    ),
    BadRequest(
        "body-over-6-mib",
        b"1,2,3,4,5\n" * 700_000,
        "text/csv",
        413,
        "over the endpoint's limit",
        # The local server refuses the size before reading the body; in SageMaker the 6 MB
        # limit is enforced in front of the container, which refuses the row count instead.
        container_message="too many rows (700000 > 100000)",
    ),
]


def runtime_client(url: str):
    """The stock boto3 sagemaker-runtime client pointed at a local endpoint (its base URL)."""
    import boto3

    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


def invoke_json(
    client, endpoint_name: str, body: str | bytes, content_type: str = "text/csv"
) -> dict[str, Any]:
    """One invocation asking for JSON; the decoded answer (a refusal raises ClientError)."""
    reply = client.invoke_endpoint(
        EndpointName=endpoint_name, ContentType=content_type, Accept="application/json", Body=body
    )
    assert reply["ContentType"] == "application/json"
    return json.loads(reply["Body"].read())
