"""The registry at a glance: one row per registered version of a model (`popseg versions`).

A row joins what the registry records on the version (aliases, creation time, k, the gate's
verdict and reasons, the approval, the data md5: `tasks.tracking.layout`) with its training
run's metrics and the endpoints that deploy recorded as serving it (the rows of
``Target.list()``, given by the caller).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasks.approval import ApprovalRecord
from tasks.errors import RegistryError
from tasks.register import configure_mlflow
from tasks.tracking import client, runs, tracking_uri
from tasks.tracking.layout import Metric, VersionTag


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: list[str]
    created: str | None  # UTC, ISO 8601
    run_id: str
    k: int | None
    silhouette: float | None
    stability: float | None
    gate_passed: bool | None  # None: the gate never ran on it
    gate_reasons: list[str]
    approval: ApprovalRecord
    data_md5: str | None
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # name, target, status

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["approval"] = self.approval.to_json()
        return payload


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metric(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None or value != value else float(value)  # NaN: not measured


def version_rows(model_name: str, endpoints: Iterable[Mapping[str, Any]] = ()) -> list[VersionRow]:
    """Every registered version of ``model_name``, newest first; ``endpoints`` are deploy
    targets' endpoint rows (``name``, ``target``, ``status``, ``model_name``,
    ``model_version``), matched to the version each serves. An unknown model is a
    `RegistryError` naming it."""
    from mlflow.exceptions import MlflowException

    configure_mlflow()
    mlflow_client = client()
    try:
        aliases_of = dict(mlflow_client.get_registered_model(model_name).aliases or {})
    except MlflowException:
        raise RegistryError(
            f"model {model_name!r} is not registered in {tracking_uri()} (train one first)"
        ) from None
    quoted = model_name.replace("'", "")
    found = mlflow_client.search_model_versions(f"name = '{quoted}'")
    serving: dict[str, list[dict[str, Any]]] = {}
    for endpoint in endpoints:
        if endpoint.get("model_name") not in (None, model_name):
            continue
        entry = {key: endpoint.get(key) for key in ("name", "target", "status")}
        serving.setdefault(str(endpoint.get("model_version")), []).append(entry)
    rows = []
    for item in sorted(found, key=lambda v: int(v.version), reverse=True):
        version = str(item.version)
        try:
            record = runs.read_version(model_name, version)
        except MlflowException:  # its training run was deleted: the version's own tags
            record = runs.RunRecord(
                run_id=item.run_id,
                experiment_id="",
                start_time=None,
                artifact_uri="",
                tags={},
                params={},
                metrics={},
                version_tags=dict(item.tags or {}),
            )
        gate = record.gate
        rows.append(
            VersionRow(
                version=version,
                aliases=sorted(a for a, v in aliases_of.items() if str(v) == version),
                created=_iso(item.creation_timestamp),
                run_id=record.run_id,
                k=record.k,
                silhouette=_metric(record.metrics, Metric.SILHOUETTE),
                stability=_metric(record.metrics, Metric.STABILITY),
                gate_passed=gate.passed,
                gate_reasons=gate.reasons,
                approval=ApprovalRecord.of(record.version_tags),
                data_md5=record.version_tags.get(VersionTag.DATA_MD5) or record.data_md5,
                endpoints=serving.get(version, []),
            )
        )
    return rows
