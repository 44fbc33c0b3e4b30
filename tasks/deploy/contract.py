"""What every deploy target shares: the ``Target`` protocol, the release it serves, the
request/response contract of an endpoint, and its smoke test.

A ``Release`` is a registered version loaded once: its chain artifact on disk, the chain
itself and the smoke rows (the first training rows, with their ids). A target deploys a
release, smoke-tests the endpoint through SageMaker's runtime call (the stock boto3
``sagemaker-runtime`` client for SageMaker, ``http_runtime.HttpRuntimeClient`` for a local
endpoint) and checks the answers against the chain itself (same segments, same distances, and for a Gaussian mixture the same membership
probabilities).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tasks.chain import SegmentationChain
from tasks.config import DeployConfig
from tasks.errors import ConfigError, DeployError, EndpointError, RegistryError
from tasks.package import RegisteredChain

# SageMaker's endpoint-name rule; local names follow it too, which also keeps them plain file
# names (no "/", "..") inside the local state folder.
ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
FILL_VALUES_ID = "training fill values"
PROBABILITY = "membership_probability"  # a Gaussian mixture's third answer


def validate_endpoint_name(name: str, what: str = "endpoint name") -> str:
    """``name`` when it follows SageMaker's rule, else a ConfigError naming the value."""
    if not isinstance(name, str) or ENDPOINT_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"{what} {name!r}: use 1-63 letters, digits and hyphens, starting and ending with "
            "a letter or digit (SageMaker's rule ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$)"
        )
    return name


# ----------------------------------------------------------------------------- results


@dataclass
class DeployResult:
    endpoint_name: str
    target: str
    model_name: str
    model_version: str
    run_id: str
    endpoint_url: str | None = None
    action: str = "created"  # created | updated | reloaded
    previous_version: str | None = None
    smoke_test: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # The smoke rows' ids with the endpoint's answers (empty when the answers were not checked).
    sample: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(
        cls, registered: RegisteredChain, endpoint_name: str, target: str, **fields: Any
    ) -> DeployResult:
        """The result of serving ``registered`` on ``endpoint_name``."""
        return cls(
            endpoint_name=endpoint_name,
            target=target,
            model_name=registered.model_name,
            model_version=registered.model_version,
            run_id=registered.run_id,
            **fields,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EndpointDescription:
    """One endpoint as its target records it: the served version and the deploy history."""

    name: str
    target: str
    status: str | None
    model_version: str | None
    history: list[str] = field(default_factory=list)  # versions, oldest first

    def previous_version(self) -> str | None:
        """The version served before the current one (skipping repeats of it)."""
        for version in reversed(self.history):
            if version != self.model_version:
                return version
        return None


# ----------------------------------------------------------------------------- the release


@dataclass(frozen=True)
class SmokeSample:
    rows: np.ndarray
    ids: list[str]


def smoke_sample(chain: SegmentationChain, frame=None, n: int = 5) -> SmokeSample:
    """The first ``n`` training rows (ids from the chain's id column, else ``row_1``...) when
    the frame has every feature, else one row of the training fill values."""
    if frame is not None and all(name in frame.columns for name in chain.feature_names):
        head = frame.head(n)
        if len(head):
            id_column = chain.metadata.get("id_column")
            ids = (
                head[id_column].astype(str).tolist()
                if id_column in head.columns
                else [f"row_{i + 1}" for i in range(len(head))]
            )
            return SmokeSample(head[chain.feature_names].to_numpy(dtype=np.float64), ids)
    return SmokeSample(chain.fill_values.reshape(1, -1).copy(), [FILL_VALUES_ID])


@dataclass(frozen=True)
class Release:
    """A registered version, loaded once for a deploy: what every target needs of it."""

    registered: RegisteredChain
    chain: SegmentationChain
    sample: SmokeSample


def load_release(
    model_name: str, version: str | None, folder: str | Path, smoke_rows: int
) -> Release:
    """Download version ``version`` (default: alias champion) into ``folder`` and load its
    chain and smoke rows (the fill values when the run logged no training data)."""
    from tasks.package import load_registered_chain
    from tasks.register import load_training_frame

    registered, chain = load_registered_chain(model_name, version, folder)
    try:
        frame = load_training_frame(registered.run_id)
    except RegistryError:
        frame = None
    return Release(registered, chain, smoke_sample(chain, frame, smoke_rows))


def answered_sample(sample: SmokeSample, smoke_test: dict[str, Any]) -> list[dict[str, Any]]:
    """Each smoke row's id with the endpoint's checked answer for it."""
    answers = smoke_test.get("answers") or []
    return [{"id": row_id, **answer} for row_id, answer in zip(sample.ids, answers, strict=False)]


# ----------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class TargetOptions:
    """Per-call settings from the command line; None falls back on params.yaml's ``deploy``."""

    port: int | None = None  # local
    capture: str | None = None  # local: a file; sagemaker: an s3:// prefix
    region: str | None = None  # sagemaker
    bucket: str | None = None  # sagemaker
    role_arn: str | None = None  # sagemaker


@runtime_checkable
class Target(Protocol):
    """A place that serves releases. Built from the ``deploy`` config and ``TargetOptions``."""

    name: str
    extra: str | None  # the popseg extra it needs (tasks/extras.py), None for none

    def check(self) -> None:
        """Settings and credentials this target needs, checked before anything is loaded."""

    def deploy(
        self, endpoint_name: str, release: Release, allow_contract_change: bool
    ) -> DeployResult:
        """Create or update the endpoint to serve ``release``; smoke-test it; on failure the
        previous model keeps serving."""

    def undeploy(self, endpoint_name: str) -> dict[str, Any]: ...

    def describe(self, endpoint_name: str) -> EndpointDescription: ...

    def list(self) -> list[dict[str, Any]]: ...

    def rollback(
        self, endpoint_name: str, release: Release, allow_contract_change: bool
    ) -> DeployResult:
        """Serve ``release``, an earlier version, again."""

    def invoke(
        self, endpoint_name: str, records: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """The endpoint's predictions for ``records``: rows as every client sends them, raw
        values keyed by request column (a categorical column's level, not its indicators)."""


class BaseTarget:
    """What the targets share: construction, the labelled smoke sample, rollback as a deploy
    of the earlier release. A subclass writes ``_deploy`` and the rest of the protocol."""

    name = ""
    extra: str | None = None

    def __init__(self, config: DeployConfig, options: TargetOptions | None = None) -> None:
        self.config = config
        self.options = options or TargetOptions()

    def _deploy(
        self, endpoint_name: str, release: Release, allow_contract_change: bool
    ) -> DeployResult:
        raise NotImplementedError

    def deploy(
        self, endpoint_name: str, release: Release, allow_contract_change: bool
    ) -> DeployResult:
        result = self._deploy(endpoint_name, release, allow_contract_change)
        result.sample = answered_sample(release.sample, result.smoke_test)
        return result

    def rollback(
        self, endpoint_name: str, release: Release, allow_contract_change: bool
    ) -> DeployResult:
        """A deploy of the earlier release: updated in place and smoke-tested like any other."""
        return self.deploy(endpoint_name, release, allow_contract_change)


# ----------------------------------------------------------------------------- invoke + smoke


def runtime_client(region: str | None = None):
    """The stock boto3 ``sagemaker-runtime`` client for SageMaker endpoints (the 'aws'
    extra); local endpoints are invoked with ``http_runtime.HttpRuntimeClient``."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=60)
    return boto3.client("sagemaker-runtime", region_name=region, config=config)


def rows_to_csv(rows: np.ndarray, chain: SegmentationChain | None = None) -> str:
    """Feature-space rows as a headerless CSV request; with ``chain``, in its request columns
    (a categorical column's raw level, not its one-hot indicators: `request_rows`)."""
    if chain is None or not chain.categories:
        lines = []
        for row in np.atleast_2d(rows):
            lines.append(",".join("" if np.isnan(value) else repr(float(value)) for value in row))
        return "\n".join(lines) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in chain.request_rows(rows):
        writer.writerow([_csv_value(value) for value in row])
    return buffer.getvalue()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if np.isnan(value) else repr(value)
    return str(value)


def invoke(
    client,
    endpoint_name: str,
    body: str | bytes,
    content_type: str = "text/csv",
    custom_attributes: str | None = None,
) -> dict[str, Any]:
    """One invocation through the runtime client (boto3's, or the local HttpRuntimeClient);
    returns the decoded JSON answer."""
    refused, unreachable = _client_errors(client)
    extra = {"CustomAttributes": custom_attributes} if custom_attributes else {}
    try:
        reply = client.invoke_endpoint(
            EndpointName=endpoint_name,
            ContentType=content_type,
            Accept="application/json",
            Body=body,
            **extra,
        )
    except refused as error:
        message = error.response.get("Error", {}).get("Message") or str(error)
        raise EndpointError(f"endpoint {endpoint_name!r} refused the request: {message}") from None
    except unreachable as error:
        raise EndpointError(f"endpoint {endpoint_name!r} did not answer: {error}") from None
    raw = reply["Body"].read()
    try:
        return json.loads(raw)
    except ValueError:
        return {"_raw": raw.decode(errors="replace"), "_content_type": reply.get("ContentType")}


def _client_errors(client) -> tuple[type[Exception], type[Exception]]:
    """(refused, unreachable): the exception classes ``client`` raises for an error answer
    and for no answer."""
    errors = getattr(client, "errors", None)
    if isinstance(errors, tuple):
        return errors
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def records_to_json(records: Sequence[Mapping[str, Any]]) -> str:
    """Raw rows as a JSON request (a list of records keyed by column name); a missing value
    (None, NaN) is null, numpy numbers are plain numbers."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return json.dumps(
        [{str(name): plain(value) for name, value in record.items()} for record in records]
    )


def invoke_rows(
    client, endpoint_name: str, records: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The predictions for ``records`` (raw values by column, sent as JSON records); an
    EndpointError when the answer carries none."""
    answer = invoke(client, endpoint_name, records_to_json(records), "application/json")
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list):
        raise EndpointError(
            f"endpoint {endpoint_name!r} answered without predictions: {str(answer)[:300]!r}"
        )
    return predictions


def check_predictions(
    answer: dict[str, Any], chain: SegmentationChain, rows: np.ndarray
) -> dict[str, Any]:
    """Compare an endpoint's answer with the chain's own (segment and distance; for a Gaussian
    mixture also the membership probability); raises DeployError on a mismatch."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list) or len(predictions) != len(rows):
        raise DeployError(
            f"smoke test: expected {len(rows)} predictions, got {str(answer)[:300]!r}"
        )
    # As sent by `rows_to_csv`: a categorical value travels as its raw level.
    segments, distances, probabilities = chain.predict_membership(chain.reencode(rows))
    got_segments = [p.get("closest_cluster") for p in predictions]
    agree = got_segments == segments.tolist() and _close(
        predictions, "distance_to_cluster", distances
    )
    expected = f"segments {segments.tolist()} with distances {np.round(distances, 6).tolist()}"
    if probabilities is not None:
        agree = agree and _close(predictions, PROBABILITY, probabilities)
        expected += f" and membership probabilities {np.round(probabilities, 6).tolist()}"
    if not agree:
        raise DeployError(
            f"smoke test: the endpoint answered {predictions} but the model gives {expected}"
        )
    return {"passed": True, "rows": len(rows), "segments": got_segments, "answers": predictions}


def _close(predictions: list[dict[str, Any]], key: str, expected: np.ndarray) -> bool:
    """Whether every prediction's ``key`` is a number equal to ``expected``'s (within rounding)."""
    try:
        got = np.asarray([p.get(key) for p in predictions], dtype=float)
    except (TypeError, ValueError):
        return False
    return bool(np.allclose(got, expected, rtol=1e-6, atol=1e-9))


def refuse_contract_change(
    name: str,
    served: dict[str, Any] | None,
    served_version: str | None,
    chain: SegmentationChain,
    version: str,
) -> None:
    """DeployError when the served model's contract is known and differs from ``chain``'s:
    clients built for the served features would break on the swap."""
    from tasks.promote import contract_changes

    if served is None:
        return
    changes = contract_changes(served, chain.input_contract())
    if changes:
        raise DeployError(
            f"endpoint {name!r} serves version {served_version}, whose input contract differs "
            f"from version {version}'s: {'; '.join(changes)}; not swapped, the endpoint still "
            f"serves version {served_version} (--allow-contract-change or "
            "promote.allow_contract_change=true swaps it anyway)"
        )
