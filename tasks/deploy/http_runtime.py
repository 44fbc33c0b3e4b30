"""The client that invokes a local endpoint: SageMaker's runtime call
(``POST /endpoints/{name}/invocations``) over plain HTTP, so serving locally needs no boto3
(the 'aws' extra).

It answers like boto3's ``sagemaker-runtime`` client, which ``contract.invoke`` also takes:
``invoke_endpoint(EndpointName=..., ContentType=..., Accept=..., Body=...)`` returns
``{"Body": <readable>, "ContentType": ...}``; a 4xx/5xx answer raises ``Refused`` carrying
botocore's ``response["Error"]`` shape, no answer raises ``Unreachable``. Like the boto3
client of ``contract.runtime_client`` it makes two attempts on 500/502/503/504 and on
connection errors.
"""

from __future__ import annotations

import http.client
import io
import json
import time
import urllib.parse
from typing import Any

ATTEMPTS = 2
RETRY_STATUSES = (500, 502, 503, 504)
RETRY_PAUSE_S = 0.5
READ_TIMEOUT_S = 60.0


class Refused(Exception):
    """The endpoint answered with an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.response = {"Error": {"Code": code, "Message": message}}


class Unreachable(Exception):
    """No answer: connection refused or reset, or a timeout."""


class HttpRuntimeClient:
    """``invoke_endpoint`` against the endpoint server at ``url`` (http://127.0.0.1:PORT)."""

    errors = (Refused, Unreachable)

    def __init__(self, url: str, timeout_s: float = READ_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"{url!r}: expected http://HOST:PORT")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.timeout_s = timeout_s

    def invoke_endpoint(
        self,
        EndpointName: str,
        Body: str | bytes,
        ContentType: str = "text/csv",
        Accept: str = "application/json",
        CustomAttributes: str | None = None,
    ) -> dict[str, Any]:
        body = Body.encode("utf-8") if isinstance(Body, str) else Body
        headers = {"Content-Type": ContentType, "Accept": Accept}
        if CustomAttributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = CustomAttributes
        path = f"/endpoints/{urllib.parse.quote(EndpointName, safe='')}/invocations"
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status, content_type, payload = self._post(path, body, headers)
            except (OSError, http.client.HTTPException) as error:
                if attempt == ATTEMPTS:
                    raise Unreachable(f"{self.host}:{self.port}: {error}") from None
            else:
                if status < 400:
                    return {"Body": io.BytesIO(payload), "ContentType": content_type}
                if status not in RETRY_STATUSES or attempt == ATTEMPTS:
                    raise _refused(status, payload)
            time.sleep(RETRY_PAUSE_S)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.request("POST", path, body=body, headers=headers)
            reply = connection.getresponse()
            return reply.status, reply.getheader("Content-Type", ""), reply.read()
        finally:
            connection.close()


def _refused(status: int, payload: bytes) -> Refused:
    """The server's ``{"code", "message"}`` answer, or the raw body when it is not JSON."""
    try:
        document = json.loads(payload)
    except ValueError:
        document = None
    if isinstance(document, dict):
        code = str(document.get("code") or status)
        message = str(document.get("message") or document)
        return Refused(status, code, message)
    return Refused(status, str(status), payload.decode("utf-8", errors="replace")[:300])
