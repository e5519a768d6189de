"""Validation and normalisation of the text that enters the cache."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .errors import InvalidInputError

# The encoder keeps 256 word pieces; after whitespace collapse a word piece spans at
# most ~100 characters plus one space, so characters past this bound can never reach
# the encoder. Clipping here keeps a 1 MB query from costing a 1 MB tokenisation.
MAX_ENCODED_CHARS = 32_768
# Stored responses and queries beyond this are refused rather than silently cut.
MAX_STORED_BYTES = 4 * 1024 * 1024

_WS = re.compile(r"\s+")
# Control and format characters (NUL, zero-width space, BOM...): a query of only these has
# nothing to mean.
_INVISIBLE = frozenset({"Cc", "Cf"})
# Letters and symbols that print as blank space: the Hangul fillers and the blank braille cell.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")


@dataclass(frozen=True)
class CleanText:
    original: str
    normalized: str
    clipped: bool


def as_text(value: object, what: str) -> str:
    """Accept str, or bytes that are valid UTF-8; anything else is a clear error."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{what} is not valid UTF-8 (byte {exc.start})") from exc
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from a bad decode upstream
        raise InvalidInputError(f"{what} is not valid UTF-8 (position {exc.start})") from exc
    if len(value.encode("utf-8")) > MAX_STORED_BYTES:
        raise InvalidInputError(f"{what} is larger than {MAX_STORED_BYTES} bytes")
    return value


def has_visible(text: str) -> bool:
    """Whether `text` holds anything but whitespace and invisible characters."""
    return not all(ch.isspace() or ch in _BLANK or unicodedata.category(ch) in _INVISIBLE for ch in text)


def clean_response(value: object) -> str:
    """A response to store, as given: text with something in it to serve."""
    text = as_text(value, "response")
    if not has_visible(text):
        raise InvalidInputError("response is empty or holds only whitespace and invisible characters")
    return text


def clean_query(value: object, what: str = "query") -> CleanText:
    text = as_text(value, what)
    normalized = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if not has_visible(normalized):
        raise InvalidInputError(f"{what} is empty or holds only whitespace and invisible characters")
    clipped = len(normalized) > MAX_ENCODED_CHARS
    if clipped:
        normalized = normalized[:MAX_ENCODED_CHARS]
    return CleanText(text, normalized, clipped)


def clean_context(turns: object) -> list[CleanText]:
    """Previous user turns, oldest first. None or [] means a standalone query."""
    if turns is None:
        return []
    if isinstance(turns, str | bytes):
        raise InvalidInputError("context must be a list of previous turns, not a single string")
    if not isinstance(turns, list | tuple):
        raise InvalidInputError(f"context must be a list of strings, got {type(turns).__name__}")
    return [clean_query(t, f"context[{i}]") for i, t in enumerate(turns)]
