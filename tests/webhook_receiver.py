"""A real webhook receiver for the alert tests: an HTTP server on 127.0.0.1 (a free port) in a
thread, recording every POST and answering from a script of (status, delay, headers)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.processes import free_port


@dataclass
class Answer:
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Receiver:
    url: str
    script: list[Answer]
    requests: list[dict[str, Any]] = field(default_factory=list)

    def payloads(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received (those answered 2xx), optionally of one event."""
        bodies = [item["json"] for item in self.requests if 200 <= item["status"] < 300]
        return [body for body in bodies if event is None or body.get("event") == event]


@contextlib.contextmanager
def webhook_receiver(*script: Answer) -> Iterator[Receiver]:
    """Answers the n-th POST with ``script[n]`` (200 at once once the script is used up)."""
    receiver = Receiver(url="", script=list(script))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            with lock:
                index = len(receiver.requests)
                answer = receiver.script[index] if index < len(receiver.script) else Answer()
                receiver.requests.append(
                    {
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "json": json.loads(body),
                        "status": answer.status,
                        "at": time.monotonic(),
                    }
                )
            time.sleep(answer.delay_s)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (its timeout)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-token"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/hooks/secret-token"
