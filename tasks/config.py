"""Typed pipeline configuration: `params.yaml` validated once, with dotted overrides.

Each stage reads one section. Unknown keys and bad values raise `ConfigError` naming
the key (e.g. ``cluster.k_max``), never a pydantic traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    dataset: Literal["crime", "counties", "synthetic"] = "crime"
    path: str | None = None
    id_column: str | None = None
    delimiter: str = ","
    min_rows: Annotated[int, Field(ge=2)] = 10
    raw_dir: str = "data/raw"
    synthetic_rows: Annotated[int, Field(ge=2)] = 5000
    synthetic_features: Annotated[int, Field(ge=1)] = 8
    synthetic_centers: Annotated[int, Field(ge=1)] = 5
    synthetic_missing_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.02
    synthetic_seed: int = 0

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"must be a single character, got {value!r}")
        return value


class FeaturesConfig(_Section):
    include: list[str] | None = None
    exclude: list[str] = []
    categorical: Literal["drop", "onehot"] = "drop"
    max_categories: Annotated[int, Field(ge=2)] = 20


class ValidateConfig(_Section):
    min_rows: Annotated[int, Field(ge=1)] | None = None
    max_rows: Annotated[int, Field(ge=1)] | None = None
    max_missing_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    min_std: Annotated[float, Field(ge=0.0)] = 1e-12
    ranges: dict[str, tuple[float | None, float | None]] = {}
    expected_columns: list[str] | None = None
    # GX evaluates the whole suite itself up to this many rows; above, the row expectations
    # are counted over every row in numpy and GX checks the rest on a seeded sample this size.
    gx_max_rows: Annotated[int, Field(ge=100)] = 50_000


class ImputeConfig(_Section):
    strategy: Literal["drop", "mean", "median", "most_frequent", "constant", "knn", "iterative"] = (
        "median"
    )
    fill_value: float = 0.0
    n_neighbors: Annotated[int, Field(ge=1)] = 5
    max_iter: Annotated[int, Field(ge=1)] = 10
    seed: int = 0


class ScaleConfig(_Section):
    log1p: Literal["auto", "none"] | list[str] = "auto"
    skew_threshold: Annotated[float, Field(gt=0.0)] = 1.0
    method: Literal["standard", "minmax", "minmax_sym", "robust", "maxabs", "none"] = "standard"
    clip_quantiles: tuple[float, float] | None = None

    @field_validator("clip_quantiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (0.0 <= value[0] < value[1] <= 1.0):
            raise ValueError(f"must be [low, high] with 0 <= low < high <= 1, got {list(value)}")
        return value


class ReduceConfig(_Section):
    n_components: int | float | Literal["auto", "none"] = 0.8
    auto_min_features: Annotated[int, Field(ge=1)] = 100
    min_components: Annotated[int, Field(ge=1)] = 2

    @field_validator("n_components", mode="before")
    @classmethod
    def _components(cls, value: Any) -> int | float | str:
        if value in ("auto", "none"):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be an int >= 1, a variance fraction in (0, 1], 'auto' or 'none'")
        if isinstance(value, float) and 0.0 < value <= 1.0:
            return value
        if isinstance(value, int) and value >= 1:
            return value
        raise ValueError("must be an int >= 1, a variance fraction in (0, 1], 'auto' or 'none'")


class ClusterConfig(_Section):
    backend: Literal["numba", "sklearn"] = "numba"
    # kmeans: the k-means sweep, k by select.criterion; gmm: a Gaussian mixture per k (EM from
    # k-means starts, tasks/compute/gmm.py), k by the lowest BIC.
    model: Literal["kmeans", "gmm"] = "kmeans"
    covariance: Literal["full", "diag"] = "full"  # of each mixture component (gmm only)
    k_min: Annotated[int, Field(ge=2)] = 2
    k_max: Annotated[int, Field(ge=2)] = 12
    n_init: Annotated[int, Field(ge=1)] = 10
    max_iter: Annotated[int, Field(ge=1)] = 300
    tol: Annotated[float, Field(ge=0.0)] = 1e-4
    seed: int = 0
    silhouette_sample: Annotated[int, Field(ge=100)] = 5000

    @model_validator(mode="after")
    def _range(self) -> ClusterConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) is greater than k_max ({self.k_max})")
        return self


class SelectConfig(_Section):
    criterion: Literal[
        "elbow",
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
        "consensus",
        "prediction_strength",
        "gap",
        "stable_consensus",
        "gated_vote",
    ] = "gated_vote"
    sample_rows: Annotated[int, Field(ge=20)] = 2000
    prediction_strength_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    prediction_strength_repeats: Annotated[int, Field(ge=1)] = 2
    gap_references: Annotated[int, Field(ge=2)] = 10
    seed: int = 0


class EvaluateConfig(_Section):
    bootstrap_rounds: Annotated[int, Field(ge=0)] = 20
    # Above this many rows the bootstrap runs on a seeded sample of this size (as on Dask).
    stability_sample: Annotated[int, Field(ge=100)] = 50_000
    top_features: Annotated[int, Field(ge=1)] = 3
    example_members: Annotated[int, Field(ge=0)] = 5


class RegisterConfig(_Section):
    experiment: str = "popseg"
    model_name: str = "popseg-segmentation"
    log_data_max_mb: Annotated[float, Field(ge=0.0)] = 50.0


class PromoteConfig(_Section):
    min_silhouette: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.25
    min_stability: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.6
    max_silhouette_drop: Annotated[float, Field(ge=0.0)] = 0.0
    # A challenger whose input contract (features, their order) differs from the champion's is
    # refused unless this is true; it also lets deploy hot-swap a running endpoint to it.
    allow_contract_change: bool = False
    # A version that passes the gate gets alias candidate (champion unchanged) until a person
    # runs `popseg approve` / `popseg reject` (or answers the paused retrain flow run).
    require_approval: bool = False
    # How long the scheduled retrain flow waits for that decision before ending undeployed.
    approval_timeout_s: Annotated[int, Field(ge=1)] = 43200


class AutoscalingConfig(_Section):
    """``deploy.autoscaling`` (sagemaker): Application Auto Scaling of the production variant's
    instance count, tracking invocations per instance."""

    min_instances: Annotated[int, Field(ge=1)] = 1
    max_instances: Annotated[int, Field(ge=1)] = 2
    target_invocations_per_instance: Annotated[float, Field(gt=0.0)] = 1000.0  # per minute
    scale_in_cooldown_s: Annotated[int, Field(ge=0, le=86400)] = 300
    scale_out_cooldown_s: Annotated[int, Field(ge=0, le=86400)] = 60

    @model_validator(mode="after")
    def _range(self) -> AutoscalingConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) is greater than max_instances "
                f"({self.max_instances})"
            )
        return self


class DeployConfig(_Section):
    """The deploy step: where the champion is served. Flags and the environment
    (``AWS_DEFAULT_REGION``/``AWS_REGION``, ``POPSEG_SAGEMAKER_ROLE_ARN``,
    ``POPSEG_DEPLOY_BUCKET``) fill what is left null here."""

    target: Literal["local", "sagemaker"] = "local"
    endpoint_name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")] = "popseg"
    smoke_rows: Annotated[int, Field(ge=1, le=1000)] = 5
    # local
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0 = a free port
    max_body_mb: Annotated[float, Field(gt=0.0, le=1024.0)] = 6.0
    max_connections: Annotated[int, Field(ge=1, le=1024)] = 32
    request_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    idle_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 10.0
    # local: JSON lines file for request/response capture; sagemaker: s3://bucket/prefix
    # (DataCaptureConfig), sampled and optionally encrypted with the two keys below
    capture: str | None = None
    capture_sampling_percent: Annotated[int, Field(ge=1, le=100)] = 100
    capture_kms_key: str | None = None  # sagemaker: KMS key id, ARN or alias for the capture
    capture_max_mb: Annotated[float, Field(gt=0.0, le=1_048_576.0)] = 16.0
    capture_keep: Annotated[int, Field(ge=0, le=1000)] = 4
    start_timeout_s: Annotated[float, Field(gt=0.0)] = 60.0
    # sagemaker
    region: str | None = None
    bucket: str | None = None
    prefix: str = "popseg/models"
    role_arn: Annotated[str | None, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] = None
    instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.m5.large"
    instance_count: Annotated[int, Field(ge=1)] = 1
    image_uri: str | None = None  # null = the scikit-learn image (framework_version) of the region
    # 1.4-2-py312: the newest scikit-learn serving image (why: tasks/deploy/sagemaker.py)
    framework_version: Literal["1.4-2-py312", "1.2-1"] = "1.4-2-py312"
    traffic_routing: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = "ALL_AT_ONCE"
    canary_percent: Annotated[int, Field(ge=1, le=99)] = 10
    wait_interval_s: Annotated[int, Field(ge=0, le=3600)] = 300
    termination_wait_s: Annotated[int, Field(ge=0, le=3600)] = 120
    rollback_alarms: list[str] = []  # CloudWatch alarm names for AutoRollbackConfiguration
    wait_timeout_s: Annotated[int, Field(ge=1)] = 1800
    waiter_delay_s: Annotated[int, Field(ge=1)] = 30
    autoscaling: AutoscalingConfig | None = None  # sagemaker: null = a fixed instance_count

    @model_validator(mode="after")
    def _capture_and_scaling(self) -> DeployConfig:
        if self.capture_kms_key is not None and not (self.capture or "").startswith("s3://"):
            raise ValueError(
                "deploy.capture_kms_key encrypts a SageMaker capture: set deploy.capture to an "
                f"s3://bucket/prefix (it is {self.capture!r})"
            )
        scaling = self.autoscaling
        if scaling is not None and not (
            scaling.min_instances <= self.instance_count <= scaling.max_instances
        ):
            raise ValueError(
                f"deploy.instance_count ({self.instance_count}) is outside deploy.autoscaling "
                f"[min_instances, max_instances] = [{scaling.min_instances}, "
                f"{scaling.max_instances}]"
            )
        return self


class MonitorConfig(_Section):
    """`popseg monitor`: label-free drift of new data against a model's training data.

    A check reports drift when its score crosses its threshold. With ``significance`` set,
    the PSI and share-shift thresholds are raised, where the samples are small, to what
    sampling noise alone reaches with that probability (Bonferroni over features and
    segments), so a handful of rows does not raise a false alarm."""

    psi_threshold: Annotated[float, Field(gt=0.0)] = 0.2
    segment_share_shift: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    distance_shift: Annotated[float, Field(gt=1.0)] = 1.5
    missing_rate_increase: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    min_rows: Annotated[int, Field(ge=2)] = 30
    bins: Annotated[int, Field(ge=2, le=100)] = 10
    min_bin_rows: Annotated[int, Field(ge=1)] = 10
    significance: Annotated[float, Field(gt=0.0, lt=1.0)] | None = 0.01


class OrchestrateConfig(_Section):
    """How the Prefect flows run: retries on network steps, result caching, timeouts and the
    registry lock that serialises concurrent register/promote steps."""

    retries: Annotated[int, Field(ge=0, le=10)] = 3
    retry_backoff_s: Annotated[float, Field(ge=0.0)] = 5.0
    cache: bool = True
    cache_expiration_h: Annotated[float, Field(gt=0.0)] = 168.0
    task_timeout_s: Annotated[float, Field(gt=0.0)] = 3600.0
    flow_timeout_s: Annotated[float, Field(gt=0.0)] = 14400.0
    registry_lock_timeout_s: Annotated[float, Field(gt=0.0)] = 600.0
    # The lease of the lock kept in a shared (non-sqlite) MLflow store: a holder killed
    # without releasing it blocks the others this long at most.
    registry_lock_lease_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 60.0


_CRON_FIELDS = 5


class ScheduleConfig(_Section):
    """Cron schedules of the deployments `popseg serve` runs (and prefect.yaml declares)."""

    timezone: str = "UTC"
    train: str | None = "0 3 * * 1"
    retrain: str | None = "0 4 * * *"
    monitor: str | None = "0 * * * *"
    monitor_data: str | None = None
    deploy_target: Literal["local", "sagemaker", "none"] = "local"
    # On SIGINT/SIGTERM `popseg serve` pauses the schedules and lets a running flow run
    # finish for up to this long before cancelling it.
    stop_timeout_s: Annotated[float, Field(gt=0.0)] = 600.0

    @field_validator("train", "retrain", "monitor")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        if len(value.split()) != _CRON_FIELDS:
            raise ValueError(f"{value!r} is not a 5-field cron expression")
        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as error:
            raise ValueError(f"{value!r} is not a valid cron expression ({error})") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
            ) from None
        return value


_BYTES = r"^\s*\d+(\.\d+)?\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$"


class DaskConfig(_Section):
    """`popseg train --engine dask`: where the Dask cluster is and how the data is cut up.

    With no ``scheduler`` the run starts a LocalCluster sized to the machine (or to
    ``n_workers`` / ``threads_per_worker`` / ``memory_limit``) and stops it afterwards."""

    scheduler: str | None = None  # tcp://host:8786; null = a LocalCluster on this machine
    connect_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0
    n_workers: Annotated[int, Field(ge=1)] | None = None  # LocalCluster; null = sized to the cores
    threads_per_worker: Annotated[int, Field(ge=1)] | None = None
    memory_limit: str | None = None  # per worker, e.g. 1GB; null = machine memory / workers
    processes: bool = True  # LocalCluster workers as processes (false: threads of this one)
    kernel_threads: Annotated[int, Field(ge=1)] | None = None  # numba threads per task
    blocksize: str = "16MiB"  # partition size when reading
    sample_rows: Annotated[int, Field(ge=100)] = 50_000  # seeded sample kept in this process
    persist: Literal["auto", "always", "never"] = "auto"  # prepared rows in worker memory
    prefect_tasks: bool = True  # evaluation's parallel steps as Prefect tasks on the cluster

    @field_validator("memory_limit", "blocksize")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.match(_BYTES, str(value)):
            raise ValueError("must be a size such as 64MiB or 1GB")
        return value


NOTIFY_EVENTS = (
    "drift",
    "gate_refused",
    "approval_needed",
    "train_failed",
    "deploy_failed",
    "promoted",
)
NotifyEvent = Literal[
    "drift", "gate_refused", "approval_needed", "train_failed", "deploy_failed", "promoted"
]
# Fills notify.webhook_url when params.yaml leaves both it and notify.prefect_block null, so a
# secret webhook URL need not be committed.
NOTIFY_URL_VARIABLE = "POPSEG_NOTIFY_WEBHOOK_URL"


class NotifyConfig(_Section):
    """Alerts (tasks/notify.py): a Slack-compatible JSON POST to ``webhook_url`` (or a message
    through the Prefect notification block ``prefect_block``) on each of ``events``. The URL is
    a secret: it is masked wherever params are logged or printed."""

    webhook_url: SecretStr | None = None  # null or empty = off (or POPSEG_NOTIFY_WEBHOOK_URL)
    prefect_block: str | None = None  # block-type-slug/block-name, e.g. slack-webhook/on-call
    events: list[NotifyEvent] = list(NOTIFY_EVENTS)
    timeout_s: Annotated[float, Field(gt=0.0, le=300.0)] = 5.0  # one attempt
    retries: Annotated[int, Field(ge=0, le=10)] = 3  # on connection errors, timeouts, 408/429/5xx
    retry_backoff_s: Annotated[float, Field(ge=0.0, le=300.0)] = 1.0  # 1, 2, 4 s
    max_total_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0  # all attempts and waits

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _http_url(cls, value: Any) -> Any:
        from urllib.parse import urlsplit

        if value is None or isinstance(value, SecretStr):
            return value
        if not isinstance(value, str):
            raise ValueError("must be an http:// or https:// URL (null or empty = off)")
        text = value.strip()
        if not text:
            return None
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL (null or empty = off)")
        return text

    @field_validator("prefect_block")
    @classmethod
    def _block_name(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.match(r"^[a-z0-9-]+/[a-z0-9-]+$", value):
            raise ValueError(
                "must be block-type-slug/block-name (lowercase letters, digits, dashes), "
                "e.g. slack-webhook/on-call"
            )
        return value

    @model_validator(mode="after")
    def _one_channel(self) -> NotifyConfig:
        if self.webhook_url is not None and self.prefect_block is not None:
            raise ValueError("set notify.webhook_url or notify.prefect_block, not both")
        return self


class Params(BaseModel):
    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    impute: ImputeConfig = ImputeConfig()
    scale: ScaleConfig = ScaleConfig()
    reduce: ReduceConfig = ReduceConfig()
    cluster: ClusterConfig = ClusterConfig()
    select: SelectConfig = SelectConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    promote: PromoteConfig = PromoteConfig()
    deploy: DeployConfig = DeployConfig()
    monitor: MonitorConfig = MonitorConfig()
    orchestrate: OrchestrateConfig = OrchestrateConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    dask: DaskConfig = DaskConfig()
    notify: NotifyConfig = NotifyConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _row_bounds(self) -> Params:
        # The validation suite's row-count bounds must leave room for some data set.
        low = self.validate_.min_rows
        low_key = "validate.min_rows"
        if low is None:
            low, low_key = self.data.min_rows, "data.min_rows"
        high = self.validate_.max_rows
        if high is not None and low > high:
            raise ValueError(
                f"validate.max_rows ({high}) is below {low_key} ({low}): no data set could pass"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the params.yaml section names (for logging and JSON)."""
        return self.model_dump(mode="json", by_alias=True)

    def flat(self) -> dict[str, Any]:
        """``{"cluster.k_max": 12, ...}``: the dotted names used by ``--set`` and MLflow params."""
        return {
            f"{section}.{key}": value
            for section, values in self.to_dict().items()
            for key, value in values.items()
        }


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"cluster.k_max=8"`` -> (["cluster", "k_max"], 8). Values are parsed as YAML scalars."""
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value (e.g. cluster.k_max=8)")
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"--set {text!r}: key {key!r} must be section.key (e.g. cluster.k_max), "
            f"sections: {', '.join(_section_names())}"
        )
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value {raw_value!r} is not valid YAML: {exc}") from exc
    return parts, value


def _section_names() -> list[str]:
    return [field.alias or name for name, field in Params.model_fields.items()]


# Keys that were renamed: the old name is an error that names the new one.
RENAMED_KEYS = {
    ("cluster", "engine"): (
        "cluster.backend (numba|sklearn); the execution engine (memory|dask) is "
        "`popseg train --engine`"
    ),
}


def _check_renamed(section: str, key: str, where: str) -> None:
    renamed = RENAMED_KEYS.get((section, key))
    if renamed is not None:
        raise ConfigError(f"{where}: {section}.{key} was renamed; use {renamed}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``section.key=value`` applied; unknown keys are errors."""
    merged = {section: dict(values or {}) for section, values in raw.items()}
    sections = {
        (field.alias or name): field.annotation for name, field in Params.model_fields.items()
    }
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in sections:
            raise ConfigError(
                f"--set {text!r}: unknown section {section!r}; sections: {', '.join(sections)}"
            )
        section_model = sections[section]
        _check_renamed(section, key, f"--set {text!r}")
        if key not in section_model.model_fields:
            raise ConfigError(
                f"--set {text!r}: unknown key {section}.{key}; keys in {section}: "
                f"{', '.join(section_model.model_fields)}"
            )
        merged.setdefault(section, {})[key] = value
    return merged


_TYPE_NAMES = {"int", "float", "str", "bool", "none"}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for error in exc.errors():
        # pydantic adds union members ("int", "list[str]", "literal[...]"), validator names and
        # list indexes to the location; keep the field names: section.key(.nested_key).
        location = ".".join(
            part
            for part in map(str, error["loc"])
            if part.isidentifier() and part.islower() and part not in _TYPE_NAMES
        )
        value = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        got = "" if isinstance(value, dict) else f" (got {value!r})"
        # A check across sections (no location) names its keys in its message.
        lines.append(f"  {location}: {message}{got}" if location else f"  {message}")
    # Unions report one error per member: keep the first message per key.
    seen: set[str] = set()
    unique = [lines[0]]
    for line in lines[1:]:
        key = line.split(":", 1)[0]
        if key not in seen:
            seen.add(key)
            unique.append(line)
    return "\n".join(unique)


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    for (section, key), _ in RENAMED_KEYS.items():
        values = raw.get(section)
        if isinstance(values, dict) and key in values:
            _check_renamed(section, key, source)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Read ``params.yaml`` (defaults if the file is absent and no path was given), fill
    ``notify.webhook_url`` from ``POPSEG_NOTIFY_WEBHOOK_URL`` when the file sets no alert
    channel, apply ``--set`` overrides and validate everything once."""
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None or Path(DEFAULT_PARAMS_FILE).exists():
        file_path = Path(path or DEFAULT_PARAMS_FILE)
        source = str(file_path)
        if not file_path.exists():
            raise ConfigError(f"params file {file_path} does not exist")
        try:
            loaded = yaml.safe_load(file_path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"params file {file_path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"params file {file_path} must hold a mapping of sections")
        for section, values in loaded.items():
            if values is not None and not isinstance(values, dict):
                raise ConfigError(f"{file_path}: section {section!r} must be a mapping")
        raw = loaded
    notify = raw.get("notify") or {}
    url_from_environment = os.environ.get(NOTIFY_URL_VARIABLE, "").strip()
    if url_from_environment and not (notify.get("webhook_url") or notify.get("prefect_block")):
        raw = {**raw, "notify": {**notify, "webhook_url": url_from_environment}}
        source += f" with {NOTIFY_URL_VARIABLE}"
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " with --set overrides"
    return params_from_dict(raw, source)
