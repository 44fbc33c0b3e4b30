"""Register: record a training in MLflow and register its model.

One parent run per training (params, chosen-k metrics, plots, reports, validation result,
tags ``data_md5`` and ``git_commit``), one nested run per k with its metrics, and the fitted
chain registered as a pyfunc model version with alias ``challenger``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.chain import SegmentationChain, contract_digest
from tasks.errors import RegistryError
from tasks.run_liveness import owned_run
from tasks.tracking import (  # noqa: F401
    ARTIFACT_DIR,
    DEFAULT_TRACKING_URI,
    sqlite_database,
    tracking_uri,
)

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
TRAINING_DATA_ARTIFACT = "data/training.parquet"
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
            mlflow.MlflowClient().search_experiments(max_results=1)
        _INITIALISED_STORES.add(uri)
    if uri not in _SWEPT_STORES:
        # Once per process and store: runs left RUNNING by a killed process end FAILED.
        _SWEPT_STORES.add(uri)
        from tasks.run_liveness import sweep_dead_runs

        sweep_dead_runs(mlflow.MlflowClient())
    return uri


_SWEPT_STORES: set[str] = set()


def registry_lock_path() -> Path:
    """One lock per tracking store: next to a sqlite file, else in the project's .popseg/."""
    database = sqlite_database(tracking_uri())
    if database is not None:
        return Path(f"{database}.lock")
    return Path(".popseg") / "registry.lock"


_LOCKS: dict[str, Any] = {}


def _file_lock(path: Path):
    """One lock object per file in this process: re-entrant (a step holding it may call code
    that takes it again) while still excluding other processes."""
    from filelock import FileLock

    key = str(path.resolve())
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(key)
    return _LOCKS[key]


@contextlib.contextmanager
def registry_lock(timeout_s: float = 600.0):
    """Serialise the steps that write the registry (log + register, gate + alias move) across
    processes, so two runs at once never interleave their writes to the store or both move
    ``champion`` past the same old champion."""
    from filelock import Timeout

    path = registry_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _file_lock(path)
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise RegistryError(
            f"{path}: another run has held the registry lock for over {timeout_s:g} s "
            "(orchestrate.registry_lock_timeout_s); nothing was registered"
        ) from None
    try:
        yield path
    finally:
        lock.release()


def ensure_experiment(name: str) -> str:
    """Get or create the experiment; new ones keep artifacts under ./mlartifacts."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (Path.cwd() / ARTIFACT_DIR).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


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


@dataclass(frozen=True)
class Registration:
    run_id: str
    experiment_id: str
    model_name: str
    model_version: str
    model_uri: str


def _log_json(payload: Any, artifact_path: str) -> None:
    import mlflow

    mlflow.log_dict(json.loads(json.dumps(payload, default=_json_default)), artifact_path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def register_training(
    record: TrainingRecord,
    experiment: str,
    model_name: str,
    log_data_max_mb: float,
    lock_timeout_s: float = 600.0,
) -> Registration:
    """Log the parent run (+ nested runs per k), register the model, set alias challenger.

    The registration happens last; if anything before it fails the run is marked FAILED and
    no model version exists. Holds the registry lock throughout. A store that refuses writes
    (read-only, full, gone) is one `RegistryError` line naming it."""
    with _store_errors(), registry_lock(lock_timeout_s):
        return _register_training(record, experiment, model_name, log_data_max_mb)


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
    record: TrainingRecord, experiment: str, model_name: str, log_data_max_mb: float
) -> Registration:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.utils import _infer_schema

    configure_mlflow()
    experiment_id = ensure_experiment(experiment)
    k = record.chain.k
    with owned_run(experiment_id=experiment_id, run_name=f"train-k{k}") as parent:
        mlflow.set_tags(record.tags)
        mlflow.log_params(record.params_flat)
        mlflow.log_metrics(
            {
                name: value
                for name, value in record.chosen_metrics.items()
                if value is not None and np.isfinite(value)
            }
        )
        for k_value, metrics in sorted(record.per_k_metrics.items()):
            with owned_run(experiment_id=experiment_id, run_name=f"k={k_value}", nested=True):
                mlflow.log_param("k", k_value)
                mlflow.set_tag("chosen", str(k_value == k).lower())
                mlflow.log_metrics({n: v for n, v in metrics.items() if np.isfinite(v)})
        for plot in record.plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        for path, payload in record.json_artifacts.items():
            _log_json(payload, path)
        for path, table in record.csv_artifacts.items():
            mlflow.log_text(table.to_csv(), path)
        if record.validation_json is not None:
            mlflow.log_artifact(str(record.validation_json), artifact_path="validation")
        with tempfile.TemporaryDirectory() as scratch:
            data_path = Path(scratch) / "training.parquet"
            record.training_frame.to_parquet(data_path, index=False)
            size_mb = data_path.stat().st_size / 1e6
            if size_mb <= log_data_max_mb:
                mlflow.log_artifact(str(data_path), artifact_path="data")
            else:
                mlflow.set_tag("training_data_logged", "false")
            chain_dir = Path(scratch) / "chain"
            record.chain.save(str(chain_dir))
            mlflow.log_artifacts(str(chain_dir), artifact_path="chain")
            features = record.training_frame[record.chain.feature_names].head(5)
            segments, distances = record.chain.predict(features.to_numpy(dtype=np.float64))
            output = pd.DataFrame({"closest_cluster": segments, "distance_to_cluster": distances})
            # Output schema only: an input schema would make MLflow refuse integer columns
            # ("can not safely convert int64 to float64"); the chain checks inputs itself.
            signature = ModelSignature(inputs=None, outputs=_infer_schema(output))
            info = mlflow.pyfunc.log_model(
                name="model",
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
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        for key in ("data_md5", "git_commit", "validation_success"):
            if key in record.tags:
                client.set_model_version_tag(model_name, version, key, record.tags[key])
        client.set_model_version_tag(model_name, version, "k", str(k))
        _tag_contract(client, model_name, version, record.chain)
        mlflow.set_tag("model_version", version)
        return Registration(
            run_id=parent.info.run_id,
            experiment_id=experiment_id,
            model_name=model_name,
            model_version=version,
            model_uri=f"models:/{model_name}/{version}",
        )


CONTRACT_TAG = "input_contract"
CONTRACT_DIGEST_TAG = "input_contract_sha256"
_CONTRACT_TAG_MAX = 4000  # MLflow caps tag values; the chain artifact always has the full list


def _tag_contract(client, model_name: str, version: str, chain: SegmentationChain) -> None:
    """The input contract on the version: its digest, and the feature list when it fits."""
    contract = chain.input_contract()
    client.set_model_version_tag(
        model_name, version, CONTRACT_DIGEST_TAG, contract_digest(contract)
    )
    listed = json.dumps(contract["features"])
    if len(listed) <= _CONTRACT_TAG_MAX:
        client.set_model_version_tag(model_name, version, CONTRACT_TAG, listed)


# ----------------------------------------------------------------------------- registry reads


def resolve_version(model_name: str, version: str | None, alias: str = CHALLENGER):
    """A registered ModelVersion by number, or by alias when no number is given."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure_mlflow()
    client = mlflow.MlflowClient()
    try:
        if version is None:
            return client.get_model_version_by_alias(model_name, alias)
        return client.get_model_version(model_name, str(version))
    except MlflowException:
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise RegistryError(
            f"model {model_name!r} has no {what} in the registry at {tracking_uri()}"
        ) from None


def alias_version(model_name: str, alias: str) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    configure_mlflow()
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def load_chain(run_id: str) -> SegmentationChain:
    import mlflow

    configure_mlflow()
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="chain")
    return SegmentationChain.load(local)


def load_training_frame(run_id: str) -> pd.DataFrame:
    import mlflow
    from mlflow.exceptions import MlflowException

    configure_mlflow()
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=TRAINING_DATA_ARTIFACT
        )
    except (MlflowException, OSError):
        raise RegistryError(
            f"run {run_id} has no logged training data ({TRAINING_DATA_ARTIFACT}); "
            "it was larger than register.log_data_max_mb"
        ) from None
    return pd.read_parquet(local)
