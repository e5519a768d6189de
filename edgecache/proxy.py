"""An OpenAI-compatible caching proxy: `POST /v1/chat/completions` answered from the cache.

The cache key is the last user message; the context chain is the user turns before it.
Answers depend on the model and the system prompt too, so each (user, model, system
prompt) has its own cache (`namespace`). A hit is returned in OpenAI's format, marked
with the `X-Edgecache: hit` header; a miss is forwarded to the upstream, returned as the
upstream sent it and, when it is a complete plain answer, inserted. Streaming (SSE) works
on both paths.

Bypass (documented in the README): requests whose answer is not meant to repeat, or that
a cached text cannot answer, go straight to the upstream and are never stored:
`temperature` above `max_temperature`, `n` > 1, tools/functions, a last message that is
not the user's, non-text content, or the client's `Cache-Control: no-cache` (no lookup)
/ `no-store` (no insert).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import EdgecacheError, InvalidInputError
from .load import BackendMonitor
from .text import has_visible

CACHED_HEADER = "X-Edgecache"
_NOT_CACHEABLE_KEYS = ("tools", "functions", "tool_choice", "function_call")


class UpstreamError(EdgecacheError):
    """The upstream could not be reached or answered with something that is not HTTP."""


@dataclass
class Reply:
    """What a route answers when a JSON dict is not enough: status, headers, and either a
    body or a stream of byte chunks (server-sent events)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None


@dataclass(frozen=True)
class ProxySettings:
    upstream_url: str  # e.g. https://api.openai.com/v1 (the proxy appends /chat/completions)
    api_key: str | None = None
    max_temperature: float = 0.7
    timeout_seconds: float = 120.0
    # A streamed hit is sent in pieces of this many characters, like a model would.
    chunk_chars: int = 64


def namespace(user: str, model: str, system: str) -> str:
    """The cache id of one user's conversations with one model under one system prompt.

    The user id comes first with its length (or, when long, as a hash marked "h:"), so no
    other user id can produce the same namespace."""
    digest = hashlib.sha256(f"{model}\x00{system}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
    if len(user) > 400:
        return f"h:{hashlib.sha256(user.encode('utf-8', 'surrogatepass')).hexdigest()}#{digest}"
    return f"{len(user)}:{user}#{digest}"


def _text(content: Any) -> str | None:
    """Message content as text; None when it holds anything but text (images, audio)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "\n".join(p["text"] for p in content)
    return None


@dataclass(frozen=True)
class ChatKey:
    query: str
    context: list[str]
    model: str
    system: str


def cache_key(body: dict, settings: ProxySettings) -> tuple[ChatKey | None, str]:
    """The request's cache key, or None and the reason it bypasses the cache."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidInputError("messages must be a non-empty list of message objects")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInputError("model must be a non-empty string")
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or isinstance(temperature, bool)
    ):
        raise InvalidInputError("temperature must be a number")
    if temperature is not None and temperature > settings.max_temperature:
        return None, "temperature"
    if body.get("n", 1) != 1:
        return None, "n"
    if any(body.get(k) for k in _NOT_CACHEABLE_KEYS):
        return None, "tools"
    if messages[-1].get("role") != "user":
        return None, "last_message_not_user"
    texts = [_text(m.get("content")) for m in messages]
    if any(t is None for t in texts):
        return None, "non_text_content"
    system = "\n".join(
        t for m, t in zip(messages, texts, strict=True) if m.get("role") in ("system", "developer")
    )
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    assert users and all(t is not None for t in users)
    return ChatKey(str(users[-1]), [str(t) for t in users[:-1]], model, system), ""


def completion(answer: str, model: str, entry_id: int | None) -> dict:
    return {
        "id": f"chatcmpl-edgecache-{entry_id}-{uuid.uuid4().hex[:8]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _event(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def completion_events(answer: str, model: str, entry_id: int | None, chunk_chars: int) -> Iterator[bytes]:
    """A cached answer as the SSE chunks OpenAI streams: role, content pieces, stop, [DONE]."""
    base = {
        "id": f"chatcmpl-edgecache-{entry_id}-{uuid.uuid4().hex[:8]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for start in range(0, len(answer), chunk_chars):
        yield chunk({"content": answer[start : start + chunk_chars]})
    yield chunk({}, "stop")
    yield _event("[DONE]")


class Upstream:
    """The OpenAI-compatible API the proxy forwards misses to (stdlib HTTP, streaming-capable)."""

    def __init__(self, settings: ProxySettings, monitor: BackendMonitor | None = None) -> None:
        parts = urlsplit(settings.upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(
                f"upstream URL must be http(s)://host[:port][/path], got {settings.upstream_url!r}"
            )
        self.settings, self.monitor = settings, monitor
        self._parts = parts
        self._path = parts.path.rstrip("/") + "/chat/completions"

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return cls(self._parts.hostname, self._parts.port, timeout=self.settings.timeout_seconds)

    def send(self, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, float]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        conn = self._connection()
        started = time.monotonic()
        try:
            conn.request("POST", self._path, body=json.dumps(body).encode(), headers=headers)
            return conn, conn.getresponse(), started
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if self.monitor is not None:
                self.monitor.record(time.monotonic() - started, 502)
            raise UpstreamError(f"upstream {self._parts.hostname} unreachable: {exc}") from exc

    def record(self, started: float, status: int) -> None:
        if self.monitor is not None:
            self.monitor.record(time.monotonic() - started, status)


def complete_answer(payload: Any) -> str | None:
    """The assistant's text of a finished, plain upstream answer; None if it must not be cached."""
    try:
        choice = payload["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        return None
    if len(payload["choices"]) != 1 or choice.get("finish_reason") != "stop" or message.get("tool_calls"):
        return None
    content = message.get("content")
    return content if isinstance(content, str) and has_visible(content) else None


class StreamCollector:
    """Reads an upstream SSE stream, passes every byte on, and assembles the answer text."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response
        self.parts: list[str] = []
        self.finish: str | None = None
        self.done = self.broken = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for line in self.response:
                self._parse(line)
                yield line
        except (OSError, http.client.HTTPException):
            self.broken = True

    def _parse(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            choice = json.loads(data)["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            self.broken = True
            return
        delta = choice.get("delta") or {}
        if delta.get("tool_calls"):
            self.broken = True
        if isinstance(delta.get("content"), str):
            self.parts.append(delta["content"])
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def answer(self) -> str | None:
        text = "".join(self.parts)
        complete = self.done and not self.broken and self.finish == "stop"
        return text if complete and has_visible(text) else None
