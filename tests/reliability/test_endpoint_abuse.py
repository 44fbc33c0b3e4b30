"""Raw-socket abuse of a real endpoint process (issue 13, "Endpoint"): framing is refused
before a byte of body is read, slow and idle sockets are cut, connections are bounded, no
client input earns a 5xx or an oversized answer, and the SageMaker contract still holds."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest

from tests.reliability import endpoint_process
from tests.reliability.endpoint_process import (
    NAME,
    ROW,
    TOKEN,
    read_response,
    start_endpoint,
    stop_endpoint,
    wait_closed,
)

model_dir = endpoint_process.model_dir
endpoint_factory = endpoint_process.endpoint_factory

IDLE_S = 1.0
REQUEST_S = 2.0
LIMITS = ("--idle-timeout-s", str(IDLE_S), "--request-timeout-s", str(REQUEST_S))
INVOKE = f"/endpoints/{NAME}/invocations"


@pytest.fixture(scope="module")
def endpoint(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("abuse-endpoint")
    served = start_endpoint(folder, model_dir, *LIMITS, "--max-connections", "16")
    yield served
    stop_endpoint(served)


def _head(lines: list[str]) -> bytes:
    return ("\r\n".join([f"POST {INVOKE} HTTP/1.1", "Host: x", *lines]) + "\r\n\r\n").encode()


def test_negative_content_length_is_refused_before_reading_a_40mib_body(endpoint_factory):
    served = endpoint_factory(*LIMITS)
    body = b"x" * (40 * 1024 * 1024)
    sent: list[int] = []

    def send(sock: socket.socket) -> None:
        try:
            sock.sendall(body)
            sent.append(len(body))
        except OSError:  # the server closed the connection on us: expected
            sent.append(-1)

    with served.connect(timeout=10) as sock:
        sock.sendall(_head(["Content-Type: text/csv", "Content-Length: -1"]))
        sender = threading.Thread(target=send, args=(sock,))
        sender.start()
        status, headers, answer = read_response(sock)
        sender.join(timeout=30)
    peak = served.peak_rss_mb()
    print(f"endpoint peak RSS after a 40 MiB body with Content-Length -1: {peak:.1f} MB")
    assert status == 400 and headers["connection"] == "close"
    assert "bad Content-Length '-1'" in json.loads(answer)["message"]
    assert peak < 200.0
    assert served.ping()["status"] == "ok"


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        (["5", "5"], "Content-Length is given 2 times"),
        (["5", "7"], "Content-Length is given 2 times"),
        (["5, 5"], "bad Content-Length '5, 5'"),
        (["+5"], "bad Content-Length '+5'"),
        (["0x5"], "bad Content-Length '0x5'"),
        (["five"], "bad Content-Length 'five'"),
        (["5_0"], "bad Content-Length '5_0'"),
    ],
)
def test_bad_content_length_is_400(endpoint, lengths, message):
    head = _head(["Content-Type: text/csv", *(f"Content-Length: {v}" for v in lengths)])
    status, headers, answer = endpoint.request(head + ROW[:5])
    assert status == 400 and headers["connection"] == "close"
    assert message in json.loads(answer)["message"]


def test_huge_content_length_without_a_body_is_413_at_once_and_closed(endpoint):
    with endpoint.connect(timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(_head(["Content-Type: text/csv", "Content-Length: 999999999999"]))
        status, _, answer = read_response(sock)
        answered = time.monotonic() - started
        closed = wait_closed(sock, limit=5.0)
    assert status == 413 and "over the endpoint's limit" in json.loads(answer)["message"]
    assert answered < 2.0 and closed < 3.0


@pytest.mark.parametrize(
    ("lines", "status", "message"),
    [
        (["Transfer-Encoding: chunked"], 411, "chunked bodies are not accepted"),
        (["Transfer-Encoding: chunked", "Content-Length: 5"], 400, "together are not accepted"),
        (["Transfer-Encoding: gzip"], 400, "Transfer-Encoding 'gzip' is not accepted"),
        ([], 411, "a Content-Length header is required"),
    ],
)
def test_chunked_and_missing_lengths_are_refused(endpoint, lines, status, message):
    body = b"5\r\n13.2,\r\n0\r\n\r\n"
    answer_status, _, answer = endpoint.request(_head(["Content-Type: text/csv", *lines]) + body)
    assert answer_status == status
    assert message in json.loads(answer)["message"]


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(endpoint):
    with endpoint.connect(timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        closed = wait_closed(sock, limit=IDLE_S + 4)
    assert IDLE_S - 0.2 < closed < IDLE_S + 2


def test_silent_connection_is_closed_after_the_idle_timeout(endpoint):
    with endpoint.connect(timeout=10) as sock:
        closed = wait_closed(sock, limit=IDLE_S + 4)
    assert closed < IDLE_S + 2


def test_slowloris_is_cut_by_the_request_timeout(endpoint):
    request = _head(["Content-Type: text/csv", f"Content-Length: {len(ROW)}"]) + ROW
    with endpoint.connect(timeout=10) as sock:
        started = time.monotonic()
        for byte in request:  # one byte every 0.25 s: each recv is quick, the whole is not
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.25)[0]:  # the server answered
                break
        answered = time.monotonic() - started
        status, _, answer = read_response(sock)
        closed = wait_closed(sock, limit=5.0)
    assert status == 408 and "did not arrive within 2s" in json.loads(answer)["message"]
    assert REQUEST_S - 0.2 < answered < REQUEST_S + 1.5 and closed < 1.5


def test_300_half_open_sockets_do_not_make_300_threads(endpoint_factory):
    # Timeouts longer than the test: the first 8 sockets hold every slot throughout.
    served = endpoint_factory(
        "--idle-timeout-s", "30", "--request-timeout-s", "30", "--max-connections", "8"
    )
    baseline = served.threads()
    sockets = [served.connect(timeout=10) for _ in range(300)]
    try:
        for sock in sockets[::2]:  # half of them start a request and stall
            sock.sendall(b"POST /invocations HTTP/1.1\r\nContent-Length: 10\r\n")
        time.sleep(0.5)
        threads = served.threads()
        refused = 0
        for sock in sockets[-20:]:  # the last ones found every slot taken
            sock.settimeout(5)
            status, headers, _ = read_response(sock)
            refused += status == 503 and headers["connection"] == "close"
    finally:
        for sock in sockets:
            sock.close()
    print(f"threads: {baseline} idle, {threads} with 300 half-open sockets")
    assert threads <= baseline + 8
    assert refused == 20
    deadline = time.monotonic() + 5
    while True:  # the slots free as the server sees the closed sockets
        try:
            assert served.ping()["status"] == "ok"
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_json_nested_100k_deep_is_400(endpoint):
    body = b"[" * 100_000 + b"]" * 100_000
    status, _, answer = endpoint.post(INVOKE, body, "application/json")
    assert status == 400
    assert "nests JSON deeper than 64 levels" in json.loads(answer)["message"]
    assert endpoint.ping()["status"] == "ok"


def test_unknown_header_error_is_capped(endpoint):
    names = ",".join(f"column_{i:05d}" for i in range(9000)).encode()  # ~109 KB of names
    assert len(names) > 100_000
    status, _, answer = endpoint.post(INVOKE, names + b"\n" + b",".join([b"1"] * 9000) + b"\n")
    assert status == 400 and len(answer) < 600
    message = json.loads(answer)["message"]
    assert message.startswith("CSV header: unknown feature(s) 'column_00000'")
    assert "characters cut" in message


def test_long_request_line_and_header_errors_are_capped(endpoint):
    path = "/" + "p" * 60_000
    status, _, answer = endpoint.request(f"GET {path} HTTP/1.1\r\n\r\n".encode())
    assert status == 404 and len(answer) < 600
    lines = "".join(f"X-Pad-{i}: {'v' * 1000}\r\n" for i in range(90))  # 90 KB of headers
    status, _, answer = endpoint.request(f"GET /ping HTTP/1.1\r\n{lines}\r\n".encode())
    assert status == 431 and len(answer) < 600


@pytest.mark.parametrize("token", [b"\xc3\xa9t\xc3\xa9", b"\xff\xfe\x00", TOKEN.encode() + b"\x80"])
def test_any_admin_token_bytes_get_403(endpoint, token):
    body = json.dumps({"model_dir": "/nowhere", "model_version": "9"}).encode()
    head = f"POST /admin/reload HTTP/1.1\r\nContent-Length: {len(body)}\r\nX-Popseg-Token: "
    status, _, answer = endpoint.request(head.encode() + token + b"\r\n\r\n" + body)
    assert status == 403 and json.loads(answer)["code"] == "AccessDenied"
    assert endpoint.ping()["model_version"] == "2"


def test_reload_of_a_bad_directory_is_4xx_and_keeps_serving(endpoint):
    body = json.dumps({"model_dir": "/nowhere", "model_version": "9"}).encode()
    status, _, answer = endpoint.post(
        "/admin/reload", body, "application/json", f"X-Popseg-Token: {TOKEN}\r\n"
    )
    assert status == 400 and "still serving version 2" in json.loads(answer)["message"]
    assert endpoint.ping()["model_version"] == "2"


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"PUT /ping HTTP/1.1", 405),
        (b"GET /ping HTTP/2.0", 400),
        (b"GET /ping", 400),
        (b"GARBAGE", 400),
        (b"GET /ping HTTP/1.x", 400),
    ],
)
def test_odd_request_lines_get_4xx(endpoint, request_line, status):
    answer_status, headers, answer = endpoint.request(request_line + b"\r\nHost: x\r\n\r\n")
    assert answer_status == status and headers["content-type"] == "application/json"
    assert json.loads(answer)["message"]


def test_sagemaker_contract_is_unchanged(endpoint):
    client = endpoint.runtime_client()
    reply = client.invoke_endpoint(
        EndpointName=NAME, ContentType="text/csv", Accept="application/json", Body=ROW * 3
    )
    predictions = json.loads(reply["Body"].read())["predictions"]
    assert len(predictions) == 3 and len({p["closest_cluster"] for p in predictions}) == 1
    status, headers, answer = endpoint.post("/invocations", ROW)
    assert status == 200 and headers["x-popseg-model-version"] == "2"
    assert json.loads(answer)["predictions"] == predictions[:1]
    # Expect: 100-continue gets its 100 only once the framing is accepted.
    head = _head(["Content-Type: text/csv", f"Content-Length: {len(ROW)}", "Expect: 100-continue"])
    with endpoint.connect() as sock:
        sock.sendall(head)
        assert sock.recv(64).startswith(b"HTTP/1.1 100")
        sock.sendall(ROW)
        status, _, answer = read_response(sock)
    assert status == 200 and json.loads(answer)["predictions"] == predictions[:1]
