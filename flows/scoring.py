"""Batch scoring wiring: the registered chain fetched once, then the data scored in memory
(`tasks.score`: one CSV/Parquet file in, one file out) or on a Dask cluster
(`tasks.dask_engine.scoring`: a file, folder or glob in, a folder of Parquet parts out).
A plain function, as deploy is: no Prefect server for a handful of calls."""

from __future__ import annotations

import tempfile
from typing import Any

from tasks.config import Params
from tasks.errors import ConfigError
from tasks.package import fetch_registered_chain

ENGINES = ("memory", "dask")


def score(
    params: Params,
    data: str,
    output: str,
    version: str | None = None,
    engine: str = "memory",
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Score ``data`` with a registered version (default: alias champion) into ``output``."""
    from tasks.chain import SegmentationChain

    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose memory or dask")
    with tempfile.TemporaryDirectory(prefix="popseg-score-") as scratch:
        registered = fetch_registered_chain(params.register_.model_name, version, scratch)
        chain = SegmentationChain.load(str(registered.chain_dir))
    model = {"model_name": registered.model_name, "model_version": registered.model_version}
    if engine == "memory":
        from tasks.score import score_frame, write_scores

        scores = score_frame(chain, data, params.data.delimiter)
        path = write_scores(scores, output)
        counts = scores["segment"].value_counts().sort_index()
        return {
            **model,
            "engine": engine,
            "rows": len(scores),
            "output": str(path),
            "segments": {int(k): int(v) for k, v in counts.items()},
        }
    from tasks.dask_engine.scoring import score_to_parquet
    from tasks.dask_engine.session import open_session

    with open_session(params.dask, scheduler) as session:
        scored = score_to_parquet(
            session, chain, data, output, params.data.delimiter, params.dask.blocksize
        )
    return {
        **model,
        "engine": engine,
        "rows": scored.rows,
        "output": output,
        "parts": scored.parts,
        "segments": scored.segments,
    }
