"""Running the DVC pipeline in a throw-away clone, and what two runs of it must agree on.

DVC compares bytes. The stages that compute with floating point write bytes that depend on
the CPU: OpenBLAS (PCA in `prepare`) and numba (the k-means sweep in `train`) pick their
kernels by instruction set (SSE, AVX2, AVX-512), and a different kernel sums in a different
order, so the last bits of a float differ and so do the files' md5. What holds on any
x86-64 machine, and what the tests assert:

- exactly: every stage's command, its params, its deps that are code, raw data or the
  validation report, and the outputs computed without floats (`data/raw`, the validation
  report and metrics);
- by value: the outputs of `prepare` and `train` (arrays within `ARRAY_TOLERANCE` of the
  array's scale, the 6-decimal metrics and plot series within one unit of their last
  decimal, segment ids and sizes equal, each row's segment equal unless it is a near-tie).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent

# Stages whose outputs are compared by value: they compute through BLAS and numba kernels.
FLOAT_STAGES = ("prepare", "train")
# The outputs of those stages that git keeps (dvc.yaml: cache: false), rounded to 6 decimals.
ROUNDED_REPORTS = (
    "metrics/train.json",
    "plots/sweep_metrics.csv",
    "plots/pca_variance.csv",
    "plots/segment_sizes.csv",
)
# Measured between OpenBLAS Haswell / SkylakeX / Prescott kernels and numba znver5 / generic
# on the crime data: at most 4e-15 on values up to 3.4 (5e-13 relative on entries near 0).
# 1e-9 of the array's scale leaves five orders of magnitude for other kernels and is still a
# billionth of a standard deviation of the standardized data: a change of method or data
# moves these values by far more (and shows in the lock's deps and params anyway).
ARRAY_TOLERANCE = 1e-9
# One unit in the 6th decimal (the rounding can flip there) plus float slack.
ROUNDED_TOLERANCE = 1.5e-6
# Squared-distance gap below which a row's nearest centroid is a tie within numerical noise:
# such a row may land in either segment on another CPU. The crime data's smallest gap is 0.13.
NEAR_TIE = 1e-6
MAX_NEAR_TIE_SHARE = 0.01


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = dict(os.environ)
    # The clone's own sqlite store (./mlflow.db), not the test session's.
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.update(
        {
            "PATH": f"{BIN}{os.pathsep}{environment.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "popseg tests",
            "GIT_AUTHOR_EMAIL": "tests@popseg.invalid",
            "GIT_COMMITTER_NAME": "popseg tests",
            "GIT_COMMITTER_EMAIL": "tests@popseg.invalid",
        }
    )
    environment.update(extra or {})
    return environment


def run(args: list[str], cwd: Path, environment: dict[str, str] | None = None, check=True):
    result = subprocess.run(
        args, cwd=cwd, env=environment or env(), capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return result


def dvc(*args: str, cwd: Path, environment: dict[str, str] | None = None, check: bool = True):
    return run([sys.executable, "-m", "dvc", *args], cwd, environment, check)


def clone_project(destination: Path) -> Path:
    """The project's files as git sees them (tracked + new, not ignored), committed in a new
    repository: what a fresh `git clone` of main holds."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    run(["git", "init", "-q", "-b", "main"], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "commit", "-q", "-m", "clone"], destination)
    return destination


def commit_reproduction(project: Path, message: str) -> str:
    """What the README asks after a `dvc repro`: commit dvc.lock and the git-kept outputs."""
    run(["git", "add", "dvc.lock", "metrics", "plots", "reports"], project)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], project)
    return run(["git", "rev-parse", "HEAD"], project).stdout.strip()


def committed_text(project: Path, commit: str, path: str) -> str:
    return run(["git", "show", f"{commit}:{path}"], project).stdout


def dvc_tracked_files(project: Path) -> list[str]:
    """The files behind the lock's cached outputs (data/raw, data/prepared, models/chain)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    folders = [
        out["path"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["md5"].endswith(".dir") and not out["path"].startswith("plots/")
    ]
    return sorted(
        path.relative_to(project).as_posix()
        for folder in folders
        for path in (project / folder).rglob("*")
        if path.is_file()
    )


# --------------------------------------------------------------------------- the lock


def float_outputs(lock: dict[str, Any]) -> set[str]:
    return {
        out["path"] for name in FLOAT_STAGES for out in lock["stages"].get(name, {}).get("outs", [])
    }


def machine_independent_lock(lock_text: str) -> dict[str, Any]:
    """dvc.lock without what depends on the CPU: the hash and size of `prepare`'s and
    `train`'s outputs, wherever they appear (as outs, and as a later stage's deps)."""
    lock = yaml.safe_load(lock_text)
    by_value = float_outputs(lock)
    view = copy.deepcopy(lock)
    for stage in view["stages"].values():
        for key in ("deps", "outs"):
            for entry in stage.get(key, []):
                if entry["path"] in by_value:
                    entry.pop("md5", None)
                    entry.pop("size", None)
    return view


def assert_lock_agrees(reproduced_text: str, committed_text_: str) -> None:
    reproduced = machine_independent_lock(reproduced_text)
    committed = machine_independent_lock(committed_text_)
    for name in sorted(set(reproduced["stages"]) | set(committed["stages"])):
        assert reproduced["stages"].get(name) == committed["stages"].get(name), (
            f"dvc.lock is stale at stage '{name}' (its code, params or data changed): run "
            "`uv run dvc repro` and commit dvc.lock, metrics/ and plots/\n"
            f"reproduced: {reproduced['stages'].get(name)}\n"
            f"committed:  {committed['stages'].get(name)}"
        )
    assert reproduced == committed


# --------------------------------------------------------------------------- values


def assert_reports_agree(reproduced: dict[str, str], committed: dict[str, str]) -> None:
    """metrics/train.json and plots/*.csv (texts by path): integers and names equal, floats
    within one unit of their 6th decimal."""
    assert set(reproduced) == set(committed)
    for path in sorted(committed):
        if path.endswith(".json"):
            _assert_close(
                json.loads(reproduced[path]), json.loads(committed[path]), ROUNDED_TOLERANCE, path
            )
            continue
        new = pd.read_csv(io.StringIO(reproduced[path]))
        old = pd.read_csv(io.StringIO(committed[path]))
        assert list(new.columns) == list(old.columns), path
        assert len(new) == len(old), path
        for column in old.columns:
            if old[column].dtype.kind == "f":
                assert np.allclose(
                    new[column], old[column], rtol=0, atol=ROUNDED_TOLERANCE, equal_nan=True
                ), f"{path}:{column}: {new[column].tolist()} != {old[column].tolist()}"
            else:
                assert new[column].tolist() == old[column].tolist(), f"{path}:{column}"


def assert_arrays_agree(first: Path, second: Path) -> None:
    """Two projects' data/prepared and models/chain: every float array within
    ARRAY_TOLERANCE of its scale, every other array and JSON field equal."""
    for npz in ("data/prepared/prepared.npz", "models/chain/chain.npz"):
        with np.load(first / npz) as a, np.load(second / npz) as b:
            assert a.files == b.files, npz
            for name in a.files:
                x, y = a[name], b[name]
                where = f"{npz}:{name}"
                assert x.shape == y.shape and x.dtype == y.dtype, where
                if x.dtype.kind != "f":
                    assert np.array_equal(x, y), where
                    continue
                finite = np.abs(x[np.isfinite(x)])
                tolerance = ARRAY_TOLERANCE * max(1.0, float(finite.max(initial=0.0)))
                assert np.array_equal(np.isfinite(x), np.isfinite(y)), where
                assert np.allclose(x, y, rtol=0, atol=tolerance, equal_nan=True), (
                    f"{where}: differs by {np.nanmax(np.abs(x - y)):.3g} > {tolerance:.3g}"
                )
    for document in ("data/prepared/prepared.json", "models/chain/chain.json"):
        _assert_close(
            json.loads((first / document).read_text()),
            json.loads((second / document).read_text()),
            ARRAY_TOLERANCE,
            document,
        )


def segments(project: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each training row's segment (the chain's nearest centroid, in model space) and its
    margin: the squared-distance gap to the second-nearest centroid."""
    with np.load(project / "data/prepared/prepared.npz") as prepared:
        reduced = prepared["reduced_values"]
    with np.load(project / "models/chain/chain.npz") as chain:
        centroids, segment_ids = chain["centroids"], chain["segment_ids"]
    squared = ((reduced[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    nearest = np.sort(squared, axis=1)
    return segment_ids[squared.argmin(axis=1)], nearest[:, 1] - nearest[:, 0]


def assert_segments_agree(first: Path, second: Path) -> None:
    """The same segment for every row that is not a near-tie; near-ties at most 1%."""
    labels_a, margin_a = segments(first)
    labels_b, margin_b = segments(second)
    near_tie = (margin_a < NEAR_TIE) | (margin_b < NEAR_TIE)
    assert near_tie.mean() <= MAX_NEAR_TIE_SHARE, f"{near_tie.sum()} near-tie rows"
    moved = np.flatnonzero((labels_a != labels_b) & ~near_tie)
    assert moved.size == 0, f"rows {moved.tolist()} changed segment"


def _assert_close(new: Any, old: Any, tolerance: float, where: str) -> None:
    if isinstance(old, float) or isinstance(new, float):
        assert isinstance(new, int | float) and isinstance(old, int | float), where
        assert math.isclose(new, old, rel_tol=tolerance, abs_tol=tolerance) or (
            math.isnan(new) and math.isnan(old)
        ), f"{where}: {new} != {old}"
    elif isinstance(old, dict):
        assert isinstance(new, dict) and set(new) == set(old), f"{where}: keys differ"
        for key in old:
            _assert_close(new[key], old[key], tolerance, f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), f"{where}: lengths differ"
        for index, (a, b) in enumerate(zip(new, old, strict=True)):
            _assert_close(a, b, tolerance, f"{where}[{index}]")
    else:
        assert new == old, f"{where}: {new!r} != {old!r}"
