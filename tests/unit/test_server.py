"""The HTTP service on a real loopback socket, with the hashing embedder."""

import http.client
import json
import threading
import time

import pytest

from edgecache import LocalFolderStore, SemanticCache
from edgecache.registry import CacheRegistry
from edgecache.server import CacheServer


def serving(registry, **options):
    srv = CacheServer(registry, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, embedder, config):
    yield from serving(CacheRegistry(LocalFolderStore(tmp_path), config, embedder), flush_seconds=0.05)


@pytest.fixture
def hurried_server(tmp_path, embedder, config, monkeypatch):
    """A server that gives a request 1 s to arrive instead of 30."""
    import edgecache.server as server_module

    monkeypatch.setattr(server_module, "READ_TIMEOUT_SECONDS", 1.0)
    yield from serving(CacheRegistry(LocalFolderStore(tmp_path), config, embedder))


def call(srv, method, path, body=None, user="alice", raw=None, headers=None):
    conn = http.client.HTTPConnection(*srv.address, timeout=10)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if user:
        hdrs["X-Edgecache-User"] = user
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    ctype = resp.getheader("Content-Type", "")
    return resp.status, json.loads(payload) if ctype.startswith("application/json") else payload.decode()


def test_insert_lookup_feedback_delete(server):
    status, out = call(
        server, "POST", "/v1/insert", {"query": "reset my password", "response": "Use the link"}
    )
    assert status == 200
    eid = out["entry_id"]
    status, out = call(server, "POST", "/v1/lookup", {"query": "Reset my password!"})
    assert status == 200 and out["hit"] and out["entry_id"] == eid and out["response"] == "Use the link"
    assert call(server, "POST", "/v1/feedback", {"entry_id": eid, "correct": True})[1]["right"] == 1
    assert call(server, "POST", "/v1/delete", {"entry_id": eid})[0] == 200
    assert call(server, "POST", "/v1/delete", {"entry_id": eid})[0] == 404
    assert call(server, "POST", "/v1/lookup", {"query": "reset my password"})[1]["hit"] is False


def test_context_over_http(server):
    call(
        server,
        "POST",
        "/v1/insert",
        {"query": "what is its population", "response": "68M", "context": ["tell me about france"]},
    )
    hit = call(
        server, "POST", "/v1/lookup", {"query": "what is its population", "context": ["tell me about france"]}
    )[1]
    miss = call(
        server, "POST", "/v1/lookup", {"query": "what is its population", "context": ["tell me about japan"]}
    )[1]
    assert hit["hit"] and not miss["hit"] and miss["reason"] == "context_mismatch"


def test_user_comes_from_header_and_users_are_isolated(server):
    call(server, "POST", "/v1/insert", {"query": "alice private note", "response": "secret"}, user="alice")
    status, out = call(
        server, "POST", "/v1/lookup", {"query": "alice private note", "user": "alice"}, user="bob"
    )
    assert status == 200 and out["hit"] is False
    status, out = call(server, "POST", "/v1/lookup", {"query": "x"}, user=None)
    assert status == 401 and out["error"]["type"] == "unauthenticated"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"query": ' + b"9" * 5000 + b"}", "not valid JSON"),  # over Python's int-digits limit
        (b"\xff\xfe{}", "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"query": 5}).encode(), "must be str"),
        (json.dumps({"query": "   "}).encode(), "empty"),
        (json.dumps({}).encode(), "missing field"),
        (json.dumps({"query": "q", "context": "not a list"}).encode(), "must be list"),
    ],
)
def test_bad_requests_get_json_400(server, raw, fragment):
    status, out = call(server, "POST", "/v1/lookup", raw=raw)
    assert status == 400 and fragment in out["error"]["message"]


def test_bad_insert_loses_nothing(server):
    call(server, "POST", "/v1/insert", {"query": "keep this", "response": "kept"})
    for body in (
        {"query": "q", "response": 7},
        {"query": "q", "response": "r", "ttl_seconds": -5},
        {"query": "q", "response": "r", "ttl_seconds": True},
        {"query": "q", "response": "r", "ttl_seconds": 10**400},  # a JSON int past float range
        {"query": "q", "response": "  \u200b "},
    ):
        assert call(server, "POST", "/v1/insert", body)[0] == 400
    assert call(server, "GET", "/v1/stats")[1]["entries"] == 1


def test_huge_query_is_truncated_not_refused(server):
    status, out = call(server, "POST", "/v1/lookup", {"query": "long " * 220_000})  # ~1.1 MB
    assert status == 200 and out["truncated"] is True
    status, out = call(server, "POST", "/v1/insert", {"query": "long " * 220_000, "response": "r"})
    assert status == 200 and out["truncated"] is True and isinstance(out["entry_id"], int)
    status, out = call(server, "POST", "/v1/insert", {"query": "short", "response": "r"})
    assert status == 200 and out["truncated"] is False


def test_oversized_body_is_413_before_it_is_read(server):
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.putrequest("POST", "/v1/lookup")
    conn.putheader("X-Edgecache-User", "alice")
    conn.putheader("Content-Length", str(9 * 1024 * 1024))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["type"] == "too_large"
    conn.close()


def test_routes_health_metrics(server, embedder):
    # `vectors` names what snapshots carry and `.pre-<fingerprint>` files are named by.
    health = call(server, "GET", "/health", user=None)[1]
    assert health == {"status": "ok", "vectors": embedder.fingerprint[:12]}
    call(server, "POST", "/v1/lookup", {"query": "count me"})
    status, text = call(server, "GET", "/metrics", user=None)
    assert status == 200 and "edgecache_lookups_total 1" in text
    assert call(server, "GET", "/nope")[0] == 404
    assert call(server, "GET", "/v1/lookup")[0] == 405


def test_metrics_counters_never_go_down_when_users_are_evicted(tmp_path, embedder, config):
    registry = CacheRegistry(LocalFolderStore(tmp_path), config, embedder, max_loaded=1)
    srv = CacheServer(registry, "127.0.0.1", 0, flush_seconds=60)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        for user in ("alice", "bob", "carol", "alice"):
            call(srv, "POST", "/v1/insert", {"query": f"question of {user}", "response": "r"}, user=user)
            assert call(srv, "POST", "/v1/lookup", {"query": f"question of {user}"}, user=user)[1]["hit"]
        text = call(srv, "GET", "/metrics", user=None)[1]
        assert "edgecache_loaded_users 1" in text
        assert "edgecache_inserts_total 4" in text and "edgecache_hits_total 4" in text
        assert "edgecache_lookups_total 4" in text
        assert "edgecache_entries 2" in text  # a gauge: alice's cache, the one loaded
    finally:
        srv.shutdown()
        thread.join(timeout=5)


def test_writes_are_flushed_to_the_store(server, tmp_path, embedder, config):
    import time

    from edgecache import SemanticCache

    call(server, "POST", "/v1/insert", {"query": "durable question", "response": "durable"})
    deadline = time.time() + 5
    while time.time() < deadline:
        reloaded = SemanticCache("alice", store=LocalFolderStore(tmp_path), config=config, embedder=embedder)
        if len(reloaded):
            break
        time.sleep(0.05)
    assert reloaded.lookup("durable question").response == "durable"


def test_error_with_unread_body_closes_the_connection(server):
    import socket

    smuggled = b"POST /v1/clear HTTP/1.1\r\nX-Edgecache-User: alice\r\nContent-Length: 2\r\n\r\n{}"
    request = (
        b"POST /v1/lookup HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(smuggled)).encode()
        + b"\r\n\r\n"
        + smuggled
    )
    call(server, "POST", "/v1/insert", {"query": "keep me", "response": "kept"})
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(request)  # no user header: 401 before the body is read
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 401") and b"Connection: close" in reply
    assert reply.count(b"HTTP/1.1") == 1  # the body was not run as a second request
    assert call(server, "GET", "/v1/stats")[1]["entries"] == 1


def test_categories_over_http_and_per_category_metrics(server):
    status, _ = call(
        server,
        "POST",
        "/v1/insert",
        {"query": "weather in oslo today", "response": "snow", "category": "time_sensitive"},
    )
    assert status == 200
    hit = call(
        server, "POST", "/v1/lookup", {"query": "weather in oslo today", "category": "time_sensitive"}
    )[1]
    assert hit["hit"] and hit["category"] == "time_sensitive" and hit["threshold"] == pytest.approx(0.9)
    status, err = call(server, "POST", "/v1/lookup", {"query": "x", "category": "nope"})
    assert status == 400 and "unknown category" in err["error"]["message"]
    assert call(server, "POST", "/v1/lookup", {"query": "x", "category": 3})[0] == 400
    text = call(server, "GET", "/metrics", user=None)[1]
    assert 'edgecache_category_hits_total{category="time_sensitive"} 1' in text
    assert 'edgecache_category_entries{category="time_sensitive"} 1' in text


def test_backend_reports_need_a_monitor(server):
    status, err = call(server, "POST", "/v1/backend", {"latency_ms": 100})
    assert status == 409 and err["error"]["type"] == "load_off"


def test_backend_reports_drive_the_load_level(tmp_path, embedder, config):
    from edgecache.load import BackendMonitor

    registry = CacheRegistry(
        LocalFolderStore(tmp_path),
        config,
        embedder,
        load=BackendMonitor(normal_seconds=1, overloaded_seconds=3),
    )
    srv = CacheServer(registry, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert call(srv, "POST", "/v1/backend", {"latency_ms": 500})[1]["load"] == 0.0
        for _ in range(3):
            out = call(srv, "POST", "/v1/backend", {"latency_ms": 500, "status": 429})[1]
        assert out["load"] == 1.0
        assert call(srv, "POST", "/v1/backend", {"latency_ms": -1})[0] == 400
        assert call(srv, "POST", "/v1/backend", {"latency_ms": 5, "status": 9999})[0] == 400
        assert call(srv, "POST", "/v1/backend", {"latency_ms": 5, "status": 0})[0] == 400
        assert call(srv, "POST", "/v1/backend", {"latency_ms": 10**400})[0] == 400
        assert "edgecache_backend_load 1.0" in call(srv, "GET", "/metrics", user=None)[1]
    finally:
        srv.shutdown()
        thread.join(timeout=5)


def raw_request(srv, request: bytes) -> bytes:
    import socket

    with socket.create_connection(srv.address, timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_metadata_a_reply_cannot_carry_is_refused(server):
    for raw in (
        b'{"query": "q", "response": "r", "metadata": {"n": 1000000000000000000000000000000}}',
        b'{"query": "q", "response": "r", "metadata": {"cost": NaN}}',
        b'{"query": "q", "response": "r", "metadata": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}",
    ):
        status, out = call(server, "POST", "/v1/insert", raw=raw)
        assert status == 400 and "metadata" in out["error"]["message"]
    assert call(server, "GET", "/v1/stats")[1]["entries"] == 0


def test_user_header_must_be_single_and_is_read_as_utf8(server):
    assert call(server, "POST", "/v1/lookup", {"query": "x"}, user=" \t ")[0] == 401
    request = (
        b"POST /v1/lookup HTTP/1.1\r\nHost: x\r\nX-Edgecache-User: alice\r\nX-Edgecache-User: bob\r\n"
        b"Content-Length: 13\r\n\r\n" + b'{"query":"x"}'
    )
    reply = raw_request(server, request)
    assert reply.startswith(b"HTTP/1.1 400") and b"more than one" in reply
    user = "üser€"
    insert = json.dumps({"query": "a question of üser", "response": "r"}).encode()
    request = (
        b"POST /v1/insert HTTP/1.1\r\nHost: x\r\nX-Edgecache-User: " + user.encode() + b"  \r\n"
        b"Content-Length: " + str(len(insert)).encode() + b"\r\nConnection: close\r\n\r\n" + insert
    )
    assert raw_request(server, request).startswith(b"HTTP/1.1 200")
    with server.registry.use(user) as cache:  # the same user as the SDK's "üser€"
        assert cache.lookup("a question of üser").hit


DEEP = b'{"query": "deep", "context": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        (b"Content-Length: -5\r\n", b"", b"400"),
        (b"Content-Length: " + str(len(DEEP)).encode() + b"\r\n", DEEP, b"400"),
        (b"X-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n", b"{}", b"431"),
        # A length is plain digits, given once: int() alone would take "+13" or "1_3".
        (b"Content-Length: +13\r\n", b'{"query":"x"}', b"400"),
        (b"Content-Length: 1_3\r\n", b'{"query":"x"}', b"400"),
        (b"Content-Length: 13\r\nContent-Length: 99\r\n", b'{"query":"x"}', b"400"),
        (b"Content-Length: 13\r\nTransfer-Encoding: chunked\r\n", b'{"query":"x"}', b"400"),
    ],
)
def test_malformed_requests_get_json_4xx(server, head, body, status):
    request = b"POST /v1/lookup HTTP/1.1\r\nHost: x\r\nX-Edgecache-User: alice\r\n" + head + b"\r\n" + body
    reply = raw_request(server, request)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]
    assert b'"error"' in reply and b"application/json" in reply
    reply = raw_request(server, b"PATCH /v1/lookup HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 501") and b'"method_not_allowed"' in reply


def test_framing_a_proxy_could_read_otherwise_is_refused_and_plain_framing_taken(server):
    get = b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nX-Edgecache-User: alice\r\n"
    reply = raw_request(server, get + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411") and reply.count(b"HTTP/1.1") == 1  # the chunks are no request
    body = b'{"query":"x"}'
    post = b"POST /v1/lookup HTTP/1.1\r\nHost: x\r\nX-Edgecache-User: alice\r\nConnection: close\r\n"
    reply = raw_request(server, post + b"Content-Length: 13 \r\n\r\n" + body)  # whitespace is no part of it
    assert reply.startswith(b"HTTP/1.1 200")


def test_a_kept_alive_connection_may_idle_before_its_next_request(hurried_server):
    import socket
    import time

    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(hurried_server.address, timeout=10) as sock:
        for _ in range(2):
            time.sleep(0.6)  # idle, then the request's bytes 0.6 s apart: 1.2 s in all
            sock.sendall(request[:10])
            time.sleep(0.6)
            sock.sendall(request[10:])
            reply = sock.recv(65536)
            while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):  # the whole reply, not a part
                chunk = sock.recv(65536)
                assert chunk, reply[:100]  # dropped before it was answered
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:100]


def test_a_body_cut_short_is_refused_not_read_as_complete(server):
    import socket

    body = b'{"query": "a whole question"}'
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(
            b"POST /v1/lookup HTTP/1.1\r\nHost: x\r\nX-Edgecache-User: alice\r\n"
            b"Content-Length: " + str(len(body) + 50).encode() + b"\r\n\r\n" + body
        )
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"ended after" in reply


def test_a_request_line_http_server_cannot_parse_still_gets_a_status_line(server):
    for request in (b"HELLO\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        reply = raw_request(server, request)
        assert reply.split(b" ", 1)[0] in (b"HTTP/1.0", b"HTTP/1.1") and b'"error"' in reply, reply[:200]


def test_a_reply_to_head_carries_no_body(server):
    reply = raw_request(server, b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501") and body == b""


def test_a_wrong_method_on_health_or_metrics_is_405(server):
    for path in ("/health", "/metrics"):
        status, out = call(server, "POST", path, {})
        assert status == 405 and out["error"]["type"] == "method_not_allowed"


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(hurried_server):
    import select
    import socket
    import time

    head = b"POST /v1/lookup HTTP/1.1\r\nX-Edgecache-User: a\r\nContent-Length: 40\r\n\r\n"
    for start, trickled in ((head, b'{"query": "' + b"x" * 27 + b'"}'), (b"", head)):
        with socket.create_connection(hurried_server.address, timeout=10) as sock:
            began = time.monotonic()
            sock.sendall(start)
            reply = b""
            try:
                for i in range(len(trickled)):  # one byte per 0.2 s: each read is in time
                    sock.sendall(trickled[i : i + 1])
                    if select.select([sock], [], [], 0.2)[0]:
                        break  # answered (or dropped) before the request was complete
                while chunk := sock.recv(65536):
                    reply += chunk
            except OSError:
                pass  # dropped while still sending
            assert time.monotonic() - began < 4
        # A trickled body gets its 408; trickled headers are dropped without a reply.
        assert reply.startswith(b"HTTP/1.1 408") if start else not reply.startswith(b"HTTP/1.1 200")


def test_a_client_that_stops_sending_is_timed_out(hurried_server):
    import socket
    import time

    with socket.create_connection(hurried_server.address, timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/lookup HTTP/1.1\r\nX-Edgecache-User: a\r\nContent-Length: 100\r\n\r\n{")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        assert time.monotonic() - started < 5
    assert reply.startswith(b"HTTP/1.1 408") and b'"timeout"' in reply


def test_clear_sets_an_unreadable_snapshot_aside(server, tmp_path):
    from edgecache.stores import user_key

    call(server, "POST", "/v1/insert", {"query": "soon damaged", "response": "x"}, user="dana")
    server.registry.flush()
    path = next(p for p in tmp_path.iterdir() if p.name.startswith(user_key("dana")))
    damaged = path.read_bytes()[:-7] + b"garbage"
    registry = CacheRegistry(LocalFolderStore(tmp_path), server.registry.config, server.registry.embedder)
    fresh = CacheServer(registry, "127.0.0.1", 0)
    thread = threading.Thread(target=fresh.serve_forever, daemon=True)
    path.write_bytes(damaged)
    thread.start()
    try:
        status, out = call(fresh, "POST", "/v1/lookup", {"query": "soon damaged"}, user="dana")
        assert (
            status == 500 and "checksum" in out["error"]["message"] and "/v1/clear" in out["error"]["message"]
        )
        status, out = call(fresh, "POST", "/v1/clear", {}, user="dana")
        assert status == 200 and out["set_aside"] == f"{user_key('dana')}.bad"
        assert (tmp_path / out["set_aside"]).read_bytes() == damaged
        assert call(fresh, "GET", "/v1/stats", user="dana")[1]["entries"] == 0
        assert (
            call(fresh, "POST", "/v1/insert", {"query": "new start", "response": "y"}, user="dana")[0] == 200
        )
        assert call(fresh, "POST", "/v1/clear", {}, user="dana")[1] == {"cleared": True}
    finally:
        fresh.shutdown()
        thread.join(timeout=5)


def test_a_store_folder_that_cannot_be_written_is_refused_when_opened(tmp_path, monkeypatch):
    from edgecache import ConfigError
    from tests.helpers import refuse_new_files

    LocalFolderStore(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing behind
    refuse_new_files(monkeypatch)
    with pytest.raises(ConfigError, match=f"cannot use {tmp_path} as a store folder: Read-only file system"):
        LocalFolderStore(tmp_path)


def test_health_says_saves_are_failing_until_a_flush_succeeds(tmp_path, embedder, config):
    import errno
    import time

    from edgecache import MemoryStore

    class FlakyStore(MemoryStore):
        failing = True

        def put_if(self, key, data, expected):
            if self.failing:
                raise OSError(errno.EROFS, "Read-only file system")
            return super().put_if(key, data, expected)

    def health_once(srv, status):
        """/health once it says `status`, or as it is after 5 s of flushes."""
        deadline = time.monotonic() + 5
        while (health := call(srv, "GET", "/health", user=None)[1])["status"] != status:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return health

    store = FlakyStore()
    servers = serving(CacheRegistry(store, config, embedder), flush_seconds=0.02)
    srv = next(servers)
    try:
        assert call(srv, "GET", "/health", user=None)[1]["status"] == "ok"
        assert call(srv, "POST", "/v1/insert", {"query": "what is edgecache", "response": "r"})[0] == 200
        assert health_once(srv, "saves_failing") == {
            "status": "saves_failing",
            "vectors": embedder.fingerprint[:12],
            "save_error": "OSError: Read-only file system",
        }
        store.failing = False
        assert health_once(srv, "ok") == {"status": "ok", "vectors": embedder.fingerprint[:12]}
    finally:
        store.failing = False  # so that stopping the server can save
        next(servers, None)


def test_a_stop_waits_for_requests_in_flight_before_the_last_save(tmp_path, embedder, config):
    """An insert answered 200 while the server stops is in the last save; a request that
    arrives once the stop began gets a 503 and changes nothing."""
    entered, release = threading.Event(), threading.Event()

    class Slow:
        dim, fingerprint = embedder.dim, embedder.fingerprint

        def embed(self, texts):
            if any("slow" in t for t in texts):
                entered.set()
                assert release.wait(10)
            return embedder.embed(texts)

    store = LocalFolderStore(tmp_path)
    srv = CacheServer(CacheRegistry(store, config, Slow()), "127.0.0.1", 0, flush_seconds=60)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    kept = http.client.HTTPConnection(*srv.address, timeout=10)  # a kept-alive connection
    kept.request("GET", "/health")
    assert kept.getresponse().read()
    answers = []
    insert = threading.Thread(
        target=lambda: answers.append(
            call(srv, "POST", "/v1/insert", {"query": "a slow question", "response": "r"})
        )
    )
    insert.start()
    assert entered.wait(10)
    stopping = threading.Thread(target=srv.shutdown)
    stopping.start()
    deadline = time.monotonic() + 10
    while srv.service.requests.enter():  # until the stop closes the gate
        srv.service.requests.leave()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    kept.request(
        "POST",
        "/v1/insert",
        body=b'{"query": "late", "response": "r"}',
        headers={"X-Edgecache-User": "alice"},
    )
    late = kept.getresponse()
    assert late.status == 503 and json.loads(late.read())["error"]["type"] == "shutting_down"
    release.set()
    insert.join(10)
    stopping.join(10)
    thread.join(10)
    assert not thread.is_alive()
    status, out = answers[0]
    assert status == 200
    saved = SemanticCache("alice", store=store, config=config, embedder=embedder)
    assert list(saved._entries) == [out["entry_id"]]
