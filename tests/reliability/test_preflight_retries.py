"""Credential and permission errors are never retried: a missing or refused credential is
one clear error at once, not three backoffs (50 s) and then a network-sounding failure."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from flows.orchestration import is_transient
from tasks.errors import CredentialsError, SourceUnavailableError


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")


@pytest.mark.parametrize(
    "error",
    [
        NoCredentialsError(),
        PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
        *(
            _client_error(code)
            for code in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "ExpiredToken",
            )
        ),
    ],
    ids=lambda error: (
        type(error).__name__ + getattr(error, "response", {}).get("Error", {}).get("Code", "")
    ),
)
def test_credential_errors_are_not_transient(error):
    assert is_transient(error) is False
    # Also when wrapped in an error popseg would otherwise retry.
    try:
        try:
            raise error
        except Exception:
            raise SourceUnavailableError("s3://b/k: cannot reach S3") from None
    except SourceUnavailableError as wrapped:
        assert is_transient(wrapped) is False


def test_network_faults_stay_transient():
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(_client_error("ThrottlingException"))
    assert is_transient(SourceUnavailableError("s3://b/k: cannot reach S3"))


@pytest.fixture
def no_aws_credentials(moto_server, monkeypatch, tmp_path):
    import s3fs

    empty = tmp_path / "aws-empty"
    empty.write_text("")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_read_without_credentials_is_a_credentials_error(no_aws_credentials):
    """Past pre-flight (e.g. `popseg stage ingest`, the monitor flow): the read itself."""
    from tasks.ingest import read_table

    started = time.perf_counter()
    with pytest.raises(CredentialsError) as excinfo:
        read_table("s3://popseg-data/crime.csv")
    assert time.perf_counter() - started < 10
    assert "s3://popseg-data/crime.csv" in str(excinfo.value)
    assert "credentials" in str(excinfo.value)
    assert is_transient(excinfo.value) is False


def test_ingest_task_is_not_retried_without_credentials(prefect_server, no_aws_credentials):
    """The training flow's ingest step with its retry options (3 retries, 5-20 s backoff):
    one attempt, then the error."""
    from prefect import flow, task

    from flows import orchestration, stages
    from tasks.config import load_params

    params = load_params(overrides=["data.path=s3://popseg-data/crime.csv"])
    attempts = []

    def counted_ingest(params):
        attempts.append(time.perf_counter())
        return stages.ingest_stage(params)

    ingest = task(counted_ingest, name="ingest", persist_result=False).with_options(
        **orchestration.network_options(params.orchestrate)
    )

    @flow(name="ingest-without-credentials")
    def only_ingest():
        return ingest(params)

    with pytest.raises(CredentialsError):
        only_ingest()
    assert len(attempts) == 1
