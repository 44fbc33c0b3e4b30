"""The Dask engine (`popseg train --engine dask`): the pipeline's stages with their statistics
computed over partitions on a Dask cluster.

The stages and their maths are the in-memory engine's (tasks/impute, scale, reduce, cluster,
evaluate, validate); this engine computes the statistics they fit from. The data stays on the
cluster: every parameter of the serving chain (fill values, log1p flags, clip bounds, scaler,
PCA, centroids) and every metric below marked "all rows" is a reduction over the partitions
(`stats`, `kmeans`). What needs rows in one place uses a seeded sample of ``dask.sample_rows``
rows (the same rows whatever the partitioning), kept in this process as the ingested table's
``frame``:

* all rows: row count, missing fractions, ranges, infinite values, id uniqueness, standard
  deviations (validation); imputation statistics (exact medians); log1p skewness, clip
  quantiles and scaler statistics; the PCA covariance; the k-means iterations of every k; per
  k inertia, mean distance, Calinski-Harabasz, Davies-Bouldin; segment sizes, profiles and
  example members.
* the sample: k-means++ seeding (``n_init`` runs per k, best kept, then refined on all rows);
  the schema and dtype expectations (GX); silhouette and Dunn (on ``cluster.silhouette_sample``
  of its rows); bootstrap stability; matching segment ids to the champion; the training table
  logged to MLflow, reports/assignments.csv and the promotion gate's same-data comparison.

The run's notes say which is which.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks import cluster, evaluate, impute, ingest, reduce, scale
from tasks.chain import SegmentationChain
from tasks.compute import absolute_tolerance
from tasks.config import Params
from tasks.dask_engine import kmeans, stats
from tasks.dask_engine.session import DaskSession
from tasks.dask_engine.table import DaskTable, data_md5, open_table
from tasks.errors import ConfigError, DataError
from tasks.ingest import IngestedData
from tasks.package import build_chain, transform_chain
from tasks.prepare import Prepared
from tasks.progress import progress
from tasks.tracking.layout import RunTag
from tasks.validate import (
    ValidationReport,
    build_expectations,
    report_from_counts,
    run_validation,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class DistributedData(IngestedData):
    """The ingested data on the Dask engine: ``frame`` is the seeded sample (id + features, as
    the in-memory table), ``table`` the whole data set on the cluster."""

    table: DaskTable | None = None
    total_rows: int = 0
    sample_positions: np.ndarray | None = None
    n_workers: int = 0

    @property
    def n_rows(self) -> int:
        return self.total_rows

    @property
    def sample_rows(self) -> int:
        return len(self.frame)


@contextlib.contextmanager
def _timed(what: str):
    started = time.perf_counter()
    yield
    logger.info("%s: %.1f s", what, time.perf_counter() - started)


def _table(data: IngestedData) -> DaskTable:
    if not isinstance(data, DistributedData) or data.table is None:
        raise TypeError("the Dask engine needs the data from its own ingest")
    return data.table


def _sample_rows(data: IngestedData) -> np.ndarray:
    return data.frame[data.feature_columns].to_numpy(dtype=np.float64)


def sample_scores(values: np.ndarray, labels: np.ndarray, backend: str) -> tuple[float, float]:
    """Silhouette and Dunn index of one k on the sample (NaN with fewer than 2 clusters)."""
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    functions = cluster.metric_functions(backend)
    return (
        float(functions["silhouette"](values, labels)),
        float(functions["dunn"](values, labels)),
    )


def _sample_labels(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    from tasks.compute import assign_partial

    labels, _, _ = assign_partial(values, centers, np.array([0, len(centers)]), True)
    return labels[0].astype(np.int64)


def _delayed_moments(block):
    import dask

    return dask.delayed(stats.Moments.of)(block)


class DaskEngine:
    """The stages' statistics over the partitions of the open `DaskSession`; ``mapper``
    spreads independent steps (per-k sample scores, bootstrap rounds) over the cluster
    (default: plain Dask futures)."""

    name = "dask"

    def __init__(self, session: DaskSession | None = None, mapper=None) -> None:
        self._session = session
        self._mapper = mapper

    def __reduce__(self):
        # The session (a client with its event loop) and the mapper belong to this process;
        # a copy that travels with a Prefect task's context is a name only.
        return (DaskEngine, ())

    @property
    def session(self) -> DaskSession:
        if self._session is None:
            from tasks.dask_engine.session import current

            self._session = current()
        return self._session

    def _map(self, step: str, function, *iterables) -> list:
        """``function`` over the zipped ``iterables`` on the cluster, with progress per item
        done (on Prefect task mapping, whose results come back together: the whole step)."""
        total = min((len(items) for items in iterables), default=0)
        with progress(f"{step} on the Dask cluster", total, "items") as on_step:
            if self._mapper is None:
                return self.session.map(step, function, *iterables, on_step=on_step)
            results = self._mapper(step, function, *iterables)
            on_step(len(results))
            return results

    # ------------------------------------------------------------------ settings

    @staticmethod
    def check_supported(params: Params) -> None:
        """Settings the Dask engine cannot run, refused before any data is read."""
        strategy = params.impute.strategy
        if strategy != "drop" and strategy not in impute.FILL_STATISTIC:
            supported = ", ".join([*impute.FILL_STATISTIC, "drop"])
            raise ConfigError(
                f"impute.strategy={strategy} needs every row in one place (its fills depend on "
                f"other rows); with --engine dask use {supported}"
            )
        if params.cluster.model != "kmeans":
            raise ConfigError(
                f"cluster.model={params.cluster.model}: the Dask engine fits k-means only; "
                "use --engine memory or cluster.model=kmeans"
            )

    def score(
        self, params: Params, chain: SegmentationChain, data: str, output: str
    ) -> dict[str, Any]:
        """Each partition scored on a worker by the chain and written there as a Parquet
        part (`tasks.dask_engine.scoring`); nothing is collected on the client."""
        from tasks.dask_engine.scoring import score_to_parquet
        from tasks.score import UNSEEN_ATTR

        scored = score_to_parquet(
            self.session, chain, data, output, params.data.delimiter, params.dask.blocksize
        )
        unseen = scored.unseen_counts()
        return {
            "rows": scored.rows,
            "output": scored.output,
            "parts": scored.parts,
            "segments": scored.segments,
            **({UNSEEN_ATTR: unseen} if unseen else {}),
        }

    def tags(self, data: IngestedData) -> dict[str, str]:
        table = _table(data)
        return {
            RunTag.EXECUTION_ENGINE: self.name,
            RunTag.DASK_WORKERS: str(data.n_workers),
            RunTag.DASK_PARTITIONS: str(table.npartitions),
            RunTag.DASK_SAMPLE_ROWS: str(data.sample_rows),
        }

    def cache_settings(self, params: Params) -> dict[str, Any]:
        # The sample (its size and seed) is part of what the stages return.
        return {
            "engine": self.name,
            "sample_rows": params.dask.sample_rows,
            "seed": params.cluster.seed,
        }

    # ------------------------------------------------------------------ ingest

    def ingest(self, params: Params) -> DistributedData:
        """Open the configured data on the cluster (a bundled dataset is first written to
        data/raw, as in memory; a user's file is read in place), hash it, draw the sample."""
        self.check_supported(params)
        session = self.session
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
            n_workers=session.n_workers,
        )

    # ------------------------------------------------------------------ validate

    def validate(self, params: Params, data: IngestedData, suite: str) -> ValidationReport:
        """The params' suite: `ROW_EXPECTATIONS` from counts over all rows; the column set
        and dtypes by GX on the sample."""
        table = _table(data)
        expectations = build_expectations(data, params.data, params.validate_)
        on_sample = run_validation(data, params.data, params.validate_, suite)
        counts = stats.validation_counts(self.session, table, params.validate_.ranges)
        return report_from_counts(
            expectations,
            counts,
            on_sample,
            suite,
            table.feature_columns,
            {"execution_engine": self.name, "rows": counts.rows, "sample_rows": len(data.frame)},
        )

    # ------------------------------------------------------------------ prepare

    def prepare(self, params: Params, data: IngestedData) -> Prepared:
        """Impute -> scale -> reduce fitted from statistics over all rows; the arrays of the
        result hold the sample's rows (the parameters are the whole data's)."""
        session = self.session
        table = _table(data)
        names = data.feature_columns
        self.check_supported(params)
        strategy = params.impute.strategy
        drop = strategy == "drop"
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
            statistic = impute.FILL_STATISTIC[strategy]
            computed = {}
            if statistic is not None:
                computed[statistic] = self._column_statistic(statistic, table, raw)
            fill_values = impute.fill_values_from_stats(
                strategy, params.impute.fill_value, len(names), computed
            )
            # The imputed columns: the observed values plus the filled cells (exact merge).
            imputed_moments = raw.merge(stats.Moments.constant(fill_values, raw.n_missing))
        fill_values = np.asarray(fill_values, dtype=np.float64)
        sample_raw = _sample_rows(data)
        sample_kept = ~np.isnan(sample_raw).any(axis=1) if drop else np.ones(len(sample_raw), bool)
        imputed = impute.ImputeResult(
            values=np.ascontiguousarray(
                transform_chain(names, fill_values).prepare(sample_raw[sample_kept])
            ),
            kept_rows=sample_kept,
            fill_values=fill_values,
            report={
                **impute.impute_report(
                    strategy, names, raw.n_missing, n, rows_dropped, fill_values
                ),
                "execution_engine": self.name,
            },
        )

        # scale: log1p, clip, affine
        config = params.scale
        skew = imputed_moments.skewness if config.log1p == "auto" else None
        log1p_mask = scale.log1p_from_stats(imputed_moments.minimum, skew, names, config)
        chain = transform_chain(names, fill_values, log1p_mask)
        clip_low, clip_high = np.full(len(names), -np.inf), np.full(len(names), np.inf)
        if config.clip_quantiles is not None:
            logged = imputed_moments
            if log1p_mask.any():
                logged = stats.moments(session, table, stats.Stage(names, chain, drop))
            clip_low, clip_high = stats.quantiles(
                session,
                table,
                stats.Stage(names, chain, drop),
                list(config.clip_quantiles),
                logged,
                step="clip quantiles",
            )
            chain = transform_chain(names, fill_values, log1p_mask, clip_low, clip_high)
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
        chain = transform_chain(names, fill_values, log1p_mask, clip_low, clip_high, center, scale_)
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
        kept_components = reduced.components
        reduced.report["execution_engine"] = self.name
        # Each kept component's variance over all rows (k-means' tolerance is relative to it).
        reduced.report["variance"] = np.einsum(
            "ij,jk,ik->i", kept_components, population, kept_components
        ).tolist()
        return Prepared(names=names, imputed=imputed, scaled=scaled, reduced=reduced)

    def _column_statistic(self, statistic: str, table: DaskTable, raw: stats.Moments):
        """A column statistic of the raw features over all rows (missing values left out)."""
        stage = stats.Stage(table.feature_columns)
        if statistic == "mean":
            return raw.mean.copy()
        if statistic == "median":
            return stats.quantiles(
                self.session, table, stage, [0.5], raw, median=True, step="medians"
            )[0]
        return stats.most_frequent(self.session, table, stage)

    # ------------------------------------------------------------------ sweep

    def _model_chain(self, prepared: Prepared) -> SegmentationChain:
        """The serving chain's transform into model space (no centroids yet)."""
        p = prepared.reduced.values.shape[1]
        return build_chain(
            prepared.names,
            prepared.imputed,
            prepared.scaled,
            prepared.reduced,
            np.zeros((1, p)),
            np.zeros(1, dtype=np.int64),
        )

    def sweep(self, params: Params, data: IngestedData, prepared: Prepared) -> cluster.SweepResult:
        """The k sweep on all rows (k-means++ seeded on the sample); silhouette and Dunn on
        the sample, the other metrics over all rows."""
        session = self.session
        table = _table(data)
        config = params.cluster
        drop = params.impute.strategy == "drop"
        n_kept = table.n_rows - int(prepared.imputed.report.get("rows_dropped", 0))
        sample = np.ascontiguousarray(prepared.reduced.values)
        p = sample.shape[1]
        ks = cluster.k_range(config, n_kept)
        k_values = ks.k_values
        if max(k_values) > len(sample):
            raise DataError(
                f"dask.sample_rows gives {len(sample)} usable sample rows, fewer than "
                f"cluster.k_max={max(k_values)}; raise dask.sample_rows"
            )
        with _timed(f"k-means++ seeding on the sample ({len(sample)} rows)"):
            seeds = cluster.fit_k_values(sample, k_values, config, "k-means on the sample")
        reduced_stage = stats.Stage(prepared.names, self._model_chain(prepared), drop, reduce=True)
        blocks = kmeans.prepared_blocks(
            session, table, reduced_stage, n_kept, p, params.dask.persist
        )
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
                )
            with _timed("per-k statistics on all rows"):
                per_k = kmeans.sweep_statistics(session, blocks, centers)
        finally:
            if blocks.persisted:
                session.release(blocks.items)

        subset = cluster.silhouette_subset(len(sample), config)
        labels = {k: _sample_labels(sample, centers[k]) for k in k_values}
        with _timed(f"silhouette and Dunn on {len(subset)} sample rows"):
            scores = self._map(
                "score-k-on-sample",
                functools.partial(sample_scores, backend=config.backend),
                [sample[subset]] * len(k_values),
                [labels[k][subset] for k in k_values],
            )
        fits = {}
        for k, (silhouette, dunn) in zip(k_values, scores, strict=True):
            s = per_k[k]
            fits[k] = cluster.KFit(
                k=k,
                centroids=centers[k],
                labels=labels[k],
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
        return cluster.sweep_result(
            fits,
            config,
            ks,
            n_kept,
            len(subset),
            seeding_rows=len(sample),
            engine_notes=self._notes(params, table, blocks, len(sample)),
        )

    def _notes(
        self, params: Params, table: DaskTable, blocks: kmeans.Blocks, sample_rows: int
    ) -> list[str]:
        notes = [
            f"dask engine: {table.n_rows} rows in {table.npartitions} partitions on "
            f"{self.session.describe()}; {blocks.describe()}",
            "dask engine: inertia, Calinski-Harabasz, Davies-Bouldin on all rows",
            f"dask engine: bootstrap stability, segment-id matching, the logged training table "
            f"and reports/assignments.csv use the seeded sample of {sample_rows} rows; sizes, "
            "profiles and example members use all rows",
            "dask engine: validation of row count, missing fractions, ranges, infinite values, "
            "spread and id uniqueness on all rows; column set and dtypes (GX) on the sample",
        ]
        if params.data.path:
            notes.append(
                f"dask engine: {params.data.path} read in place (not copied under data/raw)"
            )
        return notes

    # ------------------------------------------------------------------ evaluate

    def evaluate(
        self,
        params: Params,
        data: IngestedData,
        prepared: Prepared,
        swept: cluster.SweepResult,
        k: int,
        champion: SegmentationChain | None,
    ) -> evaluate.Evaluation:
        """Sizes, profiles and example members over all rows; segment-id matching and
        bootstrap stability on the sample."""
        table = _table(data)
        names = prepared.names
        chosen = swept.fits[k]
        drop = params.impute.strategy == "drop"
        imputed_stage = stats.Stage(
            names, transform_chain(names, prepared.imputed.fill_values), drop
        )
        reduced_stage = stats.Stage(names, self._model_chain(prepared), drop, reduce=True)
        with _timed("segment sizes, profiles and nearest members on all rows"):
            summary = kmeans.profile(
                self.session,
                table,
                imputed_stage,
                reduced_stage,
                chosen.centroids,
                params.evaluate.example_members,
            )
        sample_labels = chosen.labels
        kept_frame = data.frame[prepared.imputed.kept_rows].reset_index(drop=True)
        segment_ids, mapping = evaluate.segment_ids_for(
            sample_labels,
            summary.counts,
            kept_frame[names].to_numpy(dtype=np.float64),
            names,
            champion,
        )
        if "champion_version" in mapping:
            mapping["matched_on"] = f"the seeded sample of {len(kept_frame)} rows"
        segments = evaluate.segments_from_summary(
            segment_ids,
            summary.counts,
            summary.means,
            summary.population.mean,
            summary.population.std,
            summary.nearest,
            names,
            params.evaluate.top_features,
        )
        sample = prepared.reduced.values

        def bootstrap_map(function, indices, samples):
            return self._map("bootstrap-round", function, indices, samples)

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
        return evaluate.Evaluation.of(
            segment_ids, sample_labels, distances, segments, rounds, mapping
        )
