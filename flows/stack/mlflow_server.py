"""`mlflow server` for the stack: runs and registry in PostgreSQL, artifacts proxied by the
server to S3 (``--serve-artifacts``), so clients need only ``MLFLOW_TRACKING_URI``."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from flows.stack.processes import Service, service_environment, spawn, wait_ready

# The first start on an empty database runs MLflow's migrations.
STARTUP_TIMEOUT_S = 240.0
# One uvicorn process (its thread pool serves concurrent clients): more start a supervisor
# that, on a loaded machine, kills workers still importing MLflow.
WORKERS = "1"


def healthy(port: int | None) -> bool:
    if not port:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def launch(
    root: Path,
    port: int,
    backend_store_uri: str,
    artifact_destination: str,
    s3_environment: dict[str, str],
) -> Service:
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    command = [
        mlflow_cli,
        "server",
        "--artifacts-destination",
        artifact_destination,
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        WORKERS,
    ]
    environment = service_environment(
        {
            **s3_environment,
            # In the environment, not the command line: `ps` shows no database password.
            "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
            # The server's job runner (GenAI evaluation jobs) is unused here: six processes less.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
    )
    environment.pop("MLFLOW_TRACKING_URI", None)
    log = root / "logs" / "mlflow.log"
    return spawn("mlflow", command, log, port, environment, root)


def wait(service: Service) -> None:
    wait_ready(service, lambda: healthy(service.port), STARTUP_TIMEOUT_S, "MLflow server")
