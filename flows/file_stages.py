"""The pipeline stages as `dvc.yaml` runs them (`popseg stage ...`): each calls the same stage
function the Prefect training flow runs (`flows/stages.py`) and hands its result to the next
stage through files, so DVC can version and cache every step: data/raw ->
reports/validation.json + metrics -> data/prepared -> models/chain + metrics/train.json +
plots/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import DataError, DataValidationError
from tasks.tracking.layout import RunTag

if TYPE_CHECKING:
    from tasks.config import Params

logger = logging.getLogger("flows.stage")


def ingest(params: Params):
    """Read the configured data and keep it, byte for byte, under data.raw_dir."""
    from flows import stages

    data = stages.ingest_stage(params)
    for warning in data.warnings:
        logger.warning(warning)
    return data


def validate(params: Params):
    """The Great Expectations suite on the ingested data: its report and metrics written, then
    a failure raised (so DVC stops the pipeline with the report on disk)."""
    from flows import stages
    from tasks.validate import require_valid

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
    return report


def prepare(params: Params):
    """Impute, scale and reduce; returns the prepared data and the folder it was saved to."""
    from flows import stages

    _require_validated()
    data = stages.load_ingested(params)
    prepared = stages.prepare_stage(params, data)
    return prepared, prepared.save(stages.PREPARED_DIR)


def train(params: Params, register_model: bool) -> tuple[dict[str, Any], Any]:
    """Sweep k, select, evaluate; write the chain, metrics and plots; register in MLflow (alias
    challenger) unless ``register_model`` is false. Returns the metrics and the registration
    (None when not registered)."""
    from flows import stages

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
        registration = stages.register_stage(params, record)
        note = stages.report_stage(params, registration)
        if note:
            logger.warning(note)
    return stages.write_train_outputs(trained, prepared, registration), registration


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
