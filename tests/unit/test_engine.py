"""The execution engines behind `tasks.engine.Engine`: names, settings each refuses, and what
travels when a Prefect task's context is shipped to a Dask worker."""

from __future__ import annotations

import pickle

import pytest

from tasks import engine as engines
from tasks.config import load_params
from tasks.errors import ConfigError


def test_engine_names():
    assert engines.open_engine("memory") is engines.MEMORY
    assert engines.engine_class("dask").__name__ == "DaskEngine"
    with pytest.raises(ConfigError, match="--engine 'gpu': choose memory or dask"):
        engines.open_engine("gpu")


@pytest.mark.parametrize("strategy", ["knn", "iterative"])
def test_dask_refuses_imputers_that_need_every_row(strategy):
    dask = engines.engine_class("dask")
    params = load_params(overrides=[f"impute.strategy={strategy}"])
    with pytest.raises(ConfigError, match=f"impute.strategy={strategy} needs every row"):
        dask.check_supported(params)
    engines.MEMORY.check_supported(params)
    for supported in ("mean", "median", "most_frequent", "constant", "drop"):
        dask.check_supported(load_params(overrides=[f"impute.strategy={supported}"]))


def test_memory_engine_tags_and_cache_settings(params):
    assert engines.MEMORY.cache_settings(params) == {"engine": "memory"}
    assert engines.MEMORY.tags(None) == {"execution_engine": "memory"}


def test_dask_engine_pickles_without_its_session():
    from tasks.config import DaskConfig
    from tasks.dask_engine.engine import DaskEngine
    from tasks.dask_engine.session import open_session

    with open_session(DaskConfig(processes=False, n_workers=1, threads_per_worker=1)) as session:
        engine = DaskEngine(session, mapper=lambda *args: [])
        copy = pickle.loads(pickle.dumps(engine))
        assert copy.name == "dask" and copy._session is None and copy._mapper is None
