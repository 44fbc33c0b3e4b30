"""The training flow: ingest -> validate -> impute -> scale -> reduce -> sweep -> select ->
evaluate -> register -> promote. Wiring only: every step is a function in `tasks/`, wrapped
here as a Prefect task."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tasks import cluster, evaluate, impute, ingest, plots, promote, reduce, register, scale, select
from tasks.config import Params
from tasks.package import build_chain
from tasks.validate import ValidationReport, require_valid, run_validation

logger = logging.getLogger("flows.training")

# Arrays and frames move between tasks in memory: no input hashing, no result persistence.
_step = {"cache_policy": NO_CACHE, "persist_result": False}

ingest_task = task(ingest.ingest, name="ingest", **_step)
select_features_task = task(ingest.select_features, name="select-features", **_step)
validate_task = task(run_validation, name="validate", **_step)
impute_task = task(impute.impute, name="impute", **_step)
scale_task = task(scale.scale, name="scale", **_step)
reduce_task = task(reduce.reduce, name="reduce", **_step)
sweep_task = task(cluster.sweep, name="cluster-sweep", **_step)
select_task = task(select.select_k, name="select-k", **_step)
evaluate_task = task(evaluate.evaluate, name="evaluate", **_step)
register_task = task(register.register_training, name="register", **_step)
promote_task = task(promote.promote, name="promote", **_step)


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
    tracking_uri: str = ""
    experiment_id: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "k": self.k,
            "metrics": self.metrics,
            "promoted": self.promoted,
            "gate_reasons": self.gate_reasons,
            "criterion": self.criterion,
            "selection_reason": self.selection_reason,
            "segments": [
                {
                    "segment": segment,
                    "size": size,
                    "distinguishing": self.distinguishing.get(segment, []),
                    "examples": self.examples.get(segment, []),
                }
                for segment, size in sorted(self.sizes.items())
            ],
            "data_source": self.data_source,
            "data_md5": self.data_md5,
            "n_rows": self.n_rows,
            "features": self.features,
            "notes": self.notes,
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "seconds": round(self.seconds, 2),
        }


def _suite_name(params: Params) -> str:
    if params.data.path:
        stem = Path(params.data.path.rstrip("/")).stem or "user-data"
        return f"popseg-{stem}"
    return f"popseg-{params.data.dataset}"


def _record_failed_validation(
    params: Params, report: ValidationReport, tags: dict[str, str], validation_json: Path
) -> None:
    """Keep the failed validation visible in the MLflow UI as a FAILED run (nothing registered)."""
    import mlflow

    register.configure_mlflow()
    experiment_id = register.ensure_experiment(params.register_.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="validation-failed") as run:
        mlflow.set_tags({**tags, "validation_success": "false"})
        mlflow.log_artifact(str(validation_json), artifact_path="validation")
        mlflow.log_metric("failed_expectations", len(report.failures))
    mlflow.MlflowClient().set_terminated(run.info.run_id, status="FAILED")


def _current_champion(model_name: str):
    version = register.alias_version(model_name, register.CHAMPION)
    if version is None:
        return None
    import mlflow

    model_version = mlflow.MlflowClient().get_model_version(model_name, version)
    chain = register.load_chain(model_version.run_id)
    chain.metadata["model_version"] = version
    return chain


@flow(name="popseg-train", log_prints=True, validate_parameters=False)
def training_flow(params: Params, run_promotion: bool = True) -> TrainingOutcome:
    started = time.perf_counter()
    notes: list[str] = []
    raw = ingest_task(params.data)
    data = select_features_task(raw, params.data, params.features)
    notes += data.warnings
    tags = {
        "data_md5": data.md5,
        "data_source": data.source,
        "git_commit": register.git_commit(),
        "engine": params.cluster.engine,
        "id_column": data.id_column,
    }
    with tempfile.TemporaryDirectory(prefix="popseg-") as scratch_dir:
        scratch = Path(scratch_dir)
        report = validate_task(data, params.data, params.validate_, _suite_name(params))
        validation_json = report.write_json(scratch / "validation_result.json")
        if not report.success:
            _record_failed_validation(params, report, tags, validation_json)
        require_valid(report, data.source)
        tags["validation_success"] = "true"

        names = data.feature_columns
        imputed = impute_task(data.features, params.impute, params.cluster.engine)
        scaled = scale_task(imputed.values, names, params.scale)
        reduced = reduce_task(scaled.values, names, params.reduce)
        swept = sweep_task(reduced.values, params.cluster)
        notes += swept.notes
        selection = select_task(swept, params.select.criterion)
        chosen = swept.fits[selection.k]

        kept_frame = data.frame[imputed.kept_rows].reset_index(drop=True)
        champion = _current_champion(params.register_.model_name)
        evaluation = evaluate_task(
            reduced.values,
            chosen.labels,
            chosen.centroids,
            imputed.values,
            kept_frame[names].to_numpy(dtype=np.float64),
            names,
            kept_frame[data.id_column].tolist(),
            params.cluster,
            params.evaluate,
            champion,
        )
        chain = build_chain(
            names,
            imputed,
            scaled,
            reduced,
            chosen.centroids,
            evaluation.segment_ids,
            metadata={
                "k": selection.k,
                "engine": params.cluster.engine,
                "criterion": params.select.criterion,
                "data_md5": data.md5,
                "id_column": data.id_column,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        metrics = {**chosen.metrics, "k": float(selection.k), "stability": evaluation.stability}
        plot_paths = _make_plots(
            scratch, swept, selection.k, reduced, names, evaluation, imputed.values
        )
        per_k = pd.DataFrame({k: fit.metrics for k, fit in swept.fits.items()}).T
        per_k.index.name = "k"
        record = register.TrainingRecord(
            params_flat=params.flat(),
            tags={**tags, "criterion": params.select.criterion, "k": str(selection.k)},
            chosen_metrics=metrics,
            per_k_metrics={k: fit.metrics for k, fit in swept.fits.items()},
            chain=chain,
            training_frame=data.frame,
            plots=plot_paths,
            json_artifacts={
                "reports/selection.json": {
                    "k": selection.k,
                    "criterion": selection.criterion,
                    "reason": selection.reason,
                    "votes": selection.votes,
                    "details": selection.details,
                },
                "reports/impute.json": imputed.report,
                "reports/scale.json": scaled.report,
                "reports/reduce.json": {
                    **reduced.report,
                    "explained_variance_ratio": reduced.full_explained_variance_ratio,
                },
                "reports/segments.json": {
                    "sizes": evaluation.sizes,
                    "distinguishing": evaluation.distinguishing,
                    "examples": evaluation.examples,
                    "stability": evaluation.stability,
                    "stability_rounds": evaluation.stability_rounds,
                    "id_mapping": evaluation.id_mapping,
                },
                "reports/notes.json": notes,
            },
            csv_artifacts={
                "reports/sweep_metrics.csv": per_k,
                "reports/segment_profiles.csv": evaluation.profiles,
                "reports/pca_loadings.csv": reduced.loadings(names),
                "reports/assignments.csv": pd.DataFrame(
                    {
                        "segment": evaluation.segments,
                        "distance_to_cluster": evaluation.distances,
                    },
                    index=pd.Index(kept_frame[data.id_column], name=data.id_column),
                ),
            },
            validation_json=validation_json,
        )
        registration = register_task(
            record,
            params.register_.experiment,
            params.register_.model_name,
            params.register_.log_data_max_mb,
        )
    promoted, gate_reasons = False, ["promotion skipped (--no-promote)"]
    if run_promotion:
        decision = promote_task(
            registration.model_name,
            registration.model_version,
            params.promote,
            params.cluster.silhouette_sample,
            params.cluster.seed,
        )
        promoted, gate_reasons = decision.promoted, decision.reasons
    return TrainingOutcome(
        run_id=registration.run_id,
        model_name=registration.model_name,
        model_version=registration.model_version,
        k=selection.k,
        metrics={name: float(value) for name, value in metrics.items()},
        promoted=promoted,
        gate_reasons=gate_reasons,
        selection_reason=selection.reason,
        criterion=selection.criterion,
        sizes=evaluation.sizes,
        distinguishing=evaluation.distinguishing,
        examples=evaluation.examples,
        data_source=data.source,
        data_md5=data.md5,
        n_rows=len(data.frame),
        features=names,
        notes=notes,
        tracking_uri=register.tracking_uri(),
        experiment_id=registration.experiment_id,
        seconds=time.perf_counter() - started,
    )


def _make_plots(
    scratch: Path, swept, k: int, reduced, names: list[str], evaluation, values: np.ndarray
) -> list[Path]:
    folder = scratch / "plots"
    profile = evaluation.profiles
    population_std = values.std(axis=0)
    population_std[population_std == 0] = 1.0
    standardized = (profile - values.mean(axis=0)) / population_std
    paths = [
        plots.metric_by_k(
            swept, "inertia", k, folder / "elbow_inertia_by_k.png", "Elbow: inertia by k"
        ),
        plots.metric_by_k(
            swept, "silhouette", k, folder / "silhouette_by_k.png", "Silhouette by k"
        ),
        plots.metric_by_k(
            swept,
            "calinski_harabasz",
            k,
            folder / "calinski_harabasz_by_k.png",
            "Calinski-Harabasz by k",
        ),
        plots.metric_by_k(
            swept,
            "davies_bouldin",
            k,
            folder / "davies_bouldin_by_k.png",
            "Davies-Bouldin by k (lower is better)",
        ),
        plots.pca_variance(
            reduced.full_explained_variance_ratio,
            reduced.components.shape[0] if reduced.applied else 0,
            folder / "pca_explained_variance.png",
        ),
        plots.heatmap(
            reduced.loadings(names),
            folder / "pca_component_makeup.png",
            "Component makeup (loadings)",
            color_label="loading",
        )
        if reduced.applied
        else None,
        plots.heatmap(
            standardized,
            folder / "centroid_heatmap.png",
            "Attribute value by centroid (original units)",
            annotate=profile,
            color_label="segment mean vs population (sd)",
        ),
        plots.cluster_sizes(evaluation.sizes, folder / "cluster_sizes.png"),
    ]
    return [path for path in paths if path is not None]
