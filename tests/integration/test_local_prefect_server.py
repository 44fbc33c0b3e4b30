"""The Prefect API a one-shot flow command reports to (`flows.prefect_server.flow_api`):
PREFECT_API_URL as given, else the server `popseg serve` recorded in the project while it
answers, else a local server started in the background and stopped when popseg exits.

Each case runs in a fresh interpreter in a temporary project, as the CLI does: the choice is
made before Prefect is imported."""

from __future__ import annotations

import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.processes import free_port

# Picks the API, waits for it, prints what was chosen and whether it answered, then exits
# (the atexit handler stops a server it started).
_SCRIPT = """
import json, os, sys, urllib.request
from flows.prefect_server import flow_api, temporary_api_url, wait_for_flow_api
api = flow_api()
wait_for_flow_api()
with urllib.request.urlopen(api.rstrip("/") + "/health", timeout=5) as answer:
    healthy = answer.status == 200
server = temporary_api_url()
from flows.prefect_server import _BACKGROUND
pid = _BACKGROUND[0].process.pid if _BACKGROUND else None
print(json.dumps(dict(api=api, started=server is not None, healthy=healthy, pid=pid,
                      prefect_imported="prefect" in sys.modules,
                      env=os.environ.get("PREFECT_API_URL"))))
"""


def _choose(project: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    clean.update(PREFECT_HOME=str(project / ".prefect"), PYTHONPATH=str(ROOT), **env)
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=project,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _record(project: Path, api_url: str) -> None:
    record = project / ".popseg" / "prefect-api.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"api_url": api_url, "pid": 1}))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def answering_api():
    """Something that answers /api/health like a running Prefect server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def test_a_dead_recorded_server_gets_a_local_one_that_stops_with_popseg(tmp_path):
    """`popseg serve` was killed and left its record: not used; a local server is started,
    answers, keeps its flow runs under PREFECT_HOME, and is gone when the process exits."""
    dead = f"http://127.0.0.1:{free_port()}/api"
    _record(tmp_path, dead)
    chosen = _choose(tmp_path)
    assert chosen["started"] and chosen["healthy"]
    assert chosen["api"] != dead and chosen["env"] == chosen["api"]
    assert not chosen["prefect_imported"]  # the client never loads Prefect's server code
    port = int(chosen["api"].rsplit(":", 1)[1].split("/")[0])
    deadline = time.monotonic() + 20
    while (_alive(chosen["pid"]) or _listening(port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(chosen["pid"]), "the local Prefect server outlived popseg"
    assert not _listening(port)
    # Prefect's database, where the flow runs are kept, is the project's.
    with sqlite3.connect(tmp_path / ".prefect" / "prefect.db") as db:
        assert db.execute("select count(*) from alembic_version").fetchone()[0] == 1


def test_a_recorded_server_that_answers_is_reused(tmp_path, answering_api):
    _record(tmp_path, answering_api)
    chosen = _choose(tmp_path)
    assert chosen == dict(
        api=answering_api,
        started=False,
        healthy=True,
        pid=None,
        prefect_imported=False,
        env=answering_api,
    )
    assert not (tmp_path / ".prefect" / "local-server.log").exists()


def test_prefect_api_url_wins_over_the_record(tmp_path, answering_api):
    _record(tmp_path, f"http://127.0.0.1:{free_port()}/api")
    chosen = _choose(tmp_path, PREFECT_API_URL=answering_api)
    assert chosen["api"] == answering_api and not chosen["started"]


@pytest.mark.slow
def test_a_port_taken_while_the_server_starts_moves_it_to_another(tmp_path):
    """The port probed free is taken before the server binds it (uvicorn binds after the
    app's start-up, so this costs two server starts: slow): the server is started again on a
    new port, and Prefect (imported meanwhile) is pointed at that one."""
    script = """
import json, socket, sys
from flows import prefect_server
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
ports = iter([taken.getsockname()[1]])
probe = prefect_server._free_port
prefect_server._free_port = lambda: next(ports, None) or probe()
first = prefect_server.flow_api()
import prefect.settings
prefect_server.wait_for_flow_api()
print(json.dumps(dict(first=first, now=prefect_server.temporary_api_url(),
                      prefect=str(prefect.settings.get_current_settings().api.url))))
"""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    clean.update(PREFECT_HOME=str(tmp_path / ".prefect"), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = json.loads(result.stdout.strip().splitlines()[-1])
    assert chosen["now"] != chosen["first"]
    assert chosen["prefect"] == chosen["now"]
