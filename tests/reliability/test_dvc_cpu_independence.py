"""Issue 13, "tests that only pass on one kind of CPU": the DVC pipeline reproduced under
other OpenBLAS and numba kernels than this session's, as on a teammate's machine with
another instruction set (the lock on main was written with AVX2 OpenBLAS kernels; AVX-512 or
SSE kernels write other bytes for `data/prepared` and `models/chain`).

The contract (tests/dvc_reproduction.py, README "Across machines"): `dvc pull` gives the exact
bytes that were pushed and `dvc repro` then runs nothing; a forced `dvc repro` on the other
CPU keeps every command, param and dep of the lock and agrees on the float outputs by value.
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT
from tests.dvc_reproduction import (
    ROUNDED_REPORTS,
    assert_arrays_agree,
    assert_lock_agrees,
    assert_reports_agree,
    assert_segments_agree,
    clone_project,
    commit_reproduction,
    dvc,
    dvc_tracked_files,
    env,
    run,
)

STAGES = ("ingest", "validate", "prepare", "train")

_KERNEL = (
    "import numpy, threadpoolctl; print(*[i.get('architecture') for i in "
    "threadpoolctl.threadpool_info() if i.get('internal_api') == 'openblas'])"
)


def openblas_kernel(environment: dict[str, str]) -> str:
    """The OpenBLAS kernel numpy loads under this environment (what threadpoolctl reports)."""
    return run([sys.executable, "-c", _KERNEL], ROOT, environment).stdout.strip()


def other_kernels() -> tuple[dict[str, str], str, str]:
    """An environment whose OpenBLAS kernel and numba target both differ from the session's:
    OpenBLAS forced to its SSE3 kernels (or, if the session already runs those, left to
    detect the CPU), numba compiling for a generic x86-64 (or for the host, if the session
    already targets generic). Only kernels every x86-64 can execute."""
    session = env()
    session_kernel = openblas_kernel(session)
    for coretype in ("Prescott", None, "Core2"):
        trial = env()
        trial.pop("OPENBLAS_CORETYPE", None)
        trial.pop("NUMBA_CPU_FEATURES", None)
        if coretype:
            trial["OPENBLAS_CORETYPE"] = coretype
        if session.get("NUMBA_CPU_NAME") == "generic":
            trial.pop("NUMBA_CPU_NAME")
        else:
            trial["NUMBA_CPU_NAME"] = "generic"
        kernel = openblas_kernel(trial)
        if kernel and kernel != session_kernel:
            return trial, session_kernel, kernel
    raise AssertionError(f"no OpenBLAS kernel other than the session's ({session_kernel})")


@pytest.mark.slow
def test_another_cpu_pulls_the_exact_bytes_and_reproduces_the_lock_by_value(tmp_path):
    """~3 min: two full reproductions (and a numba compile for the other target, once)."""
    # Machine A (this session's kernels): repro, commit, push.
    first = clone_project(tmp_path / "a" / "popseg")
    committed_lock = (first / "dvc.lock").read_text()
    dvc("repro", cwd=first)
    assert_lock_agrees((first / "dvc.lock").read_text(), committed_lock)
    commit_reproduction(first, "reproduced on A")
    dvc("push", cwd=first)

    other, session_kernel, other_kernel = other_kernels()
    assert other_kernel != session_kernel
    assert other.get("NUMBA_CPU_NAME") != env().get("NUMBA_CPU_NAME")

    # Machine B (other kernels): a clone pulls exactly what A pushed; nothing reruns.
    second = tmp_path / "b" / "popseg"
    second.parent.mkdir()
    run(["git", "clone", "-q", str(first), str(second)], second.parent)
    remote = (first.parent / "popseg-dvc-remote").resolve()
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=second)
    dvc("pull", cwd=second, environment=other)
    pushed = dvc_tracked_files(first)
    assert "data/prepared/prepared.npz" in pushed and "models/chain/chain.npz" in pushed
    for name in pushed:
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    assert "Data and pipelines are up to date." in dvc("status", cwd=second).stdout
    unchanged = dvc("repro", cwd=second, environment=other).stdout
    assert "Running stage" not in unchanged
    assert "Data and pipelines are up to date." in unchanged

    # B recomputes everything with its own kernels: the same lock but for the float
    # outputs' hashes, and those outputs agree with A's by value.
    forced = dvc("repro", "-f", cwd=second, environment=other).stdout
    for stage in STAGES:
        assert f"Running stage '{stage}'" in forced
    assert_lock_agrees((second / "dvc.lock").read_text(), (first / "dvc.lock").read_text())
    assert_arrays_agree(first, second)
    assert_segments_agree(first, second)
    assert_reports_agree(
        {path: (second / path).read_text() for path in ROUNDED_REPORTS},
        {path: (first / path).read_text() for path in ROUNDED_REPORTS},
    )
    images = sorted(p.name for p in (first / "plots" / "images").iterdir())
    assert sorted(p.name for p in (second / "plots" / "images").iterdir()) == images
    assert "Data and pipelines are up to date." in dvc("status", cwd=second).stdout


def test_lock_comparison_ignores_only_the_float_outputs_hashes():
    """Cheap guard of the rule above on the committed lock itself: a changed code dep or
    param is stale, a changed hash of data/prepared or models/chain is not."""
    lock = (ROOT / "dvc.lock").read_text()
    import yaml

    parsed = yaml.safe_load(lock)
    prepared_md5 = parsed["stages"]["prepare"]["outs"][0]["md5"]
    chain = next(o for o in parsed["stages"]["train"]["outs"] if o["path"] == "models/chain")
    other_cpu = lock.replace(prepared_md5, "0" * 32 + ".dir").replace(
        chain["md5"], "1" * 32 + ".dir"
    )
    assert other_cpu != lock
    assert_lock_agrees(other_cpu, lock)
    ingest_code = parsed["stages"]["ingest"]["deps"][0]["md5"]
    with pytest.raises(AssertionError, match="stale at stage 'ingest'"):
        assert_lock_agrees(lock.replace(ingest_code, "2" * 32), lock)
    with pytest.raises(AssertionError, match="stale at stage 'train'"):
        assert_lock_agrees(lock.replace("k_max: 12", "k_max: 13"), lock)
    raw_md5 = parsed["stages"]["ingest"]["outs"][0]["md5"]
    with pytest.raises(AssertionError, match="stale at stage"):
        assert_lock_agrees(lock.replace(raw_md5, "3" * 32 + ".dir"), lock)


def test_values_outside_the_tolerance_are_caught(tmp_path):
    """The by-value comparison is not vacuous: one array entry moved by 1e-6 of its scale,
    or one row moved to another segment, fails."""
    import numpy as np

    from tests.dvc_reproduction import ARRAY_TOLERANCE

    assert ARRAY_TOLERANCE < 1e-6
    first, second = tmp_path / "a", tmp_path / "b"
    rng = np.random.default_rng(0)
    reduced = np.concatenate([rng.normal(-3, 0.3, (10, 2)), rng.normal(3, 0.3, (10, 2))])
    centroids = np.array([[-3.0, 0.0], [3.0, 0.0]])
    for project, shift in ((first, 0.0), (second, 0.0)):
        (project / "data/prepared").mkdir(parents=True)
        (project / "models/chain").mkdir(parents=True)
        np.savez(project / "data/prepared/prepared.npz", reduced_values=reduced + shift)
        np.savez(
            project / "models/chain/chain.npz",
            centroids=centroids,
            segment_ids=np.array([0, 1]),
        )
        (project / "data/prepared/prepared.json").write_text('{"explained": 0.5}')
        (project / "models/chain/chain.json").write_text('{"k": 2}')
    assert_arrays_agree(first, second)
    assert_segments_agree(first, second)

    nudged = reduced.copy()
    nudged[0, 0] += 1e-13  # what another kernel does: within the tolerance
    np.savez(second / "data/prepared/prepared.npz", reduced_values=nudged)
    assert_arrays_agree(first, second)
    nudged[0, 0] += 3e-6  # a real change of the data
    np.savez(second / "data/prepared/prepared.npz", reduced_values=nudged)
    with pytest.raises(AssertionError, match="reduced_values: differs by"):
        assert_arrays_agree(first, second)
    moved = reduced.copy()
    moved[0] = [3.0, 0.0]
    np.savez(second / "data/prepared/prepared.npz", reduced_values=moved)
    with pytest.raises(AssertionError, match=r"rows \[0\] changed segment"):
        assert_segments_agree(first, second)
    np.savez(second / "data/prepared/prepared.npz", reduced_values=reduced)
    (second / "models/chain/chain.json").write_text('{"k": 3}')
    with pytest.raises(AssertionError, match="chain.json.k: 2 != 3"):
        assert_arrays_agree(first, second)
