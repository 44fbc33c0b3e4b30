"""The local endpoint: a real HTTP server process on 127.0.0.1 serving one model package.

Routes (the SageMaker serving contract, so the stock boto3 ``sagemaker-runtime`` client works
against it unchanged with ``endpoint_url``):

- ``GET /ping``: 200 with the endpoint name and model version once a model is loaded;
- ``POST /invocations`` and ``POST /endpoints/{name}/invocations``: the inference handlers of
  ``tasks/serving/inference.py`` (the same code that runs in SageMaker's container);
- ``POST /admin/reload`` (header ``X-Popseg-Token``): load another model directory and swap it
  in atomically: requests already running finish on the old model, new ones get the new one,
  nothing is dropped. A directory that does not load leaves the current model serving.

One client cannot knock it over:

- framing is checked before a byte of body is read: a body needs exactly one plain decimal
  ``Content-Length`` (negative, non-numeric, conflicting or repeated -> 400; over the limit ->
  413; ``Transfer-Encoding`` with it -> 400, chunked without it -> 411), and is then read to
  exactly that length;
- a request (line, headers, body) must arrive within ``--request-timeout-s`` of its first
  byte (else 408), a kept-alive connection waits at most ``--idle-timeout-s`` for the next one;
- at most ``--max-connections`` connections are served at once (one thread each); further
  ones get 503 and are closed;
- client input never gets a 5xx, error messages are capped at a few hundred bytes.

Bad requests get a 4xx JSON answer ``{"message": ..., "code": ...}`` and the server keeps
serving. With ``--capture`` each invocation is appended as one JSON line in the shape of
SageMaker data capture; rejected ones as metadata only (status, size, reason, no body). The
file (mode 0600) rotates at ``--capture-max-bytes`` to ``FILE.1`` ... ``FILE.N``
(``--capture-keep``). Standard library + numpy only (started as
``python -m tasks.serving.server``; it imports nothing else from the project).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import http.client
import io
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from tasks.serving import inference

DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's real-time invocation limit
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_IDLE_TIMEOUT_S = 10.0
DEFAULT_CAPTURE_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_CAPTURE_KEEP = 4
TOKEN_ENV = "POPSEG_ADMIN_TOKEN"
MAX_HEADER_BYTES = 64 * 1024  # request line excluded (the stdlib caps that at 64 KiB)
# After a refused body the connection is closed; what the client is still sending is discarded
# (never stored) for at most this long / this much, and only while it keeps coming, so that it
# reads the answer instead of a connection reset (boto3 sends its whole body before reading).
LINGER_S = 3.0
LINGER_IDLE_S = 0.5
LINGER_BYTES = 16 * 1024 * 1024
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_ERROR_CODES = {
    **inference.ERROR_CODES,
    403: "AccessDenied",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    411: "LengthRequired",
    414: "URITooLong",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalFailure",
    503: "ServiceUnavailable",
}


_short = inference.short_message


def _busy_reply() -> bytes:
    body = json.dumps(
        {"code": "ServiceUnavailable", "message": "the endpoint is at its connection limit"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\nx-amzn-ErrorType: ServiceUnavailable\r\nRetry-After: 1\r\n"
        "Connection: close\r\n\r\n" % len(body)
    )
    return head.encode("ascii") + body


_BUSY = _busy_reply()


class Model:
    """What is being served; replaced as a whole (one reference assignment) on reload."""

    def __init__(self, model_dir: str, version: str) -> None:
        self.chain = inference.model_fn(model_dir)
        self.model_dir = model_dir
        self.version = version


class CaptureLog:
    """JSON lines appended to ``path`` (0600), rotated to ``path.1`` .. ``path.keep`` before a
    line would take it over ``max_bytes``; the oldest file is dropped. A file only exceeds
    ``max_bytes`` when one line alone is larger."""

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._handle: io.BufferedWriter | None = None
        self._size = 0
        self._open()  # an unwritable path stops the server at start, not at the first request

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # also an older file created with the umask's mode
        self._handle = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        assert self._handle is not None
        self._handle.close()
        if self.keep == 0:
            os.unlink(self.path)
        for index in range(self.keep, 0, -1):
            source = self.path if index == 1 else "%s.%d" % (self.path, index - 1)
            if os.path.exists(source):
                os.replace(source, "%s.%d" % (self.path, index))
        self._open()

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        with self._lock:
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            assert self._handle is not None
            self._handle.write(line)
            self._handle.flush()
            self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class EndpointServer(HTTPServer):
    """One thread per connection, at most ``max_connections`` of them; past that a connection
    gets a canned 503 from the accepting thread and is closed."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, name: str, model: Model, options: argparse.Namespace) -> None:
        super().__init__(address, Handler)
        self.name = name
        self.model = model
        self.token = os.environ.get(TOKEN_ENV, "").encode("utf-8", "surrogateescape")
        # Options not given (a caller's own Namespace) take the command line's defaults.
        option = {**vars(_parser().parse_args(_REQUIRED)), **vars(options)}
        self.max_body = option["max_body_bytes"]
        self.request_timeout = option["request_timeout_s"]
        self.idle_timeout = option["idle_timeout_s"]
        self.capture_log = (
            CaptureLog(option["capture"], option["capture_max_bytes"], option["capture_keep"])
            if option["capture"]
            else None
        )
        self._slots = threading.BoundedSemaphore(option["max_connections"])
        self._reload_lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        worker = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True
        )
        try:
            worker.start()
        except RuntimeError:  # no thread to be had: as busy
            self._slots.release()
            self._refuse_busy(request)

    def _serve_connection(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        # Runs in the accepting thread: never blocks (the answer fits the send buffer).
        try:
            request.setblocking(False)
            request.send(_BUSY)
            for _ in range(4):  # what already arrived: closing with it unread would reset
                if not request.recv(1 << 16):
                    break
        except OSError:
            pass
        self.shutdown_request(request)

    # ------------------------------------------------------------------ model + capture

    def reload(self, model_dir: str, version: str) -> tuple[Model, Model]:
        with self._reload_lock:
            fresh = Model(model_dir, version)  # raises before anything changes
            previous, self.model = self.model, fresh
            return previous, fresh

    def capture(self, record: dict[str, Any]) -> None:
        if self.capture_log is None:
            return
        try:
            self.capture_log.write(record)
        except OSError as error:  # a full disk loses capture lines, not answers
            sys.stderr.write("capture: could not write %s: %s\n" % (self.capture_log.path, error))

    def server_close(self) -> None:
        super().server_close()
        if self.capture_log is not None:
            self.capture_log.close()


class _DeadlineReader(io.RawIOBase):
    """The connection's receiving side with the two timeouts: waiting for the first byte of a
    request is bounded by ``idle``; from that byte on, the whole request by ``total`` (a
    per-recv timeout alone lets one byte every few seconds hold a thread forever)."""

    def __init__(self, sock: socket.socket, idle: float, total: float) -> None:
        self._sock = sock
        self._idle = idle
        self._total = total
        self.deadline: float | None = None  # None: between requests

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            timeout = self._idle
        else:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("request not complete in time")
        self._sock.settimeout(timeout)
        count = self._sock.recv_into(buffer)
        if count and self.deadline is None:
            self.deadline = time.monotonic() + self._total
        return count


class _HeaderBudget:
    """``rfile`` as the header parser sees it: a 431 once the headers pass ``limit`` bytes."""

    def __init__(self, rfile, limit: int) -> None:
        self._rfile = rfile
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        line = self._rfile.readline(size)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("headers over %d bytes" % MAX_HEADER_BYTES)
        return line


class _Refused(Exception):
    def __init__(self, status: int, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.size = size


def _capture_data(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        return {
            "observedContentType": content_type,
            "mode": "INPUT",
            "data": body.decode("utf-8"),
            "encoding": "JSON" if "json" in content_type else "CSV",
        }
    except UnicodeDecodeError:
        return {
            "observedContentType": content_type,
            "mode": "INPUT",
            "data": base64.b64encode(body).decode("ascii"),
            "encoding": "BASE64",
        }


class Handler(BaseHTTPRequestHandler):
    server: EndpointServer
    protocol_version = "HTTP/1.1"
    server_version = "popseg-endpoint"

    def setup(self) -> None:
        self.connection = self.request
        # Headers and body go out as two writes: without TCP_NODELAY, Nagle + the client's
        # delayed ACK add ~40 ms to every keep-alive answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._reader = _DeadlineReader(
            self.connection, self.server.idle_timeout, self.server.request_timeout
        )
        self.rfile = io.BufferedReader(self._reader, 1 << 16)
        self.wfile = socketserver._SocketWriter(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), _short(format % args)))

    # ------------------------------------------------------------------ one request

    def handle_one_request(self) -> None:
        self._reader.deadline = None
        # Set before anything is read: a timeout on the request line is answered with these.
        self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
        self._replied = False
        self._route: str | None = None  # an invocation route: rejections are captured
        self._declared: int | None = None
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > 65536:
                self.send_error(414, "request line over 65536 bytes")
                return
            if not self.parse_request():
                return
            if self.request_version == "HTTP/0.9":
                self.send_error(400, "an HTTP version is required in the request line")
                return
            method = getattr(self, "do_" + self.command, None)
            if self.command not in ("GET", "POST") or method is None:
                self.close_connection = True
                self._error(405, "method %s is not allowed" % self.command)
                return
            method()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True
            if self._reader.deadline is not None and not self._replied:
                if self.request_version == "HTTP/0.9":
                    self.request_version = "HTTP/1.0"
                limit = self.server.request_timeout
                self._refused(_Refused(408, "the request did not arrive within %gs" % limit))
        except ConnectionError:
            self.close_connection = True

    def parse_request(self) -> bool:
        rfile = self.rfile
        self.rfile = _HeaderBudget(rfile, MAX_HEADER_BYTES)
        try:
            return super().parse_request()
        finally:
            self.rfile = rfile

    def handle_expect_100(self) -> bool:
        return True  # the 100 goes out after the framing is checked (``_read_body``)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """The stdlib's own refusals (request line, headers), as JSON; a client's bytes never
        earn a 5xx (505 for ``HTTP/2.0`` in a request line becomes 400)."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # or the answer goes out without a status line
        self.close_connection = True
        status = code if code < 500 else 400
        text = message or self.responses.get(status, ("bad request",))[0]
        if explain:
            text = "%s: %s" % (text, explain)
        self._error(status, text)

    # ------------------------------------------------------------------ replies

    def end_headers(self) -> None:
        # Writes get the whole request timeout, whatever the last read left of it.
        self.connection.settimeout(self.server.request_timeout)
        super().end_headers()

    def _reply(self, status: int, payload: Any, content_type: str = inference.JSON, model=None):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        self._replied = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if model is not None:
            self.send_header("X-Popseg-Model-Version", model.version)
        if status >= 400:
            self.send_header("x-amzn-ErrorType", _ERROR_CODES.get(status, "ModelError"))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, model=None) -> None:
        code = _ERROR_CODES.get(status, "ModelError")
        self._reply(status, {"code": code, "message": _short(message)}, model=model)

    def _refused(self, refusal: _Refused) -> None:
        """A request refused for its framing or timing: answer, capture its metadata, close."""
        self.close_connection = True
        self._error(refusal.status, str(refusal))
        self._capture_rejected(refusal.status, str(refusal), refusal.size)
        self._linger()

    def _linger(self) -> None:
        """Discard (bounded in time and bytes, never stored) what the client is still sending
        after the answer, so that it reads the answer instead of a reset."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            left = LINGER_BYTES
            scratch = bytearray(1 << 16)
            while left > 0:
                timeout = min(deadline - time.monotonic(), LINGER_IDLE_S)
                if timeout <= 0:
                    break
                self.connection.settimeout(timeout)
                count = self.connection.recv_into(scratch)
                if not count:
                    break
                left -= count
        except OSError:
            pass

    # ------------------------------------------------------------------ body

    def _content_length(self) -> int:
        """The body's length from the headers; raises ``_Refused`` for anything but exactly
        one plain decimal Content-Length within the limit (or none and no body)."""
        lengths = self.headers.get_all("Content-Length") or []
        encodings = self.headers.get_all("Transfer-Encoding") or []
        if encodings and lengths:
            raise _Refused(400, "Transfer-Encoding and Content-Length together are not accepted")
        if encodings:
            if "chunked" in ",".join(encodings).lower():
                raise _Refused(411, "chunked bodies are not accepted; send a Content-Length")
            raise _Refused(400, "Transfer-Encoding %r is not accepted" % ",".join(encodings))
        if not lengths:
            raise _Refused(411, "a Content-Length header is required")
        if len(lengths) > 1:
            raise _Refused(400, "Content-Length is given %d times" % len(lengths))
        text = lengths[0].strip()
        if not _CONTENT_LENGTH.fullmatch(text):
            raise _Refused(400, "bad Content-Length %r: expected a decimal byte count" % text)
        size = int(text)
        self._declared = size
        if size > self.server.max_body:
            raise _Refused(
                413,
                "request body of %d bytes is over the endpoint's limit of %d bytes"
                % (size, self.server.max_body),
                size,
            )
        return size

    def _read_body(self) -> bytes:
        size = self._content_length()
        if self.headers.get("Expect", "").lower() == "100-continue" and (
            self.request_version >= "HTTP/1.1"
        ):
            self.send_response_only(100)
            self.end_headers()
        body = self.rfile.read(size) if size else b""
        if len(body) != size:
            raise _Refused(400, "the body ended after %d of %d bytes" % (len(body), size), size)
        return body

    def _has_body(self) -> bool:
        length = self.headers.get("Content-Length", "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length not in ("", "0")

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if self._has_body():
            self.close_connection = True  # unread: it would be taken for the next request
        if path == "/ping":
            model = self.server.model
            self._reply(
                200,
                {"status": "ok", "endpoint": self.server.name, "model_version": model.version},
                model=model,
            )
        else:
            self._error(404, "no route GET %s" % path)

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/invocations" or (
            path.startswith("/endpoints/") and path.endswith("/invocations")
        ):
            self._route = path
        try:
            body = self._read_body()
        except _Refused as refusal:
            self._refused(refusal)
            return
        if path == "/invocations":
            self._invoke(body)
        elif self._route is not None:
            name = path[len("/endpoints/") : -len("/invocations")]
            if name != self.server.name:
                message = "endpoint %r is not served here (this server serves %r)" % (
                    name,
                    self.server.name,
                )
                self._error(404, message)
                self._capture_rejected(404, message, len(body))
            else:
                self._invoke(body)
        elif path == "/admin/reload":
            self._admin_reload(body)
        else:
            self._error(404, "no route POST %s" % path)

    def _invoke(self, body: bytes) -> None:
        model = self.server.model  # one read: this request is answered by one model
        content_type = self.headers.get("Content-Type", "")
        accept = self.headers.get("Accept")
        started = time.time()
        try:
            answer, answer_type = inference.handle(model.chain, body, content_type, accept)
        except inference.RequestError as error:
            status, answer = error.status, str(error)
            self._error(status, answer, model=model)
        except Exception as error:  # the server keeps serving whatever a request does
            status, answer = 500, "internal error: %s" % error
            self._error(status, answer, model=model)
        else:
            status = 200
            self._reply(200, answer.encode("utf-8"), answer_type, model=model)
        if self.server.capture_log is None:
            return
        if status != 200:
            self._capture_rejected(status, answer, len(body), model, started)
            return
        self.server.capture(
            {
                "captureData": {
                    "endpointInput": _capture_data(body, content_type),
                    "endpointOutput": {
                        "observedContentType": answer_type,
                        "mode": "OUTPUT",
                        "data": answer,
                        "encoding": "JSON",
                    },
                },
                "eventMetadata": self._event(model, started, status),
                "eventVersion": "0",
            }
        )

    def _event(self, model: Model | None, started: float, status: int) -> dict[str, Any]:
        return {
            "eventId": str(uuid.uuid4()),
            "inferenceTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "endpointName": self.server.name,
            "modelVersion": (model or self.server.model).version,
            "status": status,
            "latencyMs": round((time.time() - started) * 1000.0, 3),
        }

    def _capture_rejected(
        self,
        status: int,
        reason: str,
        size: int | None,
        model: Model | None = None,
        started: float | None = None,
    ) -> None:
        """A refused invocation as metadata: status, size, reason; never its body. The record
        keeps the capture shape (empty data) so that readers of the log skip it by status."""
        if self.server.capture_log is None or self._route is None:
            return
        content_type = _short(self.headers.get("Content-Type", ""), 100) if self.headers else ""
        event = self._event(model, started or time.time(), status)
        event.update(
            {
                "rejected": True,
                "requestBytes": size if size is not None else self._declared,
                "reason": _short(reason),
            }
        )
        self.server.capture(
            {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": content_type,
                        "mode": "INPUT",
                        "data": "",
                        "encoding": "NONE",
                    },
                },
                "eventMetadata": event,
                "eventVersion": "0",
            }
        )

    def _admin_reload(self, body: bytes) -> None:
        # Header values arrive as latin-1 text; compared as bytes, any byte is just a mismatch.
        token = self.headers.get("X-Popseg-Token", "").encode("utf-8", "surrogateescape")
        if not self.server.token or not hmac.compare_digest(token, self.server.token):
            self._error(403, "bad or missing admin token")
            return
        try:
            request = json.loads(body.decode("utf-8"))
            model_dir, version = str(request["model_dir"]), str(request["model_version"])
        except (ValueError, KeyError, TypeError, RecursionError):
            self._error(400, 'expected {"model_dir": ..., "model_version": ...}')
            return
        try:
            previous, fresh = self.server.reload(model_dir, version)
        except Exception as error:
            self._error(
                400,
                "could not load %s: %s; still serving version %s"
                % (model_dir, error, self.server.model.version),
            )
            return
        self.log_message("swapped model version %s -> %s", previous.version, fresh.version)
        self._reply(200, {"previous_version": previous.version, "model_version": fresh.version})


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError("must be > 0, got %s" % text)
        return value

    return parse


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0, got %s" % text)
    return value


_REQUIRED = ["--name", "-", "--model-dir", "-", "--model-version", "-"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="popseg local endpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", help="written with {pid, port} once listening")
    parser.add_argument("--capture", help="append request/response capture (JSON lines)")
    parser.add_argument(
        "--capture-max-bytes", type=_positive(int), default=DEFAULT_CAPTURE_MAX_BYTES
    )
    parser.add_argument("--capture-keep", type=_not_negative, default=DEFAULT_CAPTURE_KEEP)
    parser.add_argument("--max-body-bytes", type=_positive(int), default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-connections", type=_positive(int), default=DEFAULT_MAX_CONNECTIONS)
    parser.add_argument(
        "--request-timeout-s", type=_positive(float), default=DEFAULT_REQUEST_TIMEOUT_S
    )
    parser.add_argument("--idle-timeout-s", type=_positive(float), default=DEFAULT_IDLE_TIMEOUT_S)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)

    model = Model(options.model_dir, options.model_version)
    server = EndpointServer(("127.0.0.1", options.port), options.name, model, options)

    def stop(signum, frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.server_address[1]
    if options.ready_file:
        scratch = options.ready_file + ".tmp"
        with open(scratch, "w") as handle:
            json.dump({"pid": os.getpid(), "port": port}, handle)
        os.replace(scratch, options.ready_file)
    sys.stderr.write(
        "serving endpoint %r (model version %s) on http://127.0.0.1:%d\n"
        % (options.name, model.version, port)
    )
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
