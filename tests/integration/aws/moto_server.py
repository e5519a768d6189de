"""moto's standalone server on 127.0.0.1, one request at a time: the local AWS endpoint of the tests.

Real S3 and DynamoDB apply a conditional write atomically. moto 5.2.5 checks the condition
and then writes in two steps without a lock, so under its threaded server two racing writes
can both pass the check: with 8 threads x 25 conditional increments on one DynamoDB item,
5-13 of 200 updates were lost against plain `ThreadedMotoServer`, none with this one.
Serving one request at a time restores the atomicity the real services guarantee, so the
concurrency tests check our read-modify-write protocol, not moto's races.

Run as `python -m tests.integration.aws.moto_server`: prints the port, serves until stdin
closes (a separate process, so the server and the test's clients use both cores).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serialized(app: WSGIApp) -> WSGIApp:
    lock = threading.Lock()

    def serve_one(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            result = app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    return serve_one


class SerialMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose application handles one request at a time."""

    def _server_entry(self) -> None:
        # Same as moto 5.2.5's ThreadedMotoServer._server_entry, with the app serialized.
        app = serialized(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, threaded=True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # the test session closes our stdin (or dies) -> stop
    server.stop()


if __name__ == "__main__":
    main()
