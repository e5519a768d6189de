"""The Lambda handler with realistic API Gateway HTTP API (payload 2.0) events."""

import base64
import json
import re

import pytest

from edgecache import MemoryStore
from edgecache.registry import CacheRegistry
from edgecache.server import Service
from edgecache_functions.handler import identity, make_handler


def event(path, body=None, sub="user-1", method="POST", raw=None, b64=False, headers=None, authorizer=None):
    text = raw if raw is not None else (json.dumps(body) if body is not None else None)
    if b64 and text is not None:
        text = base64.b64encode(text.encode()).decode()
    auth = (
        authorizer
        if authorizer is not None
        else ({"jwt": {"claims": {"sub": sub}, "scopes": None}} if sub else {})
    )
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "authorizer": auth,
            "domainName": "api.example.com",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "1.2.3.4",
                "userAgent": "t",
            },
            "requestId": "r",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "29/Nov/2026:19:00:00 +0000",
            "timeEpoch": 0,
        },
        "body": text,
        "isBase64Encoded": b64,
    }


@pytest.fixture
def lam(embedder, config):
    store = MemoryStore()
    lines = []
    built = []

    def factory():
        built.append(1)
        return Service(CacheRegistry(store, config, embedder))

    handle = make_handler(factory, log=lines.append)
    handle.store, handle.lines, handle.built = store, lines, built
    return handle


def call(handle, *args, **kwargs):
    out = handle(event(*args, **kwargs), None)
    return out["statusCode"], json.loads(out["body"])


def test_insert_lookup_through_events_and_persisted_before_return(lam):
    status, out = call(
        lam, "/v1/insert", {"query": "how do I rotate my api key", "response": "Settings > Keys"}
    )
    assert status == 200
    assert len(lam.store._data) == 1  # written back before the handler returned
    status, out = call(lam, "/v1/lookup", {"query": "How do I rotate my API key?"})
    assert status == 200 and out["hit"] and out["response"] == "Settings > Keys"
    assert lam.built == [1]  # warm: the service is built once
    metrics = json.loads(lam.lines[-1])
    assert metrics["route"] == "POST /v1/lookup" and metrics["hits"] == 1 and "_aws" in metrics
    assert "rotate" not in "".join(lam.lines)  # no query text in logs by default
    assert "user-1" not in "".join(lam.lines)


def test_identity_only_from_the_authorizer(lam):
    call(lam, "/v1/insert", {"query": "my secret question", "response": "alice only"}, sub="alice")
    # A client-set header or body field never selects the user.
    status, out = call(lam, "/v1/lookup", {"query": "my secret question", "user": "alice"}, sub="mallory",
                       headers={"x-edgecache-user": "alice"})  # fmt: skip
    assert status == 200 and not out["hit"]
    assert call(lam, "/v1/lookup", {"query": "my secret question"}, sub=None)[0] == 401
    assert identity({"requestContext": {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:user/a"}}}}) == (
        "iam:arn:aws:iam::1:user/a"
    )
    assert identity({"requestContext": {"authorizer": {"lambda": {"sub": "x"}}}}) == "lambda:x"
    assert identity({"requestContext": {"authorizer": {"jwt": {"claims": {"sub": "  "}}}}}) is None
    assert identity({"requestContext": {}}) is None


@pytest.mark.parametrize(
    ("kwargs", "status", "kind"),
    [
        ({"raw": None}, 400, "invalid_request"),  # missing body
        ({"raw": "{not json"}, 400, "invalid_request"),
        ({"raw": "[1, 2]"}, 400, "invalid_request"),
        ({"body": {"query": 5}}, 400, "invalid_request"),  # wrong type
        ({"body": {"query": "   "}}, 400, "invalid_request"),  # empty after trimming
        ({"raw": "x" * (9 * 1024 * 1024)}, 413, "too_large"),
        ({"raw": "!!!not base64", "b64": True}, 400, "invalid_request"),
    ],
)
def test_malformed_events_get_json_4xx(lam, kwargs, status, kind):
    got_status, out = call(lam, "/v1/lookup", **kwargs)
    assert got_status == status and out["error"]["type"] == kind and "Traceback" not in json.dumps(out)


def test_base64_bodies_and_routes(lam):
    status, out = call(lam, "/v1/insert", {"query": "base64 question", "response": "ok"}, b64=True)
    assert status == 200 and "entry_id" in out
    assert call(lam, "/v1/nope", {})[0] == 404
    assert call(lam, "/v1/lookup", None, method="GET")[0] == 405
    assert lam(event("/health", method="GET", sub=None), None)["statusCode"] == 200
    assert lam("not an event", None)["statusCode"] == 400
    assert lam({"requestContext": {}}, None)["statusCode"] == 400


def test_internal_errors_have_no_stack_trace(embedder, config):
    def broken():
        raise RuntimeError("boom at /secret/path")

    handle = make_handler(broken, log=lambda line: None)
    out = handle(event("/v1/lookup", {"query": "x"}), None)
    assert out["statusCode"] == 500 and json.loads(out["body"])["error"] == {
        "type": "internal",
        "message": "internal error",
    }


def test_chat_completions_through_the_handler(embedder, config):
    from http.server import ThreadingHTTPServer
    from threading import Thread

    from edgecache.proxy import ProxySettings, Upstream
    from tests.unit.test_proxy import FakeOpenAI

    FakeOpenAI.calls = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    Thread(target=upstream.serve_forever, daemon=True).start()
    host, port = upstream.server_address[:2]
    settings = ProxySettings(f"http://{host}:{port}/v1", api_key="sk-test")
    store = MemoryStore()
    handle = make_handler(
        lambda: Service(CacheRegistry(store, config, embedder), Upstream(settings)), log=lambda _: None
    )
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "what is a semantic cache"}]}
        miss = handle(event("/v1/chat/completions", body), None)
        assert miss["statusCode"] == 200 and miss["headers"]["X-Edgecache"] == "miss"
        assert store._data  # the answer was cached and saved before returning
        hit = handle(event("/v1/chat/completions", {**body, "stream": True}), None)
        assert (
            hit["headers"]["X-Edgecache"] == "hit" and hit["headers"]["content-type"] == "text/event-stream"
        )
        assert hit["body"].endswith("data: [DONE]\n\n") and len(FakeOpenAI.calls) == 1
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_eager_handler_builds_and_warms_during_init(embedder, config):
    built = []

    def factory():
        built.append(1)
        return Service(CacheRegistry(MemoryStore(), config, embedder))

    handle = make_handler(factory, log=lambda _: None, eager=True)
    assert built == [1]  # before any event
    assert handle(event("/v1/lookup", {"query": "anything"}), None)["statusCode"] == 200
    assert built == [1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"EDGECACHE_MAX_USERS": "0"}, "EDGECACHE_MAX_USERS must be a positive integer, got '0'"),
        ({"EDGECACHE_MAX_USERS": "-3"}, "EDGECACHE_MAX_USERS must be a positive integer"),
        ({"EDGECACHE_MAX_USERS": "abc"}, "EDGECACHE_MAX_USERS must be a positive integer, got 'abc'"),
        ({"EDGECACHE_MAX_USERS": "2.5"}, "EDGECACHE_MAX_USERS must be a positive integer"),
        ({"EDGECACHE_REFRESH_SECONDS": "nan"}, "EDGECACHE_REFRESH_SECONDS must be a number of seconds"),
        ({"EDGECACHE_REFRESH_SECONDS": "-1"}, "EDGECACHE_REFRESH_SECONDS must be a number of seconds"),
        ({"EDGECACHE_REFRESH_SECONDS": "inf"}, "EDGECACHE_REFRESH_SECONDS must be a number of seconds"),
        ({"EDGECACHE_CONFIG": "{bad"}, "EDGECACHE_CONFIG is not JSON"),
        ({"EDGECACHE_CONFIG": '{"threshold": 2}'}, "EDGECACHE_CONFIG: threshold"),
        ({"EDGECACHE_CONFIG": "[1]"}, "EDGECACHE_CONFIG: a config is a mapping"),
        ({"EDGECACHE_BUCKET": ""}, "EDGECACHE_BUCKET"),
    ],
)
def test_environment_errors_name_the_variable(extra, message):
    from edgecache import ConfigError
    from edgecache_functions.handler import service_from_environment

    with pytest.raises(ConfigError, match=re.escape(message)):
        service_from_environment({"EDGECACHE_BUCKET": "my-bucket", **extra})


def test_environment_numbers_reach_the_registry(monkeypatch, embedder):
    import edgecache.aws_stores
    import edgecache.embedder
    from edgecache_functions.handler import service_from_environment

    monkeypatch.setattr(edgecache.aws_stores, "S3Store", lambda *a, **k: MemoryStore())
    monkeypatch.setattr(edgecache.embedder, "shared_embedder", lambda *a, **k: embedder)
    env = {"EDGECACHE_BUCKET": "b", "EDGECACHE_MAX_USERS": "3", "EDGECACHE_REFRESH_SECONDS": "0"}
    registry = service_from_environment(env).registry
    assert (registry.max_loaded, registry.refresh_seconds) == (3, 0.0)
    registry = service_from_environment({"EDGECACHE_BUCKET": "b"}).registry
    assert (registry.max_loaded, registry.refresh_seconds) == (64, 5.0)
