"""The pipeline's stages: ingest -> validate -> prepare -> train, then register and promote.

These are the units shared by the Prefect training flow (each one a task), the
`popseg stage ...` commands and the matching stages of ``dvc.yaml``: one wiring of the
``tasks/`` step functions for both execution engines (`tasks.engine`: in memory, or on Dask
with the statistics computed over partitions), whichever tool runs it. Between DVC stages the
results go through files (``data/raw``, ``data/prepared``, ``models``, ``metrics``, ``plots``);
in the Prefect flow they stay in memory. No Prefect or MLflow imports at module level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import cluster, evaluate, ingest, plots, register, select
from tasks.chain import SegmentationChain
from tasks.config import Params
from tasks.engine import MEMORY, Engine
from tasks.ingest import IngestedData
from tasks.package import build_chain
from tasks.prepare import Prepared
from tasks.tracking import runs
from tasks.tracking.layout import Artifact, RunTag
from tasks.validate import ValidationReport

__all__ = ["Prepared", "Trained"]

# Where the DVC stages keep their results (declared as outs in dvc.yaml).
PREPARED_DIR = Path("data/prepared")
MODEL_DIR = Path("models/chain")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
VALIDATION_JSON = Path("reports/validation.json")


# --------------------------------------------------------------------------- ingest


def ingest_stage(params: Params, engine: Engine = MEMORY) -> IngestedData:
    """Read the configured data (in memory: kept byte for byte under data/raw; on Dask: opened
    on the cluster, with a seeded sample kept here) and pick the features."""
    return engine.ingest(params)


def load_ingested(params: Params) -> IngestedData:
    """The ingested table as the later DVC stages see it: read back from data/raw."""
    raw = ingest.read_raw(params.data)
    return ingest.select_features(raw, params.data, params.features)


# --------------------------------------------------------------------------- validate


def data_name(params: Params) -> str:
    """The input's short name: the configured file's stem, else the bundled dataset's name."""
    if params.data.path:
        return Path(params.data.path.rstrip("/")).stem or "user-data"
    return params.data.dataset


def suite_name(params: Params) -> str:
    return f"popseg-{data_name(params)}"


def validate_stage(params: Params, data: IngestedData, engine: Engine = MEMORY) -> ValidationReport:
    return engine.validate(params, data, suite_name(params))


# --------------------------------------------------------------------------- prepare


def prepare_stage(params: Params, data: IngestedData, engine: Engine = MEMORY) -> Prepared:
    """Impute -> scale -> reduce, fitted by the engine."""
    return engine.prepare(params, data)


# --------------------------------------------------------------------------- train


def current_champion(model_name: str) -> SegmentationChain | None:
    """The champion's chain (its segment ids are what a new model's are matched to)."""
    version = register.alias_version(model_name, register.CHAMPION)
    if version is None:
        return None
    chain = register.load_chain(runs.model_version(model_name, version).run_id)
    chain.metadata["model_version"] = version
    return chain


@dataclass
class Trained:
    """The sweep, the chosen k, its evaluation and the serving chain built from them."""

    swept: cluster.SweepResult
    selection: select.Selection
    evaluation: evaluate.Evaluation
    chain: SegmentationChain
    metrics: dict[str, float]
    kept_frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def train_stage(
    params: Params,
    data: IngestedData,
    prepared: Prepared,
    champion: SegmentationChain | None = None,
    engine: Engine = MEMORY,
) -> Trained:
    """Sweep k, select one, evaluate it (segment ids matched to the champion's when there
    is one) and build the serving chain."""
    swept = engine.sweep(params, data, prepared)
    if params.cluster.model == "gmm":
        from tasks.mixture import select_by_bic

        selection = select_by_bic(swept)
    else:
        selection = select.select_k(
            swept, params.select.criterion, prepared.reduced.values, params.select, params.cluster
        )
    evaluation = engine.evaluate(params, data, prepared, swept, selection.k, champion)
    kept_frame = prepared.imputed.kept(data.frame)
    chosen = swept.fits[selection.k]
    chain = build_chain(
        prepared.names,
        prepared.imputed,
        prepared.scaled,
        prepared.reduced,
        chosen.centroids,
        evaluation.segment_ids,
        metadata={
            "k": selection.k,
            "backend": params.cluster.backend,
            "criterion": selection.criterion,
            "data_md5": data.md5,
            "id_column": data.id_column,
            "execution_engine": engine.name,
            "model": params.cluster.model,
        },
        categories=data.categories,
        mixture=chosen.mixture,
    )
    metrics = {**chosen.metrics, "k": float(selection.k), "stability": evaluation.stability}
    if "match_cost" in evaluation.id_mapping:
        metrics["segment_match_cost"] = evaluation.id_mapping["match_cost"]
    return Trained(
        swept=swept,
        selection=selection,
        evaluation=evaluation,
        chain=chain,
        metrics={name: float(value) for name, value in metrics.items()},
        kept_frame=kept_frame,
        notes=list(swept.notes),
    )


def training_tags(params: Params, data: IngestedData, engine: Engine = MEMORY) -> dict[str, str]:
    """Lineage tags of a training run: the DVC md5 of the input file, the git commit, the
    compute backend and where the run computed (the engine's tags)."""
    tags = {
        RunTag.DATA_MD5: data.md5,
        RunTag.DATA_SOURCE: data.source,
        RunTag.GIT_COMMIT: register.git_commit(),
        RunTag.BACKEND: params.cluster.backend,
        RunTag.ID_COLUMN: data.id_column,
    }
    if data.path and not data.path.startswith("s3://"):
        tags[RunTag.DATA_PATH] = _relative(data.path)
    tags.update(engine.tags(data))
    return tags


def _relative(path: str) -> str:
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def training_record(
    params: Params,
    data: IngestedData,
    prepared: Prepared,
    trained: Trained,
    validation_json: Path | None,
    plots_dir: Path,
    tags: dict[str, str],
    notes: list[str],
) -> register.TrainingRecord:
    """Everything a training logs to MLflow: params, metrics, plots, reports, the chain."""
    names = prepared.names
    selection, evaluation, swept = trained.selection, trained.evaluation, trained.swept
    per_k = sweep_table(swept)
    membership = mixture_membership(trained, prepared)
    assignments = {"segment": evaluation.segments, "distance_to_cluster": evaluation.distances}
    summary = {}
    if membership is not None:
        from tasks.mixture import membership_summary
        from tasks.score import PROBABILITY_COLUMN

        assignments[PROBABILITY_COLUMN] = membership
        summary["membership"] = membership_summary(membership)
    return register.TrainingRecord(
        params_flat=params.flat(),
        tags={**tags, RunTag.CRITERION: selection.criterion, RunTag.K: str(selection.k)},
        chosen_metrics=trained.metrics,
        per_k_metrics={k: fit.metrics for k, fit in swept.fits.items()},
        chain=trained.chain,
        training_frame=data.frame,
        plots=make_plots(plots_dir, trained, prepared, membership),
        json_artifacts={
            Artifact.SELECTION: {
                "k": selection.k,
                "chosen_k": selection.chosen_k,
                "structure_found": selection.structure_found,
                "criterion": selection.criterion,
                "reason": selection.reason,
                "votes": selection.votes,
                "details": selection.details,
            },
            Artifact.IMPUTE: prepared.imputed.report,
            Artifact.SCALE: prepared.scaled.report,
            Artifact.REDUCE: {
                **prepared.reduced.report,
                "explained_variance_ratio": prepared.reduced.full_explained_variance_ratio,
            },
            Artifact.SEGMENTS: {
                "sizes": evaluation.sizes,
                "distinguishing": evaluation.distinguishing,
                "examples": evaluation.examples,
                "stability": evaluation.stability,
                "stability_rounds": evaluation.stability_rounds,
                "id_mapping": evaluation.id_mapping,
                **summary,
            },
            Artifact.NOTES: notes,
        },
        csv_artifacts={
            Artifact.SWEEP_METRICS: per_k,
            Artifact.SEGMENT_PROFILES: evaluation.profiles,
            Artifact.PCA_LOADINGS: prepared.reduced.loadings(names),
            Artifact.ASSIGNMENTS: pd.DataFrame(
                assignments,
                index=pd.Index(trained.kept_frame[data.id_column], name=data.id_column),
            ),
        },
        validation_json=validation_json,
        dataset=runs.DatasetRef(
            name=data_name(params),
            digest=data.md5,
            source=_dataset_source(data),
            features=list(trained.chain.feature_names),
        ),
    )


def _dataset_source(data: IngestedData) -> str:
    """Where the training data is: a URI or glob as given, a local file by its absolute path."""
    where = data.path or data.source
    if "://" in where or any(mark in where for mark in "*?["):
        return where
    return Path(where).resolve().as_posix()


def register_stage(
    params: Params, record: register.TrainingRecord, lock_timeout_s: float = 600.0
) -> register.Registration:
    """Log the training run and register its model (alias challenger)."""
    config = params.register_
    return register.register_training(
        record,
        config.experiment,
        config.model_name,
        config.log_data_max_mb,
        lock_timeout_s,
        params.orchestrate.registry_lock_lease_s,
        data_sample_seed=params.cluster.seed,
    )


def report_stage(params: Params, registration: register.Registration) -> str | None:
    """The HTML report of a just-registered version, logged to its run; a note for the run
    summary when it could not be built (the training stands)."""
    from tasks.report import log_training_report

    return log_training_report(
        registration.model_name,
        registration.model_version,
        registration.run_id,
        params.register_.experiment,
    )


def sweep_table(swept: cluster.SweepResult) -> pd.DataFrame:
    per_k = pd.DataFrame({k: fit.metrics for k, fit in swept.fits.items()}).T
    per_k.index.name = "k"
    return per_k


def mixture_membership(trained: Trained, prepared: Prepared) -> np.ndarray | None:
    """Each training row's membership probability of its segment (a Gaussian mixture only)."""
    chosen = trained.swept.fits[trained.selection.k]
    if chosen.mixture is None:
        return None
    from tasks.mixture import membership_probabilities

    return membership_probabilities(prepared.reduced.values, chosen)


def mixture_plots(folder: Path, trained: Trained, membership: np.ndarray | None) -> list[Path]:
    """A mixture's BIC by k (the curve that chose k) and how sure its assignments are."""
    if membership is None:
        return []
    from tasks.mixture import SURE

    return [
        plots.metric_by_k(
            trained.swept,
            "bic",
            trained.selection.k,
            folder / "bic_by_k.png",
            "BIC by k (lower is better)",
        ),
        plots.membership_probability(membership, SURE, folder / "membership_probability.png"),
    ]


def make_plots(
    folder: Path, trained: Trained, prepared: Prepared, membership: np.ndarray | None = None
) -> list[Path]:
    swept, k, evaluation = trained.swept, trained.selection.k, trained.evaluation
    names, reduced, values = prepared.names, prepared.reduced, prepared.imputed.values
    profile = evaluation.profiles
    population_mean, population_std = evaluate.column_mean_std(values)
    population_std[population_std == 0] = 1.0
    standardized = (profile - population_mean) / population_std
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
        *mixture_plots(folder, trained, membership),
    ]
    return [path for path in paths if path is not None]


# --------------------------------------------------------------------------- DVC outputs


def write_train_outputs(
    trained: Trained, prepared: Prepared, registration: register.Registration | None
) -> dict[str, Any]:
    """The train stage's files: the chain (models/chain), metrics/train.json and the data
    series behind the plots (plots/*.csv) that `dvc plots diff` compares."""
    trained.chain.save(str(MODEL_DIR))
    metrics = {
        "k": trained.selection.k,
        "criterion": trained.selection.criterion,
        **{
            name: round(value, 6)
            for name, value in trained.metrics.items()
            if name != "k" and np.isfinite(value)
        },
        "n_rows": len(trained.kept_frame),
        "smallest_segment_share": round(
            min(trained.evaluation.sizes.values()) / len(trained.kept_frame), 6
        ),
    }
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (METRICS_DIR / "train.json").write_text(json.dumps(metrics, indent=2) + "\n")
    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    sweep_table(trained.swept).round(6).to_csv(PLOTS_DIR / "sweep_metrics.csv")
    ratio = prepared.reduced.full_explained_variance_ratio
    pd.DataFrame(
        {
            "component": np.arange(1, len(ratio) + 1),
            "explained_variance_ratio": np.round(ratio, 6),
            "cumulative": np.round(np.cumsum(ratio), 6),
        }
    ).to_csv(PLOTS_DIR / "pca_variance.csv", index=False)
    pd.DataFrame(
        {
            "segment": list(trained.evaluation.sizes),
            "rows": list(trained.evaluation.sizes.values()),
        }
    ).to_csv(PLOTS_DIR / "segment_sizes.csv", index=False)
    if registration is not None:
        metrics["model_version"] = registration.model_version
        metrics["run_id"] = registration.run_id
    return metrics
