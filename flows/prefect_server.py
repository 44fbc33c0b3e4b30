"""The Prefect API popseg's flows report to, started only when none is configured.

`popseg serve`: set PREFECT_API_URL to use an existing server (or Prefect Cloud); otherwise
`prefect server start` runs on 127.0.0.1 with its database under PREFECT_HOME (.prefect/),
serving Prefect's UI (deployments, schedules, flow runs) at the same address, and is stopped
when serving stops. While serving, the API in use is recorded in ``.popseg/prefect-api.json``
so that other popseg commands in the project (`popseg approve`, and the one-shot flows below)
find it.

One-shot flow commands (`popseg run`, `train`, `monitor`), `flow_api`: PREFECT_API_URL if set;
else the server `popseg serve` recorded for this project, when it answers; else a local API
server started in the background as soon as the pre-flight checks have passed, so that it
starts while popseg loads the flow's code, and stopped when popseg exits (by the watchdog,
flows/reaper.py, if popseg is killed). Its flow runs are kept in the same database under
PREFECT_HOME as the served ones.

All of this must run before Prefect is imported: Prefect reads its settings at import.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from tasks.errors import PopsegError

P = ParamSpec("P")
R = TypeVar("R")

STARTUP_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0
_POLL_S = 0.05
# A port taken between the probe and the server's bind: start again on another one.
_PORT_ATTEMPTS = 3

logger = logging.getLogger(__name__)


class PrefectServerError(PopsegError):
    """The local Prefect server did not start."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(api_url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def server_environment(api_url: str) -> dict[str, str]:
    """The server's environment: popseg's (every popseg process keeps Prefect's UI off) with
    the UI on, talking to ``api_url``, its static files copied under PREFECT_HOME (the
    installed package may be read-only)."""
    home = Path(os.environ.get("PREFECT_HOME", ".prefect")).resolve()
    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_UI_STATIC_DIRECTORY": str(home / "ui"),
    }


def ui_url(api_url: str) -> str | None:
    """The Prefect UI of the server at ``api_url`` when it answers: PREFECT_UI_URL if set, else
    the API's address without ``/api``. None when no UI page is served there."""
    url = os.environ.get("PREFECT_UI_URL") or api_url.rstrip("/").removesuffix("/api")
    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            page = response.read(65536)
            serves_page = response.status == 200 and b"<html" in page.lower()
    except OSError:
        return None
    return url if serves_page else None


@contextlib.contextmanager
def ensure_server(port: int = 0, log_path: Path | None = None) -> Iterator[tuple[str, bool]]:
    """Yield ``(api_url, started_here)``. A configured PREFECT_API_URL is used as is (and
    must answer); else a local server is started, PREFECT_API_URL pointed at it, and it is
    stopped on exit."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not _healthy(configured):
            raise PrefectServerError(
                f"PREFECT_API_URL={configured}: no Prefect API answers there; start it "
                "(`prefect server start`) or unset PREFECT_API_URL to let popseg start one"
            )
        yield configured, False
        return
    port = port or _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect_cli = Path(sys.executable).with_name("prefect")
    log_path = log_path or Path(os.environ.get("PREFECT_HOME", ".prefect")) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(prefect_cli), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_environment(api_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, not session: Ctrl-C in the terminal reaches popseg, which
            # stops it in order, while popseg's watchdog (flows/reaper.py, same session) still
            # stops it if popseg is killed outright.
            process_group=0,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(api_url):
            if process.poll() is not None:
                raise PrefectServerError(
                    f"prefect server exited with {process.returncode} while starting "
                    f"(port {port}); see {log_path}"
                )
            if time.monotonic() > deadline:
                raise PrefectServerError(
                    f"prefect server did not answer on {api_url} within "
                    f"{STARTUP_TIMEOUT_S:g} s; see {log_path}"
                )
            time.sleep(0.5)
        os.environ["PREFECT_API_URL"] = api_url
        yield api_url, True
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop(process)


API_RECORD = Path(".popseg") / "prefect-api.json"


@contextlib.contextmanager
def recorded_api(api_url: str) -> Iterator[None]:
    """Record ``api_url`` (with this process's pid) for the project's other commands while
    the block runs; removed after, unless another process has recorded its own meanwhile."""
    API_RECORD.parent.mkdir(parents=True, exist_ok=True)
    API_RECORD.write_text(json.dumps({"api_url": api_url, "pid": os.getpid()}))
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(API_RECORD.read_text()).get("pid") == os.getpid():
                API_RECORD.unlink()


def recorded_api_url() -> str | None:
    """The API `popseg serve` recorded in this project, when it still answers."""
    try:
        api_url = json.loads(API_RECORD.read_text())["api_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return api_url if isinstance(api_url, str) and _healthy(api_url) else None


def _stop(process: subprocess.Popen, signum: int = signal.SIGINT, grace_s: float = 20) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# ----------------------------------------------------------------------------- one-shot flows


def api_server_command(port: int) -> list[str]:
    """Prefect's API app on 127.0.0.1:``port`` (what Prefect's ephemeral server runs)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def api_server_environment() -> dict[str, str]:
    """The API app's environment: this process's, with no UI and no background services, and
    no PREFECT_API_URL (it is the API)."""
    environment = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    environment.pop("PREFECT_API_URL", None)
    return environment


class BackgroundServer:
    """A local Prefect API server for this process's flow runs: Prefect's own ephemeral
    server (API only, no UI, no background services; `prefect.server.api.server`'s
    `SubprocessASGIServer` starts the same command), started here without importing
    Prefect's server code into popseg, and without waiting for it until a flow needs it."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.ready = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        self.port = _free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = api_server_environment()
        command = api_server_command(self.port)
        logger.info("Starting a local Prefect server on %s (log %s)", self.api_url, self.log_path)
        with open(self.log_path, "ab") as log:
            # Its own process group (Ctrl-C reaches popseg, which stops it in order); the
            # watchdog stops it if popseg is killed outright.
            self.process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT, process_group=0
            )

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Block until the API answers /health; a start that lost its port to another
        process is tried again on a new one."""
        deadline = time.monotonic() + timeout_s
        attempts = 1
        while not self.ready:
            assert self.process is not None
            if _healthy(self.api_url):
                self.ready = True
                return
            if self.process.poll() is not None:
                if attempts >= _PORT_ATTEMPTS:
                    raise PrefectServerError(
                        f"the local Prefect server exited with {self.process.returncode} "
                        f"while starting (port {self.port}); see {self.log_path}"
                    )
                attempts += 1
                self.start()
                _point_prefect_at(self.api_url)
                continue
            if time.monotonic() > deadline:
                raise PrefectServerError(
                    f"the local Prefect server did not answer on {self.api_url} within "
                    f"{timeout_s:g} s; see {self.log_path}"
                )
            time.sleep(_POLL_S)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        logger.info("Stopping the local Prefect server on %s", self.api_url)
        _stop(self.process, signal.SIGTERM, STOP_GRACE_S)


_BACKGROUND: list[BackgroundServer] = []
# The kept server's API URL (flows/prefect_keeper.py) when this process leases it.
_KEPT: list[str] = []


# Set in a warm runner's command (flows/warm_runner.py): Prefect was imported before this
# command's settings were known, so they are applied by refreshing its settings.
_PRELOADED: list[bool] = []


def adopt_preloaded_prefect() -> None:
    """Prefect is imported but this process's settings are not its yet: read them again."""
    _PRELOADED.append(True)
    if "prefect" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _prefect_settled() -> bool:
    """Prefect was imported with this process's settings (a test harness, a flow calling a
    flow): they stand."""
    return "prefect" in sys.modules and not _PRELOADED


def _point_prefect_at(api_url: str) -> None:
    """PREFECT_API_URL for this process and its children; when Prefect is already imported
    (it read its settings then), its settings are read again."""
    os.environ["PREFECT_API_URL"] = api_url
    if "prefect" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def flow_api() -> str | None:
    """Point this process's flows at a Prefect API before Prefect is imported, and return its
    URL: PREFECT_API_URL when set, else the server `popseg serve` recorded in this project
    when it answers, else a local server started now in the background (`wait_for_flow_api`
    waits for it; it is stopped at exit). None when Prefect is already imported: its settings,
    read at import, stand (a test harness, a flow calling a flow)."""
    from flows import prefect_keeper

    keep = prefect_keeper.server_mode() == "keep"  # a bad value is refused first
    configured = os.environ.get("PREFECT_API_URL")
    if configured or _prefect_settled():
        return configured or None
    if _BACKGROUND:
        return _BACKGROUND[0].api_url
    if _KEPT:
        return _KEPT[0]
    recorded = recorded_api_url()
    if recorded:
        _point_prefect_at(recorded)
        return recorded
    if keep:
        from flows.reaper import owner_token

        api_url = prefect_keeper.acquire(owner_token())
        _KEPT.append(api_url)
        atexit.register(prefect_keeper.release)
        # Its UI is off (as the per-command server's): no flow-run page is linked.
        os.environ.setdefault("PREFECT_UI_URL", "")
        _point_prefect_at(api_url)
        return api_url
    home = Path(os.environ.get("PREFECT_HOME", ".prefect"))
    server = BackgroundServer(home / "local-server.log")
    server.start()
    _BACKGROUND.append(server)
    atexit.register(stop_background_server)
    # It serves no UI and stops with popseg: no flow-run page is linked (an empty UI URL is
    # Prefect's "none"; else it derives one from the API's address).
    os.environ.setdefault("PREFECT_UI_URL", "")
    _point_prefect_at(server.api_url)
    return server.api_url


def wait_for_flow_api() -> None:
    """Wait until the server `flow_api` started (or the kept one) answers (no-op without)."""
    for server in _BACKGROUND:
        server.wait_ready()
    if _KEPT:
        from flows import prefect_keeper

        prefect_keeper.wait_ready(_KEPT[0])


@contextlib.contextmanager
def owner_flow_tags() -> Iterator[None]:
    """Flow runs started in the block carry ``popseg.owner:<token>`` (flows/reaper.py): a run
    left RUNNING by a killed command is found and marked Crashed (flows/prefect_keeper.py)."""
    from prefect import tags

    from flows.prefect_keeper import OWNER_TAG_PREFIX
    from flows.reaper import owner_token

    with tags(OWNER_TAG_PREFIX + owner_token()):
        yield


_OWNER_TAGS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "popseg_owner_tags", default=frozenset()
)


def owner_tag_on_flow_runs_only(flow_fn: Callable[P, R]) -> Callable[P, R]:
    """For a flow function (under ``@flow``): its task runs do not inherit the owner tag of
    `owner_flow_tags`. Prefect takes a concurrency slot on the API for each tag a task run
    carries, one round trip per task that took 1.6-2.2 s per step against the kept server
    while it stored a 500k-row run's events; the reaper needs the tag on flow runs only."""

    @functools.wraps(flow_fn)
    def body(*args: P.args, **kwargs: P.kwargs) -> R:
        # Only a module-level function here: Dask's task runner pickles the flow function by
        # value, with the globals it names (a ContextVar cannot be pickled).
        return _call_without_owner_tags(flow_fn, args, kwargs)

    return body


def _call_without_owner_tags(flow_fn: Callable[..., R], args: tuple, kwargs: dict) -> R:
    from prefect.context import TagsContext

    from flows.prefect_keeper import OWNER_TAG_PREFIX

    current = set(TagsContext.get().current_tags)
    owner = frozenset(t for t in current if t.startswith(OWNER_TAG_PREFIX))
    stash = _OWNER_TAGS.set(owner)
    try:
        with TagsContext(current_tags=current - owner):
            return flow_fn(*args, **kwargs)
    finally:
        _OWNER_TAGS.reset(stash)


@contextlib.contextmanager
def subflow_owner_tags() -> Iterator[None]:
    """Around a subflow called in a flow body under `owner_tag_on_flow_runs_only`: the
    subflow's run carries the parent's owner tag (a killed command leaves both RUNNING)."""
    from prefect import tags

    with tags(*_OWNER_TAGS.get()):
        yield


def temporary_api_url() -> str | None:
    """The API of the background server this process started, if any."""
    return _BACKGROUND[0].api_url if _BACKGROUND else None


def kept_api_url() -> str | None:
    """The kept server's API this process leases, if any."""
    return _KEPT[0] if _KEPT else None


def stop_background_server() -> None:
    """Stop the background server (at exit, or earlier); PREFECT_API_URL is left pointing at
    it only while it runs."""
    while _BACKGROUND:
        server = _BACKGROUND.pop()
        if os.environ.get("PREFECT_API_URL") == server.api_url:
            os.environ.pop("PREFECT_API_URL", None)
        server.stop()
