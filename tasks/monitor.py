"""Monitor: label-free drift of new data against a registered model's training data.

Four checks, thresholds from the ``monitor:`` section of params.yaml:

- per-feature PSI (`tasks.compute.population_stability_index`, bins from the training
  quantiles) on the raw numeric feature columns the model uses, and for each categorical
  column of the chain the PSI over its level shares plus an "unseen" bucket (values whose
  level the model never saw), with the same thresholds (`level_shares`, `categorical_psi`);
- the share of rows per segment (both sides predicted with the model's chain) and the PSI
  over those shares;
- the distance of each row to its assigned centroid (median and p90 ratio, PSI);
- the missing-value rate per feature.

New data is a CSV/Parquet table (local or s3://), the local endpoint's capture log (JSON
lines written by ``tasks/serving/server.py --capture``) or a SageMaker endpoint's capture files
under an S3 prefix (`tasks.deploy.sagemaker_capture`): the same records, parsed with the
endpoint's own request parser. `compute_drift` is pure (arrays in, a `DriftReport` out);
`log_monitor_run` records a monitoring run in MLflow, in the model's experiment
``<model>-monitoring``, in the layout other readers rely on (`tasks.tracking.layout`: run type
``monitor``, `MonitorTag`, `MonitorMetric`, artifact ``monitor/monitor.json``, model-version
tags ``last_monitor_run_id`` / ``last_monitor_drift`` / ``monitoring_experiment``).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.chain import MISSING_LEVEL, ChainInputError, SegmentationChain
from tasks.compute import population_stability_index
from tasks.compute.drift import PSI_EPSILON
from tasks.config import MonitorConfig
from tasks.encoding import encode_frame
from tasks.errors import DataError, RegistryError
from tasks.table_head import is_capture_log
from tasks.tracking.layout import (
    CHAMPION,
    MONITOR_RUN_TYPE,
    Artifact,
    MonitorMetric,
    MonitorTag,
    Param,
    RunTag,
    VersionTag,
    monitor_run_name,
)

logger = logging.getLogger(__name__)

RUN_TYPE_TAG = RunTag.RUN_TYPE
RUN_TYPE = MONITOR_RUN_TYPE
ARTIFACT_PATH = Artifact.MONITOR
LAST_RUN_TAG = VersionTag.LAST_MONITOR_RUN_ID
LAST_DRIFT_TAG = VersionTag.LAST_MONITOR_DRIFT


# ----------------------------------------------------------------------------- new data


@dataclass(frozen=True)
class MonitorData:
    """New rows to monitor: raw feature values in the model's feature order."""

    values: np.ndarray  # (n, n_features), NaN = missing
    source: str
    md5: str
    kind: str  # "table" | "capture"
    notes: list[str] = field(default_factory=list)


def read_capture_log(payload: bytes, source: str, chain: SegmentationChain) -> MonitorData:
    """The requests of an endpoint capture log as feature rows. Every captured body is parsed
    by the endpoint's own request parser (`tasks.serving.inference`); failed invocations (a
    status other than 200) are skipped and counted in the notes."""
    from tasks.ingest import md5_bytes
    from tasks.serving import inference

    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{source}: not UTF-8 text; expected a capture log (JSON lines)") from None
    if not text.strip():
        raise DataError(f"{source}: the file is empty")
    blocks: list[np.ndarray] = []
    skipped = 0
    notes = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            captured = record["captureData"]["endpointInput"]
            body, content_type = captured["data"], captured["observedContentType"]
        except ValueError:
            if number == len(lines) and not text.endswith("\n") and blocks:
                # The endpoint is still appending to the log: its last line is incomplete.
                notes.append(f"ignored the incomplete last line {number} of the capture log")
                break
            raise DataError(
                f"{source}: line {number} is not JSON; expected a capture log"
            ) from None
        except (KeyError, TypeError):
            raise DataError(
                f"{source}: line {number} is not an endpoint capture record "
                "(no captureData.endpointInput with data and observedContentType)"
            ) from None
        metadata = record.get("eventMetadata") or {}
        if metadata.get("status", 200) != 200:
            skipped += 1
            continue
        if captured.get("encoding") == "BASE64":
            body = base64.b64decode(body)
        try:
            rows = inference.decode_request(body, content_type).rows(chain)
        except inference.RequestError as error:
            raise DataError(
                f"{source}: line {number}: the captured request does not fit the model: {error}"
            ) from None
        blocks.append(rows)
    if skipped:
        notes.append(f"skipped {skipped} failed invocation(s) in the capture log")
    if not blocks:
        raise DataError(
            f"{source}: the capture log holds no successful invocations"
            + (f" ({skipped} failed)" if skipped else "")
        )
    return MonitorData(
        values=np.vstack(blocks), source=source, md5=md5_bytes(payload), kind="capture", notes=notes
    )


def rotated_capture_files(path: str) -> list[str]:
    """The files the endpoint rotated a local capture log to (``PATH.1`` newest ..
    ``PATH.N``), oldest first; none for a remote path."""
    if "://" in path:
        return []
    found = []
    while os.path.exists(f"{path}.{len(found) + 1}"):
        found.append(f"{path}.{len(found) + 1}")
    return found[::-1]


def _whole_lines(payload: bytes) -> bytes:
    return payload if not payload or payload.endswith(b"\n") else payload + b"\n"


def read_monitor_data(path: str, chain: SegmentationChain, delimiter: str = ",") -> MonitorData:
    """New data for monitoring: a CSV/Parquet table (local or s3://), a capture log (with
    the files the endpoint rotated it to, oldest first) or an S3 folder (``s3://.../``) of
    SageMaker capture files."""
    from tasks import ingest
    from tasks.deploy import sagemaker_capture

    if sagemaker_capture.is_capture_prefix(path):
        return read_capture_log(sagemaker_capture.read_capture_prefix(path), path, chain)
    payload = ingest._read_bytes(path)
    older = b"".join(_whole_lines(ingest._read_bytes(p)) for p in rotated_capture_files(path))
    if older and is_capture_log(path, older):
        return read_capture_log(older + payload, path, chain)
    if is_capture_log(path, payload):
        return read_capture_log(payload, path, chain)
    table = ingest.parse_table(payload, path, delimiter)
    values = encode_frame(table.frame, chain, path).values
    return MonitorData(values=values, source=path, md5=table.md5, kind="table")


# ----------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float | None  # None: no values on one side
    psi_threshold: float | None
    bins: int
    missing_rate_ref: float
    missing_rate_new: float
    psi_drifted: bool
    missing_drifted: bool
    # A categorical column: {level: (train share, new share)}, the bucket UNSEEN_BUCKET last
    # (bins = levels + 1; missing rates = the share of the level MISSING_LEVEL). None: numeric.
    levels: dict[str, tuple[float, float]] | None = None

    @property
    def drifted(self) -> bool:
        return self.psi_drifted or self.missing_drifted


@dataclass(frozen=True)
class SegmentShift:
    segment: int
    ref_share: float
    new_share: float
    threshold: float
    drifted: bool

    @property
    def shift(self) -> float:
        return self.new_share - self.ref_share


@dataclass(frozen=True)
class DriftReport:
    """What `compute_drift` found; ``reasons`` names every threshold that was crossed."""

    n_rows: int
    n_reference: int
    features: list[FeatureDrift]
    segments: list[SegmentShift]
    segment_psi: float
    segment_psi_threshold: float
    distance: dict[str, float | None]
    distance_drifted: bool
    reasons: list[str]
    thresholds: dict[str, Any]

    @property
    def drift(self) -> bool:
        return bool(self.reasons)

    @property
    def max_psi(self) -> float:
        values = [f.psi for f in self.features if f.psi is not None]
        return max(values) if values else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "drift": self.drift,
            "n_rows": self.n_rows,
            "n_reference": self.n_reference,
            "max_psi": _round(self.max_psi),
            "features": {
                f.name: {
                    "psi": _round(f.psi),
                    "psi_threshold": _round(f.psi_threshold),
                    "bins": f.bins,
                    "missing_rate_ref": _round(f.missing_rate_ref),
                    "missing_rate_new": _round(f.missing_rate_new),
                    "drifted": f.drifted,
                    **(
                        {}
                        if f.levels is None
                        else {
                            "kind": "categorical",
                            "levels": {
                                level: {"ref_share": _round(ref), "new_share": _round(new)}
                                for level, (ref, new) in f.levels.items()
                            },
                        }
                    ),
                }
                for f in self.features
            },
            "segments": [
                {
                    "segment": s.segment,
                    "ref_share": _round(s.ref_share),
                    "new_share": _round(s.new_share),
                    "shift": _round(s.shift),
                    "shift_threshold": _round(s.threshold),
                    "drifted": s.drifted,
                }
                for s in self.segments
            ],
            "segment_psi": {
                "psi": _round(self.segment_psi),
                "threshold": _round(self.segment_psi_threshold),
                "drifted": self.segment_psi > self.segment_psi_threshold,
            },
            "distance": {
                **{key: _round(value) for key, value in self.distance.items()},
                "drifted": self.distance_drifted,
            },
            "reasons": list(self.reasons),
            "thresholds": dict(self.thresholds),
        }


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _bins(n_expected: int, n_actual: int, config: MonitorConfig) -> int:
    """Fewer PSI bins where the smaller sample has under ``min_bin_rows`` rows per bin."""
    return int(max(2, min(config.bins, min(n_expected, n_actual) // config.min_bin_rows)))


def psi_threshold(n_expected: int, n_actual: int, bins: int, alpha: float | None, base: float):
    """``base``, raised to the (1 - alpha) quantile of the PSI of two samples of this size from
    the same population: PSI ~ (1/n + 1/m) * chi2(bins - 1) (Yurdakul 2018)."""
    if alpha is None or bins < 2:
        return base
    from scipy.stats import chi2

    noise = (1.0 / n_expected + 1.0 / n_actual) * float(chi2.ppf(1.0 - alpha, bins - 1))
    return max(base, noise)


def share_threshold(share: float, n_expected: int, n_actual: int, alpha: float | None, base):
    """``base``, raised to the two-sided (1 - alpha) bound of a share's sampling noise."""
    if alpha is None or share <= 0.0 or share >= 1.0:
        return base
    from scipy.stats import norm

    spread = math.sqrt(share * (1.0 - share) * (1.0 / n_expected + 1.0 / n_actual))
    return max(base, float(norm.ppf(1.0 - alpha / 2.0)) * spread)


def categorical_psi(expected_shares: np.ndarray, actual_shares: np.ndarray) -> float:
    """PSI over categories (segment shares), shares floored as the numeric kernel does."""
    e = np.maximum(np.asarray(expected_shares, dtype=np.float64), PSI_EPSILON)
    a = np.maximum(np.asarray(actual_shares, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


UNSEEN_BUCKET = "(unseen)"  # the level-share bucket of values with a level not in training


def level_shares(indicators: np.ndarray) -> np.ndarray:
    """The shares of a categorical column's levels in rows of its one-hot ``indicators``
    (n, levels), then the share of rows with none set (a level the model never saw)."""
    indicators = np.asarray(indicators, dtype=np.float64)
    n = max(len(indicators), 1)
    counts = np.nan_to_num(indicators, nan=0.0).sum(axis=0)
    unseen = float((np.nan_to_num(indicators, nan=0.0).sum(axis=1) == 0).sum())
    return np.append(counts, unseen) / n


def _categorical_drift(
    chain: SegmentationChain,
    column: str,
    reference: np.ndarray,
    new: np.ndarray,
    alpha: float | None,
    config: MonitorConfig,
) -> FeatureDrift:
    """PSI over ``column``'s level shares (plus the unseen bucket), training vs new rows."""
    pairs = chain.indicator_positions(column)
    features = [feature for _, feature in pairs]
    names = [chain.categories[column][level] for level, _ in pairs] + [UNSEEN_BUCKET]
    ref_shares = level_shares(reference[:, features])
    new_shares = level_shares(new[:, features])
    psi = categorical_psi(ref_shares, new_shares)
    threshold = psi_threshold(len(reference), len(new), len(names), alpha, config.psi_threshold)
    missing = names.index(MISSING_LEVEL) if MISSING_LEVEL in names else None
    missing_ref = float(ref_shares[missing]) if missing is not None else 0.0
    missing_new = float(new_shares[missing]) if missing is not None else 0.0
    return FeatureDrift(
        name=column,
        psi=psi,
        psi_threshold=threshold,
        bins=len(names),
        missing_rate_ref=missing_ref,
        missing_rate_new=missing_new,
        psi_drifted=psi > threshold,
        missing_drifted=missing_new - missing_ref > config.missing_rate_increase,
        levels={
            name: (float(ref), float(new_share))
            for name, ref, new_share in zip(names, ref_shares, new_shares, strict=True)
        },
    )


def _ratio(new: float, ref: float) -> float | None:
    if ref > 0:
        return new / ref
    return None if new == 0 else math.inf


def compute_drift(
    chain: SegmentationChain,
    reference: np.ndarray,
    new: np.ndarray,
    config: MonitorConfig,
    source: str = "new data",
) -> DriftReport:
    """Compare ``new`` raw feature rows with the ``reference`` (training) rows of ``chain``."""
    names = chain.feature_names
    reference = np.asarray(reference, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    for what, values in (("reference", reference), (source, new)):
        if values.ndim != 2 or values.shape[1] != len(names):
            raise DataError(
                f"{what}: expected {len(names)} feature columns ({', '.join(names)}), "
                f"got shape {values.shape}"
            )
    n_ref, n_new = len(reference), len(new)
    if n_new == 0:
        raise DataError(f"{source}: no rows to monitor")
    if n_new < config.min_rows:
        raise DataError(
            f"{source}: {n_new} row(s); monitoring needs at least monitor.min_rows="
            f"{config.min_rows}"
        )
    if n_ref < 2:
        raise DataError(f"the training reference has {n_ref} row(s); monitoring needs 2 or more")
    alpha = config.significance
    reasons: list[str] = []

    # Per feature: PSI and missing-value rate; per categorical column, over its level shares.
    features: list[FeatureDrift] = []
    indicators = chain.indicator_features
    n_checked = len(names) - len(indicators) + len(chain.categories)
    feature_alpha = None if alpha is None else alpha / n_checked
    for j, name in enumerate(names):
        if name in indicators:
            continue
        e, a = reference[:, j], new[:, j]
        e_present, a_present = int((~np.isnan(e)).sum()), int((~np.isnan(a)).sum())
        missing_ref, missing_new = 1.0 - e_present / n_ref, 1.0 - a_present / n_new
        bins = _bins(e_present, a_present, config)
        psi = threshold = None
        if e_present and a_present:
            psi = float(population_stability_index(e, a, bins=bins))
            threshold = psi_threshold(
                e_present, a_present, bins, feature_alpha, config.psi_threshold
            )
        psi_drifted = psi is not None and psi > threshold
        increase = missing_new - missing_ref
        missing_drifted = increase > config.missing_rate_increase
        if psi_drifted:
            reasons.append(
                f"feature {name}: PSI {psi:.3g} > {threshold:.3g}"
                + _raised(threshold, config.psi_threshold, e_present, a_present)
            )
        if missing_drifted:
            reasons.append(
                f"feature {name}: missing rate {missing_ref:.3g} -> {missing_new:.3g} "
                f"(+{increase:.3g} > {config.missing_rate_increase:.3g})"
            )
        features.append(
            FeatureDrift(
                name, psi, threshold, bins, missing_ref, missing_new, psi_drifted, missing_drifted
            )
        )
    for column in chain.categories:
        drift = _categorical_drift(chain, column, reference, new, feature_alpha, config)
        if drift.psi_drifted:
            reasons.append(
                f"categorical column {column}: PSI over level shares {drift.psi:.3g} > "
                f"{drift.psi_threshold:.3g}"
                + _raised(drift.psi_threshold, config.psi_threshold, n_ref, n_new)
            )
        if drift.missing_drifted:
            reasons.append(
                f"categorical column {column}: missing rate {drift.missing_rate_ref:.3g} -> "
                f"{drift.missing_rate_new:.3g} (+{drift.missing_rate_new - drift.missing_rate_ref:.3g}"
                f" > {config.missing_rate_increase:.3g})"
            )
        features.append(drift)

    # Segment shares: both sides through the model's chain.
    try:
        ref_segments, ref_distances = chain.predict(reference)
        new_segments, new_distances = chain.predict(new)
    except ChainInputError as error:
        raise DataError(f"{source}: {error}") from None
    ids = sorted(int(s) for s in chain.segment_ids)
    ref_shares = np.array([(ref_segments == s).mean() for s in ids])
    new_shares = np.array([(new_segments == s).mean() for s in ids])
    segment_alpha = None if alpha is None else alpha / len(ids)
    segments: list[SegmentShift] = []
    for segment, ref_share, new_share in zip(ids, ref_shares, new_shares, strict=True):
        threshold = share_threshold(
            float(ref_share), n_ref, n_new, segment_alpha, config.segment_share_shift
        )
        shift = float(new_share - ref_share)
        drifted = abs(shift) > threshold
        if drifted:
            reasons.append(
                f"segment {segment}: share {ref_share:.3g} -> {new_share:.3g}, "
                f"|shift| {abs(shift):.3g} > {threshold:.3g}"
                + _raised(threshold, config.segment_share_shift, n_ref, n_new)
            )
        segments.append(
            SegmentShift(segment, float(ref_share), float(new_share), threshold, drifted)
        )
    segment_psi = categorical_psi(ref_shares, new_shares)
    segment_psi_threshold = psi_threshold(n_ref, n_new, len(ids), alpha, config.psi_threshold)
    if segment_psi > segment_psi_threshold:
        reasons.append(
            f"segment shares: PSI {segment_psi:.3g} > {segment_psi_threshold:.3g}"
            + _raised(segment_psi_threshold, config.psi_threshold, n_ref, n_new)
        )

    # Distance to the assigned centroid.
    ref_median, new_median = float(np.median(ref_distances)), float(np.median(new_distances))
    ref_p90 = float(np.quantile(ref_distances, 0.9))
    new_p90 = float(np.quantile(new_distances, 0.9))
    distance_bins = _bins(n_ref, n_new, config)
    distance = {
        "ref_median": ref_median,
        "new_median": new_median,
        "median_ratio": _ratio(new_median, ref_median),
        "ref_p90": ref_p90,
        "new_p90": new_p90,
        "p90_ratio": _ratio(new_p90, ref_p90),
        "ref_mean": float(ref_distances.mean()),
        "new_mean": float(new_distances.mean()),
        "psi": float(population_stability_index(ref_distances, new_distances, bins=distance_bins)),
    }
    distance_drifted = False
    for label, ratio, ref_value, new_value in (
        ("median", distance["median_ratio"], ref_median, new_median),
        ("p90", distance["p90_ratio"], ref_p90, new_p90),
    ):
        if ratio is not None and ratio > config.distance_shift:
            distance_drifted = True
            reasons.append(
                f"distance to assigned centroid: {label} {ref_value:.3g} -> {new_value:.3g} "
                f"(ratio {ratio:.3g} > {config.distance_shift:.3g})"
            )
    return DriftReport(
        n_rows=n_new,
        n_reference=n_ref,
        features=features,
        segments=segments,
        segment_psi=segment_psi,
        segment_psi_threshold=segment_psi_threshold,
        distance=distance,
        distance_drifted=distance_drifted,
        reasons=reasons,
        thresholds=config.model_dump(mode="json"),
    )


def _raised(threshold: float, base: float, n_expected: int, n_actual: int) -> str:
    if threshold <= base:
        return ""
    return (
        f" (threshold {base:.3g} raised to the sampling noise of {n_expected} vs {n_actual} rows)"
    )


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class MonitoredModel:
    """A registered version, its chain and its training rows (the reference)."""

    model_name: str
    model_version: str
    run_id: str
    chain: SegmentationChain
    reference: np.ndarray


def load_monitored_model(model_name: str, version: str | None) -> MonitoredModel:
    """The given version (default: alias champion), its chain and its logged training data."""
    from tasks import register
    from tasks.tracking import runs

    if version is None and register.alias_version(model_name, CHAMPION) is None:
        raise RegistryError(
            f"model {model_name!r} has no champion in the registry at {register.tracking_uri()}: "
            "train and promote one first (`popseg train`, `popseg promote`), or pass "
            "--model-version"
        )
    record = runs.read_version(model_name, version, alias=CHAMPION)
    chain = register.load_chain(record.run_id)
    frame = register.load_training_frame(record.run_id)
    reference = encode_frame(
        frame, chain, f"training data of run {record.run_id} (version {record.version})"
    ).values
    return MonitoredModel(model_name, record.version, record.run_id, chain, reference)


def metric_key(name: str) -> str:
    """A feature name as MLflow accepts it in a metric key (letters, digits, _ - . / space)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def log_monitor_run(
    report: DriftReport,
    payload: dict[str, Any],
    experiment: str,
    model_name: str,
    model_version: str,
    data_source: str,
    data_md5: str,
    reference_run_id: str,
) -> tuple[str, str]:
    """Record a monitoring run and tag the model version with it.

    Run: tags ``popseg.run_type=monitor``, ``model_name``, ``model_version``, ``data_source``,
    ``data_md5``, ``drift`` (true/false); metrics ``drift``, ``max_psi``, ``n_rows``,
    ``n_reasons``, ``psi_<feature>``; artifact ``monitor/monitor.json`` = ``payload`` with
    ``monitor_run_id`` and ``experiment_id``; in ``experiment`` (the model's monitoring
    experiment, `layout.monitoring_experiment_name`). Model version tags
    ``last_monitor_run_id``, ``last_monitor_drift``, ``monitoring_experiment`` (its name) and
    ``monitoring_experiment_id``. Returns (run id, experiment id)."""
    import mlflow

    from tasks import register
    from tasks.tracking import runs

    register.configure_mlflow()
    experiment_id = register.ensure_experiment(experiment)
    drift = "true" if report.drift else "false"
    metrics = {
        MonitorMetric.DRIFT: 1.0 if report.drift else 0.0,
        MonitorMetric.MAX_PSI: report.max_psi,
        MonitorMetric.N_ROWS: float(report.n_rows),
        MonitorMetric.N_REASONS: float(len(report.reasons)),
        MonitorMetric.SEGMENT_PSI: report.segment_psi,
    }
    for key in ("median_ratio", "p90_ratio"):
        value = report.distance.get(key)
        if value is not None and math.isfinite(value):
            metrics[f"{MonitorMetric.DISTANCE_PREFIX}{key}"] = value
    used: set[str] = set(metrics)
    for feature in report.features:
        if feature.psi is None:
            continue
        key = f"{MonitorMetric.PSI_PREFIX}{metric_key(feature.name)}"
        while key in used:  # two names that sanitise alike
            key += "_"
        used.add(key)
        metrics[key] = feature.psi
    from tasks.run_liveness import interrupts_held, owned_run

    # SIGTERM/SIGINT wait for these few writes (raised inside one, they left sqlite locked or
    # the run FAILED): an interrupt is delivered once the run has FINISHED and is tagged.
    with (
        interrupts_held(),
        owned_run(experiment_id=experiment_id, run_name=monitor_run_name(model_version)) as run,
    ):
        run_id = run.info.run_id
        mlflow.set_tags(
            {
                RunTag.RUN_TYPE: MONITOR_RUN_TYPE,
                MonitorTag.MODEL_NAME: model_name,
                MonitorTag.MODEL_VERSION: str(model_version),
                MonitorTag.DATA_SOURCE: data_source,
                MonitorTag.DATA_MD5: data_md5,
                MonitorTag.DRIFT: drift,
                MonitorTag.REFERENCE_RUN_ID: reference_run_id,
            }
        )
        mlflow.log_params(
            {f"{Param.MONITOR_PREFIX}{key}": value for key, value in report.thresholds.items()}
        )
        mlflow.log_metrics(metrics)
        mlflow.log_dict(
            {**payload, "monitor_run_id": run_id, "experiment_id": experiment_id}, Artifact.MONITOR
        )
        # Still held: the version names its last monitoring run before an interrupt lands.
        runs.tag_version(
            model_name,
            str(model_version),
            {
                VersionTag.LAST_MONITOR_RUN_ID: run_id,
                VersionTag.LAST_MONITOR_DRIFT: drift,
                VersionTag.MONITORING_EXPERIMENT: experiment,
                VersionTag.MONITORING_EXPERIMENT_ID: experiment_id,
            },
        )
    return run_id, experiment_id


def update_monitor_run(run_id: str, payload: dict[str, Any], tags: dict[str, str]) -> None:
    """Rewrite a monitoring run's ``monitor/monitor.json`` (e.g. with the retraining outcome)."""
    from tasks import register
    from tasks.tracking import runs

    register.configure_mlflow()
    runs.log_dict(run_id, payload, Artifact.MONITOR)
    runs.tag_run(run_id, tags)
