"""Batch scoring wiring: the registered chain fetched once, then scored by the execution
engine (`tasks.engine.Engine.score`): in memory (one CSV/Parquet file in, one file out) or on
a Dask cluster (a file, folder or glob in, a folder of Parquet parts out). A plain function, as
deploy is: no Prefect server for a handful of calls."""

from __future__ import annotations

import contextlib
import tempfile
from typing import Any

from tasks import engine as engines
from tasks.config import Params
from tasks.package import load_registered_chain


def score(
    params: Params,
    data: str,
    output: str,
    version: str | None = None,
    engine: str = "memory",
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Score ``data`` with a registered version (default: alias champion) into ``output``."""
    engines.check_engine_name(engine)
    with tempfile.TemporaryDirectory(prefix="popseg-score-") as scratch:
        registered, chain = load_registered_chain(params.register_.model_name, version, scratch)
    with _session(params, engine, scheduler):
        scored = engines.open_engine(engine).score(params, chain, data, output)
    return {
        "model_name": registered.model_name,
        "model_version": registered.model_version,
        "engine": engine,
        **scored,
    }


def _session(params: Params, engine: str, scheduler: str | None):
    """The Dask session the dask engine runs on (none for memory)."""
    if engines.engine_class(engine) is engines.MemoryEngine:
        return contextlib.nullcontext()
    from tasks.dask_engine.session import open_session

    return open_session(params.dask, scheduler)
