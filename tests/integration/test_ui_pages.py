"""The two UIs as a person opens them, rendered by headless Chromium: `popseg ui` (the MLflow
UI over a trained project's store) opens on the runs table of the training experiment, not
MLflow's GenAI overview; `popseg serve`'s Prefect server serves Prefect's UI, which lists the
deployments. Plus the address `popseg serve` gives only when a UI answers there."""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from flows.prefect_server import ui_url
from tests import browser
from tests.processes import free_port

BIN = Path(sys.executable).parent
NEVER = "0 3 1 1 *"  # 1 January 03:00: no scheduled run fires during the test


def _wait_for_line(process: subprocess.Popen, log: Path, pattern: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    pytest.fail(f"no {pattern!r} within {timeout_s:g} s: {log.read_text()[-3000:]}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _deployment_count(api: str) -> int:
    request = urllib.request.Request(
        f"{api}/deployments/count", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.read())


def _stop(process: subprocess.Popen, log: Path) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_popseg_ui_opens_on_the_training_runs(trained_project, tmp_path):
    chromium = browser.chromium()
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [str(BIN / "popseg"), "ui", "--port", str(port)],
            cwd=trained_project,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        address = _wait_for_line(process, log, r"at (http://\S+) \(Ctrl-C", 30).group(1)
        assert address == (
            f"http://127.0.0.1:{port}/#/experiments/1/runs?workflowType=machine_learning"
        )
        # `mlflow ui` starts several workers: long on a loaded machine.
        deadline = time.monotonic() + 300
        while not _answers(f"http://127.0.0.1:{port}/health"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        page = browser.rendered_text(chromium, tmp_path / "profile", address)
    finally:
        _stop(process, log)
    # The runs table of experiment "popseg": its two training runs, their dataset.
    assert "Run Name" in page and "Dataset" in page, page[:3000]
    assert re.search(r"train-k\d+ .*train-k\d+", page), page[:3000]
    assert "crime" in page
    # Not the GenAI overview (Traces, Latency, "No data available").
    assert "No data available" not in page and "Latency" not in page


@pytest.mark.slow
def test_popseg_serve_shows_the_deployments_in_prefects_ui(project_dir, tmp_path):
    chromium = browser.chromium()
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / ".prefect")
    log = tmp_path / "serve.log"
    never = [f"--set=schedule.{name}={NEVER}" for name in ("train", "retrain", "monitor")]
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [str(BIN / "popseg"), "serve", "--data", "new.csv", "--port", "0", *never],
            cwd=project_dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            process_group=0,
        )
    try:
        started = r"Prefect API (\S+) \(started here\); UI at (\S+)"
        api, ui = _wait_for_line(process, log, started, 240).groups()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", ui) and api == f"{ui}/api"
        # The runner registers the deployments once it starts.
        deadline = time.monotonic() + 120
        while _deployment_count(api) < 3:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        page = browser.rendered_text(chromium, tmp_path / "profile", f"{ui}/deployments")
    finally:
        _stop(process, log)
    assert "3 Deployments" in page, page[:3000]
    for deployment, flow in (
        ("train", "popseg-scheduled-train"),
        ("retrain", "popseg-retrain"),
        ("monitor", "popseg-scheduled-monitor"),
    ):
        assert f" {deployment} {flow} " in page, page[:3000]
    # The server (and its UI) stopped with popseg.
    assert not _answers(ui)


class _ApiOnly(http.server.BaseHTTPRequestHandler):
    """A Prefect API with its UI off: every page is Prefect's JSON 404."""

    def do_GET(self):
        body = b'{"detail":"Not Found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_ui_address_only_when_a_ui_answers(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ApiOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}/api"
        monkeypatch.delenv("PREFECT_UI_URL", raising=False)
        assert ui_url(api) is None
        monkeypatch.setenv("PREFECT_UI_URL", f"http://127.0.0.1:{free_port()}")
        assert ui_url(api) is None  # nothing listens there
    finally:
        server.shutdown()
        server.server_close()
