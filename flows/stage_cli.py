"""`popseg stage ...`: one command per pipeline stage, what `dvc.yaml` runs.

Each command calls the same stage function the Prefect training flow runs
(`flows/stages.py`) and hands its result to the next stage through files, so DVC can
version and cache every step: data/raw -> reports/validation.json + metrics ->
data/prepared -> models/chain + metrics/train.json + plots/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import ParamsOption, SetOption
from flows.cli_common import fail as _fail
from flows.cli_common import load_cli_params as _params
from tasks.errors import DataError, DataValidationError, PopsegError
from tasks.tracking.layout import RunTag

logger = logging.getLogger("flows.stage")

stage_app = typer.Typer(
    name="stage",
    help="Run one pipeline stage on files (what dvc.yaml calls): ingest, validate, prepare, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@stage_app.command("ingest")
def ingest_command(params_path: ParamsOption = None, overrides: SetOption = None) -> None:
    """Read the configured data and keep it, byte for byte, under data.raw_dir."""
    from flows import stages

    try:
        params = _params(params_path, overrides)
        data = stages.ingest_stage(params)
    except PopsegError as error:
        _fail(error)
    for warning in data.warnings:
        logger.warning(warning)
    typer.echo(
        f"ingest: {data.source} -> {data.path} ({len(data.frame)} rows, "
        f"{len(data.feature_columns)} features, md5 {data.md5})"
    )


@stage_app.command("validate")
def validate_command(params_path: ParamsOption = None, overrides: SetOption = None) -> None:
    """Run the Great Expectations suite on the ingested data; a failure stops the pipeline."""
    from flows import stages
    from tasks.validate import require_valid

    try:
        params = _params(params_path, overrides)
        data = stages.load_ingested(params)
        report = stages.validate_stage(params, data)
        report.write_json(stages.VALIDATION_JSON, include_result=False)
        _write_json(
            stages.METRICS_DIR / "validation.json",
            {
                "success": report.success,
                "evaluated_expectations": report.evaluated,
                "failed_expectations": len(report.failures),
                "rows": len(data.frame),
            },
        )
        require_valid(report, data.source)
    except PopsegError as error:
        _fail(error)
    typer.echo(f"validate: {report.evaluated} expectations passed ({report.suite_name})")


@stage_app.command("prepare")
def prepare_command(params_path: ParamsOption = None, overrides: SetOption = None) -> None:
    """Impute, scale and reduce; the fitted values and parameters go to data/prepared."""
    from flows import stages

    try:
        params = _params(params_path, overrides)
        _require_validated()
        data = stages.load_ingested(params)
        prepared = stages.prepare_stage(params, data)
        folder = prepared.save(stages.PREPARED_DIR)
    except PopsegError as error:
        _fail(error)
    typer.echo(
        f"prepare: {prepared.reduced.values.shape[0]} rows x "
        f"{prepared.reduced.values.shape[1]} model dimensions -> {folder}"
    )


@stage_app.command("train")
def train_command(
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    register_model: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="log the run and register the model in MLflow (alias challenger)",
        ),
    ] = True,
) -> None:
    """Sweep k, select, evaluate; write the chain, metrics and plots; register in MLflow."""
    from flows import stages
    from tasks import register

    try:
        params = _params(params_path, overrides)
        _require_validated()
        data = stages.load_ingested(params)
        prepared = stages.Prepared.load(stages.PREPARED_DIR)
        if prepared.names != data.feature_columns:
            raise DataError(
                f"{stages.PREPARED_DIR}: prepared for features {prepared.names}, but the "
                f"ingested data has {data.feature_columns}; rerun `popseg stage prepare`"
            )
        champion = stages.current_champion(params.register_.model_name) if register_model else None
        trained = stages.train_stage(params, data, prepared, champion)
        tags = {**stages.training_tags(params, data), RunTag.VALIDATION_SUCCESS: "true"}
        notes = [*data.warnings, *trained.notes]
        record = stages.training_record(
            params,
            data,
            prepared,
            trained,
            stages.VALIDATION_JSON,
            stages.PLOTS_DIR / "images",
            tags,
            notes,
        )
        registration = None
        if register_model:
            registration = register.register_training(
                record,
                params.register_.experiment,
                params.register_.model_name,
                params.register_.log_data_max_mb,
            )
            from tasks.report import log_training_report

            note = log_training_report(
                registration.model_name,
                registration.model_version,
                registration.run_id,
                params.register_.experiment,
            )
            if note:
                logger.warning(note)
        metrics = stages.write_train_outputs(trained, prepared, registration)
    except PopsegError as error:
        _fail(error)
    where = (
        f"registered {registration.model_name} v{registration.model_version} "
        f"(run {registration.run_id})"
        if registration
        else "not registered"
    )
    typer.echo(
        f"train: k={metrics['k']} silhouette={metrics.get('silhouette', float('nan')):.4f} "
        f"stability={metrics.get('stability', float('nan')):.4f}; {where}"
    )


def _require_validated() -> None:
    from flows import stages

    path = stages.VALIDATION_JSON
    if not path.exists():
        raise DataError(f"{path}: missing; run `popseg stage validate` first (or `dvc repro`)")
    if not json.loads(path.read_text()).get("success"):
        raise DataValidationError(
            f"{path}: the data failed validation; fix it and rerun `dvc repro`"
        )


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
