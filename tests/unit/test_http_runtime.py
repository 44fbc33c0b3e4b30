"""The plain-HTTP client for local endpoints (`tasks/deploy/http_runtime.py`) through
`contract.invoke`, against a stdlib HTTP server on 127.0.0.1 answering as scripted: the request
it sends (SageMaker's path and headers), an error answer, one retry on 503, no answer."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.deploy.contract import invoke
from tasks.deploy.http_runtime import HttpRuntimeClient
from tasks.errors import EndpointError


class _Scripted(ThreadingHTTPServer):
    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers
        self.requests: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers), "body": body}
        )
        status, payload = self.server.answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    servers = []

    def start(*answers: tuple[int, bytes]) -> tuple[_Scripted, HttpRuntimeClient]:
        server = _Scripted(list(answers))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, HttpRuntimeClient(f"http://127.0.0.1:{server.server_port}")

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_sends_sagemakers_runtime_request_and_decodes_the_answer(scripted):
    server, client = scripted((200, b'{"predictions": [{"segment": 1}]}'))
    answer = invoke(client, "my-endpoint", "1.0,2.0\n")
    assert answer == {"predictions": [{"segment": 1}]}
    [request] = server.requests
    assert request["path"] == "/endpoints/my-endpoint/invocations"
    assert request["headers"]["Content-Type"] == "text/csv"
    assert request["headers"]["Accept"] == "application/json"
    assert request["body"] == b"1.0,2.0\n"


def test_an_error_answer_is_refused_with_the_servers_message(scripted):
    refusal = json.dumps({"code": "ValidationError", "message": "row 1: 3 values, expected 2"})
    server, client = scripted((400, refusal.encode()))
    with pytest.raises(EndpointError) as raised:
        invoke(client, "ep", "1,2,3\n")
    assert str(raised.value) == "endpoint 'ep' refused the request: row 1: 3 values, expected 2"
    assert len(server.requests) == 1  # a 4xx is not retried


def test_a_503_is_retried_once(scripted):
    busy = json.dumps({"code": "ServiceUnavailable", "message": "at its connection limit"})
    server, client = scripted((503, busy.encode()), (200, b'{"predictions": []}'))
    assert invoke(client, "ep", "1,2\n") == {"predictions": []}
    assert len(server.requests) == 2


def test_a_500_twice_is_refused_with_the_raw_body(scripted):
    server, client = scripted((500, b"boom"), (500, b"boom"))
    with pytest.raises(EndpointError, match=r"^endpoint 'ep' refused the request: boom$"):
        invoke(client, "ep", "1,2\n")
    assert len(server.requests) == 2


def test_no_server_is_did_not_answer():
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HttpRuntimeClient(f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(EndpointError, match=rf"^endpoint 'ep' did not answer: 127.0.0.1:{port}: "):
        invoke(client, "ep", "1,2\n")


def test_only_http_urls():
    with pytest.raises(ValueError, match="expected http://HOST:PORT"):
        HttpRuntimeClient("https://example.com")
