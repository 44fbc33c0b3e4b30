"""A local Prefect server for `popseg serve`, started only when no API is configured.

Set PREFECT_API_URL to use an existing server (or Prefect Cloud); otherwise
`prefect server start` runs on 127.0.0.1 with its database under PREFECT_HOME (.prefect/),
serving Prefect's UI (deployments, schedules, flow runs) at the same address, and is stopped
when serving stops. Must run before Prefect is imported: Prefect reads its settings at import.
While serving, the API in use is recorded in ``.popseg/prefect-api.json`` so that other popseg
commands in the project (`popseg approve`) find the flow runs on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import PopsegError

STARTUP_TIMEOUT_S = 180.0


class PrefectServerError(PopsegError):
    """The local Prefect server did not start."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=2) as response:
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


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
