"""The pipeline's stages on the Dask engine (`popseg train --engine dask`).

Same signatures and result types as the in-memory stages of `flows/stages.py`, so the training
flow swaps one set for the other and then records, registers, promotes and reports with the
same code. The data stays on the cluster: every parameter of the serving chain (fill values,
log1p flags, clip bounds, scaler, PCA, centroids) and every metric below marked "all rows" is
a reduction over the partitions (tasks/dask_engine). What needs rows in one place uses a
seeded sample of ``dask.sample_rows`` rows (the same rows whatever the partitioning), kept in
this process as the ingested table's ``frame``:

* all rows: row count, missing fractions, ranges, infinite values, id uniqueness, standard
  deviations (validation); imputation statistics (exact medians); log1p skewness, clip
  quantiles and scaler statistics; the PCA covariance; the k-means iterations of every k; per
  k inertia, mean distance, Calinski-Harabasz, Davies-Bouldin; segment sizes, profiles and
  example members.
* the sample: k-means++ seeding (``n_init`` runs per k, best kept, then refined on all rows);
  the schema and dtype expectations (GX); silhouette and Dunn (on ``cluster.silhouette_sample``
  of its rows); bootstrap stability; matching segment ids to the champion; the training table
  logged to MLflow, reports/assignments.csv and the promotion gate's same-data comparison.

The run's notes say which is which. The stages run on the open session
(`tasks.dask_engine.session.current`); `flows.training.run_training` opens it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flows import stages
from flows.stages import Prepared, Trained
from tasks import cluster, evaluate, impute, ingest, reduce, scale, select
from tasks.chain import SegmentationChain
from tasks.compute import absolute_tolerance
from tasks.config import Params
from tasks.dask_engine import kmeans, stats
from tasks.dask_engine.session import DaskSession, current
from tasks.dask_engine.table import DaskTable, data_md5, open_table
from tasks.errors import ConfigError, DataError
from tasks.ingest import IngestedData
from tasks.package import build_chain
from tasks.validate import ValidationReport, build_expectations, failure_entry, run_validation

logger = logging.getLogger(__name__)

ENGINE = "dask"
_UNSUPPORTED_IMPUTE = ("knn", "iterative")
_FINITE_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True, eq=False)
class DistributedData(IngestedData):
    """The ingested data on the Dask engine: ``frame`` is the seeded sample (id + features, as
    the in-memory table), ``table`` the whole data set on the cluster."""

    table: DaskTable | None = None
    total_rows: int = 0
    sample_positions: np.ndarray | None = None
    engine_tags: dict[str, str] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return self.total_rows


def check_supported(params: Params) -> None:
    """Settings the Dask engine cannot run, refused before any data is read."""
    strategy = params.impute.strategy
    if strategy in _UNSUPPORTED_IMPUTE:
        raise ConfigError(
            f"impute.strategy={strategy} needs every row in one place (its fills depend on "
            "other rows); with --engine dask use mean, median, most_frequent, constant or drop"
        )


@contextlib.contextmanager
def _timed(what: str):
    started = time.perf_counter()
    yield
    logger.info("%s: %.1f s", what, time.perf_counter() - started)


def _session(session: DaskSession | None) -> DaskSession:
    return session if session is not None else current()


def _table(data: IngestedData) -> DaskTable:
    table = getattr(data, "table", None)
    if table is None:
        raise TypeError("the Dask stages need the data from flows.dask_stages.ingest_stage")
    return table


# --------------------------------------------------------------------------- ingest


def ingest_stage(params: Params, session: DaskSession | None = None) -> DistributedData:
    """Open the configured data on the cluster (a bundled dataset is first written to
    data/raw, as in memory; a user's file is read in place), hash it and draw the sample."""
    check_supported(params)
    session = _session(session)
    config = params.data
    path = config.path
    if not path:
        frame = ingest.load_bundled(config)
        path = str(ingest.write_raw(frame, config.raw_dir, config.dataset))
    table, dropped, warnings = open_table(
        session, path, config, params.features, params.dask.blocksize
    )
    md5 = data_md5(session, path)
    sample, positions = stats.first_pass(
        session, table, params.dask.sample_rows, params.cluster.seed, params.validate_.ranges
    )
    logger.info(
        "%s: %d rows in %d partitions; a seeded sample of %d rows kept here",
        path,
        table.n_rows,
        table.npartitions,
        len(sample),
    )
    return DistributedData(
        frame=sample,
        id_column=table.id_column,
        feature_columns=table.feature_columns,
        source=config.path or path,
        md5=md5,
        path=path,
        dropped_columns=dropped,
        warnings=warnings,
        table=table,
        total_rows=table.n_rows,
        sample_positions=positions,
        engine_tags={
            "execution_engine": ENGINE,
            "dask_workers": str(session.n_workers),
            "dask_partitions": str(table.npartitions),
            "dask_sample_rows": str(len(sample)),
        },
    )


# --------------------------------------------------------------------------- validate

# Expectations the suite evaluates over all rows (reductions); the rest (the column set and
# dtypes, the same for every partition) GX evaluates on the sample.
_FULL_DATA = {
    "expect_table_row_count_to_be_between",
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_unique",
    "expect_column_proportion_of_non_null_values_to_be_between",
    "expect_column_values_to_be_between",
    "expect_column_stdev_to_be_between",
}


def _config(expectation):
    return expectation.configuration if hasattr(expectation, "configuration") else expectation


def _full_data_failure(expectation, counts: stats.ValidationCounts, names: list[str]):
    config = _config(expectation)
    kind, kwargs = config.type, dict(config.kwargs)
    column = kwargs.get("column")
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    moments = counts.moments
    j = names.index(column) if column in names else None
    if kind == "expect_table_row_count_to_be_between":
        ok = (low is None or counts.rows >= low) and (high is None or counts.rows <= high)
        return None if ok else failure_entry(expectation, counts.rows)
    if kind == "expect_column_values_to_not_be_null":
        if not counts.id_nulls:
            return None
        return failure_entry(
            expectation,
            f"{counts.id_nulls} of {counts.rows} rows",
            counts.id_nulls,
            [f"data row {row}" for row in counts.id_null_examples],
        )
    if kind == "expect_column_values_to_be_unique":
        if not counts.duplicate_ids:
            return None
        return failure_entry(
            expectation,
            f"{counts.duplicate_ids} rows share an id",
            counts.duplicate_ids,
            counts.duplicate_examples,
        )
    if j is None:
        return None
    infinite = int(moments.n_posinf[j] + moments.n_neginf[j])
    if kind == "expect_column_proportion_of_non_null_values_to_be_between":
        present = float(counts.rows - moments.n_missing[j]) / max(counts.rows, 1)
        ok = (low is None or present >= low) and (high is None or present <= high)
        return None if ok else failure_entry(expectation, present)
    if kind == "expect_column_values_to_be_between":
        if low == -_FINITE_MAX and high == _FINITE_MAX:
            if not infinite:
                return None
            examples = ["inf"] * min(int(moments.n_posinf[j]), 1)
            examples += ["-inf"] * min(int(moments.n_neginf[j]), 1)
            return failure_entry(expectation, None, infinite, examples)
        bad = counts.out_of_range.get(column, 0)
        if not bad:
            return None
        return failure_entry(expectation, None, bad, counts.range_examples.get(column, []))
    if kind == "expect_column_stdev_to_be_between":
        std = float(moments.sample_std[j]) if not infinite else float("nan")
        strict = bool(kwargs.get("strict_min", False))
        ok = (
            np.isfinite(std)
            and (low is None or (std > low if strict else std >= low))
            and (high is None or std <= high)
        )
        return None if ok else failure_entry(expectation, std)
    return None


def validate_stage(
    params: Params, data: IngestedData, session: DaskSession | None = None
) -> ValidationReport:
    """The params' suite: row count, missing fraction, ranges, infinite values, spread and id
    uniqueness over all rows; the column set and dtypes by GX on the sample."""
    session = _session(session)
    table = _table(data)
    suite = stages.suite_name(params)
    expectations = build_expectations(data, params.data, params.validate_)
    on_sample = run_validation(data, params.data, params.validate_, suite)
    counts = stats.validation_counts(session, table, params.validate_.ranges)
    failures: list[dict[str, Any]] = []
    for expectation in expectations:
        config = _config(expectation)
        if config.type in _FULL_DATA:
            failure = _full_data_failure(expectation, counts, table.feature_columns)
            if failure is not None:
                failures.append(failure)
            continue
        column = dict(config.kwargs).get("column")
        failures += [
            failure
            for failure in on_sample.failures
            if failure["expectation"] == config.type and failure["column"] == column
        ]
    return ValidationReport(
        success=not failures,
        suite_name=suite,
        evaluated=len(expectations),
        failures=failures,
        result={
            "engine": ENGINE,
            "rows": counts.rows,
            "sample_rows": len(data.frame),
            "on_all_rows": sorted(_FULL_DATA),
            "on_the_sample": on_sample.result,
        },
    )


# --------------------------------------------------------------------------- prepare


def _sample_rows(data: IngestedData) -> np.ndarray:
    return data.frame[data.feature_columns].to_numpy(dtype=np.float64)


def prepare_stage(
    params: Params, data: IngestedData, session: DaskSession | None = None
) -> Prepared:
    """Impute -> scale -> reduce fitted by reductions over all rows; the arrays of the result
    hold the sample's rows (the parameters are the whole data's)."""
    session = _session(session)
    table = _table(data)
    names = data.feature_columns
    check_supported(params)
    strategy = params.impute.strategy
    drop = strategy == "drop"
    raw_stage = stats.Stage(names)
    raw = stats.raw_moments(session, table)
    n = table.n_rows
    impute.check_not_all_missing(names, raw.n_missing, n)

    # impute
    rows_dropped = 0
    if drop:
        kept = stats.moments(session, table, stats.Stage(names, drop_incomplete=True))
        rows_dropped = n - kept.rows
        if kept.rows < 2:
            raise DataError(
                f"impute.strategy=drop leaves {kept.rows} complete row(s) of {n}; "
                "choose another strategy"
            )
        fill_values = kept.mean
        imputed_moments = kept
    else:
        if strategy == "mean":
            fill_values = raw.mean.copy()
        elif strategy == "median":
            fill_values = stats.quantiles(
                session, table, raw_stage, [0.5], raw, median=True, step="medians"
            )[0]
        elif strategy == "most_frequent":
            fill_values = stats.most_frequent(session, table, raw_stage)
        else:
            fill_values = np.full(len(names), float(params.impute.fill_value))
        # The imputed columns: the observed values plus the filled cells (exact merge).
        imputed_moments = raw.merge(stats.Moments.constant(fill_values, raw.n_missing))
    fill_chain = stats.identity_chain(names, fill_values)
    sample_raw = _sample_rows(data)
    sample_kept = ~np.isnan(sample_raw).any(axis=1) if drop else np.ones(len(sample_raw), bool)
    imputed = impute.ImputeResult(
        values=np.ascontiguousarray(fill_chain.prepare(sample_raw[sample_kept])),
        kept_rows=sample_kept,
        fill_values=np.asarray(fill_values, dtype=np.float64),
        report={
            **impute.impute_report(strategy, names, raw.n_missing, n, rows_dropped, fill_values),
            "engine": ENGINE,
        },
    )

    # scale: log1p, clip, affine
    config = params.scale
    skew = imputed_moments.skewness if config.log1p == "auto" else None
    log1p_mask = scale.log1p_from_stats(imputed_moments.minimum, skew, names, config)
    chain = _chain(names, fill_values, log1p_mask)
    clip_low, clip_high = np.full(len(names), -np.inf), np.full(len(names), np.inf)
    if config.clip_quantiles is not None:
        logged = _moments_of(session, table, chain, drop, imputed_moments, log1p_mask)
        clip_low, clip_high = stats.quantiles(
            session,
            table,
            stats.Stage(names, chain, drop),
            list(config.clip_quantiles),
            logged,
            step="clip quantiles",
        )
        chain = _chain(names, fill_values, log1p_mask, clip_low, clip_high)
    transformed_stage = stats.Stage(names, chain, drop)
    transformed = stats.moments(
        session, table, transformed_stage, scatter=True, step="scaling statistics"
    )
    needed: dict[str, np.ndarray] = {
        "mean": transformed.mean,
        "std": transformed.std,
        "min": transformed.minimum,
        "max": transformed.maximum,
        "absmax": np.maximum(np.abs(transformed.minimum), np.abs(transformed.maximum)),
    }
    if "quartiles" in scale.AFFINE_STATISTICS[config.method]:
        needed["quartiles"] = stats.quantiles(
            session, table, transformed_stage, [0.25, 0.5, 0.75], transformed, step="quartiles"
        )
    center, scale_ = scale.affine_from_stats(config.method, len(names), needed)
    chain = _chain(names, fill_values, log1p_mask, clip_low, clip_high, center, scale_)
    scaled = scale.scale_result(
        chain.prepare(sample_raw[sample_kept]),
        names,
        config,
        log1p_mask,
        clip_low,
        clip_high,
        center,
        scale_,
    )

    # reduce: the scaled rows' covariance is the transformed rows' rescaled (an affine map)
    mean = (transformed.mean - center) / scale_
    covariance = transformed.covariance / np.outer(scale_, scale_)
    components, ratios = reduce.pca_from_covariance(covariance)
    reduced = reduce.reduce_from_pca(
        scaled.values, mean, components, ratios, transformed.rows, params.reduce
    )
    population = covariance * (transformed.rows - 1) / max(transformed.rows, 1)
    kept = reduced.components
    reduced.report["engine"] = ENGINE
    # Each kept component's variance over all rows (k-means' tolerance is relative to it).
    reduced.report["variance"] = np.einsum("ij,jk,ik->i", kept, population, kept).tolist()
    return Prepared(names=names, imputed=imputed, scaled=scaled, reduced=reduced)


def _chain(
    names: list[str],
    fill_values: np.ndarray,
    log1p_mask: np.ndarray,
    clip_low: np.ndarray | None = None,
    clip_high: np.ndarray | None = None,
    center: np.ndarray | None = None,
    scale_: np.ndarray | None = None,
) -> SegmentationChain:
    """The serving chain's transform fitted up to a step (the later steps the identity)."""
    d = len(names)
    base = stats.identity_chain(names, fill_values)
    return SegmentationChain(
        feature_names=names,
        fill_values=base.fill_values,
        log1p_mask=log1p_mask,
        clip_low=clip_low if clip_low is not None else base.clip_low,
        clip_high=clip_high if clip_high is not None else base.clip_high,
        scale_center=center if center is not None else np.zeros(d),
        scale_scale=scale_ if scale_ is not None else np.ones(d),
        pca_mean=np.zeros(d),
        pca_components=np.eye(d),
        centroids=np.zeros((1, d)),
        segment_ids=np.zeros(1, dtype=np.int64),
    )


def _moments_of(session, table, chain, drop, imputed_moments, log1p_mask) -> stats.Moments:
    """Moments after log1p (a pass, unless no column is logged)."""
    if not log1p_mask.any():
        return imputed_moments
    return stats.moments(session, table, stats.Stage(chain.feature_names, chain, drop))


# --------------------------------------------------------------------------- train


def _apply(function, item: tuple):
    return function(*item)


def _mapper(session: DaskSession, params: Params):
    """How the evaluation's independent steps (per-k sample scores, bootstrap refits) are
    spread over the cluster: as Prefect tasks through the flow's DaskTaskRunner (prefect-dask)
    when ``dask.prefect_tasks`` and the flow runs on one; otherwise as plain Dask futures."""

    def with_dask(name: str):
        return lambda function, *iterables: session.map(name, function, *iterables)

    runner = None
    if params.dask.prefect_tasks:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        runner = getattr(context, "task_runner", None) if context else None
    if runner is None or type(runner).__name__ != "DaskTaskRunner":
        return with_dask

    def with_prefect(name: str):
        from prefect import task, unmapped
        from prefect.cache_policies import NO_CACHE

        step = task(_apply, name=name, cache_policy=NO_CACHE, persist_result=False)

        def run(function, *iterables):
            items = list(zip(*iterables, strict=True))
            if not items:
                return []
            # The workers report to this process's Prefect API (without it, each worker
            # process would start an ephemeral API server of its own).
            with _this_api():
                futures = step.map(unmapped(function), items)
            return [future.result() for future in futures]

        return run

    return with_prefect


@contextlib.contextmanager
def _this_api():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def sample_scores(values: np.ndarray, labels: np.ndarray, engine: str) -> tuple[float, float]:
    """Silhouette and Dunn index of one k on the sample (NaN with fewer than 2 clusters)."""
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    functions = cluster.metric_functions(engine)
    return (
        float(functions["silhouette"](values, labels)),
        float(functions["dunn"](values, labels)),
    )


def _sample_labels(values: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from tasks.compute import assign_partial

    labels, sq_dist, _ = assign_partial(values, centers, np.array([0, len(centers)]), True)
    return labels[0].astype(np.int64), np.sqrt(sq_dist[0])


def train_stage(
    params: Params,
    data: IngestedData,
    prepared: Prepared,
    champion: SegmentationChain | None = None,
    session: DaskSession | None = None,
) -> Trained:
    """The k sweep on all rows (seeded on the sample), k selected as in memory, the chosen k
    evaluated (all rows, or the sample where stated) and its serving chain built."""
    session = _session(session)
    table = _table(data)
    config = params.cluster
    names = prepared.names
    drop = params.impute.strategy == "drop"
    n_kept = table.n_rows - int(prepared.imputed.report.get("rows_dropped", 0))
    sample = np.ascontiguousarray(prepared.reduced.values)
    p = sample.shape[1]
    k_values, notes = cluster.k_range(config, n_kept)
    if max(k_values) > len(sample):
        raise DataError(
            f"dask.sample_rows gives {len(sample)} usable sample rows, fewer than "
            f"cluster.k_max={max(k_values)}; raise dask.sample_rows"
        )
    progress = logger.info
    # Seeding: n_init k-means++ runs per k on the sample (the in-memory sweep on the sample).
    with _timed(f"k-means++ seeding on the sample ({len(sample)} rows)"):
        seeds = cluster.fit_k_values(sample, k_values, config, progress)
    chain = build_chain(
        names,
        prepared.imputed,
        prepared.scaled,
        prepared.reduced,
        np.zeros((1, p)),
        np.zeros(1, dtype=np.int64),
    )
    reduced_stage = stats.Stage(names, chain, drop, reduce=True)
    blocks = kmeans.prepared_blocks(session, table, reduced_stage, n_kept, p, params.dask.persist)
    try:
        variance = prepared.reduced.report.get("variance")
        if variance is None:  # a Prepared from elsewhere: one pass
            variance = stats.merge_all(
                session.compute(
                    "variance of the prepared rows",
                    [_delayed_moments(block) for block in blocks.items],
                )
            ).variance
        tol_abs = absolute_tolerance(np.asarray(variance), config.tol)
        with _timed(f"k-means on all {n_kept} rows"):
            centers, n_iter = kmeans.lloyd(
                session,
                blocks,
                {k: seeds[k][0] for k in k_values},
                config.max_iter,
                tol_abs,
                progress,
            )
        with _timed("per-k statistics on all rows"):
            per_k = kmeans.sweep_statistics(session, blocks, centers)
    finally:
        if blocks.persisted:
            session.release(blocks.items)

    # Silhouette and Dunn on a seeded sample, as the in-memory sweep does above its size.
    rng = np.random.default_rng(config.seed)
    if len(sample) > config.silhouette_sample:
        subset = np.sort(rng.choice(len(sample), size=config.silhouette_sample, replace=False))
    else:
        subset = np.arange(len(sample))
    labels = {k: _sample_labels(sample, centers[k]) for k in k_values}
    mapper = _mapper(session, params)
    with _timed(f"silhouette and Dunn on {len(subset)} sample rows"):
        scores = mapper("score-k-on-sample")(
            functools.partial(sample_scores, engine=config.engine),
            [sample[subset]] * len(k_values),
            [labels[k][0][subset] for k in k_values],
        )
    fits = {}
    for k, (silhouette, dunn) in zip(k_values, scores, strict=True):
        s = per_k[k]
        fits[k] = cluster.KFit(
            k=k,
            centroids=centers[k],
            labels=labels[k][0],
            inertia=s.inertia,
            n_iter=n_iter[k],
            metrics={
                "inertia": s.inertia,
                "mean_distance_to_centroid": s.mean_distance,
                "silhouette": silhouette,
                "calinski_harabasz": s.calinski_harabasz,
                "davies_bouldin": s.davies_bouldin,
                "dunn": dunn,
            },
        )
    notes += _notes(session, params, table, blocks, len(sample), len(subset), n_kept)
    swept = cluster.SweepResult(
        fits=fits,
        engine=config.engine,
        silhouette_rows=len(subset),
        n_rows=n_kept,
        k_capped=bool(notes and "capped" in notes[0]),
        notes=notes,
    )
    selection = select.select_k(swept, params.select.criterion)
    evaluation = _evaluate(
        session, params, data, prepared, table, chain, swept, selection.k, champion, mapper
    )
    kept_frame = data.frame[prepared.imputed.kept_rows].reset_index(drop=True)
    return stages.assemble_trained(
        params,
        data,
        prepared,
        swept,
        selection,
        evaluation,
        kept_frame,
        metadata={"execution_engine": ENGINE},
    )


def _delayed_moments(block):
    import dask

    return dask.delayed(stats.Moments.of)(block)


def _evaluate(
    session: DaskSession,
    params: Params,
    data: IngestedData,
    prepared: Prepared,
    table: DaskTable,
    chain: SegmentationChain,
    swept: cluster.SweepResult,
    k: int,
    champion: SegmentationChain | None,
    mapper,
) -> evaluate.Evaluation:
    """`evaluate.evaluate`'s results for the chosen k: sizes, profiles and example members
    over all rows; segment-id matching and bootstrap stability on the sample."""
    names = prepared.names
    chosen = swept.fits[k]
    drop = params.impute.strategy == "drop"
    imputed_stage = stats.Stage(
        names, stats.identity_chain(names, prepared.imputed.fill_values), drop
    )
    reduced_stage = stats.Stage(names, chain, drop, reduce=True)
    with _timed("segment sizes, profiles and nearest members on all rows"):
        summary = kmeans.profile(
            session,
            table,
            imputed_stage,
            reduced_stage,
            chosen.centroids,
            params.evaluate.example_members,
        )
    sample_labels = chosen.labels
    kept_frame = data.frame[prepared.imputed.kept_rows].reset_index(drop=True)
    mapping: dict[str, Any] = {"method": "size order (no comparable champion)"}
    if champion is not None and champion.feature_names == names:
        segment_ids, mapping = evaluate.match_to_champion(
            sample_labels, kept_frame[names].to_numpy(dtype=np.float64), champion, k
        )
        mapping["champion_version"] = champion.metadata.get("model_version")
        mapping["matched_on"] = f"the seeded sample of {len(kept_frame)} rows"
    else:
        segment_ids = evaluate.size_order_ids_from_counts(summary.counts)
        mapping["map"] = {int(i): int(segment_ids[i]) for i in range(k)}
    order = np.argsort(segment_ids)
    sizes = {int(segment_ids[i]): int(summary.counts[i]) for i in order if summary.counts[i] > 0}
    means = pd.DataFrame(
        summary.means[order],
        index=pd.Index(segment_ids[order], name="segment"),
        columns=names,
    )
    means = means.loc[[segment for segment in means.index if segment in sizes]]
    distinguishing = evaluate.distinguishing_features(
        means,
        summary.population.mean,
        summary.population.std,
        names,
        params.evaluate.top_features,
    )
    examples = {int(segment_ids[i]): summary.nearest[i] for i in order if summary.counts[i] > 0}
    sample = prepared.reduced.values

    def bootstrap_map(function, indices, samples):
        return mapper("bootstrap-round")(function, indices, samples)

    with _timed(f"bootstrap stability on the sample ({len(sample)} rows)"):
        rounds = evaluate.bootstrap_stability(
            sample,
            sample_labels,
            k,
            params.cluster,
            params.evaluate.bootstrap_rounds,
            bootstrap_map,
        )
    distances = np.linalg.norm(sample - chosen.centroids[sample_labels], axis=1)
    return evaluate.Evaluation(
        segment_ids=segment_ids,
        segments=segment_ids[sample_labels],
        distances=distances,
        sizes=sizes,
        profiles=means,
        distinguishing=distinguishing,
        examples=examples,
        stability=float(np.mean(rounds)) if rounds else float("nan"),
        stability_rounds=rounds,
        id_mapping=mapping,
    )


def _notes(
    session: DaskSession,
    params: Params,
    table: DaskTable,
    blocks: kmeans.Blocks,
    sample_rows: int,
    silhouette_rows: int,
    n_kept: int,
) -> list[str]:
    return [
        f"dask engine: {table.n_rows} rows in {table.npartitions} partitions on "
        f"{session.describe()}; {blocks.describe()}",
        f"dask engine: k-means++ seeding (cluster.n_init runs per k) on a seeded sample of "
        f"{sample_rows} rows, then Lloyd iterations on all {n_kept} rows",
        f"dask engine: silhouette and Dunn index on a seeded sample of {silhouette_rows} of "
        f"{n_kept} rows; inertia, Calinski-Harabasz, Davies-Bouldin on all rows",
        f"dask engine: bootstrap stability, segment-id matching, the logged training table and "
        f"reports/assignments.csv use the seeded sample of {sample_rows} rows; sizes, profiles "
        "and example members use all rows",
        "dask engine: validation of row count, missing fractions, ranges, infinite values, "
        "spread and id uniqueness on all rows; column set and dtypes (GX) on the sample",
    ] + (
        [f"dask engine: {params.data.path} read in place (not copied under data/raw)"]
        if params.data.path
        else []
    )


# --------------------------------------------------------------------------- cache keys


def _engine_suffix(params: Params) -> str:
    """The sample (its size and seed) is part of what the Dask stages return."""
    settings = f"{ENGINE}:{params.dask.sample_rows}:{params.cluster.seed}"
    return "-" + hashlib.md5(settings.encode(), usedforsecurity=False).hexdigest()[:8]


def prepare_cache_key(context, parameters: dict[str, Any]) -> str:
    """The in-memory engine's key plus the engine and its sample settings."""
    from flows import orchestration

    return orchestration.prepare_cache_key(context, parameters) + _engine_suffix(
        parameters["params"]
    )


def train_cache_key(context, parameters: dict[str, Any]) -> str:
    from flows import orchestration

    return orchestration.train_cache_key(context, parameters) + _engine_suffix(parameters["params"])
