"""A Lambda Runtime API on 127.0.0.1, so `awslambdaric` runs a handler exactly as Lambda does.

The API is three routes (next invocation, its response, its error) plus init error. The
test puts events in; the runtime client long-polls `next`, runs the handler, and posts the
result back, which the test reads.
"""

from __future__ import annotations

import itertools
import json
import queue
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:edgecache"


class RuntimeAPI:
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.results: dict[str, tuple[str, Any]] = {}
        self.init_errors: list[Any] = []
        self._done = threading.Condition()
        self._ids = itertools.count(1)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Without this, Nagle + delayed ACK add ~40-90 ms to every small exchange.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _client_gone(self) -> bool:
                self.connection.setblocking(False)
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except BlockingIOError:
                    return False
                except OSError:
                    return True
                finally:
                    self.connection.setblocking(True)

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    return self._send(404)
                # Hand an event only to a client that is still there: a killed container's
                # long poll must not swallow the next invocation.
                while True:
                    try:
                        request_id, event = api.events.get(timeout=0.2)
                    except queue.Empty:
                        if self._client_gone():
                            self.close_connection = True
                            return
                        continue
                    if not self._client_gone():
                        break
                    api.events.put((request_id, event))  # for a live client
                    self.close_connection = True
                    return
                self._send(
                    200,
                    json.dumps(event).encode(),
                    {
                        "Content-Type": "application/json",
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(int((time.time() + 60) * 1000)),
                        "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                        "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
                    },
                )

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                parts = self.path[len(PREFIX) :].strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_errors.append(body.decode())
                    return self._send(202)
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    with api._done:
                        api.results[parts[1]] = (parts[2], json.loads(body) if body else None)
                        api._done.notify_all()
                    return self._send(202)
                self._send(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> RuntimeAPI:
        self.thread.start()
        return self

    def invoke(self, event: dict, timeout: float = 60.0) -> Any:
        """Queue an event and wait for the handler's answer (raises on a handler error)."""
        request_id = f"req-{next(self._ids)}"
        self.events.put((request_id, event))
        deadline = time.monotonic() + timeout
        with self._done:
            while request_id not in self.results:
                left = deadline - time.monotonic()
                if left <= 0 or self.init_errors:
                    raise TimeoutError(f"no answer for {request_id}; init errors: {self.init_errors}")
                self._done.wait(min(left, 0.5))
            kind, payload = self.results.pop(request_id)
        if kind == "error":
            raise RuntimeError(f"handler error: {payload}")
        return payload

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
