"""The monitoring flow: a registered model's training reference -> new data -> drift checks ->
a monitoring run in MLflow (experiment ``<model>-monitoring``) -> (``retrain=True`` and drift)
the training flow on the new data. Wiring only: every step is a function in `tasks/monitor.py`,
wrapped here as a Prefect task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.prefect_server import owner_tag_on_flow_runs_only, subflow_owner_tags
from tasks import monitor, notify, register
from tasks.config import Params
from tasks.errors import PopsegError
from tasks.tracking.layout import MonitorTag, monitoring_experiment_name

_step = {"cache_policy": NO_CACHE, "persist_result": False}

load_model_task = task(monitor.load_monitored_model, name="load-reference", **_step)
read_data_task = task(monitor.read_monitor_data, name="read-new-data", **_step)
drift_task = task(monitor.compute_drift, name="drift-checks", **_step)
log_task = task(monitor.log_monitor_run, name="log-monitoring-run", **_step)

CAPTURE_NO_RETRAIN = (
    "not retrained: the data is an endpoint capture log (request features only, no row ids, "
    "possibly repeated rows); retrain on a table with `popseg train --data PATH`"
)


@dataclass
class MonitorOutcome:
    """One monitoring: the drift report, where it is recorded, and what retraining did."""

    model_name: str
    model_version: str
    reference_run_id: str
    data_source: str
    data_kind: str
    data_md5: str
    report: monitor.DriftReport
    monitor_run_id: str = ""
    experiment_id: str = ""
    retrain: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        return self.report.drift

    @property
    def reasons(self) -> list[str]:
        return list(self.report.reasons)

    @property
    def retrain_failed(self) -> PopsegError | None:
        """The error retraining raised (its message and exit code), if it failed."""
        if not self.retrain or "error" not in self.retrain:
            return None
        error = PopsegError(f"retraining failed: {self.retrain['error']}")
        error.exit_code = int(self.retrain.get("exit_code", 1))
        return error

    def to_json(self) -> dict[str, Any]:
        report = self.report.to_json()
        return {
            "drift": report.pop("drift"),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "reference_run_id": self.reference_run_id,
            "monitor_run_id": self.monitor_run_id,
            "experiment_id": self.experiment_id,
            "data_source": self.data_source,
            "data_kind": self.data_kind,
            "data_md5": self.data_md5,
            **report,
            "retrain": self.retrain,
            "notes": list(self.notes),
            "tracking_uri": register.tracking_uri(),
        }


def _retrain(params: Params, data_path: str, data: monitor.MonitorData, drift: bool, logger):
    if not drift:
        return {"triggered": False, "reason": "no drift: nothing to retrain"}
    if data.kind == "capture":
        logger.warning(CAPTURE_NO_RETRAIN)
        return {"triggered": False, "reason": CAPTURE_NO_RETRAIN}
    from flows.training import training_flow

    retrain_params = params.model_copy(
        update={"data": params.data.model_copy(update={"path": data_path})}
    )
    logger.info("drift detected: retraining on %s", data_path)
    try:
        with subflow_owner_tags():
            trained = training_flow(retrain_params, True)
    except PopsegError as error:
        logger.error("retraining on %s failed: %s", data_path, error)
        return {"triggered": True, "error": str(error), "exit_code": error.exit_code}
    return {
        "triggered": True,
        "model_version": trained.model_version,
        "promoted": trained.promoted,
        "approval": trained.approval,
        "run_id": trained.run_id,
        "k": trained.k,
        "gate_reasons": trained.gate_reasons,
    }


@flow(name="popseg-monitor", log_prints=True, validate_parameters=False)
@owner_tag_on_flow_runs_only
def monitor_flow(
    params: Params, data_path: str, model_version: str | None = None, retrain: bool = False
) -> MonitorOutcome:
    """Drift of ``data_path`` (a CSV/Parquet table or an endpoint capture log) against the
    training data of ``model_version`` (default: the champion), recorded as a monitoring run.
    Drift is a result, not an error; with ``retrain`` it triggers the training flow (with
    promotion) on the new table. Bad input raises before anything is recorded."""
    logger = get_run_logger()
    model_name = params.register_.model_name
    model = load_model_task(model_name, model_version)
    data = read_data_task(data_path, model.chain, params.data.delimiter)
    report = drift_task(model.chain, model.reference, data.values, params.monitor, data_path)
    outcome = MonitorOutcome(
        model_name=model_name,
        model_version=model.model_version,
        reference_run_id=model.run_id,
        data_source=data.source,
        data_kind=data.kind,
        data_md5=data.md5,
        report=report,
        notes=list(data.notes),
    )
    run_id, experiment_id = log_task(
        report,
        outcome.to_json(),
        monitoring_experiment_name(model_name),
        model_name,
        model.model_version,
        data.source,
        data.md5,
        model.run_id,
    )
    outcome.monitor_run_id, outcome.experiment_id = run_id, experiment_id
    notify.drift(params.notify, outcome.to_json())
    verdict = "DRIFT" if report.drift else "no drift"
    logger.info(
        "%s version %s vs %s (%d rows): %s; monitoring run %s",
        model_name,
        model.model_version,
        data.source,
        report.n_rows,
        verdict,
        run_id,
    )
    for reason in report.reasons:
        logger.info("  drift: %s", reason)
    if retrain:
        outcome.retrain = _retrain(params, data_path, data, report.drift, logger)
        tags = {MonitorTag.RETRAIN_TRIGGERED: str(outcome.retrain["triggered"]).lower()}
        if "model_version" in outcome.retrain:
            tags[MonitorTag.RETRAIN_MODEL_VERSION] = outcome.retrain["model_version"]
            tags[MonitorTag.RETRAIN_PROMOTED] = str(outcome.retrain["promoted"]).lower()
        monitor.update_monitor_run(run_id, outcome.to_json(), tags)
    return outcome
