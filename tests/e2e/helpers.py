"""Running `popseg` the two ways the e2e tests need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app


def invoke(*args: str):
    """In-process, on the session's Prefect test server (fast; for many cases)."""
    return CliRunner().invoke(app, list(args))


def run_popseg(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """A fresh `popseg` process as a user starts it: its own ephemeral Prefect server (no
    test-server variables), the project's MLflow store in `cwd`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_HOME"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    command = [str(Path(sys.executable).with_name("popseg")), *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
