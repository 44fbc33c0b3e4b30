"""The stack's S3 store: the one the usual AWS variables configure (``AWS_ENDPOINT_URL`` for
an S3-compatible store, credentials from ``AWS_ACCESS_KEY_ID``/``AWS_PROFILE``/...), else
moto's S3 server on 127.0.0.1 as a stand-in (in memory: its objects go when it stops)."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from flows.stack.processes import Service, service_environment, spawn, wait_ready
from tasks.errors import StackError

STARTUP_TIMEOUT_S = 60.0
# moto accepts any credentials; these are what the stack's clients get with it.
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "popseg-stack",
    "AWS_SECRET_ACCESS_KEY": "popseg-stack",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def configured(own_endpoint: str | None = None) -> str | None:
    """Why an S3 store is configured (the variable that says so), or None for moto. The
    stack's own moto endpoint in the environment (a shell that ran `popseg stack env`) is not
    another store."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if own_endpoint and endpoint == own_endpoint:
        return None
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"):
        if os.environ.get(variable):
            return variable
    return None


def moto_answers(port: int | None) -> bool:
    if not port:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


def start_moto(root: Path, port: int) -> Service:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise StackError(
            "no S3 store configured (AWS_ENDPOINT_URL / AWS credentials) and moto's server is "
            "not installed: point the AWS variables at your S3 store, or install moto[server]"
        ) from None
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    log = root / "logs" / "s3.log"
    service = spawn("s3", command, log, port, service_environment({}), root)
    wait_ready(service, lambda: moto_answers(port), STARTUP_TIMEOUT_S, "moto S3 server")
    return service


def client_environment(endpoint_url: str | None) -> dict[str, str]:
    """The variables a process needs to reach the stack's S3 store: moto's endpoint and its
    dummy credentials, or nothing (a configured store is already in the environment)."""
    if endpoint_url is None:
        return {}
    return {"AWS_ENDPOINT_URL": endpoint_url, **MOTO_CREDENTIALS}


def ensure_bucket(bucket: str, endpoint_url: str | None) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    saved = dict(os.environ)
    os.environ.update(client_environment(endpoint_url))
    try:
        client = boto3.client("s3")
        try:
            client.head_bucket(Bucket=bucket)
            return
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise StackError(f"s3://{bucket}: {error}") from None
        client.create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as error:
        raise StackError(f"s3://{bucket}: cannot create the artifact bucket ({error})") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
