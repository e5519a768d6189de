"""HTTP request errors and JSON-body checks shared by edgecache's Ray Serve deployments
(`edgecache.adapters.serve`, `edgecache.llm.worker`).

Torch-free and Ray-free: a refused request is a `RequestError` carrying the HTTP status it
maps to and a body {"error": {"code", "message"}}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInputError

__all__ = ["RequestError", "check_body_length", "check_declared_length", "decode_json_body", "media_type"]


class RequestError(InvalidInputError):
    """A request a deployment refuses; `status` is the HTTP status it maps to."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def check_body_length(length: int, limit: int) -> None:
    """A 413 RequestError when a body of `length` bytes is over `limit`."""
    if length > limit:
        raise RequestError(413, "body_too_large", f"request body over {limit} bytes")


def check_declared_length(headers: Mapping[str, str], limit: int) -> None:
    """A 413 RequestError when the Content-Length header already says the body is over
    `limit`, before reading it."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_body_length(int(declared), limit)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def decode_json_body(body: bytes, content_type: str, limit: int) -> dict[str, Any]:
    """The JSON object in a request body, or a RequestError (413, 415, 400) saying why not.

    The body must be UTF-8 (RFC 8259 section 8.1); anything else is a 400 "bad_encoding"."""
    check_body_length(len(body), limit)
    media = media_type(content_type)
    if media not in ("", "application/json") and not media.endswith("+json"):
        raise RequestError(415, "unsupported_media", f"content type {media!r}: send application/json")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, "bad_encoding", f"request body is not UTF-8: {exc}") from None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise RequestError(400, "bad_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "bad_json", "request body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "bad_request", "request body must be a JSON object")
    return payload
