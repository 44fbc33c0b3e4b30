"""The local endpoint: a real HTTP server process on 127.0.0.1 serving one model package.

Routes (the SageMaker serving contract, so the stock boto3 ``sagemaker-runtime`` client works
against it unchanged with ``endpoint_url``):

- ``GET /ping``: 200 with the endpoint name and model version once a model is loaded;
- ``POST /invocations`` and ``POST /endpoints/{name}/invocations``: the inference handlers of
  ``tasks/serving/inference.py`` (the same code that runs in SageMaker's container);
- ``POST /admin/reload`` (header ``X-Popseg-Token``): load another model directory and swap it
  in atomically: requests already running finish on the old model, new ones get the new one,
  nothing is dropped. A directory that does not load leaves the current model serving.

Bad requests get a 4xx JSON answer ``{"message": ..., "code": ...}`` and the server keeps
serving. With ``--capture`` every invocation is appended as one JSON line in the shape of
SageMaker data capture. Standard library + numpy only (started as
``python -m tasks.serving.server``; it imports nothing else from the project).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tasks.serving import inference

DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's real-time invocation limit
TOKEN_ENV = "POPSEG_ADMIN_TOKEN"
_ERROR_CODES = {
    400: "ValidationError",
    403: "AccessDenied",
    404: "NotFound",
    406: "NotAcceptable",
    411: "LengthRequired",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    500: "InternalFailure",
}


class Model:
    """What is being served; replaced as a whole (one reference assignment) on reload."""

    def __init__(self, model_dir: str, version: str) -> None:
        self.chain = inference.model_fn(model_dir)
        self.model_dir = model_dir
        self.version = version


class EndpointServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, name: str, model: Model, options: argparse.Namespace) -> None:
        super().__init__(address, Handler)
        self.name = name
        self.model = model
        self.token = os.environ.get(TOKEN_ENV, "")
        self.max_body = options.max_body_bytes
        self.capture_path = options.capture
        self._capture_lock = threading.Lock()
        self._reload_lock = threading.Lock()

    def reload(self, model_dir: str, version: str) -> tuple[Model, Model]:
        with self._reload_lock:
            fresh = Model(model_dir, version)  # raises before anything changes
            previous, self.model = self.model, fresh
            return previous, fresh

    def capture(self, record: dict[str, Any]) -> None:
        if not self.capture_path:
            return
        line = json.dumps(record) + "\n"
        with self._capture_lock, open(self.capture_path, "a") as handle:
            handle.write(line)


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
    # Headers and body go out as two writes: without TCP_NODELAY, Nagle + the client's
    # delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), format % args))

    # ------------------------------------------------------------------ replies

    def _reply(self, status: int, payload: Any, content_type: str = inference.JSON, model=None):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if model is not None:
            self.send_header("X-Popseg-Model-Version", model.version)
        if status >= 400:
            self.send_header("x-amzn-ErrorType", _ERROR_CODES.get(status, "ModelError"))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, model=None) -> None:
        code = _ERROR_CODES.get(status, "ModelError")
        self._reply(status, {"code": code, "message": message}, model=model)

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            self._error(411, "a Content-Length header is required")
            return None
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            self._error(400, "bad Content-Length %r" % length)
            return None
        if size > self.server.max_body:
            # Drain what was sent (bounded) so the client reads the answer, then close.
            remaining = min(size, 8 * self.server.max_body)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
            self.close_connection = True
            self._error(
                413,
                "request body of %d bytes is over the endpoint's limit of %d bytes"
                % (size, self.server.max_body),
            )
            return None
        return self.rfile.read(size) if size else b""

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
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
        body = self._read_body()
        if body is None:
            return
        if path == "/invocations":
            self._invoke(body)
        elif path.startswith("/endpoints/") and path.endswith("/invocations"):
            name = path[len("/endpoints/") : -len("/invocations")]
            if name != self.server.name:
                self._error(
                    404,
                    "endpoint %r is not served here (this server serves %r)"
                    % (name, self.server.name),
                )
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
            status, answer, answer_type = error.status, str(error), None
            self._error(status, answer, model=model)
        except Exception as error:  # the server keeps serving whatever a request does
            status, answer, answer_type = 500, "internal error: %s" % error, None
            self._error(status, answer, model=model)
        else:
            status = 200
            self._reply(200, answer.encode("utf-8"), answer_type, model=model)
        if self.server.capture_path:
            self.server.capture(
                {
                    "captureData": {
                        "endpointInput": _capture_data(body, content_type),
                        "endpointOutput": {
                            "observedContentType": answer_type or inference.JSON,
                            "mode": "OUTPUT",
                            "data": answer,
                            "encoding": "JSON",
                        },
                    },
                    "eventMetadata": {
                        "eventId": str(uuid.uuid4()),
                        "inferenceTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                        "endpointName": self.server.name,
                        "modelVersion": model.version,
                        "status": status,
                        "latencyMs": round((time.time() - started) * 1000.0, 3),
                    },
                    "eventVersion": "0",
                }
            )

    def _admin_reload(self, body: bytes) -> None:
        token = self.headers.get("X-Popseg-Token", "")
        if not self.server.token or not hmac.compare_digest(token, self.server.token):
            self._error(403, "bad or missing admin token")
            return
        try:
            request = json.loads(body.decode("utf-8"))
            model_dir, version = str(request["model_dir"]), str(request["model_version"])
        except (ValueError, KeyError, TypeError):
            self._error(400, 'expected {"model_dir": ..., "model_version": ...}')
            return
        try:
            previous, fresh = self.server.reload(model_dir, version)
        except Exception as error:
            self._error(
                500,
                "could not load %s: %s; still serving version %s"
                % (model_dir, error, self.server.model.version),
            )
            return
        self.log_message("swapped model version %s -> %s", previous.version, fresh.version)
        self._reply(200, {"previous_version": previous.version, "model_version": fresh.version})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="popseg local endpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", help="written with {pid, port} once listening")
    parser.add_argument("--capture", help="append request/response capture (JSON lines)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    options = parser.parse_args(argv)

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
