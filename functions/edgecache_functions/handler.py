"""AWS Lambda handler for API Gateway HTTP API events (payload format 2.0).

Thin on purpose: parse the event, call the same `Service` the local server uses, reply.
The user is taken only from the authorizer context (a JWT `sub` claim, an IAM principal,
or a Lambda authorizer's `sub`), never from the body or a header the client controls;
without one the answer is 401.

A warm container keeps the encoder and a bounded LRU of users' caches (the registry); a
cold one loads a user's snapshot from S3 on first use. Changes are written back before the
handler returns (a frozen container may never run again), with conditional writes that
merge concurrent invocations' inserts.

Configuration (environment):
- EDGECACHE_BUCKET (snapshots), EDGECACHE_PREFIX (default "edgecache/"),
  EDGECACHE_S3_SSE (AES256 or aws:kms), EDGECACHE_S3_KMS_KEY_ID;
- EDGECACHE_TABLE (response bodies; unset: bodies inline in snapshots);
- EDGECACHE_CONFIG (CacheConfig as JSON), EDGECACHE_MAX_USERS (caches kept warm, default 64),
  EDGECACHE_REFRESH_SECONDS (a warm cache older than this re-reads S3 for other containers'
  inserts, default 5);
- EDGECACHE_UPSTREAM_URL with EDGECACHE_UPSTREAM_SECRET_ARN or EDGECACHE_UPSTREAM_API_KEY
  (the chat-completions proxy);
- EDGECACHE_LOG_QUERIES=1 logs request bodies (off by default: no query text in logs);
- EDGECACHE_EAGER_INIT=1 builds everything during Lambda's init phase (and SnapStart's snapshot).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from edgecache.config import CacheConfig
from edgecache.errors import ConfigError
from edgecache.proxy import ProxySettings, Reply, Upstream
from edgecache.server import CHAT_PATH, MAX_BODY_BYTES, HttpError, Service, error_response, json_body

MUTATING = {"/v1/insert", "/v1/feedback", "/v1/delete", "/v1/clear", CHAT_PATH}
Handler = Callable[[Any, Any], dict]


def identity(event: Mapping) -> str | None:
    """The authenticated principal, prefixed by its kind so a JWT subject can never be
    mistaken for an IAM ARN or a Lambda authorizer's id."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    if not isinstance(authorizer, Mapping):
        return None
    claims = (authorizer.get("jwt") or {}).get("claims") or {}
    if isinstance(claims, Mapping) and isinstance(claims.get("sub"), str) and claims["sub"].strip():
        return "jwt:" + claims["sub"]
    iam = authorizer.get("iam") or {}
    if isinstance(iam, Mapping) and isinstance(iam.get("userArn"), str) and iam["userArn"]:
        return "iam:" + iam["userArn"]
    custom = authorizer.get("lambda") or {}
    if isinstance(custom, Mapping) and isinstance(custom.get("sub"), str) and custom["sub"].strip():
        return "lambda:" + custom["sub"]
    return None


def _raw_body(event: Mapping) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", "event body must be a string")
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", "body is not valid base64") from None
    # API Gateway hands text bodies over as str; encode back to the bytes the client sent.
    return body.encode("utf-8", "surrogatepass")


def _response(status: int, body: bytes | str, content_type: str, headers: Mapping[str, str] = {}) -> dict:
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return {
        "statusCode": int(status),
        "headers": {"content-type": content_type, **headers},
        "body": text,
        "isBase64Encoded": False,
    }


def _reply(reply: Reply) -> dict:
    # HTTP API integrations return one payload: a streamed reply is sent whole, still as
    # server-sent events (clients parse it the same way; only the first byte comes later).
    body = b"".join(reply.stream) if reply.stream is not None else reply.body
    headers = {k: v for k, v in reply.headers.items() if k.lower() != "content-type"}
    return _response(reply.status, body, reply.headers.get("Content-Type", "application/json"), headers)


def make_handler(
    service_factory: Callable[[], Service], log: Callable[[str], None] | None = None, eager: bool = False
) -> Handler:
    """A handler over a Service built on the first event (or now, with `eager`), kept while warm.

    Eager: Lambda's init phase runs before the first event (with a full CPU even on small
    functions), and SnapStart snapshots the process after it, so the model, the classifier
    and the AWS clients are then ready when the first request arrives."""
    state: dict[str, Service] = {}
    if eager:
        state["service"] = service_factory()
        warm_up(state["service"])
    emit = log or (lambda line: print(line, file=sys.stdout, flush=True))
    log_queries = os.environ.get("EDGECACHE_LOG_QUERIES") == "1"

    def service() -> Service:
        if "service" not in state:
            state["service"] = service_factory()
        return state["service"]

    def handle(event: Any, context: Any) -> dict:
        started = time.perf_counter()
        route, user, hit = "?", None, None
        try:
            if not isinstance(event, Mapping):
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", "event must be an object")
            http = (event.get("requestContext") or {}).get("http") or {}
            method, path = http.get("method"), event.get("rawPath") or http.get("path")
            if not isinstance(method, str) or not isinstance(path, str):
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid_request", "not an HTTP API (2.0) event")
            route = f"{method} {path}"
            user = identity(event)
            if path == "/health" and method == "GET":
                out = _response(200, json.dumps({"status": "ok"}), "application/json")
            elif user is None:
                raise HttpError(HTTPStatus.UNAUTHORIZED, "unauthenticated", "no authenticated identity")
            else:
                raw = _raw_body(event)
                if len(raw) > MAX_BODY_BYTES:
                    raise HttpError(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"body over {MAX_BODY_BYTES} bytes"
                    )
                svc = service()
                if path == CHAT_PATH and method == "POST":
                    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
                    reply = svc.chat(user, json_body(raw), headers.get("cache-control", ""))
                    hit = reply.headers.get("X-Edgecache") == "hit"
                    out = _reply(reply)
                else:
                    route_fn = svc.routes.get((method, path))
                    if route_fn is None:
                        known = {p for _, p in svc.routes}
                        status = HTTPStatus.METHOD_NOT_ALLOWED if path in known else HTTPStatus.NOT_FOUND
                        raise HttpError(status, "not_found" if status == 404 else "method_not_allowed", route)
                    payload = route_fn(user, json_body(raw) if raw else {})
                    hit = payload.get("hit") if path == "/v1/lookup" else None
                    out = _response(200, json.dumps(payload), "application/json")
                if path in MUTATING:
                    svc.registry.flush()
        except Exception as exc:
            status, kind, message = error_response(exc)
            out = _response(
                status, json.dumps({"error": {"type": kind, "message": message}}), "application/json"
            )
        emit(metrics_line(route, out["statusCode"], (time.perf_counter() - started) * 1000, user, hit))
        if log_queries and isinstance(event, Mapping):
            emit(json.dumps({"route": route, "body": event.get("body")}))
        return out

    return handle


def metrics_line(route: str, status: int, latency_ms: float, user: str | None, hit: bool | None) -> str:
    """One structured log line that CloudWatch also reads as metrics (embedded metric
    format). Users appear only as a hash; query text never."""
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": "edgecache",
                    "Dimensions": [["route"]],
                    "Metrics": [
                        {"Name": "latency_ms", "Unit": "Milliseconds"},
                        {"Name": "errors", "Unit": "Count"},
                        *([{"Name": "hits", "Unit": "Count"}] if hit is not None else []),
                    ],
                }
            ],
        },
        "route": route,
        "status": status,
        "latency_ms": round(latency_ms, 2),
        "errors": int(status >= 500),
        "user": hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:16] if user else None,
    }
    if hit is not None:
        record["hits"] = int(bool(hit))
    return json.dumps(record)


def warm_up(service: Service) -> None:
    """Do the first-request work ahead: the classifier's seeds, the encoder's first run and
    the AWS clients' lazy setup (botocore loads its service models on first use)."""
    from edgecache.cache import SemanticCache

    registry = service.registry
    probe = SemanticCache("warm-up", config=registry.config, embedder=registry.embedder)
    probe.lookup("warming up the encoder")
    for store in (registry.store, registry.bodies):
        client = getattr(store, "client", None)
        if client is not None:
            client.meta.service_model.operation_names  # noqa: B018 - forces botocore's lazy load


def service_from_environment(env: Mapping[str, str] = os.environ) -> Service:
    """The production wiring: S3 snapshots, DynamoDB bodies, the packaged encoder."""
    from edgecache.aws_stores import DynamoDocumentStore, S3Store
    from edgecache.embedder import shared_embedder
    from edgecache.load import BackendMonitor
    from edgecache.registry import CacheRegistry

    config = _config(env)
    max_users = _env_number(env, "EDGECACHE_MAX_USERS", int, 64, 1, "a positive integer")
    refresh = _env_number(env, "EDGECACHE_REFRESH_SECONDS", float, 5.0, 0.0, "a number of seconds >= 0")
    if not env.get("EDGECACHE_BUCKET"):
        raise ConfigError("EDGECACHE_BUCKET must name the S3 bucket that holds the snapshots")
    store = S3Store(
        env["EDGECACHE_BUCKET"],
        prefix=env.get("EDGECACHE_PREFIX", "edgecache/"),
        sse=env.get("EDGECACHE_S3_SSE", "AES256"),
        kms_key_id=env.get("EDGECACHE_S3_KMS_KEY_ID") or None,
    )
    bodies = DynamoDocumentStore(env["EDGECACHE_TABLE"]) if env.get("EDGECACHE_TABLE") else None
    monitor = BackendMonitor()
    registry = CacheRegistry(
        store,
        config,
        shared_embedder(config.projection, threads=config.encoder_threads),
        max_loaded=max_users,
        bodies=bodies,
        load=monitor,
        refresh_seconds=refresh,
    )
    upstream = None
    if env.get("EDGECACHE_UPSTREAM_URL"):
        upstream = Upstream(ProxySettings(env["EDGECACHE_UPSTREAM_URL"], _upstream_key(env)), monitor)
    return Service(registry, upstream)


def _config(env: Mapping[str, str]) -> CacheConfig:
    text = env.get("EDGECACHE_CONFIG")
    if not text:
        return CacheConfig()
    try:
        return CacheConfig.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"EDGECACHE_CONFIG is not JSON: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"EDGECACHE_CONFIG: {exc}") from exc


def _env_number(
    env: Mapping[str, str], name: str, kind: type[int] | type[float], default: float, low: float, what: str
) -> Any:
    """`name` read as a finite `kind` >= low (the limits `edgecache serve` puts on its flags)."""
    text = env.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low:
        raise ConfigError(f"{name} must be {what}, got {text!r}")
    return value


def _upstream_key(env: Mapping[str, str]) -> str | None:
    arn = env.get("EDGECACHE_UPSTREAM_SECRET_ARN")
    if not arn:
        return env.get("EDGECACHE_UPSTREAM_API_KEY")
    from edgecache.aws_stores import make_client

    return make_client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


handle = make_handler(service_from_environment, eager=os.environ.get("EDGECACHE_EAGER_INIT") == "1")
