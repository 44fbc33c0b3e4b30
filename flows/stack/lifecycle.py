"""`popseg stack up|status|down`: the stack's components brought up in order (PostgreSQL, S3,
MLflow, Prefect server, work pool and deployments, worker), each reused when it still runs and
answers, restarted when it died, and stopped in reverse order by `down`. A file lock keeps two
`up`/`down` in the same folder from racing."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.stack import mlflow_server, postgres, prefect_stack, s3
from flows.stack.processes import (
    Service,
    StackState,
    claim_port,
    load_state,
    save_state,
    stack_dir,
    stop,
)
from tasks.errors import StackError
from tasks.extras import require

ORDER = ("postgres", "s3", "mlflow", "prefect_server", "prefect_worker")
WORK_POOL = "popseg"
DEFAULT_BUCKET = "popseg-artifacts"
ARTIFACT_PREFIX = "mlflow"
LOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Ports:
    """Wanted ports (0: keep the recorded one, else any free one)."""

    postgres: int = 0
    mlflow: int = 0
    prefect: int = 0


@contextlib.contextmanager
def _stack_lock(project_dir: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    folder = stack_dir(project_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(folder / "stack.lock"), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise StackError(f"{folder}: another `popseg stack` command holds the lock") from None


def _port(wanted: int, recorded: Service | None, name: str) -> int:
    if wanted:  # checked before anything started; claimed again now it is needed
        return claim_port(name, wanted)
    if recorded is not None and recorded.port:
        return claim_port(name, recorded.port)  # the URLs users exported stay valid
    return claim_port(name, 0)


def _check_wanted_ports(state: StackState, ports: Ports) -> None:
    """Before anything starts: a wanted port that is busy, and not by our own running
    service, is an error naming it."""
    for name, port, service in (
        ("postgres", ports.postgres, "postgres"),
        ("mlflow", ports.mlflow, "mlflow"),
        ("prefect", ports.prefect, "prefect_server"),
    ):
        recorded = state.services.get(service)
        if port and not (recorded and recorded.port == port and recorded.running()):
            claim_port(name, port)


def up(
    project_dir: Path,
    ports: Ports = Ports(),
    bucket: str = DEFAULT_BUCKET,
    notify: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Bring the stack up (idempotent) and return what `stack up --json` prints."""
    project_dir = project_dir.resolve()
    root = stack_dir(project_dir)
    with _stack_lock(project_dir):
        state = load_state(project_dir) or StackState(str(project_dir))
        _check_wanted_ports(state, ports)
        # The MLflow server's PostgreSQL driver and the bucket's S3 client are extras.
        require("team", "popseg stack up")
        require("aws", "popseg stack up")
        for name in ("initdb", "postgres"):
            postgres.binary(name)
        prefect_stack.check_project(project_dir)
        settings = state.settings
        settings.setdefault("bucket", bucket)
        started: list[str] = []

        def keep_or_start(name: str, is_healthy: Callable[[Service], bool], start) -> Service:
            recorded = state.services.get(name)
            if recorded is not None and recorded.running() and is_healthy(recorded):
                return recorded
            if recorded is not None:
                stop(recorded)  # what is left of a dead or unanswering one
            service = start(recorded)
            state.services[name] = service
            save_state(state)  # at once: a `down` after an interrupted `up` finds it
            started.append(name)
            notify(f"started {name} (pid {service.pid}); log {service.log}")
            return service

        postgres.initialise(root)
        database = keep_or_start(
            "postgres",
            lambda s: postgres.healthy(root, s.port),
            lambda old: postgres.start(root, _port(ports.postgres, old, "postgres")),
        )
        postgres.create_databases(root, database.port)

        recorded_moto = state.services.get("s3")
        configured_by = s3.configured(
            f"http://127.0.0.1:{recorded_moto.port}" if recorded_moto else None
        )
        if configured_by:
            if (old := state.services.pop("s3", None)) is not None:
                stop(old)  # the AWS variables now name a store: moto is not needed
            endpoint_url = None
            s3_endpoint = _configured_endpoint()
        else:
            moto = keep_or_start(
                "s3",
                lambda s: s3.moto_answers(s.port),
                lambda old: s3.start_moto(root, _port(0, old, "s3")),
            )
            endpoint_url = s3_endpoint = f"http://127.0.0.1:{moto.port}"
        s3.ensure_bucket(settings["bucket"], endpoint_url)
        artifact_destination = f"s3://{settings['bucket']}/{ARTIFACT_PREFIX}"
        s3_environment = s3.client_environment(endpoint_url)

        # The two servers start side by side: each spends its first minute importing and,
        # on an empty database, migrating.
        backend = postgres.url(root, database.port, "mlflow", "psycopg")
        tracking = keep_or_start(
            "mlflow",
            lambda s: mlflow_server.healthy(s.port),
            lambda old: mlflow_server.launch(
                root,
                _port(ports.mlflow, old, "mlflow"),
                backend,
                artifact_destination,
                s3_environment,
            ),
        )
        server = keep_or_start(
            "prefect_server",
            lambda s: prefect_stack.healthy(s.port),
            lambda old: prefect_stack.launch_server(
                root,
                _port(ports.prefect, old, "prefect"),
                postgres.url(root, database.port, "prefect", "asyncpg"),
            ),
        )
        if "mlflow" in started:
            mlflow_server.wait(tracking)
        if "prefect_server" in started:
            prefect_stack.wait_server(server)
        tracking_uri = f"http://127.0.0.1:{tracking.port}"
        client_environment = {
            **prefect_stack.client_environment(root, server.port),
            "MLFLOW_TRACKING_URI": tracking_uri,
            **s3_environment,
        }
        deploy = "prefect_server" in started or not settings.get("deployments_registered")
        if deploy:
            prefect_stack.create_pool(root, project_dir, WORK_POOL, client_environment)
        # A worker whose flow runs would get other URLs (a part came back on another port) is
        # restarted; one whose URLs still hold keeps running, and so do its flow runs.
        if settings.get("worker_environment") != client_environment:
            if (old_worker := state.services.pop("prefect_worker", None)) is not None:
                stop(old_worker)
            settings["worker_environment"] = client_environment
        worker = keep_or_start(
            "prefect_worker",
            lambda s: True,
            lambda old: prefect_stack.launch_worker(
                root, project_dir, WORK_POOL, client_environment
            ),
        )
        if deploy:  # while the worker starts
            prefect_stack.register_deployments(root, project_dir, client_environment)
            settings["deployments_registered"] = True
            save_state(state)
        if "prefect_worker" in started:
            prefect_stack.wait_worker(worker)
        settings.update(
            {
                "tracking_uri": tracking_uri,
                "prefect_api_url": prefect_stack.api_url(server.port),
                "s3_endpoint_url": s3_endpoint,
                "s3": f"configured ({configured_by})" if configured_by else "moto",
                "backend_store_uri": postgres.url(
                    root, database.port, "mlflow", "psycopg", masked=True
                ),
                "prefect_database_url": postgres.url(
                    root, database.port, "prefect", "asyncpg", masked=True
                ),
                "artifact_destination": artifact_destination,
                "client_environment": {
                    "MLFLOW_TRACKING_URI": tracking_uri,
                    "PREFECT_API_URL": prefect_stack.api_url(server.port),
                    **s3_environment,
                },
            }
        )
        save_state(state)
        return {**describe(state), "started": started}


def _configured_endpoint() -> str | None:
    import os

    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def describe(state: StackState) -> dict[str, Any]:
    settings = state.settings
    root = stack_dir(Path(state.project_dir))
    return {
        "project_dir": state.project_dir,
        "tracking_uri": settings.get("tracking_uri"),
        "prefect_api_url": settings.get("prefect_api_url"),
        "prefect_ui_url": (settings.get("prefect_api_url") or "").removesuffix("/api") or None,
        "s3_endpoint_url": settings.get("s3_endpoint_url"),
        "s3": settings.get("s3"),
        "backend_store_uri": settings.get("backend_store_uri"),
        "prefect_database_url": settings.get("prefect_database_url"),
        "artifact_destination": settings.get("artifact_destination"),
        "postgres_password_file": str(postgres.paths(root)["password"]),
        "environment": settings.get("client_environment", {}),
        "pids": {name: s.pid for name, s in state.services.items()},
        "ports": {name: s.port for name, s in state.services.items() if s.port},
        "logs": {name: s.log for name, s in state.services.items()},
    }


def status(project_dir: Path) -> dict[str, Any]:
    """Each component: running (the recorded process), healthy (it answers)."""
    project_dir = project_dir.resolve()
    state = load_state(project_dir)
    if state is None:
        return {"project_dir": str(project_dir), "up": False, "components": {}}
    root = stack_dir(project_dir)
    probes: dict[str, Callable[[Service], bool]] = {
        "postgres": lambda s: postgres.healthy(root, s.port),
        "s3": lambda s: s3.moto_answers(s.port),
        "mlflow": lambda s: mlflow_server.healthy(s.port),
        "prefect_server": lambda s: prefect_stack.healthy(s.port),
        "prefect_worker": lambda s: True,
    }
    components = {}
    for name in ORDER:
        service = state.services.get(name)
        if service is None:
            continue
        running = service.running()
        components[name] = {
            "pid": service.pid,
            "port": service.port,
            "running": running,
            "healthy": running and probes[name](service),
            "log": service.log,
        }
    up_now = bool(components) and all(c["healthy"] for c in components.values())
    return {**describe(state), "up": up_now, "components": components}


def down(project_dir: Path, notify: Callable[[str], None] = lambda line: None) -> list[str]:
    """Stop what `up` started, newest first; returns the names stopped. The data (PostgreSQL's
    cluster, logs) stays for the next `up`."""
    project_dir = project_dir.resolve()
    with _stack_lock(project_dir):
        state = load_state(project_dir)
        if state is None:
            return []
        stopped = []
        for name in reversed(ORDER):
            service = state.services.get(name)
            if service is None:
                continue
            # PostgreSQL: SIGINT is its "fast" shutdown (SIGTERM waits for clients to leave).
            first = signal.SIGINT if name == "postgres" else signal.SIGTERM
            if stop(service, first):
                stopped.append(name)
                notify(f"stopped {name} (pid {service.pid})")
            del state.services[name]
            save_state(state)
        state.settings.pop("deployments_registered", None)
        save_state(state)
        return stopped


def environment_lines(state_or_payload: dict[str, Any]) -> list[str]:
    """``export NAME=value`` lines for a shell."""
    import shlex

    environment = state_or_payload.get("environment") or {}
    return [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]
