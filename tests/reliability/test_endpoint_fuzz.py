"""Property-based fuzz of the endpoint's request parsing, over a socket to a live server:
whatever the request line, headers and body, the answer is a 2xx or a 4xx (never a 5xx, never
a dropped connection) and the server still answers /ping afterwards."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import endpoint_process
from tests.reliability.endpoint_process import NAME, TOKEN, start_endpoint, stop_endpoint

model_dir = endpoint_process.model_dir

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_TOKEN_CHARS = st.characters(min_codepoint=33, max_codepoint=255, exclude_characters="\x7f")
_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
_BYTES = st.binary(max_size=300)


@pytest.fixture(scope="module")
def endpoint(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-endpoint")
    served = start_endpoint(
        folder, model_dir, "--request-timeout-s", "2", "--idle-timeout-s", "1", capture=True
    )
    yield served
    stop_endpoint(served)


methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "get"]),
    st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12),
)
paths = st.one_of(
    st.sampled_from(
        [
            "/ping",
            "/invocations",
            f"/endpoints/{NAME}/invocations",
            "/endpoints/x/invocations",
            "/admin/reload",
            "//ping",
            "/ping?x=1",
            "*",
            "/",
        ]
    ),
    st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=60),
)
versions = st.one_of(
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1.1", "HTTP/x"]),
    st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12),
    st.just(None),  # no version at all
)
lengths = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["", " ", "5, 5", "+3", "0x10", "1e3", "٣", "5_0", "-0", "00"]),
    _TEXT,
)
header_values = {
    "Content-Length": lengths,
    "Transfer-Encoding": st.sampled_from(["chunked", "gzip", "identity", "chunked, gzip", ""]),
    "Content-Type": st.sampled_from(["text/csv", "application/json", "text/plain", "", "a/b;;"]),
    "Accept": st.sampled_from(["application/json", "*/*", "text/html", "", "\x85"]),
    "Expect": st.sampled_from(["100-continue", "nothing", ""]),
    "Connection": st.sampled_from(["close", "keep-alive", "upgrade", ""]),
    "X-Popseg-Token": st.one_of(st.just(TOKEN), _TEXT),
}
header = st.one_of(
    st.sampled_from(sorted(header_values)).flatmap(
        lambda name: header_values[name].map(lambda value: (name, value))
    ),
    st.tuples(st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=20), _TEXT),
)


def _encode(name: str, value: str) -> bytes:
    return name.encode("latin-1", "replace") + b": " + value.encode("latin-1", "replace")


def _assert_answer(endpoint, data: bytes) -> None:
    status, _, body = endpoint.request(data, timeout=10)
    assert 200 <= status < 300 or 400 <= status < 500, (status, body[:300])
    assert len(body) < 2048
    if status >= 400:
        assert json.loads(body)["message"]


@FUZZ
@given(
    method=methods,
    path=paths,
    version=versions,
    headers=st.lists(header, max_size=8),
    body=st.one_of(_BYTES, st.sampled_from([b"13.2,236,58,21.2,71.3\n", b'{"instances": []}'])),
)
def test_any_request_gets_2xx_or_4xx(endpoint, method, path, version, headers, body):
    line = " ".join([method, path] + ([version] if version else []))
    head = b"\r\n".join([line.encode("latin-1", "replace"), *(_encode(*h) for h in headers)])
    _assert_answer(endpoint, head + b"\r\n\r\n" + body)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=40,
)


@FUZZ
@given(
    payload=st.one_of(
        json_values.map(json.dumps),
        st.integers(0, 3000).map(lambda depth: "[" * depth + "]" * depth),
        st.integers(0, 3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
        st.text(max_size=200),
    ),
    content_type=st.sampled_from(["application/json", "text/csv"]),
)
def test_any_body_gets_2xx_or_4xx(endpoint, payload, content_type):
    body = payload.encode("utf-8", "surrogatepass")
    head = (
        f"POST /endpoints/{NAME}/invocations HTTP/1.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    _assert_answer(endpoint, head.encode() + body)


def test_the_server_is_alive_after_the_fuzz(endpoint):
    assert endpoint.ping()["status"] == "ok"
    assert endpoint.process.poll() is None
    assert "Traceback" not in endpoint.log.read_text()
