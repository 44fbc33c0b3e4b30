"""`python -m tasks.compute.warm` (for an image build or a worker's start) caches every
kernel that the pipeline's workloads call: after it, a first run on the same, otherwise
empty, numba cache compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(args: list[str], cache_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["pipeline", "large"])
def test_after_the_warm_up_a_first_run_compiles_nothing(tmp_path, workload):
    warm = _run(["-m", "tasks.compute.warm"], tmp_path)
    assert "numba kernels cached" in warm.stdout
    assert any(tmp_path.rglob("*.nbc")), "the warm-up wrote no compiled kernel to the cache"
    child = _run(["-m", "benchmarks.compile_time", "--child", workload], tmp_path)
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["compiled"] == 0, report["slowest"]


def test_a_second_warm_up_on_the_same_cache_leaves_it_to_the_first(tmp_path, monkeypatch, capsys):
    """Two warm-ups on one cache (two workers starting together): while one holds the cache's lock
    the next one returns at once instead of compiling the same kernels again."""
    from filelock import FileLock

    from tasks.compute import warm

    lock_file = tmp_path / "popseg-warm.lock"
    monkeypatch.setattr(warm, "_lock_path", lambda: lock_file)
    compiled = []
    monkeypatch.setattr(warm, "warm_kernels", lambda: compiled.append(True))
    with FileLock(lock_file):
        warm.main([])
    assert compiled == []
    assert "another warm-up" in capsys.readouterr().out
    warm.main([])  # the lock is free again: this one warms
    assert compiled == [True]
    assert "numba kernels cached" in capsys.readouterr().out
