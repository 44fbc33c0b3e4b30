"""The training flow: ingest -> validate -> prepare -> train -> register -> promote. Wiring
only: each stage is a function in `flows/stages.py` (the same ones `popseg stage ...` and
dvc.yaml run), wrapped here as a Prefect task and given the run's execution engine
(`tasks.engine`: memory, or dask on the session `run_training` opens)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import orchestration, stages
from flows.prefect_server import owner_tag_on_flow_runs_only
from tasks import engine as engines
from tasks import promote, register
from tasks.config import Params
from tasks.tracking import runs
from tasks.tracking.layout import ApprovalState, RunTag
from tasks.validate import ValidationReport, require_valid

logger = logging.getLogger("flows.training")

# Arrays and frames move between tasks in memory: no input hashing, no result persistence.
_step = {"cache_policy": NO_CACHE, "persist_result": False}

ingest_task = task(stages.ingest_stage, name="ingest", **_step)
validate_task = task(stages.validate_stage, name="validate", **_step)
prepare_task = task(stages.prepare_stage, name="prepare", **_step)
train_task = task(stages.train_stage, name="train", **_step)
record_task = task(stages.training_record, name="plots-and-reports", **_step)
register_task = task(stages.register_stage, name="register", **_step)
promote_task = task(promote.promote, name="promote", **_step)
# The HTML report of the new version, logged to its run as reports/report.html. Built after
# the gate so it shows the aliases; a failure is a note and a run tag, not a failed training.
report_task = task(stages.report_stage, name="report", **_step)


_PER_SEGMENT = ("sizes", "distinguishing", "examples")


@dataclass
class TrainingOutcome:
    run_id: str
    model_name: str
    model_version: str
    k: int
    metrics: dict[str, float]
    promoted: bool
    gate_reasons: list[str]
    selection_reason: str
    criterion: str
    sizes: dict[int, int]
    distinguishing: dict[int, list[dict[str, Any]]]
    examples: dict[int, list[str]]
    data_source: str
    data_md5: str
    n_rows: int
    features: list[str]
    notes: list[str] = field(default_factory=list)
    # "pending" when the gate passed with promote.require_approval: alias candidate.
    approval: str | None = None
    tracking_uri: str = ""
    experiment_id: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Every field, the per-segment ones (sizes, distinguishing, examples) as one list."""
        payload = {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name not in _PER_SEGMENT
        }
        payload["segments"] = [
            {
                "segment": segment,
                "size": size,
                "distinguishing": self.distinguishing.get(segment, []),
                "examples": self.examples.get(segment, []),
            }
            for segment, size in sorted(self.sizes.items())
        ]
        payload["seconds"] = round(self.seconds, 2)
        return payload


def _record_failed_validation(
    params: Params, report: ValidationReport, tags: dict[str, str], validation_json: Path
) -> None:
    """Keep the failed validation visible in the MLflow UI as a FAILED run (nothing registered)."""
    register.configure_mlflow()
    experiment_id = register.ensure_experiment(params.register_.experiment)
    runs.record_failed_validation(experiment_id, tags, validation_json, len(report.failures))


def _run_step(step, *args, cached: list[str]):
    """Call a task, noting when Prefect served its result from the cache."""
    state = step(*args, return_state=True)
    if state.name == "Cached":
        cached.append(step.name)
    return state.result()


def _flow_run_tags() -> dict[str, str]:
    """The Prefect flow run this training is, and its page when a Prefect UI is known
    (PREFECT_UI_URL, or derived from PREFECT_API_URL; not for the ephemeral server)."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    run_id = flow_run.id
    if run_id is None:
        return {}
    tags = {RunTag.PREFECT_FLOW_RUN_ID: str(run_id)}
    if PREFECT_UI_URL.value():
        tags[RunTag.PREFECT_FLOW_RUN_URL] = flow_run.ui_url
    return tags


@contextlib.contextmanager
def _this_api():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _task_mapper(params: Params) -> engines.Mapper | None:
    """With ``dask.prefect_tasks`` and the flow on prefect-dask's DaskTaskRunner: the Dask
    engine's independent steps (per-k sample scores, bootstrap rounds) as Prefect tasks on the
    cluster. None: the engine's own plain Dask futures."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None) if context else None
    if not params.dask.prefect_tasks or type(runner).__name__ != "DaskTaskRunner":
        return None

    def run(name: str, function, *iterables):
        from prefect import unmapped

        from tasks.dask_engine.session import apply_item

        step = task(apply_item, name=name, cache_policy=NO_CACHE, persist_result=False)
        items = list(zip(*iterables, strict=True))
        if not items:
            return []
        # The workers report to this process's Prefect API (without it, each worker process
        # would start an ephemeral API server of its own).
        with _this_api():
            futures = step.map(unmapped(function), items)
        return [future.result() for future in futures]

    return run


@flow(
    name="popseg-train",
    log_prints=True,
    validate_parameters=False,
    on_failure=[orchestration.alert_training_failed],
)
@owner_tag_on_flow_runs_only
def training_flow(
    params: Params, run_promotion: bool = True, engine: str = "memory"
) -> TrainingOutcome:
    """The whole pipeline on the configured data. Settings from ``params.orchestrate``: the
    ingest step (S3, network) retries with backoff, prepare and train results are cached by
    data md5 + params + code, every step has a timeout, register and promote hold the
    registry lock."""
    started = time.perf_counter()
    config = params.orchestrate
    lock_s = config.registry_lock_timeout_s
    cached: list[str] = []
    execution = engines.open_engine(engine, _task_mapper(params))
    data = ingest_task.with_options(**orchestration.network_options(config))(params, execution)
    notes: list[str] = list(data.warnings)
    tags = {**stages.training_tags(params, data, execution), **_flow_run_tags()}
    with tempfile.TemporaryDirectory(prefix="popseg-") as scratch_dir:
        scratch = Path(scratch_dir)
        report = validate_task(params, data, execution)
        validation_json = report.write_json(scratch / "validation_result.json")
        if not report.success:
            _record_failed_validation(params, report, tags, validation_json)
        require_valid(report, data.source)
        tags[RunTag.VALIDATION_SUCCESS] = "true"

        prepare = prepare_task.with_options(
            **orchestration.step_options(config),
            **orchestration.cache_options(config, orchestration.prepare_cache_key),
        )
        prepared = _run_step(prepare, params, data, execution, cached=cached)
        champion = stages.current_champion(params.register_.model_name)
        train = train_task.with_options(
            **orchestration.step_options(config),
            **orchestration.cache_options(config, orchestration.train_cache_key),
        )
        trained = _run_step(train, params, data, prepared, champion, execution, cached=cached)
        notes += trained.notes
        if cached:
            tags[RunTag.CACHED_STEPS] = ",".join(cached)
            notes.append(
                f"reused cached results of: {', '.join(cached)} (same data md5, params, code)"
            )
        record = record_task(
            params, data, prepared, trained, validation_json, scratch / "plots", tags, notes
        )
        registration = register_task(params, record, lock_s)
    selection, evaluation = trained.selection, trained.evaluation
    trained_metrics, features = trained.metrics, prepared.names
    source, md5, n_rows = data.source, data.md5, data.n_rows
    # The tables and arrays are logged now: what follows (the gate loads the logged rows
    # again) reuses their memory instead of adding to it (500k x 20: ~350 MB).
    del data, prepared, trained, record
    promoted, gate_reasons = False, ["promotion skipped (--no-promote)"]
    approval = None
    if run_promotion:
        decision = promote_task(
            registration.model_name,
            registration.model_version,
            params.promote,
            params.cluster.silhouette_sample,
            params.cluster.seed,
            lock_s,
            lock_lease_s=config.registry_lock_lease_s,
            alerts=params.notify,
        )
        promoted, gate_reasons = decision.promoted, decision.reasons
        # A candidate's "approval_needed" alert is sent by the gate (tasks/promote.py).
        approval = ApprovalState.PENDING if decision.candidate else None
    report_note = report_task(params, registration)
    if report_note:
        notes.append(report_note)
    return TrainingOutcome(
        run_id=registration.run_id,
        model_name=registration.model_name,
        model_version=registration.model_version,
        k=selection.k,
        metrics=trained_metrics,
        promoted=promoted,
        gate_reasons=gate_reasons,
        selection_reason=selection.reason,
        criterion=selection.criterion,
        sizes=evaluation.sizes,
        distinguishing=evaluation.distinguishing,
        examples=evaluation.examples,
        data_source=source,
        data_md5=md5,
        n_rows=n_rows,
        features=features,
        notes=notes,
        approval=approval,
        tracking_uri=register.tracking_uri(),
        experiment_id=registration.experiment_id,
        seconds=time.perf_counter() - started,
    )


def run_training(
    params: Params,
    run_promotion: bool = True,
    engine: str = "memory",
    scheduler: str | None = None,
    timeout_s: float | None = None,
) -> TrainingOutcome:
    """The training flow on an engine (with a flow timeout if given). ``dask``: a session on
    ``scheduler`` (default ``dask.scheduler``; none = a LocalCluster sized to the machine,
    stopped afterwards), and the flow on prefect-dask's DaskTaskRunner connected to it, so the
    tasks the stages submit run on the same cluster."""
    if engines.engine_class(engine) is engines.MemoryEngine:
        return training_flow.with_options(timeout_seconds=timeout_s)(params, run_promotion)
    from prefect_dask import DaskTaskRunner

    from tasks.dask_engine.session import open_session

    engines.engine_class(engine).check_supported(params)
    with open_session(params.dask, scheduler) as session:
        runner = DaskTaskRunner(address=session.address)
        flow_on_cluster = training_flow.with_options(task_runner=runner, timeout_seconds=timeout_s)
        return flow_on_cluster(params, run_promotion, engine)
