"""The minimal install (slow): popseg from this checkout in a fresh venv without any extra, at
the locked versions (`uv export` of the lock without extras, then `uv pip install` of the
project), trains on the bundled crime data, registers, promotes and serves the champion on a
local endpoint; none of the extras' packages is there, and a command needing one says which
extra to install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TRAIN_FAST
from tests.e2e.test_without_extras import REFUSED, _env


def _run(args: list, cwd: Path, timeout: int, env: dict[str, str] | None = None):
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_minimal_install_trains_and_serves(tmp_path):
    # `uv run` (make test) names its own binary in UV; else the one on PATH.
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv runs the development environment (make setup installs it)"
    venv = tmp_path / "venv"
    requirements = tmp_path / "requirements.txt"
    export = ["export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-o"]
    _run([uv, *export, requirements], ROOT, 120)
    _run([uv, "venv", "--quiet", "--python", sys.executable, venv], tmp_path, 120)
    python = venv / "bin" / "python"
    _run([uv, "pip", "install", "--python", python, "-r", requirements, ROOT], tmp_path, 1500)

    installed = _run(
        [
            python,
            "-c",
            f"import importlib.util as u; print([m for m in {REFUSED!r} if u.find_spec(m)])",
        ],
        tmp_path,
        60,
    )
    assert installed.stdout.strip() == "[]"

    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    popseg = venv / "bin" / "popseg"
    # A fresh venv has no bytecode yet: the first run compiles what it imports.
    args = ["run", *[f"--set={s}" for s in TRAIN_FAST], "--json"]
    run = _run([popseg, *args], project, 1200, _env(project))
    outcome = json.loads(run.stdout)
    assert outcome["model_version"] == "1" and outcome["promoted"] is True
    endpoint = outcome["endpoint"]
    assert endpoint["deployed"] and endpoint["smoke_test"]["passed"] and endpoint["stopped"]
    assert len(endpoint["sample"]) == 5

    dask = subprocess.run(
        [popseg, "score", "--data", "data/raw/crime.csv", "--output", "s.csv", "--engine", "dask"],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dask.returncode == 15
    assert dask.stderr.strip().splitlines()[-1] == (
        "error: popseg score --engine dask needs the 'dask' extra: pip install 'popseg[dask]'"
    )
    size = subprocess.run(["du", "-sh", venv], capture_output=True, text=True).stdout.split()[0]
    print(f"minimal install: {size} in {venv}")
