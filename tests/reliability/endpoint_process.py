"""A real endpoint server process (``python -m tasks.serving.server``) serving the crime model
trained by the session's ``trained_store``, and raw-socket helpers to talk to it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "abuse"
TOKEN = "s3cret-admin-token"
ROW = b"13.2,236,58,21.2,71.3\n"  # one crime row (Murder, Assault, UrbanPop, Rape, Density)


@pytest.fixture(scope="session")
def model_dir(request, tmp_path_factory) -> Path:
    """The champion chain of the session's trained store, as the server loads it."""
    from tasks.package import fetch_registered_chain

    destination = tmp_path_factory.mktemp("endpoint-model")
    store = request.getfixturevalue("trained_store")["dir"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        registered = fetch_registered_chain("popseg-segmentation", "2", destination)
    return registered.chain_dir


@dataclass
class Endpoint:
    process: subprocess.Popen
    port: int
    log: Path
    capture: Path | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        raise AssertionError("no VmHWM in /proc status")

    def runtime_client(self):
        """The stock boto3 sagemaker-runtime client, pointed at this endpoint."""
        from tests.serving_contract import runtime_client

        return runtime_client(f"http://127.0.0.1:{self.port}")

    def ping(self) -> dict:
        status, _, body = self.request(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200, body
        return json.loads(body)

    def request(self, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """Send raw bytes, half-close, read one response: (status, headers, body)."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return read_response(sock)

    def post(self, path: str, body: bytes, content_type: str = "text/csv", headers: str = ""):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n"
        )
        return self.request(head.encode("latin-1") + body)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    reply = http.client.HTTPResponse(sock)
    reply.begin()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()


def wait_closed(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reads and drops what it sends)."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {limit}s") from None
    return time.monotonic() - started


def start_endpoint(folder: Path, model: Path, *arguments: str, capture: bool = False) -> Endpoint:
    ready = folder / f"ready-{time.monotonic_ns()}.json"
    log = folder / "server.log"
    capture_path = folder / "capture.jsonl" if capture else None
    command = [
        sys.executable,
        "-m",
        "tasks.serving.server",
        "--name",
        NAME,
        "--model-dir",
        str(model),
        "--model-version",
        "2",
        "--ready-file",
        str(ready),
        *arguments,
    ]
    if capture_path is not None:
        command += ["--capture", str(capture_path)]
    env = {**os.environ, "POPSEG_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=handle, env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the endpoint did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    port = json.loads(ready.read_text())["port"]
    return Endpoint(process=process, port=port, log=log, capture=capture_path)


def stop_endpoint(endpoint: Endpoint) -> None:
    if endpoint.process.poll() is None:
        endpoint.process.send_signal(signal.SIGTERM)
        try:
            endpoint.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            endpoint.process.kill()
            endpoint.process.wait(timeout=10)


@pytest.fixture
def endpoint_factory(model_dir, tmp_path):
    """start(*server arguments, capture=False) -> a fresh endpoint, stopped after the test."""
    started: list[Endpoint] = []

    def start(*arguments: str, capture: bool = False) -> Endpoint:
        folder = tmp_path / f"endpoint-{len(started)}"
        folder.mkdir()
        endpoint = start_endpoint(folder, model_dir, *arguments, capture=capture)
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        stop_endpoint(endpoint)
