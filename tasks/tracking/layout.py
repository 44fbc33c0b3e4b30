"""The MLflow run layout: every name a popseg run or model version is written and read by.

Standard library only. Writers (`tasks.tracking.runs`, register, monitor) and readers
(promote, report, lineage, monitor, the flows) spell no artifact path, tag, param or metric
themselves: they use these names.

A **training run** (parent, one per training, run name ``train-k<k>``):

* tags: lineage (:attr:`RunTag.DATA_MD5`, ``DATA_SOURCE``, ``DATA_PATH``, ``GIT_COMMIT``),
  how it was trained (``BACKEND``, ``EXECUTION_ENGINE``, ``ID_COLUMN``, ``CRITERION``, ``K``), the validation result
  (``VALIDATION_SUCCESS`` "true"/"false"), the version it registered (``MODEL_VERSION``),
  ``TRAINING_DATA_LOGGED`` ("true", "sample" when only a seeded sample of the rows fitted
  ``register.log_data_max_mb``, "false") with ``TRAINING_DATA_ROWS``, ``CACHED_STEPS`` and
  ``REPORT_ERROR`` when they apply; the owner tags of `tasks.run_liveness`;
* params: the flattened ``params.yaml`` (``Params.flat()``);
* metrics: the chosen k's clustering metrics, :attr:`Metric.K`, ``STABILITY`` and
  ``SEGMENT_MATCH_COST`` when matched to a champion;
* artifacts: :class:`Artifact` (chain, model, training data, plots, validation, reports);
* one nested run per k tried (run name ``k=<k>``): param ``k``, tag ``chosen``, its metrics.

and ``PREFECT_FLOW_RUN_ID`` / ``PREFECT_FLOW_RUN_URL``, the Prefect flow run that trained it (the URL
when a Prefect UI is known); its input (``mlflow.log_input``, context :data:`DATASET_CONTEXT`)
is the training data as an MLflow dataset: name, digest = the DVC md5, source = its path/URI.

A run whose data failed validation is logged FAILED (run name ``validation-failed``) with the
lineage tags, ``validation_success=false``, the validation artifact and metric
``failed_expectations``; nothing is registered.

A **registered model version** carries :class:`VersionTag` (lineage copied from its run, k,
the input contract, the promotion gate's verdict, rollbacks, the last monitoring run and its
experiment), a description stating the gate's decision and reasons (:func:`gate_description`)
and the aliases :data:`CHALLENGER` (newest registration) and :data:`CHAMPION` (passed the
gate). Its model has an input schema: the feature columns as doubles.

A **monitoring run** (run name ``monitor-v<version>``), in the model's own experiment
:func:`monitoring_experiment_name`: tag ``popseg.run_type=monitor`` and :class:`MonitorTag`,
params ``monitor.<threshold>``, :class:`MonitorMetric` (plus ``psi_<feature>``) and artifact
:attr:`Artifact.MONITOR`. Runs logged before monitoring had its own experiment are in the
training experiment; readers search both.

Every experiment popseg creates is tagged :data:`EXPERIMENT_KIND_TAG` =
:data:`MODEL_TRAINING_KIND` (MLflow's marker of a model-training experiment, as opposed to a
GenAI one). MLflow 3.17's UI picks its GenAI or model-training view from a global switch
instead, which :func:`ui_runs_path` sets in the link it gives.
"""

from __future__ import annotations

from typing import Final

CHALLENGER: Final = "challenger"
CHAMPION: Final = "champion"
CANDIDATE: Final = "candidate"


class Artifact:
    """Artifact paths inside a run."""

    CHAIN: Final = "chain"  # the fitted chain's folder (`SegmentationChain.save`)
    CHAIN_JSON: Final = "chain/chain.json"
    MODEL: Final = "model"  # the pyfunc model registered from it
    # id + raw features, as ingested: every row, or a seeded sample above log_data_max_mb
    TRAINING_DATA: Final = "data/training.parquet"
    PLOTS: Final = "plots"  # <name>.png
    VALIDATION_RESULT: Final = "validation/validation_result.json"
    SELECTION: Final = "reports/selection.json"
    IMPUTE: Final = "reports/impute.json"
    SCALE: Final = "reports/scale.json"
    REDUCE: Final = "reports/reduce.json"
    SEGMENTS: Final = "reports/segments.json"
    NOTES: Final = "reports/notes.json"
    SWEEP_METRICS: Final = "reports/sweep_metrics.csv"
    SEGMENT_PROFILES: Final = "reports/segment_profiles.csv"
    PCA_LOADINGS: Final = "reports/pca_loadings.csv"
    ASSIGNMENTS: Final = "reports/assignments.csv"
    REPORT: Final = "reports/report.html"
    MONITOR: Final = "monitor/monitor.json"  # of a monitoring run


# What a missing artifact is, in an error message, and why it may be missing.
ARTIFACT_MEANING: Final = {
    Artifact.TRAINING_DATA: (
        "logged training data",
        "not even one row fits register.log_data_max_mb",
    ),
    Artifact.CHAIN: ("chain", "the run was not logged by a popseg training"),
}


class RunTag:
    """Tags of a training run (parent run unless noted)."""

    DATA_MD5: Final = "data_md5"  # the DVC md5 of the input file
    DATA_SOURCE: Final = "data_source"
    DATA_PATH: Final = "data_path"  # in the project, when the input is a local file
    GIT_COMMIT: Final = "git_commit"
    BACKEND: Final = "backend"  # the compute backend (numba | sklearn)
    EXECUTION_ENGINE: Final = "execution_engine"  # where the run computed (memory | dask)
    DASK_WORKERS: Final = "dask_workers"  # the Dask engine: workers, partitions, sample size
    DASK_PARTITIONS: Final = "dask_partitions"
    DASK_SAMPLE_ROWS: Final = "dask_sample_rows"
    ID_COLUMN: Final = "id_column"
    CRITERION: Final = "criterion"
    K: Final = "k"
    VALIDATION_SUCCESS: Final = "validation_success"
    MODEL_VERSION: Final = "model_version"
    # "true": every training row logged; "sample": a seeded sample of them (the data was
    # above register.log_data_max_mb); "false": none. TRAINING_DATA_ROWS: the rows logged.
    TRAINING_DATA_LOGGED: Final = "training_data_logged"
    TRAINING_DATA_ROWS: Final = "training_data_rows"
    CACHED_STEPS: Final = "cached_steps"
    REPORT_ERROR: Final = "report_error"
    CHOSEN: Final = "chosen"  # nested run per k: "true" on the k chosen
    RUN_TYPE: Final = "popseg.run_type"
    PREFECT_FLOW_RUN_ID: Final = "prefect_flow_run_id"
    PREFECT_FLOW_RUN_URL: Final = "prefect_flow_run_url"  # its page in the Prefect UI


class Param:
    K: Final = "k"  # nested run per k
    MONITOR_PREFIX: Final = "monitor."  # monitoring run: one per drift threshold


class Metric:
    """Metrics of a training run besides the clustering metrics of the chosen k."""

    K: Final = "k"
    SILHOUETTE: Final = "silhouette"
    STABILITY: Final = "stability"
    SEGMENT_MATCH_COST: Final = "segment_match_cost"
    FAILED_EXPECTATIONS: Final = "failed_expectations"  # a run that failed validation


class VersionTag:
    """Tags of a registered model version."""

    DATA_MD5: Final = RunTag.DATA_MD5
    GIT_COMMIT: Final = RunTag.GIT_COMMIT
    VALIDATION_SUCCESS: Final = RunTag.VALIDATION_SUCCESS
    K: Final = "k"
    CONTRACT: Final = "input_contract"  # JSON list of feature names, when it fits in a tag
    CONTRACT_DIGEST: Final = "input_contract_sha256"
    GATE_PASSED: Final = "gate_passed"  # "true" / "false"
    GATE_REASONS: Final = "gate_reasons"  # "; "-joined
    PREVIOUS_CHAMPION: Final = "previous_champion"  # the champion it replaced
    ROLLED_BACK_FROM: Final = "rolled_back_from"  # the champion a rollback replaced by it
    LAST_MONITOR_RUN_ID: Final = "last_monitor_run_id"
    LAST_MONITOR_DRIFT: Final = "last_monitor_drift"
    MONITORING_EXPERIMENT: Final = "monitoring_experiment"  # name of the monitoring experiment
    MONITORING_EXPERIMENT_ID: Final = "monitoring_experiment_id"


class ApprovalTag:
    """Tags of a model version waiting for, or given, a person's decision
    (``promote.require_approval``)."""

    STATE: Final = "approval"  # an ApprovalState
    BY: Final = "approval_by"  # user@host, or $POPSEG_USER
    AT: Final = "approval_at"  # UTC, ISO 8601
    REASON: Final = "approval_reason"
    REQUESTED_AT: Final = "approval_requested_at"  # when the gate made it the candidate


class ApprovalState:
    PENDING: Final = "pending"
    APPROVED: Final = "approved"
    REJECTED: Final = "rejected"
    # Another version became the candidate before this one was decided.
    SUPERSEDED: Final = "superseded"


# The run tags a registration copies onto its model version.
COPIED_TO_VERSION: Final = (RunTag.DATA_MD5, RunTag.GIT_COMMIT, RunTag.VALIDATION_SUCCESS)
# The model version tags the promotion gate and rollbacks write (shown in the report).
GATE_TAGS: Final = (VersionTag.GATE_PASSED, VersionTag.GATE_REASONS, VersionTag.PREVIOUS_CHAMPION)

# MLflow caps tag values; the chain artifact always has the full feature list.
CONTRACT_TAG_MAX: Final = 4000


class MonitorTag:
    """Tags of a monitoring run (besides ``RunTag.RUN_TYPE`` = ``MONITOR_RUN_TYPE``)."""

    MODEL_NAME: Final = "model_name"
    MODEL_VERSION: Final = "model_version"
    DATA_SOURCE: Final = "data_source"
    DATA_MD5: Final = "data_md5"
    DRIFT: Final = "drift"  # "true" / "false"
    REFERENCE_RUN_ID: Final = "reference_run_id"  # the training run of the version
    RETRAIN_TRIGGERED: Final = "retrain_triggered"
    RETRAIN_MODEL_VERSION: Final = "retrain_model_version"
    RETRAIN_PROMOTED: Final = "retrain_promoted"


MONITOR_RUN_TYPE: Final = "monitor"


class MonitorMetric:
    DRIFT: Final = "drift"  # 1.0 / 0.0
    MAX_PSI: Final = "max_psi"
    N_ROWS: Final = "n_rows"
    N_REASONS: Final = "n_reasons"
    SEGMENT_PSI: Final = "segment_psi"
    DISTANCE_PREFIX: Final = "distance_"  # + median_ratio, p90_ratio
    PSI_PREFIX: Final = "psi_"  # + the feature name as a metric key


def training_run_name(k: int) -> str:
    return f"train-k{k}"


def k_run_name(k: int) -> str:
    return f"k={k}"


def monitor_run_name(version: str) -> str:
    return f"monitor-v{version}"


VALIDATION_FAILED_RUN_NAME: Final = "validation-failed"

# MLflow's experiment-kind tag and its value for a model-training experiment
# (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG: Final = "mlflow.experimentKind"
MODEL_TRAINING_KIND: Final = "custom_model_development"
# The `mlflow.log_input` context of the training data.
DATASET_CONTEXT: Final = "training"


def monitoring_experiment_name(model_name: str) -> str:
    return f"{model_name}-monitoring"


def ui_runs_path(experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment, in its model-training view (MLflow 3.17
    otherwise opens an experiment on the GenAI overview)."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def gate_description(passed: bool, reasons: list[str]) -> str:
    """A model version's description after the promotion gate (Markdown in the MLflow UI)."""
    verdict = "passed" if passed else "refused"
    return "\n".join([f"Promotion gate {verdict}:", *(f"- {reason}" for reason in reasons)])
