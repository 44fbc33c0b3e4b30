"""The team stack for the `team` tests: brought up once per session by `popseg stack up` in a
folder of its own (prefect.yaml, params.yaml, the flows), stopped by `popseg stack down` at the
end; and project checkouts that reach it through the environment alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
POPSEG = str(Path(sys.executable).with_name("popseg"))
# What a user's shell may carry that would point the stack or a checkout elsewhere.
FOREIGN = ("MLFLOW_", "PREFECT_API", "AWS_", "POPSEG_OWNER")


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}


def popseg(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    return subprocess.run(
        [POPSEG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def team_stack():
    # Not under pytest's 0700 basetemp: PostgreSQL runs as user `postgres` when we are root,
    # and must reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="popseg-team-"))
    folder.chmod(0o755)
    shutil.copy(ROOT / "prefect.yaml", folder / "prefect.yaml")
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    # The deployments' entrypoints are files (flows/schedules.py) relative to the project.
    (folder / "flows").symlink_to(ROOT / "flows")
    env = clean_environment()
    started = time.monotonic()
    result = popseg(["stack", "up", "--json"], folder, env)
    seconds = time.monotonic() - started
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        payload = json.loads(result.stdout)
        payload["up_seconds"] = seconds
        yield {"dir": folder, "payload": payload, "env": {**env, **payload["environment"]}}
    finally:
        popseg(["stack", "down"], folder, env)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def checkout(tmp_path_factory):
    """A new project checkout (params.yaml and a data file, no local store) whose popseg
    reaches the stack only through MLFLOW_TRACKING_URI, PREFECT_API_URL and the AWS
    variables. Called to make one."""

    def make() -> Path:
        folder = tmp_path_factory.mktemp("checkout")
        shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
        rng = np.random.default_rng(3)
        values = np.vstack([rng.normal(0, 1, (40, 3)), rng.normal(8, 1, (40, 3))])
        frame = pd.DataFrame(values, columns=["alpha", "beta", "gamma"])
        frame.insert(0, "name", [f"item-{i}" for i in range(80)])
        frame.to_csv(folder / "data.csv", index=False)
        return folder

    return make
