"""SageMaker data capture: the endpoint config's ``DataCaptureConfig`` from ``deploy.capture``,
and the capture files SageMaker writes, read back for `popseg monitor`.

SageMaker writes one JSON lines file per batch of captured invocations under
``{DestinationS3Uri}/{endpoint}/{variant}/{yyyy}/{mm}/{dd}/{hh}/{mm-ss-fff}-{uuid}.jsonl``; each
line is ``{"captureData": {"endpointInput": {"observedContentType", "mode", "data",
"encoding"}, "endpointOutput": {...}}, "eventMetadata": {...}, "eventVersion": "0"}`` with
``encoding`` CSV or JSON (the content types named in ``CaptureContentTypeHeader``, written as
text) or BASE64. The local endpoint writes the same records, so `tasks.monitor` parses both
with one reader; this module only finds and concatenates the S3 files, oldest first (the key
carries the capture time).
"""

from __future__ import annotations

from typing import Any

from tasks.config import DeployConfig
from tasks.errors import CredentialsError, DataError, DeployError, SourceUnavailableError
from tasks.extras import require

CAPTURE_SUFFIX = ".jsonl"
# Captured as text (encoding CSV / JSON) rather than base64: the request types inference.py
# accepts, so a capture file is readable as it is.
CSV_CONTENT_TYPES = ["text/csv"]
JSON_CONTENT_TYPES = ["application/json"]
# endpoint/variant/yyyy/mm/dd/hh/file: the parts of a key below the destination prefix.
_KEY_DEPTH = 7


def data_capture_config(config: DeployConfig) -> dict[str, Any] | None:
    """``DataCaptureConfig`` for ``create_endpoint_config`` (None: ``deploy.capture`` unset)."""
    if config.capture is None:
        return None
    if not config.capture.startswith("s3://") or not config.capture[5:].strip("/"):
        raise DeployError(
            f"deploy.capture {config.capture!r}: the sagemaker target captures to S3; "
            "give an s3://bucket/prefix"
        )
    capture: dict[str, Any] = {
        "EnableCapture": True,
        "InitialSamplingPercentage": config.capture_sampling_percent,
        "DestinationS3Uri": config.capture.rstrip("/"),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {
            "CsvContentTypes": CSV_CONTENT_TYPES,
            "JsonContentTypes": JSON_CONTENT_TYPES,
        },
    }
    if config.capture_kms_key:
        capture["KmsKeyId"] = config.capture_kms_key
    return capture


def is_capture_prefix(path: str) -> bool:
    """An S3 folder of capture files (``s3://bucket/prefix/``), not one object."""
    return path.startswith("s3://") and path.endswith("/")


def capture_prefix(uri: str) -> str:
    """``popseg monitor --capture``: an s3:// location is a folder of capture files."""
    if uri.startswith("s3://") and not uri.endswith("/"):
        return uri + "/"
    return uri


def _s3_call(uri: str, call, *args):
    from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

    try:
        return call(*args)
    except FileNotFoundError:
        raise DataError(f"{uri}: no such bucket or object in S3") from None
    except PermissionError as error:
        raise CredentialsError(f"{uri}: access denied ({error})") from None
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise CredentialsError(f"{uri}: no usable AWS credentials ({error})") from None
    except BotoCoreError as error:
        raise SourceUnavailableError(f"{uri}: cannot reach S3: {error}") from None
    except OSError as error:
        raise DataError(f"{uri}: cannot read from S3: {error}") from None


def capture_files(uri: str) -> list[str]:
    """The capture files (``.jsonl``) under an S3 prefix, oldest first. A prefix holding the
    capture of several endpoints is an error naming them: their requests are not one stream."""
    require("aws", uri)
    import s3fs

    fs = s3fs.S3FileSystem()
    root = uri.removeprefix("s3://").rstrip("/")
    fs.invalidate_cache(root)  # a long-lived process (popseg serve) must see new capture files
    found = _s3_call(uri, fs.find, root)
    keys = [key for key in found if key.endswith(CAPTURE_SUFFIX)]
    if not keys:
        raise DataError(f"{uri}: no SageMaker capture files ({CAPTURE_SUFFIX}) under this prefix")
    endpoints = sorted(
        {
            "/".join(parts[-_KEY_DEPTH:-5])
            for parts in (key[len(root) + 1 :].split("/") for key in keys)
            if len(parts) >= _KEY_DEPTH
        }
    )
    if len(endpoints) > 1:
        raise DataError(
            f"{uri}: holds the capture of several endpoint variants ({', '.join(endpoints)}); "
            f"name one, e.g. {uri.rstrip('/')}/{endpoints[0]}/"
        )
    # Below one variant the key is yyyy/mm/dd/hh/mm-ss-fff-uuid: key order is time order.
    return [f"s3://{key}" for key in sorted(keys)]


def read_capture_prefix(uri: str) -> bytes:
    """Every capture file under ``uri`` as one JSON lines payload, oldest first."""
    import s3fs

    fs = s3fs.S3FileSystem()
    parts = []
    for path in capture_files(uri):
        payload = _s3_call(path, fs.cat_file, path)
        parts.append(payload if payload.endswith(b"\n") else payload + b"\n")
    return b"".join(parts)
