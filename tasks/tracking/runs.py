"""The writer and the reader of the run layout (`tasks.tracking.layout`).

Writing: the artifacts, tags and dataset input of the active run (``log_*``), of a run by id
(``tag_run``, ``log_text``, ``fail_run``) and of a model version (``tag_version``,
``describe_version``, ``record_*``).
Reading: :func:`read_version` gives a registered version and its training run as one
:class:`RunRecord`; :func:`download` fetches an artifact, a missing one being a
`RegistryError` that names it. MLflow is imported inside the functions, as everywhere in
popseg; callers point MLflow at the store first (`register.configure_mlflow`)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.errors import RegistryError
from tasks.tracking import client, tracking_uri
from tasks.tracking.layout import (
    ARTIFACT_MEANING,
    CHALLENGER,
    CHAMPION,
    CONTRACT_TAG_MAX,
    COPIED_TO_VERSION,
    DATASET_CONTEXT,
    GATE_TAGS,
    VALIDATION_FAILED_RUN_NAME,
    Artifact,
    Metric,
    Param,
    RunTag,
    VersionTag,
    gate_description,
    k_run_name,
)

# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class GateRecord:
    """What the promotion gate (and rollbacks) recorded on a model version."""

    passed: bool | None  # None: the gate never ran on it
    reasons: list[str]
    previous_champion: str | None
    rolled_back_from: str | None


@dataclass(frozen=True)
class RunRecord:
    """A run as the layout reads it; for a registered version, with the version's fields."""

    run_id: str
    experiment_id: str
    start_time: int | None  # ms since the epoch
    artifact_uri: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    model_name: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()
    version_tags: dict[str, str] = field(default_factory=dict)

    @property
    def k(self) -> int | None:
        value = self.version_tags.get(VersionTag.K) or self.tags.get(RunTag.K)
        if value is not None:
            return int(value)
        return int(self.metrics[Metric.K]) if Metric.K in self.metrics else None

    @property
    def data_md5(self) -> str | None:
        return self.tags.get(RunTag.DATA_MD5)

    @property
    def data_source(self) -> str:
        return self.tags.get(RunTag.DATA_SOURCE, "")

    @property
    def data_path(self) -> str | None:
        return self.tags.get(RunTag.DATA_PATH)

    @property
    def git_commit(self) -> str | None:
        return self.tags.get(RunTag.GIT_COMMIT)

    @property
    def id_column(self) -> str | None:
        return self.tags.get(RunTag.ID_COLUMN)

    @property
    def validation_passed(self) -> bool:
        return self.tags.get(RunTag.VALIDATION_SUCCESS) == "true"

    @property
    def training_data_logged(self) -> bool:
        """Whether the run logged its training rows (all of them, or a seeded sample)."""
        return self.tags.get(RunTag.TRAINING_DATA_LOGGED) != "false"

    @property
    def training_data_sampled(self) -> bool:
        """The logged training rows are a seeded sample (the data was above
        ``register.log_data_max_mb``)."""
        return self.tags.get(RunTag.TRAINING_DATA_LOGGED) == "sample"

    @property
    def contract_digest(self) -> str | None:
        return self.version_tags.get(VersionTag.CONTRACT_DIGEST)

    @property
    def gate(self) -> GateRecord:
        tags = self.version_tags
        passed = tags.get(VersionTag.GATE_PASSED)
        reasons = tags.get(VersionTag.GATE_REASONS)
        return GateRecord(
            passed=None if passed is None else passed == "true",
            reasons=reasons.split("; ") if reasons else [],
            previous_champion=tags.get(VersionTag.PREVIOUS_CHAMPION),
            rolled_back_from=tags.get(VersionTag.ROLLED_BACK_FROM),
        )

    @property
    def gate_tags(self) -> dict[str, str]:
        """The gate's version tags as written (the report shows them)."""
        return {key: value for key, value in self.version_tags.items() if key in GATE_TAGS}

    def artifact(self, name: str, destination: str | Path | None = None) -> Path:
        return download(self.run_id, name, destination)

    def optional_artifact(self, name: str, destination: str | Path | None = None) -> Path | None:
        return download(self.run_id, name, destination, required=False)

    def listing(self, folder: str) -> list[str]:
        return list_artifacts(self.run_id, folder)


def _record(run, model_version=None) -> RunRecord:
    extra: dict[str, Any] = {}
    if model_version is not None:
        extra = {
            "model_name": model_version.name,
            "version": str(model_version.version),
            "aliases": tuple(getattr(model_version, "aliases", None) or ()),
            "version_tags": dict(model_version.tags or {}),
        }
    return RunRecord(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        start_time=run.info.start_time,
        artifact_uri=run.info.artifact_uri,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        **extra,
    )


def model_version(model_name: str, version: str | None, alias: str = CHALLENGER):
    """A registered ModelVersion by number, or by alias when no number is given."""
    from mlflow.exceptions import MlflowException

    try:
        if version is None:
            return client().get_model_version_by_alias(model_name, alias)
        return client().get_model_version(model_name, str(version))
    except MlflowException:
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise RegistryError(
            f"model {model_name!r} has no {what} in the registry at {tracking_uri()}"
        ) from None


def read_version(model_name: str, version: str | None, alias: str = CHALLENGER) -> RunRecord:
    """A registered version (by number, else by alias) with its training run."""
    found = model_version(model_name, version, alias)
    return _record(client().get_run(found.run_id), found)


def read_run(run_id: str) -> RunRecord:
    return _record(client().get_run(run_id))


def alias_version(model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def latest_version(model_name: str) -> str | None:
    """The highest registered version number, None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(f"name = '{model_name.replace(chr(39), '')}'")
    except MlflowException:
        return None
    return str(max(int(item.version) for item in versions)) if versions else None


def search_runs(experiment_ids: list[str], tags: Mapping[str, str], max_results: int):
    """Runs whose tags have these values, newest first."""
    conditions = " and ".join(
        f"tags.`{key}` = '{str(value).replace(chr(39), '')}'" for key, value in tags.items()
    )
    runs = client().search_runs(
        experiment_ids,
        filter_string=conditions,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )
    return [_record(run) for run in runs]


_ARTIFACT_ROOTS: dict[tuple[str, str], str] = {}


def artifact_root(run_id: str) -> str:
    """A run's artifact URI, read once per store and run: by run id, MLflow reads the whole
    run (params, metrics, tags) twice per artifact, ~0.1 s each on sqlite; a report reads a
    dozen artifacts. An unknown run is an `MlflowException`."""
    key = (tracking_uri(), run_id)
    if key not in _ARTIFACT_ROOTS:
        _ARTIFACT_ROOTS[key] = client().get_run(run_id).info.artifact_uri
    return _ARTIFACT_ROOTS[key]


def download(
    run_id: str, artifact: str, destination: str | Path | None = None, required: bool = True
) -> Path | None:
    """A run's artifact (file or folder) on local disk. Missing: a `RegistryError` naming it,
    or None when not ``required``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{artifact_root(run_id).rstrip('/')}/{artifact}",
                dst_path=None if destination is None else str(destination),
            )
        )
    except (MlflowException, OSError):
        local = None
    # A file asked for by name must be a file (MLflow gives an empty folder for a missing one).
    if local is not None and (PurePosixPath(artifact).suffix == "" or local.is_file()):
        return local
    if not required:
        return None
    meaning, why = ARTIFACT_MEANING.get(artifact, ("artifact", ""))
    raise RegistryError(f"run {run_id} has no {meaning} ({artifact})" + (f"; {why}" if why else ""))


def list_artifacts(run_id: str, folder: str) -> list[str]:
    return [item.path for item in client().list_artifacts(run_id, folder)]


# ----------------------------------------------------------------------------- writing


def log_run(tags: Mapping[str, str], params: Mapping[str, Any], metrics: Mapping[str, float]):
    """Tags, params and the finite metrics of the active run."""
    import mlflow

    mlflow.set_tags(dict(tags))
    if params:
        mlflow.log_params(dict(params))
    mlflow.log_metrics(
        {
            name: value
            for name, value in metrics.items()
            if value is not None and math.isfinite(value)
        }
    )


def log_k_run(experiment_id: str, k: int, chosen: bool, metrics: Mapping[str, float]) -> None:
    """The nested run of one k tried, inside the active training run."""
    import mlflow

    from tasks.run_liveness import owned_run

    with owned_run(experiment_id=experiment_id, run_name=k_run_name(k), nested=True):
        mlflow.log_param(Param.K, k)
        mlflow.set_tag(RunTag.CHOSEN, str(chosen).lower())
        log_run({}, {}, metrics)


def log_file(local: str | Path, artifact: str) -> None:
    """A local file as the artifact ``artifact`` of the active run (renamed if need be)."""
    import mlflow

    local = Path(local)
    target = PurePosixPath(artifact)
    folder = None if str(target.parent) == "." else str(target.parent)
    if local.name == target.name:
        mlflow.log_artifact(str(local), artifact_path=folder)
        return
    with tempfile.TemporaryDirectory() as scratch:
        renamed = Path(scratch) / target.name
        shutil.copyfile(local, renamed)
        mlflow.log_artifact(str(renamed), artifact_path=folder)


def log_plots(plots: Iterable[Path]) -> None:
    for plot in plots:
        log_file(plot, f"{Artifact.PLOTS}/{Path(plot).name}")


def log_json(payload: Any, artifact: str) -> None:
    import mlflow

    mlflow.log_dict(json.loads(json.dumps(payload, default=_json_default)), artifact)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def log_csv(table, artifact: str) -> None:
    import mlflow

    mlflow.log_text(table.to_csv(), artifact)


#: Rows of the probe whose Parquet size estimates a large frame's (see `log_training_data`).
_PROBE_ROWS = 20_000
#: A sample is sized to this share of ``register.log_data_max_mb`` (Parquet size is not
#: exactly proportional to rows).
_SAMPLE_HEADROOM = 0.9


def _parquet_mb(frame, path: Path) -> float:
    frame.to_parquet(path, index=False)
    return path.stat().st_size / 1e6


def _seeded_rows(frame, rows: int, seed: int):
    """``rows`` rows of ``frame`` drawn without replacement (seeded), in their order."""
    import numpy as np

    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))
    return frame.iloc[chosen]


def log_training_data(frame, max_mb: float, seed: int = 0) -> str:
    """The training rows as :attr:`Artifact.TRAINING_DATA`, at most ``max_mb`` as Parquet:
    every row when they fit ("true"), else a seeded sample of rows that fits ("sample", tag
    ``training_data_rows`` = the rows kept), else nothing ("false": not even one row fits).
    The promotion gate, monitor and report read it back; they need representative rows, not
    all of them. Returns the ``training_data_logged`` tag's value.

    A large frame is not written whole to find out it is too large: the size of a seeded
    probe of ``_PROBE_ROWS`` rows sizes the sample directly."""
    import mlflow

    n_rows = len(frame)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / PurePosixPath(Artifact.TRAINING_DATA).name
        probe_rows = min(n_rows, _PROBE_ROWS)
        probe = frame if probe_rows == n_rows else _seeded_rows(frame, probe_rows, seed)
        mb_per_row = _parquet_mb(probe, path) / max(probe_rows, 1)
        if probe_rows == n_rows and mb_per_row * n_rows <= max_mb:
            logged, kept = "true", n_rows
        else:
            kept = min(n_rows, int(max_mb * _SAMPLE_HEADROOM / mb_per_row))
            logged = "false" if kept < 1 else ("true" if kept == n_rows else "sample")
            while logged != "false":
                rows = frame if kept == n_rows else _seeded_rows(frame, kept, seed)
                size = _parquet_mb(rows, path)
                if size <= max_mb:
                    break
                kept = int(kept * max_mb * _SAMPLE_HEADROOM / size)
                logged = "false" if kept < 1 else "sample"
        if logged != "false":
            log_file(path, Artifact.TRAINING_DATA)
    mlflow.set_tags({RunTag.TRAINING_DATA_LOGGED: logged, RunTag.TRAINING_DATA_ROWS: str(kept)})
    return logged


@dataclass(frozen=True)
class DatasetRef:
    """The training data as an MLflow dataset: where it is, not its rows."""

    name: str
    digest: str  # the DVC md5
    source: str  # local path or URI (s3://..., a folder or glob on the Dask engine)
    features: list[str]


def log_dataset(dataset: DatasetRef) -> None:
    """The training data as the active run's input (the MLflow UI's Datasets column): name,
    digest, source and the features as double columns."""
    import warnings

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    try:
        with warnings.catch_warnings():
            # Two registered local-file sources claim a path ("interpreted in multiple ways").
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(dataset.source)
    except MlflowException:
        source = CodeDatasetSource(tags={"source": dataset.source})
    frame = MetaDataset(
        source, name=dataset.name, digest=dataset.digest, schema=feature_schema(dataset.features)
    )
    mlflow.log_input(frame, context=DATASET_CONTEXT)


def feature_schema(features: list[str], categorical: list[str] | None = None):
    """The model's input: every numeric feature a double (integer columns are converted by
    the chain, so MLflow's integer-column warning does not apply), a categorical column text
    (raw values; optional, as a missing value is the level ``Unknown``)."""
    from mlflow.types import ColSpec, DataType, Schema

    text = set(categorical or ())
    return Schema(
        [
            ColSpec(DataType.string, name, required=False)
            if name in text
            else ColSpec(DataType.double, name)
            for name in features
        ]
    )


def log_chain(chain_dir: str | Path) -> None:
    import mlflow

    mlflow.log_artifacts(str(chain_dir), artifact_path=Artifact.CHAIN)


def tag_run(run_id: str, tags: Mapping[str, str]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, value)


def log_text(run_id: str, text: str, artifact: str) -> None:
    client().log_text(run_id, text, artifact)


def log_dict(run_id: str, payload: Any, artifact: str) -> None:
    client().log_dict(run_id, payload, artifact)


def fail_run(run_id: str) -> None:
    client().set_terminated(run_id, status="FAILED")


def tag_version(model_name: str, version: str, tags: Mapping[str, str]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model_name, str(version), key, value)


def delete_version_tags(model_name: str, version: str, keys: Iterable[str]) -> None:
    """Remove these tags from a model version (those it does not have are skipped)."""
    present = client().get_model_version(model_name, str(version)).tags or {}
    for key in keys:
        if key in present:
            client().delete_model_version_tag(model_name, str(version), key)


def move_alias(model_name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(model_name, alias, str(version))


def delete_alias(model_name: str, alias: str) -> None:
    client().delete_registered_model_alias(model_name, alias)


def record_registration(
    model_name: str,
    version: str,
    run_tags: Mapping[str, str],
    k: int,
    contract: dict[str, Any],
    digest: str,
) -> None:
    """A new version: alias challenger, lineage copied from its run, k, the input contract
    (its digest, and the feature list when it fits in a tag); the run names the version."""
    import mlflow

    move_alias(model_name, CHALLENGER, version)
    tags = {key: run_tags[key] for key in COPIED_TO_VERSION if key in run_tags}
    tags[VersionTag.K] = str(k)
    tags[VersionTag.CONTRACT_DIGEST] = digest
    listed = json.dumps(contract["features"])
    if len(listed) <= CONTRACT_TAG_MAX:
        tags[VersionTag.CONTRACT] = listed
    tag_version(model_name, version, tags)
    mlflow.set_tag(RunTag.MODEL_VERSION, version)


def record_gate(
    model_name: str,
    version: str,
    passed: bool,
    reasons: list[str],
    champion: str | None,
    move_champion: bool = True,
) -> None:
    """The gate's verdict on a version (tags and the version's description); passing moves
    ``champion`` to it (unless not ``move_champion``: approval required, the approval moves
    it)."""
    tags = {
        VersionTag.GATE_PASSED: str(passed).lower(),
        VersionTag.GATE_REASONS: "; ".join(reasons),
    }
    moves = passed and move_champion
    if moves and champion is not None:
        tags[VersionTag.PREVIOUS_CHAMPION] = champion
    tag_version(model_name, version, tags)
    describe_version(model_name, version, gate_description(passed, reasons))
    if moves:
        move_alias(model_name, CHAMPION, version)


def describe_version(model_name: str, version: str, description: str) -> None:
    client().update_model_version(model_name, str(version), description=description)


def record_rollback(model_name: str, version: str, champion_before: str | None) -> None:
    """``champion`` moved back to ``version``, which records the champion it replaced."""
    move_alias(model_name, CHAMPION, version)
    if champion_before is not None and champion_before != version:
        tag_version(model_name, version, {VersionTag.ROLLED_BACK_FROM: champion_before})


def record_failed_validation(
    experiment_id: str, tags: Mapping[str, str], validation_json: Path, failed: int
) -> str:
    """A FAILED run keeping a validation that did not pass visible (nothing is registered)."""
    from tasks.run_liveness import interrupts_held, owned_run

    # SIGTERM/SIGINT wait for these few writes (see `run_liveness.interrupts_held`).
    with interrupts_held():
        with owned_run(experiment_id=experiment_id, run_name=VALIDATION_FAILED_RUN_NAME) as run:
            log_run(
                {**tags, RunTag.VALIDATION_SUCCESS: "false"},
                {},
                {Metric.FAILED_EXPECTATIONS: failed},
            )
            log_file(validation_json, Artifact.VALIDATION_RESULT)
        fail_run(run.info.run_id)
    return run.info.run_id
