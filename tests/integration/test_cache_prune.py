"""The training flow's cache options prune the result cache once per process: records and
array files older than ``orchestrate.cache_expiration_h`` go, fresh ones stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flows import orchestration, result_cache
from tasks.config import OrchestrateConfig


def _signed_looking(path: Path, age_s: float) -> None:
    path.write_bytes(b"popseg-cache 1 0000\n{}")
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_cache_options_prune_expired_entries_once(prefect_server, monkeypatch):
    monkeypatch.setattr(orchestration, "_PRUNED", set())
    folder = Path(result_cache.local_storage().basepath)
    folder.mkdir(parents=True, exist_ok=True)
    expired = folder / "popseg-prepare-expired-by-test-cache-prune"
    fresh = folder / "popseg-prepare-fresh-by-test-cache-prune"
    _signed_looking(expired, 3 * 3600)
    _signed_looking(fresh, 60)
    config = OrchestrateConfig(cache_expiration_h=1.0)
    options = orchestration.cache_options(config, orchestration.prepare_cache_key)
    assert options["cache_expiration"].total_seconds() == 3600
    assert not expired.exists() and fresh.exists()
    # Once per process: a second expired file waits for the next command.
    _signed_looking(expired, 3 * 3600)
    orchestration.cache_options(config, orchestration.prepare_cache_key)
    assert expired.exists()
    expired.unlink()
    fresh.unlink()


def test_a_store_that_refuses_the_deletes_leaves_the_cache_working(
    prefect_server, monkeypatch, caplog
):
    """A cache folder whose files cannot be deleted (read-only mount, another owner): a warning
    naming the folder, and the steps keep their cache options."""
    monkeypatch.setattr(orchestration, "_PRUNED", set())
    folder = Path(result_cache.local_storage().basepath)
    folder.mkdir(parents=True, exist_ok=True)
    expired = folder / "popseg-prepare-undeletable-by-test-cache-prune"
    _signed_looking(expired, 3 * 3600)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(result_cache.os, "unlink", refuse)
    with caplog.at_level("WARNING", logger=orchestration.logger.name):
        options = orchestration.cache_options(
            OrchestrateConfig(cache_expiration_h=1.0), orchestration.prepare_cache_key
        )
    monkeypatch.undo()
    assert options["persist_result"] is True
    assert f"{folder}: expired cache files not removed" in caplog.text
    assert "Permission denied" in caplog.text
    assert expired.exists()
    expired.unlink()
