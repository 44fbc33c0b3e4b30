"""The Prefect cache key of prepare/train covers the source of every module those steps run,
whichever engine runs them; the engine and its sample settings are part of the key."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows import orchestration
from tasks.config import load_params
from tasks.engine import MEMORY

ROOT = Path(__file__).resolve().parents[2]
# Modules the cached steps run on each engine, including those imported inside functions.
STEP_MODULES = [
    "flows/stages.py",
    "tasks/engine.py",
    "tasks/prepare.py",
    "tasks/cluster.py",
    "tasks/dask_engine/engine.py",
    "tasks/dask_engine/kmeans.py",
    "tasks/dask_engine/stats.py",
    "tasks/dask_engine/table.py",
    "tasks/compute/kmeans.py",
]


@pytest.fixture
def source_tree(tmp_path):
    for package in ("flows", "tasks"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


@pytest.mark.parametrize("module", STEP_MODULES)
def test_editing_a_module_the_steps_run_changes_the_key(source_tree, module):
    before = orchestration.source_digest(source_tree)
    assert orchestration.source_digest(source_tree) == before
    with open(source_tree / module, "a") as handle:
        handle.write("\n# edited\n")
    assert orchestration.source_digest(source_tree) != before


def test_the_cached_digest_follows_every_edit(source_tree, tmp_path):
    cache_file = tmp_path / "state" / "code-fingerprint.json"
    first = orchestration.cached_source_digest(source_tree, cache_file)
    assert first == orchestration.source_digest(source_tree)
    assert cache_file.exists()
    assert orchestration.cached_source_digest(source_tree, cache_file) == first
    with open(source_tree / "tasks" / "cluster.py", "a") as handle:
        handle.write("\n# edited\n")
    edited = orchestration.cached_source_digest(source_tree, cache_file)
    assert edited == orchestration.source_digest(source_tree) != first
    # A corrupt cache file is recomputed, not trusted.
    cache_file.write_text("{not json")
    assert orchestration.cached_source_digest(source_tree, cache_file) == edited


def test_modules_the_steps_do_not_run_leave_the_key(source_tree):
    before = orchestration.source_digest(source_tree)
    (source_tree / "flows" / "schedules.py").write_text("# edited\n")
    assert orchestration.source_digest(source_tree) == before
    sources = {
        p.relative_to(source_tree).as_posix() for p in orchestration.step_sources(source_tree)
    }
    assert set(STEP_MODULES) <= sources


def test_engine_settings_are_part_of_the_keys():
    from tasks.config import DaskConfig
    from tasks.dask_engine.engine import DaskEngine
    from tasks.dask_engine.session import open_session

    params = load_params(overrides=["dask.sample_rows=1000"])
    more = load_params(overrides=["dask.sample_rows=2000"])
    data = SimpleNamespace(md5="0" * 32, id_column="row_id")
    memory = {"params": params, "data": data, "champion": None, "engine": MEMORY}
    with open_session(DaskConfig(processes=False, n_workers=1, threads_per_worker=1)) as session:
        dask = {**memory, "engine": DaskEngine(session)}
        for key in (orchestration.prepare_cache_key, orchestration.train_cache_key):
            assert key(None, memory) == key(None, {**memory, "params": more})
            assert key(None, memory) != key(None, dask)
            # The Dask engine's sample is part of its results.
            assert key(None, dask) != key(None, {**dask, "params": more})
