"""Register: record a training in MLflow and register its model.

One parent run per training (params, chosen-k metrics, plots, reports, validation result,
tags ``data_md5`` and ``git_commit``, the training data as its MLflow dataset input), one
nested run per k with its metrics, and the fitted chain registered as a pyfunc model version
(input schema: the features as doubles) with alias ``challenger``; the names are those of
`tasks.tracking.layout`, written through `tasks.tracking.runs`. Also: pointing MLflow at the
project store; the registry lock is `tasks.tracking.lock`'s (re-exported here).
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.chain import SegmentationChain, contract_digest
from tasks.errors import RegistryError
from tasks.run_liveness import interrupts_held, owned_run
from tasks.tracking import (  # noqa: F401
    ARTIFACT_DIR,
    DEFAULT_TRACKING_URI,
    client,
    runs,
    sqlite_database,
    tracking_uri,
)
from tasks.tracking.layout import (  # noqa: F401
    CHALLENGER,
    CHAMPION,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    Artifact,
    training_run_name,
)
from tasks.tracking.lock import DEFAULT_LEASE_S, registry_lock

logger = logging.getLogger(__name__)
_PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
_CHAIN_FILE = Path(__file__).with_name("chain.py")


_INITIALISED_STORES: set[str] = set()


def configure_mlflow() -> str:
    """Point MLflow at the project store (``MLFLOW_TRACKING_URI`` overrides it).

    A new sqlite store is created under the registry lock: two processes starting at once
    would otherwise both run MLflow's schema migrations on the same file."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # The sagemaker plugin logs header noise on every registry call.
    logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)
    if uri.startswith("sqlite:///") and uri not in _INITIALISED_STORES:
        with registry_lock():
            client().search_experiments(max_results=1)
        _INITIALISED_STORES.add(uri)
    if uri not in _SWEPT_STORES:
        # Once per process and store: runs left RUNNING by a killed process end FAILED.
        _SWEPT_STORES.add(uri)
        from tasks.run_liveness import sweep_dead_runs

        sweep_dead_runs(client())
    return uri


_SWEPT_STORES: set[str] = set()


def ensure_experiment(name: str) -> str:
    """Get or create the experiment, marked a model-training experiment (one made before the
    mark gets it too); with the sqlite store new ones keep artifacts under ./mlartifacts, any
    other store chooses (a tracking server: its artifact proxy)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:
            client().set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
            )
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (Path.cwd() / ARTIFACT_DIR).resolve().as_uri()
    return mlflow.create_experiment(
        name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    )


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


@dataclass(frozen=True)
class TrainingRecord:
    """Everything a training produced that MLflow should keep."""

    params_flat: dict[str, Any]
    tags: dict[str, str]
    chosen_metrics: dict[str, float]
    per_k_metrics: dict[int, dict[str, float]]
    chain: SegmentationChain
    training_frame: pd.DataFrame  # id + raw features, as ingested
    plots: list[Path]
    json_artifacts: dict[str, Any]  # artifact path -> JSON-able payload
    csv_artifacts: dict[str, pd.DataFrame]  # artifact path -> table
    validation_json: Path | None = None
    dataset: runs.DatasetRef | None = None  # the training data, as the run's MLflow input


@dataclass(frozen=True)
class Registration:
    run_id: str
    experiment_id: str
    model_name: str
    model_version: str
    model_uri: str


def register_training(
    record: TrainingRecord,
    experiment: str,
    model_name: str,
    log_data_max_mb: float,
    lock_timeout_s: float = 600.0,
    lock_lease_s: float = DEFAULT_LEASE_S,
    data_sample_seed: int = 0,
) -> Registration:
    """Log the parent run (+ nested runs per k), register the model, set alias challenger.
    The training rows are logged up to ``log_data_max_mb`` (above it a sample seeded by
    ``data_sample_seed``: `runs.log_training_data`).

    The registration happens last; if anything before it fails the run is marked FAILED and
    no model version exists. Holds the registry lock throughout. A store that refuses writes
    (read-only, full, gone) is one `RegistryError` line naming it.

    SIGTERM/SIGINT are delivered between the store writes (`interrupts_held`): one that comes
    before the registration's last step ends the run KILLED with no model version; one that
    comes later is delivered once the run has FINISHED. Held only once the lock is ours: one
    that comes while waiting for it (up to `lock_timeout_s`) is delivered at once."""
    with (
        _store_errors(),
        registry_lock(lock_timeout_s, lock_lease_s),
        interrupts_held() as checkpoint,
    ):
        return _register_training(
            record, experiment, model_name, log_data_max_mb, data_sample_seed, checkpoint
        )


@contextlib.contextmanager
def _store_errors():
    """Store failures (SQLAlchemy, MLflow, the file system) become a `RegistryError` with the
    store's URI and the reason in one line. MLflow's own ERROR log of the SQLAlchemy error, a
    traceback repeating what is raised here, is held back meanwhile."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    db_log.setLevel(logging.CRITICAL)
    try:
        yield
    except (MlflowException, SQLAlchemyError, OSError) as error:
        raise RegistryError(f"MLflow tracking store {tracking_uri()}: {_reason(error)}") from error
    finally:
        db_log.setLevel(level)


def _reason(error: BaseException) -> str:
    """The database driver's own words when SQLAlchemy wrapped them ("(sqlite3.OperationalError)
    attempt to write a readonly database"), else the first line; never the SQL."""
    text = str(error)
    for line in text.splitlines():
        match = re.match(r"\(([\w.]+)\) (.+)", line.strip())
        if match:
            return f"{match.group(2)} ({match.group(1)})"[:300]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return (first or type(error).__name__)[:300]


def _register_training(
    record: TrainingRecord,
    experiment: str,
    model_name: str,
    log_data_max_mb: float,
    data_sample_seed: int = 0,
    checkpoint: Callable[[], None] = lambda: None,
) -> Registration:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    configure_mlflow()
    experiment_id = ensure_experiment(experiment)
    k = record.chain.k
    checkpoint()  # no run yet: an interrupt here leaves nothing behind
    with owned_run(experiment_id=experiment_id, run_name=training_run_name(k)) as parent:
        # Each checkpoint delivers a held SIGTERM/SIGINT between writes; owned_run ends KILLED.
        checkpoint()
        runs.log_run(record.tags, record.params_flat, record.chosen_metrics)
        for k_value, metrics in sorted(record.per_k_metrics.items()):
            checkpoint()
            runs.log_k_run(experiment_id, k_value, k_value == k, metrics)
        checkpoint()
        runs.log_plots(record.plots)
        for path, payload in record.json_artifacts.items():
            checkpoint()
            runs.log_json(payload, path)
        for path, table in record.csv_artifacts.items():
            checkpoint()
            runs.log_csv(table, path)
        checkpoint()
        if record.validation_json is not None:
            runs.log_file(record.validation_json, Artifact.VALIDATION_RESULT)
        runs.log_training_data(record.training_frame, log_data_max_mb, data_sample_seed)
        checkpoint()
        if record.dataset is not None:
            runs.log_dataset(record.dataset)
        checkpoint()
        with tempfile.TemporaryDirectory() as scratch:
            chain_dir = Path(scratch) / Artifact.CHAIN
            record.chain.save(str(chain_dir))
            runs.log_chain(chain_dir)
            chain = record.chain
            encoded = record.training_frame[chain.feature_names].head(5).astype(np.float64)
            # The request columns: a categorical column's raw level, not its indicators.
            features = pd.DataFrame(
                chain.request_rows(encoded.to_numpy()), columns=chain.input_columns
            )
            # Declared, not inferred (inferring warns about integer columns): every numeric
            # feature a double, as the chain computes in float64 and a column may hold missing
            # values at scoring time, which an integer column cannot; categorical columns text.
            outputs = [
                ColSpec(DataType.long, "closest_cluster"),
                ColSpec(DataType.double, "distance_to_cluster"),
            ]
            if chain.mixture is not None:  # a Gaussian mixture: the segment's posterior
                outputs.append(ColSpec(DataType.double, "membership_probability"))
            signature = ModelSignature(
                inputs=runs.feature_schema(chain.input_columns, list(chain.categories)),
                outputs=Schema(outputs),
            )
            info = mlflow.pyfunc.log_model(
                name=Artifact.MODEL,
                python_model=str(_PYFUNC_FILE),
                artifacts={"chain": str(chain_dir)},
                code_paths=[str(_CHAIN_FILE)],
                signature=signature,
                input_example=features,
                pip_requirements=["numpy", "pandas", f"mlflow=={mlflow.__version__}"],
                registered_model_name=model_name,
                await_registration_for=60,
            )
        version = str(info.registered_model_version)
        # The last one: owned_run deletes the version just registered. An interrupt after it
        # (the alias moving) waits until the run has FINISHED: the registration stands.
        checkpoint()
        contract = record.chain.input_contract()
        runs.record_registration(
            model_name, version, record.tags, k, contract, contract_digest(contract)
        )
        return Registration(
            run_id=parent.info.run_id,
            experiment_id=experiment_id,
            model_name=model_name,
            model_version=version,
            model_uri=f"models:/{model_name}/{version}",
        )


# ----------------------------------------------------------------------------- registry reads


def resolve_version(model_name: str, version: str | None, alias: str = CHALLENGER):
    """A registered ModelVersion by number, or by alias when no number is given."""
    configure_mlflow()
    return runs.model_version(model_name, version, alias)


def alias_version(model_name: str, alias: str) -> str | None:
    configure_mlflow()
    return runs.alias_version(model_name, alias)


def load_chain(run_id: str) -> SegmentationChain:
    configure_mlflow()
    return SegmentationChain.load(str(runs.download(run_id, Artifact.CHAIN)))


def load_training_frame(run_id: str) -> pd.DataFrame:
    configure_mlflow()
    return pd.read_parquet(runs.download(run_id, Artifact.TRAINING_DATA))


def load_training_rows(run_id: str, features: list[str]) -> np.ndarray:
    """The logged training rows' ``features`` as float64 (n, len(features)), missing values
    NaN: only those columns read, and Arrow's buffers handed back once copied (the whole
    frame through pandas held three copies of a 45 MB sample at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    configure_mlflow()
    path = runs.download(run_id, Artifact.TRAINING_DATA)
    table = pq.read_table(path, columns=features)
    rows = np.empty((table.num_rows, len(features)))
    for j, name in enumerate(features):
        rows[:, j] = table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
    del table
    pa.default_memory_pool().release_unused()
    return rows
