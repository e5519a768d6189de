"""`edgecache serve`: the local HTTP API over a CacheRegistry.

Local mode trusts one header for the user id (default `X-Edgecache-User`): the
caller's auth layer (a reverse proxy, an API gateway) must set it and strip any
value the client sent. Never expose this port without such a layer in front.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import EdgecacheError, EntryNotFoundError, InvalidInputError, SnapshotError
from .httperrors import RequestError, decode_json_body
from .load import BackendMonitor
from .numbers import is_number
from .proxy import (
    CACHED_HEADER,
    Reply,
    StreamCollector,
    Upstream,
    UpstreamError,
    cache_key,
    complete_answer,
    completion,
    completion_events,
    namespace,
)
from .registry import CacheRegistry
from .stores import check_user

log = logging.getLogger("edgecache.server")

USER_HEADER = "X-Edgecache-User"
MAX_BODY_BYTES = 8 * 1024 * 1024
READ_TIMEOUT_SECONDS = 30.0
CHAT_PATH = "/v1/chat/completions"
JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _field(body: dict, name: str, kinds: tuple[type, ...], required: bool = True) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", f"missing field {name!r}")
        return None
    value = body[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", f"field {name!r} must be {expected}")
    return value


def json_body(raw: bytes) -> dict:
    """A request body as a JSON object, or the 4xx that says what is wrong with it (the
    decoding the Ray deployments use, in this service's error kinds)."""
    try:
        return decode_json_body(raw, "", MAX_BODY_BYTES)
    except RequestError as exc:
        kind = "too_large" if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE else "invalid_request"
        raise HttpError(HTTPStatus(exc.status), kind, exc.message) from None


def error_response(exc: Exception) -> tuple[HTTPStatus, str, str]:
    """The one mapping from an exception to (status, error type, message). Unexpected errors
    are logged with their traceback here and answered without one."""
    if isinstance(exc, HttpError):
        return exc.status, exc.kind, exc.message
    if isinstance(exc, EntryNotFoundError):
        return HTTPStatus.NOT_FOUND, "not_found", str(exc.args[0])
    if isinstance(exc, InvalidInputError):
        return HTTPStatus.BAD_REQUEST, "invalid_request", str(exc)
    log.error("request failed", exc_info=exc)
    if isinstance(exc, SnapshotError):
        return (
            HTTPStatus.INTERNAL_SERVER_ERROR,
            "SnapshotError",
            f"{exc}; POST /v1/clear keeps the unreadable snapshot aside and starts this user empty",
        )
    if isinstance(exc, EdgecacheError):
        return HTTPStatus.INTERNAL_SERVER_ERROR, type(exc).__name__, str(exc)
    return HTTPStatus.INTERNAL_SERVER_ERROR, "internal", "internal error"


class Service:
    """The routes, independent of the HTTP plumbing (the Lambda handlers reuse it)."""

    def __init__(self, registry: CacheRegistry, upstream: Upstream | None = None) -> None:
        self.registry = registry
        self.upstream = upstream
        self.requests = _InFlight()
        # Why the last flush failed; None once one succeeds. Requests keep succeeding while
        # saves fail, so /health is where the data loss shows.
        self.save_error: str | None = None
        self.routes: dict[tuple[str, str], Callable[[str, dict], dict]] = {
            ("POST", "/v1/lookup"): self.lookup,
            ("POST", "/v1/insert"): self.insert,
            ("POST", "/v1/feedback"): self.feedback,
            ("POST", "/v1/delete"): self.delete,
            ("POST", "/v1/clear"): self.clear,
            ("GET", "/v1/stats"): self.stats,
            ("POST", "/v1/backend"): self.backend,
        }

    def lookup(self, user: str, body: dict) -> dict:
        with self.registry.use(user) as cache:
            result = cache.lookup(
                _field(body, "query", (str,)),
                _field(body, "context", (list,), False),
                category=_field(body, "category", (str,), False),
            )
        return result.to_dict()

    def insert(self, user: str, body: dict) -> dict:
        with self.registry.use(user, mutate=True) as cache:
            result = cache.insert_detailed(
                _field(body, "query", (str,)),
                _field(body, "response", (str,)),
                context=_field(body, "context", (list,), False),
                ttl_seconds=_field(body, "ttl_seconds", (int, float), False),
                metadata=_field(body, "metadata", (dict,), False),
                category=_field(body, "category", (str,), False),
            )
        return asdict(result)

    def feedback(self, user: str, body: dict) -> dict:
        with self.registry.use(user, mutate=True) as cache:
            entry = cache.feedback(_field(body, "entry_id", (int,)), _field(body, "correct", (bool,)))
        return {"entry_id": entry.id, "right": entry.right_feedback, "wrong": entry.wrong_feedback}

    def delete(self, user: str, body: dict) -> dict:
        with self.registry.use(user, mutate=True) as cache:
            cache.delete(_field(body, "entry_id", (int,)))
        return {"deleted": True}

    def clear(self, user: str, body: dict) -> dict:
        set_aside = self.registry.clear(user)
        return {"cleared": True, **({"set_aside": set_aside} if set_aside else {})}

    def stats(self, user: str, body: dict) -> dict:
        with self.registry.use(user) as cache:
            return cache.stats().to_dict()

    def flush(self) -> None:
        """Write changed caches back, remembering for /health whether that worked."""
        try:
            self.registry.flush()
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.save_error = f"{type(exc).__name__}: {reason}"
            raise
        self.save_error = None

    def health(self) -> dict:
        out = {"status": "ok", "vectors": self.registry.embedder.fingerprint[:12]}
        if self.save_error is not None:
            out |= {"status": "saves_failing", "save_error": self.save_error}
        return out

    def chat(self, user: str, body: dict, cache_control: str = "") -> Reply:
        """OpenAI-compatible chat completions through the cache (edgecache.proxy)."""
        if self.upstream is None:
            raise HttpError(
                HTTPStatus.NOT_FOUND, "proxy_off", "no upstream configured (serve --upstream-url)"
            )
        settings = self.upstream.settings
        key, bypass = cache_key(body, settings)
        stream = body.get("stream") is True
        store = key is not None and "no-store" not in cache_control
        ns = namespace(check_user(user), key.model, key.system) if key is not None else ""
        if key is not None and "no-cache" not in cache_control:
            with self.registry.use(ns) as cache:
                found = cache.lookup(key.query, context=key.context or None)
            if found.hit and found.response is not None:
                headers = {
                    CACHED_HEADER: "hit",
                    "X-Edgecache-Entry": str(found.entry_id),
                    "X-Edgecache-Similarity": f"{found.similarity:.4f}",
                }
                if stream:
                    events = completion_events(
                        found.response, key.model, found.entry_id, settings.chunk_chars
                    )
                    return Reply(200, headers=headers | SSE_HEADERS, stream=events)
                answer = completion(found.response, key.model, found.entry_id)
                return Reply(200, json.dumps(answer).encode(), headers | JSON_HEADERS)
        marker = {CACHED_HEADER: "miss" if key is not None else f"bypass; {bypass}"}
        try:
            conn, response, started = self.upstream.send(body)
        except UpstreamError as exc:
            raise HttpError(HTTPStatus.BAD_GATEWAY, "upstream_unreachable", str(exc)) from None
        content_type = response.getheader("Content-Type", "application/json")

        def keep(answer: str | None) -> None:
            if not (store and answer and key is not None):
                return
            try:
                with self.registry.use(ns, mutate=True) as cache:
                    cache.insert(key.query, answer, context=key.context or None)
            except EdgecacheError:
                log.exception("caching an upstream answer failed; the client got it anyway")

        if stream and response.status == 200 and content_type.startswith("text/event-stream"):
            collector = StreamCollector(response)

            def relay() -> Iterator[bytes]:
                try:
                    yield from collector
                finally:
                    conn.close()
                    self.upstream.record(started, response.status)  # type: ignore[union-attr]
                keep(collector.answer())

            return Reply(200, headers=marker | SSE_HEADERS, stream=relay())
        data = response.read()
        conn.close()
        self.upstream.record(started, response.status)
        if response.status == 200:
            try:
                keep(complete_answer(json.loads(data)))
            except ValueError:
                log.warning("upstream answered 200 with a body that is not JSON; not cached")
        return Reply(response.status, data, marker | {"Content-Type": content_type})

    def backend(self, user: str, body: dict) -> dict:
        """The caller reports one LLM call it made (after a miss): its latency and status.
        Reports drive load adaptation; any authenticated caller may send them."""
        load = self.registry.load
        if not isinstance(load, BackendMonitor):
            raise HttpError(HTTPStatus.CONFLICT, "load_off", "this service does not take backend reports")
        latency = _field(body, "latency_ms", (int, float))
        if not is_number(latency):
            raise HttpError(
                HTTPStatus.BAD_REQUEST, "invalid_request", "field 'latency_ms' must be a finite number"
            )
        status = _field(body, "status", (int,), False)
        try:
            load.record(latency / 1000.0, 200 if status is None else status)
        except ValueError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", str(exc)) from None
        return {"load": round(load.level(), 4)}

    def metrics_text(self) -> str:
        """Prometheus text exposition: counters since the process started (evicted users'
        included, so they never go down) and gauges of the loaded caches, in total and per
        category."""
        caches = self.registry.loaded()
        per_category: dict[str, dict[str, int]] = {
            category: {**counts, "entries": 0, "bytes": 0}
            for category, counts in self.registry.counters().items()
        }
        counted = ("lookups", "hits", "inserts")
        totals = {name: sum(c[name] for c in per_category.values()) for name in counted}
        totals |= {"entries": 0, "index_bytes": 0}
        for cache in caches:
            stats = cache.stats()
            totals["entries"] += stats.entries
            totals["index_bytes"] += stats.index_bytes
            for category, counts in stats.categories.items():  # counters() covers every loaded one
                per_category[category]["entries"] += counts["entries"]
                per_category[category]["bytes"] += counts["bytes"]
        lines = [
            "# TYPE edgecache_loaded_users gauge",
            f"edgecache_loaded_users {len(caches)}",
        ]
        if self.registry.load is not None:
            lines += [
                "# TYPE edgecache_backend_load gauge",
                f"edgecache_backend_load {self.registry.load.level()}",
            ]
        kinds = {
            "lookups": "counter",
            "hits": "counter",
            "inserts": "counter",
            "entries": "gauge",
            "index_bytes": "gauge",
        }
        for name, kind in kinds.items():
            suffix = "_total" if kind == "counter" else ""
            lines += [f"# TYPE edgecache_{name}{suffix} {kind}", f"edgecache_{name}{suffix} {totals[name]}"]
        gauges = {"entries", "bytes"}
        for name in next(iter(per_category.values()), {}):
            metric = f"edgecache_category_{name}" + ("" if name in gauges else "_total")
            lines.append(f"# TYPE {metric} {'gauge' if name in gauges else 'counter'}")
            lines += [
                f'{metric}{{category="{c}"}} {counts[name]}' for c, counts in sorted(per_category.items())
            ]
        return "\n".join(lines) + "\n"


class _InFlight:
    """Requests being handled, and whether new ones are still taken. A stop waits for those in
    flight before the last save: an insert answered 200 after that save would be lost."""

    def __init__(self) -> None:
        self._count = 0
        self._open = True
        self._changed = threading.Condition()

    def enter(self) -> bool:
        with self._changed:
            if self._open:
                self._count += 1
            return self._open

    def leave(self) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Take no more requests; whether those in flight finished within `timeout`."""
        with self._changed:
            self._open = False
            return self._changed.wait_for(lambda: self._count == 0, timeout)


class _ClientGone(ConnectionError):
    """The client closed its connection before its answer was written."""


_CLIENT_GONE = (_ClientGone, BrokenPipeError, ConnectionResetError)


# What a request that arrives while the server stops gets: it was not handled, so nothing
# of it was acknowledged (a load balancer retries it elsewhere).
_STOPPING = json.dumps(
    {"error": {"type": "shutting_down", "message": "the server is stopping; send the request again"}}
).encode()


class _Deadlines:
    """Connections whose request must be in by a time; one thread drops those that are late
    (a timer thread per request would cost more than the request's own work)."""

    def __init__(self) -> None:
        self._due: dict[BaseHTTPRequestHandler, float] = {}
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def arm(self, handler: BaseHTTPRequestHandler, at: float) -> None:
        with self._lock:
            self._due[handler] = at
            if self._watch is None:
                self._watch = threading.Thread(target=self._run, name="edgecache-deadlines", daemon=True)
                self._watch.start()

    def disarm(self, handler: BaseHTTPRequestHandler) -> None:
        """Once this returns, the handler's connection is not dropped."""
        with self._lock:
            self._due.pop(handler, None)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            with self._lock:
                if self._due:
                    idle_since = now
                elif now - idle_since > 5.0:  # a server nobody talks to keeps no thread
                    self._watch = None
                    return
                for handler in [h for h, at in self._due.items() if at <= now]:
                    del self._due[handler]
                    # Under the lock: a handler that disarmed in the meantime is not cut.
                    handler.dropped = True  # type: ignore[attr-defined]
                    with contextlib.suppress(OSError):  # already closed
                        handler.connection.shutdown(socket.SHUT_RDWR)


def make_handler(service: Service, user_header: str) -> type[BaseHTTPRequestHandler]:
    deadlines = _Deadlines()

    class Handler(BaseHTTPRequestHandler):
        server_version = "edgecache"
        protocol_version = "HTTP/1.1"
        # Seconds a connection may sit idle or trickle its request: a client that never
        # finishes sending would otherwise hold a server thread for good.
        timeout = READ_TIMEOUT_SECONDS

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def handle_one_request(self) -> None:
            # The socket's timeout bounds each read of the request line and headers, not all
            # of them: past READ_TIMEOUT_SECONDS in all the connection is dropped. The routes
            # disarm it (a streamed answer may take longer); `_read` bounds the body.
            try:
                # An idle kept-alive connection waits under the socket's own timeout; the
                # deadline starts with the request's first byte.
                waiting = self.rfile.peek(1)
            except OSError:  # the idle timeout, or the client went away
                waiting = b""
            if not waiting:
                self.close_connection = True
                return
            if not service.requests.enter():
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.wfile.write(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_STOPPING), _STOPPING)
                    )
                return
            self.dropped = False
            deadlines.arm(self, time.monotonic() + READ_TIMEOUT_SECONDS)
            try:
                super().handle_one_request()
            except OSError as exc:
                if not (
                    self.dropped or isinstance(exc, _ClientGone | BrokenPipeError | ConnectionResetError)
                ):
                    raise
                self.close_connection = True  # its answer had nowhere to go
            finally:
                deadlines.disarm(self)
                service.requests.leave()

        def _reply(self, status: HTTPStatus, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            if self.request_version == "HTTP/0.9":
                # Left so by a request line http.server could not parse: it would then write the
                # body with no status line or headers at all.
                self.request_version = "HTTP/1.0"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            with self._client():
                self.end_headers()
                if self.command != "HEAD":  # a reply to HEAD carries headers only
                    self.wfile.write(data)

        @contextlib.contextmanager
        def _client(self) -> Iterator[None]:
            """Writes to the client: its going away is not the server's error."""
            try:
                yield
            except _CLIENT_GONE as exc:
                log.debug("%s went away before its answer was written", self.address_string())
                raise _ClientGone(str(exc)) from exc

        def _send(self, reply: Reply) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.stream is None:
                self.send_header("Content-Length", str(len(reply.body)))
                with self._client():
                    self.end_headers()
                    self.wfile.write(reply.body)
                return
            # An event stream ends when the connection does: no length to announce.
            self.close_connection = True
            self.send_header("Connection", "close")
            with self._client():
                self.end_headers()
                for chunk in reply.stream:
                    self.wfile.write(chunk)
                    self.wfile.flush()

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """What http.server refuses before a route runs (a malformed request line, headers
            too large, an unknown method) is answered in JSON like everything else."""
            status = HTTPStatus(code)
            kind = "method_not_allowed" if status == HTTPStatus.NOT_IMPLEMENTED else "invalid_request"
            self._error(status, kind, message or status.phrase)

        def _error(self, status: HTTPStatus, kind: str, message: str) -> None:
            # The body may be unread (or half read); closing keeps its bytes from being
            # parsed as the next request on a kept-alive connection.
            self.close_connection = True
            self._reply(status, {"error": {"type": kind, "message": message}})

        def _body(self) -> dict:
            lengths = [v.strip(" \t") for v in self.headers.get_all("Content-Length") or []]
            if self.headers.get("Transfer-Encoding") is not None:
                # Chunked bodies are not taken; with a length too, which framing a proxy in
                # front used is unknowable. Refused (and the connection closed), not guessed.
                raise HttpError(
                    HTTPStatus.BAD_REQUEST if lengths else HTTPStatus.LENGTH_REQUIRED,
                    "invalid_request",
                    "Transfer-Encoding is not taken; send the body with a Content-Length",
                )
            if not lengths:
                if self.command == "GET":
                    return {}
                raise HttpError(HTTPStatus.LENGTH_REQUIRED, "invalid_request", "Content-Length required")
            # Plain digits, one value: int() would take "+48" or "4_8", and two differing
            # lengths would let a proxy and this server split the stream differently.
            if len(set(lengths)) > 1 or not lengths[0].isascii() or not lengths[0].isdigit():
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", "bad Content-Length")
            size = int(lengths[0])
            if size > MAX_BODY_BYTES:
                raise HttpError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"body over {MAX_BODY_BYTES} bytes"
                )
            raw = self._read(size)
            if not raw and self.command == "GET":
                return {}
            return json_body(raw)

        def _read(self, size: int) -> bytes:
            """The body, within READ_TIMEOUT_SECONDS in all: the socket's timeout bounds each
            read, so a client trickling bytes would otherwise hold a thread for good."""
            deadline = time.monotonic() + READ_TIMEOUT_SECONDS
            chunks, left = [], size
            try:
                while left:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self.connection.settimeout(remaining)
                    chunk = self.rfile.read1(min(left, 1 << 16))
                    if not chunk:
                        raise HttpError(
                            HTTPStatus.BAD_REQUEST,
                            "invalid_request",
                            f"the body ended after {size - left} of its {size} bytes",
                        )
                    chunks.append(chunk)
                    left -= len(chunk)
            except TimeoutError:
                raise HttpError(
                    HTTPStatus.REQUEST_TIMEOUT, "timeout", "the request body did not arrive in time"
                ) from None
            finally:
                self.connection.settimeout(self.timeout)
            return b"".join(chunks)

        def _user(self) -> str:
            values = self.headers.get_all(user_header) or []
            if len(values) > 1:
                # A gateway that appends its header instead of replacing the client's would
                # otherwise let the client pick the user.
                raise HttpError(
                    HTTPStatus.BAD_REQUEST, "invalid_request", f"more than one {user_header} header"
                )
            # http.server reads header bytes as Latin-1; user ids are UTF-8.
            try:
                user = (values[0] if values else "").encode("latin-1").decode("utf-8").strip(" \t")
            except (UnicodeEncodeError, UnicodeDecodeError):
                raise HttpError(
                    HTTPStatus.BAD_REQUEST, "invalid_request", f"{user_header} is not UTF-8"
                ) from None
            if not user:
                raise HttpError(HTTPStatus.UNAUTHORIZED, "unauthenticated", f"missing {user_header} header")
            return user

        def _dispatch(self) -> None:
            deadlines.disarm(self)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/health" and self.command == "GET":
                    return self._reply(HTTPStatus.OK, service.health())
                if path == "/metrics" and self.command == "GET":
                    return self._reply(HTTPStatus.OK, service.metrics_text(), "text/plain; version=0.0.4")
                if path == CHAT_PATH and self.command == "POST":
                    return self._send(
                        service.chat(self._user(), self._body(), self.headers.get("Cache-Control", ""))
                    )
                handler = service.routes.get((self.command, path))
                if handler is None:
                    known = {p for (_, p) in service.routes} | {CHAT_PATH, "/health", "/metrics"}
                    if path in known:
                        raise HttpError(
                            HTTPStatus.METHOD_NOT_ALLOWED,
                            "method_not_allowed",
                            f"{self.command} not allowed on {path}",
                        )
                    raise HttpError(HTTPStatus.NOT_FOUND, "not_found", f"no route {path}")
                self._reply(HTTPStatus.OK, handler(self._user(), self._body()))
            except _ClientGone:
                raise  # nobody to answer
            except Exception as exc:
                self._error(*error_response(exc))

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    return Handler


class CacheServer:
    """The HTTP server plus a thread that writes changed caches back every `flush_seconds`."""

    def __init__(
        self,
        registry: CacheRegistry,
        host: str = "127.0.0.1",
        port: int = 8080,
        user_header: str = USER_HEADER,
        flush_seconds: float = 5.0,
        upstream: Upstream | None = None,
    ) -> None:
        self.registry = registry
        self.service = Service(registry, upstream)
        self.httpd = ThreadingHTTPServer((host, port), make_handler(self.service, user_header))
        self.httpd.daemon_threads = True
        self._stop = threading.Event()
        self._flush_seconds = flush_seconds
        self._flusher = threading.Thread(target=self._flush_loop, name="edgecache-flush", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            try:
                self.service.flush()
            except Exception:
                log.exception("background flush failed")

    def serve_forever(self) -> None:
        self._flusher.start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def close(self) -> None:
        """Stop: no new requests, those in flight finish, the flusher stops, then the last
        save. Called once serve_forever has returned (no new connections)."""
        if not self.service.requests.close(READ_TIMEOUT_SECONDS):
            log.warning("requests still running after %.0f s; saving without them", READ_TIMEOUT_SECONDS)
        self._stop.set()
        if self._flusher.is_alive():
            # A flush still writing when the interpreter exits would be cut in native code.
            self._flusher.join()
        self.httpd.server_close()
        self.service.flush()

    def shutdown(self) -> None:
        """Stop serve_forever from another thread (it blocks until the loop exits)."""
        self.httpd.shutdown()

    def shutdown_async(self) -> None:
        """For signal handlers, which run on the serving thread itself."""
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()
