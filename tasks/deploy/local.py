"""The ``local`` deploy target: a background HTTP server process on 127.0.0.1
(``tasks/serving/server.py``) serving exactly the model package SageMaker would receive.

Each endpoint is recorded in ``.popseg/endpoints/NAME.json`` (pid, port, version, deploy
history) so any shell can list, update, roll back or stop it; one deploy/undeploy of a name
runs at a time (a file lock). Deploying to a running endpoint swaps the model in the live
process (admin reload, atomic), smoke-tests it and swaps back on failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.chain import SegmentationChain
from tasks.deploy.contract import (
    ENDPOINT_NAME,
    BaseTarget,
    DeployResult,
    EndpointDescription,
    Release,
    check_predictions,
    invoke,
    invoke_rows,
    refuse_contract_change,
    rows_to_csv,
    smoke_sample,
    validate_endpoint_name,
)
from tasks.deploy.http_runtime import HttpRuntimeClient
from tasks.errors import DeployError, EndpointError, PopsegError
from tasks.package import RegisteredChain, build_package, unpack_package

logger = logging.getLogger(__name__)

STATE_DIR = Path(".popseg") / "endpoints"
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LocalEndpoint:
    """The state file of one local endpoint."""

    name: str
    pid: int
    port: int
    model_name: str
    model_version: str
    run_id: str
    model_dir: str
    token: str
    capture: str | None = None
    log: str | None = None
    started_at: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    target: str = "local"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def public(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.pop("token")
        payload["endpoint_url"] = self.url
        return payload


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the local server (``deploy`` section of params.yaml)."""

    max_body_mb: float = 6.0
    max_connections: int = 32
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 10.0
    capture_max_mb: float = 16.0
    capture_keep: int = 4

    @classmethod
    def from_config(cls, config: Any) -> ServerLimits:
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})

    def arguments(self) -> list[str]:
        return [
            "--max-body-bytes",
            str(int(self.max_body_mb * 1024 * 1024)),
            "--max-connections",
            str(self.max_connections),
            "--request-timeout-s",
            str(self.request_timeout_s),
            "--idle-timeout-s",
            str(self.idle_timeout_s),
            "--capture-max-bytes",
            str(max(1, int(self.capture_max_mb * 1024 * 1024))),
            "--capture-keep",
            str(self.capture_keep),
        ]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def state_dir(project: Path | None = None) -> Path:
    return (project or Path.cwd()) / STATE_DIR


def _state_path(name: str, project: Path | None = None) -> Path:
    return state_dir(project) / f"{validate_endpoint_name(name)}.json"


@contextlib.contextmanager
def endpoint_lock(name: str, project: Path | None = None, timeout_s: float = 600.0):
    """One deploy/undeploy of endpoint ``name`` at a time, across processes: read state ->
    start or swap -> write state is one step, so two at once end with one tracked server."""
    from filelock import FileLock, Timeout

    path = state_dir(project) / f"{validate_endpoint_name(name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise DeployError(
            f"local endpoint {name!r}: another deploy has held {path} for over {timeout_s:g} s; "
            "nothing was changed"
        ) from None
    try:
        yield path
    finally:
        lock.release()


def read_state(name: str, project: Path | None = None) -> LocalEndpoint | None:
    path = _state_path(name, project)
    if not path.exists():
        return None
    try:
        return LocalEndpoint(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise EndpointError(f"{path}: unreadable endpoint state ({error}); delete it") from None


def write_state(state: LocalEndpoint, project: Path | None = None) -> Path:
    path = _state_path(state.name, project)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".json.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the token
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(state), handle, indent=2)
    os.replace(scratch, path)
    return path


# ----------------------------------------------------------------------------- processes


def _pid_is_server(pid: int, name: str) -> bool:
    """True when ``pid`` is alive and is the endpoint server for ``name`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return b"tasks.serving.server" in args and name.encode() in args
    return True


def ping(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=timeout) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return None


def endpoint_status(state: LocalEndpoint) -> str:
    """running | unhealthy (process up, /ping not answering for this name) | stale (gone)."""
    if not _pid_is_server(state.pid, state.name):
        return "stale"
    answer = ping(state.url)
    if answer and answer.get("endpoint") == state.name:
        return "running"
    return "unhealthy"


def _stop_process(pid: int, name: str, timeout: float = 15.0) -> None:
    if not _pid_is_server(pid, name):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_is_server(pid, name):
            return
        with contextlib.suppress(ChildProcessError):  # reap it when it is our own child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _start_server(
    name: str,
    model_dir: Path,
    version: str,
    port: int,
    capture: str | None,
    limits: ServerLimits,
    token: str,
    log_path: Path,
    timeout: float,
) -> tuple[int, int]:
    ready = model_dir.parent / f"ready-{secrets.token_hex(4)}.json"
    command = [
        sys.executable,
        "-m",
        "tasks.serving.server",
        "--name",
        name,
        "--model-dir",
        str(model_dir),
        "--model-version",
        version,
        "--port",
        str(port),
        "--ready-file",
        str(ready),
        *limits.arguments(),
    ]
    if capture:
        command += ["--capture", str(Path(capture).resolve())]
    env = {**os.environ, "POPSEG_ADMIN_TOKEN": token}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise DeployError(
                f"local endpoint {name!r}: the server exited with code {process.returncode} "
                f"before listening; its log ({log_path}) ends with:\n{tail}"
            )
        if time.monotonic() > deadline:
            _stop_process(process.pid, name)
            raise DeployError(f"local endpoint {name!r}: the server did not start in {timeout}s")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    ready.unlink()
    url = f"http://127.0.0.1:{info['port']}"
    while ping(url) is None:
        if time.monotonic() > deadline or process.poll() is not None:
            _stop_process(process.pid, name)
            raise DeployError(f"local endpoint {name!r}: /ping did not answer at {url}")
        time.sleep(0.05)
    return process.pid, int(info["port"])


def _admin_reload(state: LocalEndpoint, model_dir: Path, version: str) -> dict[str, Any]:
    request = urllib.request.Request(
        state.url + "/admin/reload",
        data=json.dumps({"model_dir": str(model_dir), "model_version": version}).encode(),
        headers={"Content-Type": "application/json", "X-Popseg-Token": state.token},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        raise DeployError(f"local endpoint {state.name!r}: model swap refused: {detail}") from None
    except OSError as error:
        raise DeployError(f"local endpoint {state.name!r}: model swap failed: {error}") from None


# ----------------------------------------------------------------------------- deploy


def _stage_model(name: str, registered: RegisteredChain, project: Path | None) -> Path:
    """Build model.tar.gz and unpack it into the endpoint's folder: the local server serves
    exactly what SageMaker would receive."""
    base = state_dir(project) / name
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{secrets.token_hex(3)}"
    folder = base / f"v{registered.model_version}-{stamp}"
    package = build_package(registered.chain_dir, folder.with_suffix(".tar.gz"))
    unpack_package(package, folder)
    package.unlink()
    return folder


def _prune_models(state: LocalEndpoint, keep: int = 3) -> None:
    """Keep the served model and the newest few others (rollback needs only the registry)."""
    base = Path(state.model_dir).parent
    folders = sorted((p for p in base.glob("v*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for folder in folders[:-keep]:
        if folder.resolve() != Path(state.model_dir).resolve():
            shutil.rmtree(folder, ignore_errors=True)


def served_contract(state: LocalEndpoint) -> dict[str, Any] | None:
    """The input contract of the model a local endpoint serves (None when its files are gone)."""
    try:
        return SegmentationChain.load(state.model_dir).input_contract()
    except (OSError, ValueError, KeyError):
        return None


def deploy_local(
    name: str,
    registered: RegisteredChain,
    sample: np.ndarray | None = None,
    port: int = 0,
    capture: str | None = None,
    limits: ServerLimits | None = None,
    start_timeout_s: float = 60.0,
    project: Path | None = None,
    allow_contract_change: bool = False,
    chain: SegmentationChain | None = None,
) -> DeployResult:
    """Start the endpoint, or swap the new version into the running one; smoke-test; on a
    failed smoke test the previous model keeps serving (or a new server is stopped). A running
    endpoint is not swapped to a model with another input contract unless allowed. Holds the
    endpoint's lock throughout. ``chain``: the registered chain, when already loaded."""
    validate_endpoint_name(name)
    if chain is None:
        chain = SegmentationChain.load(str(registered.chain_dir))
    rows = sample if sample is not None else smoke_sample(chain).rows
    # The lock may wait for another deploy's start + smoke test.
    with endpoint_lock(name, project, timeout_s=start_timeout_s + 120.0):
        return _deploy_local(
            name,
            registered,
            chain,
            rows,
            port,
            capture,
            limits or ServerLimits(),
            start_timeout_s,
            project,
            allow_contract_change,
        )


def _deploy_local(
    name: str,
    registered: RegisteredChain,
    chain: SegmentationChain,
    rows: np.ndarray,
    port: int,
    capture: str | None,
    limits: ServerLimits,
    start_timeout_s: float,
    project: Path | None,
    allow_contract_change: bool,
) -> DeployResult:
    state = read_state(name, project)
    status = endpoint_status(state) if state is not None else None
    if state is not None and status == "running" and not allow_contract_change:
        refuse_contract_change(
            name, served_contract(state), state.model_version, chain, registered.model_version
        )
    model_dir = _stage_model(name, registered, project)
    entry = {
        "model_version": registered.model_version,
        "run_id": registered.run_id,
        "deployed_at": _now(),
    }
    if state is not None and status == "running":
        previous = (state.model_dir, state.model_version, state.run_id)
        _admin_reload(state, model_dir, registered.model_version)
        try:
            smoke = check_predictions(
                invoke(HttpRuntimeClient(state.url), name, rows_to_csv(rows, chain)), chain, rows
            )
        except PopsegError as error:
            _admin_reload(state, Path(previous[0]), previous[1])
            shutil.rmtree(model_dir, ignore_errors=True)
            raise DeployError(
                f"local endpoint {name!r}: version {registered.model_version} failed its smoke "
                f"test; rolled back to version {previous[1]}: {error}"
            ) from None
        except BaseException:  # a bug or Ctrl-C mid smoke test: the previous model serves on
            _admin_reload(state, Path(previous[0]), previous[1])
            shutil.rmtree(model_dir, ignore_errors=True)
            raise
        action = "updated" if previous[1] != registered.model_version else "reloaded"
        previous_version = previous[1]
        state.model_dir, state.model_version, state.run_id = (
            str(model_dir),
            registered.model_version,
            registered.run_id,
        )
        state.model_name = registered.model_name
        state.history.append(entry)
    else:
        if state is not None:
            logger.warning(
                "local endpoint %r was %s (pid %s); starting a new server", name, status, state.pid
            )
            _stop_process(state.pid, name)
        token = secrets.token_hex(16)
        log_path = state_dir(project) / name / "server.log"
        capture_path = str(Path(capture).resolve()) if capture else None
        pid, actual_port = _start_server(
            name,
            model_dir,
            registered.model_version,
            port,
            capture_path,
            limits,
            token,
            log_path,
            start_timeout_s,
        )
        history = (state.history if state is not None else []) + [entry]
        previous_version = state.model_version if state is not None else None
        state = LocalEndpoint(
            name=name,
            pid=pid,
            port=actual_port,
            model_name=registered.model_name,
            model_version=registered.model_version,
            run_id=registered.run_id,
            model_dir=str(model_dir),
            token=token,
            capture=capture_path,
            log=str(log_path),
            started_at=_now(),
            history=history,
        )
        try:
            smoke = check_predictions(
                invoke(HttpRuntimeClient(state.url), name, rows_to_csv(rows, chain)), chain, rows
            )
        except PopsegError as error:
            _stop_process(pid, name)
            raise DeployError(
                f"local endpoint {name!r}: version {registered.model_version} failed its smoke "
                f"test; the server was stopped: {error}"
            ) from None
        except BaseException:  # a bug or Ctrl-C mid smoke test: no server left behind
            _stop_process(pid, name)
            raise
        action = "created"
    write_state(state, project)
    _prune_models(state)
    return DeployResult.of(
        registered,
        name,
        "local",
        endpoint_url=state.url,
        action=action,
        previous_version=previous_version,
        smoke_test=smoke,
        details={"pid": state.pid, "port": state.port, "capture": state.capture},
    )


def existing_state(name: str, project: Path | None = None) -> LocalEndpoint:
    """The state of endpoint ``name``; an EndpointError when there is none."""
    state = read_state(name, project)
    if state is None:
        raise EndpointError(f"no local endpoint named {name!r} (see `popseg endpoints`)")
    return state


def undeploy_local(name: str, project: Path | None = None) -> dict[str, Any]:
    existing_state(name, project)  # no lock file for a name that was never deployed
    with endpoint_lock(name, project):
        state = existing_state(name, project)
        status = endpoint_status(state)
        _stop_process(state.pid, name)
        _state_path(name, project).unlink(missing_ok=True)
        shutil.rmtree(state_dir(project) / name, ignore_errors=True)
    return {"endpoint_name": name, "target": "local", "status_before": status, "stopped": True}


def list_local(project: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    folder = state_dir(project)
    if not folder.is_dir():
        return rows
    for path in sorted(folder.glob("*.json")):
        if ENDPOINT_NAME.fullmatch(path.stem) is None:  # not ours
            continue
        state = read_state(path.stem, project)
        if state is None:
            continue
        rows.append({**state.public(), "status": endpoint_status(state)})
    return rows


def local_endpoint(name: str, project: Path | None = None) -> LocalEndpoint:
    """The state of endpoint ``name`` when its server is running, else an EndpointError."""
    state = existing_state(name, project)
    status = endpoint_status(state)
    if status != "running":
        raise EndpointError(
            f"local endpoint {name!r} is {status} (pid {state.pid}); redeploy it with "
            f"`popseg deploy --endpoint-name {name}` or remove it with `popseg undeploy -n {name}`"
        )
    return state


# ----------------------------------------------------------------------------- the target


class LocalTarget(BaseTarget):
    """``local`` behind the ``Target`` protocol, in the current project folder."""

    name = "local"

    def check(self) -> None:
        """The capture is a local file (the server appends to it); the server itself starts
        from this interpreter."""
        capture = self.options.capture or self.config.capture or ""
        if capture.startswith("s3://"):
            raise DeployError(
                f"deploy.capture {capture!r}: the local endpoint appends to a local file; "
                "an s3:// capture is for --target sagemaker"
            )

    def _deploy(
        self, endpoint_name: str, release: Release, allow_contract_change: bool
    ) -> DeployResult:
        config, options = self.config, self.options
        return deploy_local(
            endpoint_name,
            release.registered,
            sample=release.sample.rows,
            port=config.port if options.port is None else options.port,
            capture=options.capture or config.capture,
            limits=ServerLimits.from_config(config),
            start_timeout_s=config.start_timeout_s,
            allow_contract_change=allow_contract_change,
            chain=release.chain,
        )

    def undeploy(self, endpoint_name: str) -> dict[str, Any]:
        return undeploy_local(endpoint_name)

    def describe(self, endpoint_name: str) -> EndpointDescription:
        state = existing_state(endpoint_name)
        return EndpointDescription(
            name=endpoint_name,
            target=self.name,
            status=endpoint_status(state),
            model_version=state.model_version,
            history=[entry["model_version"] for entry in state.history],
        )

    def list(self) -> list[dict[str, Any]]:
        return list_local()

    def invoke(
        self, endpoint_name: str, records: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        state = local_endpoint(endpoint_name)
        return invoke_rows(HttpRuntimeClient(state.url), endpoint_name, records)
