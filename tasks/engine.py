"""Execution engines: where the pipeline's statistics are computed, behind one `Engine` protocol.

The stages (flows/stages.py) are the same for every engine: ingest, validate, prepare, sweep k,
select, evaluate, build the chain. An engine says how each step gets its numbers:

* ``memory`` (`MemoryEngine`): the rows in this process, the stage functions of tasks/ on
  them (numpy/numba).
* ``dask`` (`tasks.dask_engine.engine.DaskEngine`): the rows on a Dask cluster, the same
  stages' parameters fitted from reductions over the partitions, and a seeded sample for what
  needs rows in one place.

The execution engine (memory|dask) is chosen per run (`popseg train --engine`); the compute
backend of the kernels (numba|sklearn) is ``cluster.backend`` in params.yaml, on either engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from tasks import cluster, evaluate, ingest, prepare
from tasks.chain import SegmentationChain
from tasks.config import Params
from tasks.errors import ConfigError
from tasks.extras import require
from tasks.ingest import IngestedData
from tasks.prepare import Prepared
from tasks.tracking.layout import RunTag
from tasks.validate import ValidationReport, run_validation

ENGINES = ("memory", "dask")

# ``mapper(step_name, function, *iterables)``: runs independent calls (bootstrap rounds, per-k
# scores) somewhere and returns their results in order.
Mapper = Callable[..., list[Any]]


class Engine(Protocol):
    name: str

    @staticmethod
    def check_supported(params: Params) -> None:
        """Refuse settings the engine cannot run (a ConfigError naming the key)."""

    def ingest(self, params: Params) -> IngestedData: ...

    def validate(self, params: Params, data: IngestedData, suite: str) -> ValidationReport: ...

    def prepare(self, params: Params, data: IngestedData) -> Prepared: ...

    def sweep(
        self, params: Params, data: IngestedData, prepared: Prepared
    ) -> cluster.SweepResult: ...

    def evaluate(
        self,
        params: Params,
        data: IngestedData,
        prepared: Prepared,
        swept: cluster.SweepResult,
        k: int,
        champion: SegmentationChain | None,
    ) -> evaluate.Evaluation: ...

    def score(
        self, params: Params, chain: SegmentationChain, data: str, output: str
    ) -> dict[str, Any]:
        """Batch scoring with a fitted chain: ``data`` in, ``output`` written (id, segment,
        distance_to_cluster); returns rows, output, segments (and parts where there are)."""

    def tags(self, data: IngestedData) -> dict[str, str]:
        """Run tags that say where the run computed (engine, cluster, sample size)."""

    def cache_settings(self, params: Params) -> dict[str, Any]:
        """What, besides the data and the stages' params, the prepare and train results
        depend on (part of their cache keys)."""


class MemoryEngine:
    """Every row in this process; the stages of tasks/ on the rows."""

    name = "memory"

    @staticmethod
    def check_supported(params: Params) -> None:
        return None

    def ingest(self, params: Params) -> IngestedData:
        raw = ingest.ingest(params.data)
        return ingest.select_features(raw, params.data, params.features)

    def validate(self, params: Params, data: IngestedData, suite: str) -> ValidationReport:
        return run_validation(data, params.data, params.validate_, suite)

    def prepare(self, params: Params, data: IngestedData) -> Prepared:
        return prepare.prepare(params, data)

    def sweep(self, params: Params, data: IngestedData, prepared: Prepared) -> cluster.SweepResult:
        if params.cluster.model == "gmm":
            from tasks import mixture

            return mixture.sweep(prepared.reduced.values, params.cluster)
        return cluster.sweep(prepared.reduced.values, params.cluster)

    def evaluate(
        self,
        params: Params,
        data: IngestedData,
        prepared: Prepared,
        swept: cluster.SweepResult,
        k: int,
        champion: SegmentationChain | None,
    ) -> evaluate.Evaluation:
        chosen = swept.fits[k]
        kept_frame = prepared.imputed.kept(data.frame)
        names = prepared.names
        # The rows as the champion receives them: only read when there is one to match to.
        # With no cell filled (nothing missing, or `drop` kept only complete rows) they are
        # the imputed values themselves, not a second copy of the table.
        if champion is None:
            champion_rows = np.empty((0, len(names)))
        elif prepared.imputed.report.get("cells_filled") == 0:
            champion_rows = prepared.imputed.values
        else:
            champion_rows = kept_frame[names].to_numpy(dtype="float64")
        distances = None
        if chosen.mixture is not None:
            from tasks.mixture import mahalanobis_to_own

            distances = mahalanobis_to_own(prepared.reduced.values, chosen)
        return evaluate.evaluate(
            prepared.reduced.values,
            chosen.labels,
            chosen.centroids,
            prepared.imputed.values,
            champion_rows,
            names,
            kept_frame[data.id_column].tolist(),
            params.cluster,
            params.evaluate,
            champion,
            distances,
        )

    def score(
        self, params: Params, chain: SegmentationChain, data: str, output: str
    ) -> dict[str, Any]:
        from tasks.score import UNSEEN_ATTR, score_frame, write_scores

        scores = score_frame(chain, data, params.data.delimiter)
        unseen = scores.attrs.get(UNSEEN_ATTR)
        path = write_scores(scores, output)
        counts = scores["segment"].value_counts().sort_index()
        return {
            "rows": len(scores),
            "output": str(path),
            "segments": {int(k): int(v) for k, v in counts.items()},
            **({UNSEEN_ATTR: unseen} if unseen else {}),
        }

    def tags(self, data: IngestedData) -> dict[str, str]:
        return {RunTag.EXECUTION_ENGINE: self.name}

    def cache_settings(self, params: Params) -> dict[str, Any]:
        return {"engine": self.name}


MEMORY = MemoryEngine()


def check_engine_name(name: str) -> None:
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r}: choose {' or '.join(ENGINES)}")


def engine_class(name: str) -> type:
    """The class of a named engine (the Dask one imported only when asked for)."""
    check_engine_name(name)
    if name == "memory":
        return MemoryEngine
    require("dask", "--engine dask")
    from tasks.dask_engine.engine import DaskEngine

    return DaskEngine


def open_engine(name: str, mapper: Mapper | None = None) -> Engine:
    """The named engine; ``dask`` on the open Dask session (`tasks.dask_engine.session`),
    spreading independent steps with ``mapper`` (default: plain Dask futures)."""
    if engine_class(name) is MemoryEngine:
        return MEMORY
    from tasks.dask_engine.engine import DaskEngine
    from tasks.dask_engine.session import current

    return DaskEngine(current(), mapper)
