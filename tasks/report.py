"""Report: one self-contained HTML page per registered model version, for the people who use
the segments (a marketing or policy analyst), not only for whoever trained them.

Two steps, both pure apart from reading MLflow:

* :func:`gather` reads what a training logged to its MLflow run (``reports/*.json``,
  ``reports/*.csv``, ``plots/*.png``, ``validation/validation_result.json``, the training data)
  plus the monitoring runs logged against that version, into a :class:`ReportData`.
* :func:`render_html` turns a :class:`ReportData` into HTML with the jinja2 template
  ``tasks/templates/report.html.j2`` (autoescaped). Images are embedded as base64 data URIs
  and the CSS is inline: the file opens offline and loads nothing from anywhere.

What is read where is the run layout of `tasks.tracking.layout`, read through
`tasks.tracking.runs`. Monitoring runs are found by their tags (run type ``monitor``, model
name and version) in the model's monitoring experiment (``<model>-monitoring``), the training
run's experiment and the configured one; the artifact
``monitor/monitor.json`` gives ``drift``, ``reasons`` and ``features``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import RegistryError, ReportError
from tasks.tracking import runs
from tasks.tracking.layout import (
    CHAMPION,
    MONITOR_RUN_TYPE,
    Artifact,
    MonitorMetric,
    MonitorTag,
    RunTag,
    monitoring_experiment_name,
)

logger = logging.getLogger(__name__)

REPORT_ARTIFACT = Artifact.REPORT
MAX_MONITOR_RUNS = 100
TEMPLATE = "report.html.j2"
_TEMPLATE_DIR = Path(__file__).with_name("templates")

# plots/<name>.png -> (title, what it shows, in words)
PLOTS = {
    "pca_explained_variance": (
        "PCA explained variance",
        "How much of the variation between rows each principal component captures (bars) "
        "and in total (line); the dashed line marks how many components were kept.",
    ),
    "pca_component_makeup": (
        "What each component is made of",
        "Loadings: how strongly each original feature contributes to each kept component.",
    ),
    "elbow_inertia_by_k": (
        "Elbow: inertia by k",
        "Total distance of rows to their segment centre; the bend ('elbow') is a natural k.",
    ),
    "silhouette_by_k": (
        "Silhouette by k",
        "How well rows sit in their own segment rather than the next one (higher is better).",
    ),
    "calinski_harabasz_by_k": (
        "Calinski-Harabasz by k",
        "Separation between segments relative to their spread (higher is better).",
    ),
    "davies_bouldin_by_k": (
        "Davies-Bouldin by k",
        "Average similarity of each segment to its closest neighbour (lower is better).",
    ),
    "bic_by_k": (
        "BIC by k",
        "Bayesian information criterion of the Gaussian mixture fitted for each k: how well it "
        "fits the rows, penalised for its number of parameters (lower is better; the dashed "
        "line marks the chosen k).",
    ),
    "membership_probability": (
        "How sure the assignments are",
        "Each row's probability of belonging to the segment it was assigned to (the mixture's "
        "posterior); rows near 1 sit clearly in one segment, rows below the dashed line are "
        "shared between segments.",
    ),
    "cluster_sizes": ("Segment sizes", "Number of rows in each segment."),
    "centroid_heatmap": (
        "Attribute value by segment",
        "Each cell is a segment's average in original units; the colour shows how far it is "
        "from the population average in standard deviations (red above, blue below).",
    ),
}
MIXTURE_PLOTS = ("bic_by_k", "membership_probability")  # logged for a Gaussian mixture only
K_CURVES = (
    "bic_by_k",  # Gaussian mixtures only: the curve that chose k
    "elbow_inertia_by_k",
    "silhouette_by_k",
    "calinski_harabasz_by_k",
    "davies_bouldin_by_k",
)
_GENERIC_ID_NAMES = {"id", "name", "key", "label", "row", "index", "rownames", "code"}
_SCALE_METHODS = {
    "standard": "z-score (each feature to mean 0, standard deviation 1)",
    "minmax": "min-max to [0, 1]",
    "minmax_sym": "min-max to [-1, 1]",
    "robust": "robust (median and interquartile range)",
    "maxabs": "max-abs (divide by the largest absolute value)",
    "none": "none (features used in their original units)",
}
_IMPUTE_STRATEGIES = {
    "drop": "rows with a missing value dropped",
    "mean": "filled with the column mean",
    "median": "filled with the column median",
    "most_frequent": "filled with the most frequent value",
    "constant": "filled with a constant",
    "knn": "filled from the nearest neighbours (KNN)",
    "iterative": "filled by iterative (MICE) imputation",
}


# ----------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Table:
    """A small table, values as they should be shown (numbers formatted by the template)."""

    columns: list[str]
    rows: list[list[Any]]
    highlight: int | None = None  # index of a row to emphasise


@dataclass(frozen=True)
class Image:
    name: str
    title: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class FeatureComparison:
    feature: str
    segment_mean: float
    population_mean: float
    z: float | None  # (segment mean - population mean) / population standard deviation
    distinguishing: bool


@dataclass(frozen=True)
class SegmentProfile:
    segment: int
    size: int
    share: float
    sentence: str
    traits: list[dict[str, Any]]  # segments.json "distinguishing"
    comparisons: list[FeatureComparison]
    examples: list[str]


@dataclass(frozen=True)
class ValidationSummary:
    recorded: bool
    success: bool | None = None
    suite: str = ""
    evaluated: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # expectation, column, passed

    @property
    def passed(self) -> int:
        return self.evaluated - self.failed


@dataclass(frozen=True)
class MonitorRecord:
    run_id: str
    date: str
    data_source: str
    rows: int | None
    drift: bool | None
    max_psi: float | None
    reasons: list[str]
    retrain: str = ""  # what the monitoring's --retrain did, when it was asked to


@dataclass(frozen=True)
class ModelFamily:
    """Which model the chain serves: ``kmeans`` or ``gmm`` (with its covariance)."""

    name: str
    covariance: str = ""

    @property
    def is_mixture(self) -> bool:
        return self.name == "gmm"

    @property
    def label(self) -> str:
        if self.is_mixture:
            return f"Gaussian mixture ({self.covariance or 'full'} covariance)"
        return "k-means"

    @classmethod
    def of(cls, chain_json: dict[str, Any]) -> ModelFamily:
        """From the logged chain.json: a mixture step names its covariance (format 2)."""
        covariance = str(chain_json.get("covariance") or "")
        model = (chain_json.get("metadata") or {}).get("model")
        return cls("gmm" if covariance or model == "gmm" else "kmeans", covariance)


@dataclass
class ReportData:
    """Everything the report shows, gathered from one model version's MLflow runs."""

    model_name: str
    model_version: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    trained_at: str
    generated_at: str
    aliases: list[str]
    gate: dict[str, str]
    data_source: str
    data_md5: str
    git_commit: str
    id_column: str
    row_noun: tuple[str, str]  # singular, plural
    n_rows: int | None
    rows_used: int
    features: list[str]
    validation: ValidationSummary
    impute: dict[str, Any]
    impute_table: Table | None
    scale: dict[str, Any]
    reduce: dict[str, Any]
    loadings: Table | None
    selection: dict[str, Any]
    candidates: Table | None
    sweep: Table | None
    metrics: dict[str, float]
    segments: list[SegmentProfile]
    stability: float | None
    stability_rounds: list[float]
    id_mapping: dict[str, Any]
    images: dict[str, Image]
    monitoring: list[MonitorRecord]
    notes: list[str] = field(default_factory=list)
    model: ModelFamily = field(default_factory=lambda: ModelFamily("kmeans"))
    # A Gaussian mixture's membership probabilities (`tasks.mixture.membership_summary`).
    membership: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.segments)

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.run_id,
            "segments": self.k,
            "rows": self.rows_used,
            "monitoring_runs": len(self.monitoring),
            "model": self.model.name,
        }


# ----------------------------------------------------------------------------- formatting


def _as_number(value: Any) -> float | str:
    """``float(value)``, or the text to show instead: "–" for None, NaN or infinity, the value
    itself for a non-number."""
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else "–"


def fmt_number(value: Any) -> str:
    """A value in original units, rounded for reading: 12,345 | 524 | 14.7 | 0.034."""
    number = _as_number(value)
    if isinstance(number, str):
        return number
    magnitude = abs(number)
    if magnitude >= 100:
        return f"{number:,.0f}"
    if magnitude >= 1:
        return f"{number:.1f}"
    if magnitude == 0:
        return "0"
    if magnitude >= 1e-4:
        return f"{number:.2g}"
    return f"{number:.1e}"


def fmt_score(value: Any, digits: int = 3) -> str:
    """A quality score (silhouette, ARI, PSI): fixed decimals; a count stays a whole number."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f"{int(value):,d}"
    number = _as_number(value)
    if isinstance(number, str):
        return number
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.{digits}f}"


def fmt_signed(value: Any, digits: int = 1) -> str:
    """A signed difference: +1.7 | -0.4 | 0.0 (no "-0.0")."""
    if value is None:
        return "–"
    number = float(value)
    if not math.isfinite(number):
        return "–"
    text = f"{number:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def fmt_share(value: float) -> str:
    if value is None:
        return "–"
    if 0 < value < 0.005:
        return "<1%"
    return f"{value:.0%}"


def row_noun(id_column: str) -> tuple[str, str]:
    """What a row is, for sentences: id column ``State`` -> ("state", "states"); a generic or
    compound id column -> ("row", "rows")."""
    word = (id_column or "").strip().lower()
    if not word.isalpha() or len(word) < 3 or word in _GENERIC_ID_NAMES:
        return "row", "rows"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word, word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh")):
        return word, word + "es"
    return word, word + "s"


def segment_sentence(
    segment: int, size: int, share: float, traits: list[dict[str, Any]], noun: tuple[str, str]
) -> str:
    """'Segment 4 (7 states, 14%): Murder higher (14.7 vs 7.8), Assault higher (251 vs 171).'"""
    counted = f"{size:,} {noun[0] if size == 1 else noun[1]}"
    head = f"Segment {segment} ({counted}, {fmt_share(share)})"
    if not traits:
        return f"{head}: no feature stands out from the population average."
    parts = [
        f"{item['feature']} {item.get('direction', '')} "
        f"({fmt_number(item['segment_mean'])} vs {fmt_number(item['population_mean'])})"
        for item in traits
    ]
    return f"{head}: " + ", ".join(parts) + "."


def _humanize(text: str) -> str:
    text = str(text)
    if text.startswith("expect_"):
        text = text[len("expect_") :]
    return text.replace("_", " ")


def _timestamp(millis: int | None) -> str:
    if not millis:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(millis / 1000))


# ----------------------------------------------------------------------------- gathering


def resolve_report_version(model_name: str, version: str | None) -> runs.RunRecord:
    """The version to report on: the given number, else the champion, else the latest."""
    from tasks.register import configure_mlflow

    uri = configure_mlflow()
    if version is not None:
        return runs.read_version(model_name, str(version).strip())
    chosen = runs.alias_version(model_name, CHAMPION) or runs.latest_version(model_name)
    if chosen is None:
        raise RegistryError(
            f"model {model_name!r} has no registered versions in the registry at "
            f"{uri}: train one first (`popseg run` or `popseg train --data ...`)"
        )
    return runs.read_version(model_name, chosen)


class _Artifacts:
    """Reads single artifacts of one run into a scratch folder; a missing one is None."""

    def __init__(self, run_id: str, scratch: Path) -> None:
        self.run_id = run_id
        self.scratch = scratch

    def path(self, artifact: str) -> Path | None:
        return runs.download(self.run_id, artifact, self.scratch, required=False)

    def json(self, artifact: str) -> Any:
        path = self.path(artifact)
        return None if path is None else json.loads(path.read_text())

    def csv(self, artifact: str, index_col: int | None = 0) -> pd.DataFrame | None:
        path = self.path(artifact)
        return None if path is None else pd.read_csv(path, index_col=index_col)

    def listing(self, folder: str) -> list[str]:
        return runs.list_artifacts(self.run_id, folder)


def _validation_summary(payload: dict[str, Any] | None) -> ValidationSummary:
    if not payload:
        return ValidationSummary(recorded=False)
    checks = []
    for result in (payload.get("result") or {}).get("results", []) or []:
        config = result.get("expectation_config") or {}
        kwargs = config.get("kwargs") or {}
        checks.append(
            {
                "expectation": _humanize(config.get("type", "expectation")),
                "column": str(kwargs.get("column") or ""),
                "passed": bool(result.get("success")),
            }
        )
    failures = []
    for failure in payload.get("failures", []) or []:
        if isinstance(failure, dict):
            where = f"column {failure['column']}" if failure.get("column") else "table"
            text = f"{where}: {_humanize(failure.get('expectation', ''))} failed"
            if failure.get("observed") is not None:
                text += f" (observed {failure['observed']})"
            failures.append(text)
        else:
            failures.append(str(failure))
    evaluated = int(payload.get("evaluated_expectations") or len(checks))
    return ValidationSummary(
        recorded=True,
        success=bool(payload.get("success")),
        suite=str(payload.get("suite", "")),
        evaluated=evaluated,
        failed=len(failures),
        failures=failures,
        checks=checks,
    )


def _population_std(artifacts: _Artifacts, features: list[str]) -> dict[str, float]:
    """Per-feature standard deviation of the logged training data (missing values skipped);
    empty when the data was too large to log."""
    path = artifacts.path(Artifact.TRAINING_DATA)
    if path is None:
        return {}
    frame = pd.read_parquet(path)
    spread = {}
    for name in features:
        if name in frame.columns and pd.api.types.is_numeric_dtype(frame[name]):
            value = float(frame[name].astype(float).std(ddof=0))
            if math.isfinite(value) and value > 0:
                spread[name] = value
    return spread


def _segments(
    segments_json: dict[str, Any],
    profiles: pd.DataFrame,
    spread: dict[str, float],
    noun: tuple[str, str],
) -> list[SegmentProfile]:
    sizes = {int(key): int(value) for key, value in segments_json.get("sizes", {}).items()}
    distinguishing = {
        int(key): value for key, value in (segments_json.get("distinguishing") or {}).items()
    }
    examples = {int(key): value for key, value in (segments_json.get("examples") or {}).items()}
    profiles = profiles.copy()
    profiles.index = [int(value) for value in profiles.index]
    total = sum(sizes.values()) or 1
    weights = np.array([sizes.get(segment, 0) for segment in profiles.index], dtype=float)
    # Profiles are segment means of the rows clustered: their size-weighted mean is exactly
    # the population mean of those rows.
    population = (profiles.mul(weights, axis=0).sum() / max(weights.sum(), 1.0)).to_dict()
    result = []
    for segment in sorted(sizes):
        traits = distinguishing.get(segment, [])
        exact_z = {item["feature"]: item.get("z") for item in traits}
        comparisons = []
        if segment in profiles.index:
            for feature in profiles.columns:
                mean = float(profiles.at[segment, feature])
                average = float(population[feature])
                z = exact_z.get(feature)
                if z is None and feature in spread:
                    z = (mean - average) / spread[feature]
                comparisons.append(
                    FeatureComparison(
                        feature=str(feature),
                        segment_mean=mean,
                        population_mean=average,
                        z=None if z is None else float(z),
                        distinguishing=feature in exact_z,
                    )
                )
        comparisons.sort(key=lambda item: -abs(item.z) if item.z is not None else 0.0)
        share = sizes[segment] / total
        result.append(
            SegmentProfile(
                segment=segment,
                size=sizes[segment],
                share=share,
                sentence=segment_sentence(segment, sizes[segment], share, traits, noun),
                traits=traits,
                comparisons=comparisons,
                examples=[str(value) for value in examples.get(segment, [])],
            )
        )
    return result


def _table(frame: pd.DataFrame | None, index_name: str | None = None) -> Table | None:
    if frame is None or frame.empty:
        return None
    name = index_name or frame.index.name or ""
    columns = [str(name), *[str(column) for column in frame.columns]]
    rows = [
        [index, *row] for index, row in zip(frame.index, frame.to_numpy().tolist(), strict=True)
    ]
    return Table(columns=columns, rows=rows)


def _sweep_table(frame: pd.DataFrame | None, k: int | None) -> Table | None:
    if frame is None or frame.empty:
        return None
    labels = {
        "inertia": "inertia",
        "mean_distance_to_centroid": "mean distance to centre",
        "silhouette": "silhouette ↑",
        "calinski_harabasz": "Calinski-Harabasz ↑",
        "davies_bouldin": "Davies-Bouldin ↓",
        "dunn": "Dunn ↑",
        "bic": "BIC ↓",  # Gaussian-mixture sweeps only
        "log_likelihood": "mean log-likelihood ↑",
        "degenerate_components": "degenerate components",
    }
    frame = frame.rename(columns=labels)
    if labels["degenerate_components"] in frame:
        # A count: kept an integer so the table shows "1", not a score's "1.000".
        column = labels["degenerate_components"]
        counts = [int(count) for count in frame[column]]
        frame = frame.assign(**{column: pd.Series(counts, index=frame.index, dtype=object)})
    table = _table(frame, "k")
    highlight = None
    if k is not None:
        positions = [i for i, value in enumerate(frame.index) if int(value) == int(k)]
        highlight = positions[0] if positions else None
    return Table(columns=table.columns, rows=table.rows, highlight=highlight)


def _impute_table(report: dict[str, Any]) -> Table | None:
    columns = report.get("columns") or {}
    if not columns:
        return None
    rows = [
        [
            name,
            info.get("missing", 0),
            fmt_share(info.get("missing_fraction", 0.0)) if info.get("missing") else "0%",
            info.get("serving_fill_value"),
        ]
        for name, info in columns.items()
    ]
    return Table(columns=["feature", "missing", "missing share", "fill value"], rows=rows)


def _candidates_table(selection: dict[str, Any]) -> Table | None:
    candidates = (selection.get("details") or {}).get("candidates") or {}
    if not candidates:
        return None
    return Table(
        columns=["criterion", "k it points to"],
        rows=[
            [_humanize(name), "no clear choice" if value is None else value]
            for name, value in candidates.items()
        ],
    )


def _max_psi(metrics: dict[str, float], payload: dict[str, Any]) -> float | None:
    if MonitorMetric.MAX_PSI in metrics:
        return float(metrics[MonitorMetric.MAX_PSI])
    values = []
    for item in (payload.get("features") or {}).values():
        value = item.get("psi") if isinstance(item, dict) else item
        if isinstance(value, int | float) and math.isfinite(value):
            values.append(float(value))
    return max(values) if values else None


def _retrain_note(tags: dict[str, str]) -> str:
    retrained = tags.get(MonitorTag.RETRAIN_MODEL_VERSION)
    if retrained:
        promoted = tags.get(MonitorTag.RETRAIN_PROMOTED) == "true"
        return (
            f"retrained: version {retrained} "
            f"({'promoted to champion' if promoted else 'not promoted'})"
        )
    if tags.get(MonitorTag.RETRAIN_TRIGGERED) == "true":
        return "retraining started but registered no version"
    return ""


def monitoring_history(
    model_name: str, version: str, experiment_ids: list[str], scratch: Path
) -> list[MonitorRecord]:
    """The monitoring runs logged against this model version, newest first."""
    found = runs.search_runs(
        experiment_ids,
        {
            RunTag.RUN_TYPE: MONITOR_RUN_TYPE,
            MonitorTag.MODEL_NAME: model_name,
            MonitorTag.MODEL_VERSION: version,
        },
        MAX_MONITOR_RUNS,
    )
    records = []
    for run in found:
        tags, metrics = run.tags, run.metrics
        payload = _Artifacts(run.run_id, scratch / run.run_id).json(Artifact.MONITOR)
        payload = payload if isinstance(payload, dict) else {}
        if MonitorTag.DRIFT in tags:
            drift: bool | None = tags[MonitorTag.DRIFT].strip().lower() == "true"
        elif MonitorMetric.DRIFT in metrics:
            drift = bool(metrics[MonitorMetric.DRIFT])
        elif isinstance(payload.get("drift"), bool):
            drift = payload["drift"]
        else:
            drift = None
        rows = metrics.get(MonitorMetric.N_ROWS, payload.get("n_rows"))
        source = (
            tags.get(MonitorTag.DATA_SOURCE)
            or payload.get("data_source")
            or payload.get("source")
            or (payload.get("data") if isinstance(payload.get("data"), str) else None)
            or ""
        )
        records.append(
            MonitorRecord(
                run_id=run.run_id,
                date=_timestamp(run.start_time),
                data_source=str(source),
                rows=int(rows) if isinstance(rows, int | float) and math.isfinite(rows) else None,
                drift=drift,
                max_psi=_max_psi(metrics, payload),
                reasons=[str(reason) for reason in payload.get("reasons") or []],
                retrain=_retrain_note(tags),
            )
        )
    return records


def gather(
    model_name: str, version: str | None = None, experiment: str | None = None
) -> ReportData:
    """Read a registered version's training run (default: the champion, else the latest
    version) and its monitoring runs (in the model's monitoring experiment and the training
    run's). ``experiment`` names one more experiment to search for monitoring runs (the
    configured ``register.experiment``)."""
    import mlflow

    from tasks.register import tracking_uri

    record = resolve_report_version(model_name, version)
    version = record.version
    with tempfile.TemporaryDirectory(prefix="popseg-report-") as scratch_dir:
        scratch = Path(scratch_dir)
        artifacts = _Artifacts(record.run_id, scratch / "run")
        segments_json = artifacts.json(Artifact.SEGMENTS)
        profiles = artifacts.csv(Artifact.SEGMENT_PROFILES)
        if not segments_json or profiles is None:
            raise RegistryError(
                f"model {model_name!r} version {version} (run {record.run_id}) has no "
                f"{Artifact.SEGMENTS} or {Artifact.SEGMENT_PROFILES}: it was not logged by "
                "a popseg training, so there is nothing to report"
            )
        chain_json = artifacts.json(Artifact.CHAIN_JSON) or {}
        chain_metadata = chain_json.get("metadata") or {}
        features = list(chain_json.get("feature_names") or [str(c) for c in profiles.columns])
        id_column = record.id_column or chain_metadata.get("id_column", "")
        noun = row_noun(id_column)
        spread = _population_std(artifacts, features)
        impute_report = artifacts.json(Artifact.IMPUTE) or {}
        selection = artifacts.json(Artifact.SELECTION) or {}
        loadings = artifacts.csv(Artifact.PCA_LOADINGS)
        sweep = artifacts.csv(Artifact.SWEEP_METRICS)
        images = {}
        for path in sorted(artifacts.listing(Artifact.PLOTS)):
            name = Path(path).stem
            local = artifacts.path(path) if path.endswith(".png") else None
            if local is not None:
                title, caption = PLOTS.get(name, (_humanize(name), ""))
                images[name] = Image(name, title, caption, local.read_bytes())
        # Monitoring runs are in the model's monitoring experiment; older ones in the training
        # run's or the configured experiment.
        experiment_ids = [record.experiment_id]
        for name in (monitoring_experiment_name(model_name), experiment):
            found = mlflow.get_experiment_by_name(name) if name else None
            if found is not None and found.experiment_id not in experiment_ids:
                experiment_ids.append(found.experiment_id)
        monitoring = monitoring_history(model_name, version, experiment_ids, scratch / "monitor")
        segments = _segments(segments_json, profiles, spread, noun)
        notes = artifacts.json(Artifact.NOTES) or []
        data = ReportData(
            model_name=model_name,
            model_version=version,
            run_id=record.run_id,
            experiment_id=record.experiment_id,
            tracking_uri=tracking_uri(),
            trained_at=_timestamp(record.start_time),
            generated_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            aliases=sorted(record.aliases),
            gate=record.gate_tags,
            data_source=record.data_source,
            data_md5=record.data_md5 or chain_metadata.get("data_md5", ""),
            git_commit=record.git_commit or "",
            id_column=id_column,
            row_noun=noun,
            n_rows=impute_report.get("rows_in"),
            rows_used=sum(segment.size for segment in segments),
            features=features,
            validation=_validation_summary(artifacts.json(Artifact.VALIDATION_RESULT)),
            impute=impute_report,
            impute_table=_impute_table(impute_report),
            scale=artifacts.json(Artifact.SCALE) or {},
            reduce=artifacts.json(Artifact.REDUCE) or {},
            loadings=_table(loadings, "component"),
            selection=selection,
            candidates=_candidates_table(selection),
            sweep=_sweep_table(sweep, selection.get("k")),
            metrics=dict(record.metrics),
            segments=segments,
            stability=segments_json.get("stability"),
            stability_rounds=[float(v) for v in segments_json.get("stability_rounds") or []],
            id_mapping=segments_json.get("id_mapping") or {},
            images=images,
            monitoring=monitoring,
            notes=[str(note) for note in notes] if isinstance(notes, list) else [],
            model=ModelFamily.of(chain_json),
            membership=dict(segments_json.get("membership") or {}),
        )
    return data


# ----------------------------------------------------------------------------- rendering


def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE_DIR)),
        autoescape=True,  # every value from the data is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        num=fmt_number,
        score=fmt_score,
        share=fmt_share,
        signed=fmt_signed,
        humanize=_humanize,
    )
    return environment


def stability_verdict(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "not measured"
    if value >= 0.8:
        return "very stable: refits on resampled data give nearly the same segments"
    if value >= 0.6:
        return "reasonably stable: most rows land in the same segment when the data is resampled"
    return "unstable: segment boundaries move when the data is resampled; read with care"


def z_bar(z: float | None, limit: float = 3.0) -> dict[str, float] | None:
    """Left offset and width (percent of the track) of a diverging bar centred at 50%."""
    if z is None or not math.isfinite(z):
        return None
    half = min(abs(z), limit) / limit * 50.0
    return {"left": 50.0 - half if z < 0 else 50.0, "width": max(half, 0.5)}


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document."""
    template = _environment().get_template(TEMPLATE)
    return template.render(
        r=data,
        scale_method=_SCALE_METHODS.get(str(data.scale.get("method")), data.scale.get("method")),
        impute_strategy=_IMPUTE_STRATEGIES.get(
            str(data.impute.get("strategy")), data.impute.get("strategy")
        ),
        stability_verdict=stability_verdict(data.stability),
        z_bar=z_bar,
        k_curves=[data.images[name] for name in K_CURVES if name in data.images],
        drifted=sum(1 for record in data.monitoring if record.drift),
    )


# ----------------------------------------------------------------------------- writing


def default_output(version: str) -> Path:
    return Path("reports") / f"segmentation-report-v{version}.html"


def output_path(output: str | Path | None, version: str) -> Path:
    """Where to write: the default name under ./reports, inside ``output`` when it is an
    existing folder, else ``output`` itself, which must end in .html (or .htm)."""
    if output is None:
        return default_output(version)
    path = Path(output)
    if path.is_dir():
        return path / default_output(version).name
    if path.suffix.lower() not in (".html", ".htm"):
        raise ReportError(
            f"--output {str(output)!r}: the report is an HTML page; give a path ending in .html "
            "(or an existing folder)"
        )
    return path


@dataclass(frozen=True)
class WrittenReport:
    path: Path
    data: ReportData

    def to_json(self) -> dict[str, Any]:
        return {"report": str(self.path), "bytes": self.path.stat().st_size, **self.data.describe()}


def write_report(
    model_name: str,
    version: str | None = None,
    output: str | Path | None = None,
    experiment: str | None = None,
) -> WrittenReport:
    """``popseg report``: gather, render and write the HTML file (parent folders created)."""
    if output is not None and not Path(output).is_dir():
        output_path(output, "0")  # a bad suffix fails before any registry work
    data = gather(model_name, version, experiment)
    path = output_path(output, data.model_version)
    html = render_html(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write the report to {str(path)!r}: {error}") from None
    return WrittenReport(path=path, data=data)


def log_training_report(
    model_name: str, model_version: str, run_id: str, experiment: str | None = None
) -> str | None:
    """Build the report of a just-registered version and log it to its training run as
    ``reports/report.html``. A failure does not fail the training (the model is registered
    and usable already): it is logged with its traceback, recorded as run tag
    ``report_error`` and returned as a note for the run summary. None when it worked."""
    try:
        data = gather(model_name, model_version, experiment)
        runs.log_text(run_id, render_html(data), REPORT_ARTIFACT)
    except Exception as error:  # the report is a by-product: never lose the training for it
        logger.warning(
            "report for %s version %s not built", model_name, model_version, exc_info=True
        )
        note = f"report not built ({type(error).__name__}: {error}); `popseg report` retries"
        try:
            runs.tag_run(run_id, {RunTag.REPORT_ERROR: note[:5000]})
        except Exception:  # pragma: no cover - the store itself is failing
            logger.warning("could not tag run %s with the report error", run_id)
        return note
    return None
