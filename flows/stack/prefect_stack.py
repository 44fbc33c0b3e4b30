"""Prefect for the stack: `prefect server` (UI on) with its database in PostgreSQL, the
``popseg`` process work pool, the deployments of the project's prefect.yaml, and a worker
whose flow runs get the stack's environment (MLflow, Prefect, S3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows.prefect_server import _healthy
from flows.stack.processes import Service, service_environment, spawn, wait_ready
from tasks.errors import StackError

# The first start on an empty database runs Prefect's migrations (a minute on a busy machine).
STARTUP_TIMEOUT_S = 300.0
COMMAND_TIMEOUT_S = 300.0
# How often the worker asks for due runs: a triggered run starts within seconds.
WORKER_QUERY_SECONDS = "5"


def _prefect_cli() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def healthy(port: int | None) -> bool:
    return bool(port) and _healthy(api_url(port))


def _base_environment(root: Path) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def check_project(project_dir: Path) -> None:
    """The deployments come from the project's prefect.yaml: checked before anything starts."""
    if not (project_dir / "prefect.yaml").is_file():
        raise StackError(
            f"{project_dir / 'prefect.yaml'}: not found; bring the stack up in the project "
            "folder (the one with prefect.yaml; `popseg serve --write-prefect-yaml` writes it)"
        )


def launch_server(root: Path, port: int, database_url: str) -> Service:
    environment = service_environment(
        {
            **_base_environment(root),
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_UI_ENABLED": "true",
        }
    )
    environment.pop("PREFECT_API_URL", None)
    command = [_prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log = root / "logs" / "prefect-server.log"
    return spawn("prefect_server", command, log, port, environment, root)


def wait_server(service: Service) -> None:
    wait_ready(service, lambda: healthy(service.port), STARTUP_TIMEOUT_S, "Prefect server")


def client_environment(root: Path, port: int) -> dict[str, str]:
    return {**_base_environment(root), "PREFECT_API_URL": api_url(port)}


def create_pool(root: Path, project_dir: Path, pool: str, environment: dict[str, str]) -> None:
    """The process work pool, unless it exists (its data lives in PostgreSQL)."""
    full = _command_environment(environment, project_dir)
    log = root / "logs" / "prefect-deploy.log"
    inspect = _run(["work-pool", "inspect", pool], full, project_dir, log, check=False)
    if inspect != 0:
        _run(["work-pool", "create", pool, "--type", "process"], full, project_dir, log)


def register_deployments(root: Path, project_dir: Path, environment: dict[str, str]) -> None:
    """Every deployment of prefect.yaml (train, retrain, monitor), through Prefect's CLI."""
    full = _command_environment(environment, project_dir)
    log = root / "logs" / "prefect-deploy.log"
    _run(["--no-prompt", "deploy", "--all"], full, project_dir, log)


def _command_environment(environment: dict[str, str], project_dir: Path) -> dict[str, str]:
    # Unlike the services these one-off commands keep popseg's watchdog mark: a `stack up`
    # killed midway takes them with it.
    return {**os.environ, **environment, "POPSEG_PROJECT_DIR": str(project_dir)}


def _run(
    arguments: list[str], environment: dict[str, str], cwd: Path, log: Path, check: bool = True
) -> int:
    command = [_prefect_cli(), *arguments]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        output.write(f"$ prefect {' '.join(arguments)}\n".encode())
        output.flush()
        try:
            result = subprocess.run(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                cwd=cwd,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"`prefect {' '.join(arguments)}` took over {COMMAND_TIMEOUT_S:g} s; see {log}"
            ) from None
    if check and result.returncode != 0:
        raise StackError(
            f"`prefect {' '.join(arguments)}` failed (exit {result.returncode}); see {log}"
        )
    return result.returncode


def launch_worker(root: Path, project_dir: Path, pool: str, environment: dict[str, str]) -> Service:
    command = [
        _prefect_cli(),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        f"popseg-stack-{project_dir.name}",
        "--install-policy",
        "never",
    ]
    full = service_environment(
        {
            **environment,
            "POPSEG_PROJECT_DIR": str(project_dir),
            "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS,
        }
    )
    log = root / "logs" / "prefect-worker.log"
    return spawn("prefect_worker", command, log, None, full, project_dir)


def wait_worker(service: Service) -> None:
    # The worker serves nothing to probe; it says so in its log once it polls the pool.
    log = Path(service.log)
    wait_ready(service, lambda: _worker_started(log), STARTUP_TIMEOUT_S, "Prefect worker")


def _worker_started(log: Path) -> bool:
    try:
        return "started!" in log.read_text(errors="replace")
    except OSError:
        return False
