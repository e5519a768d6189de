"""Snapshot format: MAGIC | sha256(payload) | msgpack payload.

The payload carries a format version and the fingerprint of the encoder and
projection that produced the vectors; `decode` verifies all three before anything
is handed back, so a bad snapshot can never replace good state.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from .errors import SnapshotError
from .results import Entry

MAGIC = b"EDGECSNP"
# 2: entries as rows under one list of field names (format 1 repeated the names per entry).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER = len(MAGIC) + 32


def encode(payload: dict[str, Any]) -> bytes:
    body = msgpack.packb({**payload, "version": FORMAT_VERSION}, use_bin_type=True)
    return MAGIC + hashlib.sha256(body).digest() + body


def decode(data: bytes, fingerprint: str | None) -> dict[str, Any]:
    """The payload of a sound snapshot. `fingerprint`: the encoder/projection its vectors must
    come from; None accepts any (re-embedding reads the texts, not the vectors)."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, bytes | bytearray) or len(data) < _HEADER:
        raise SnapshotError("snapshot is truncated or empty")
    if data[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not an edgecache snapshot (bad magic bytes)")
    body = bytes(data[_HEADER:])
    if hashlib.sha256(body).digest() != data[len(MAGIC) : _HEADER]:
        raise SnapshotError("snapshot checksum mismatch: the file is corrupted")
    try:
        payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # checksum passed, so this is a writer bug
        raise SnapshotError(f"snapshot payload is unreadable: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("version") not in READABLE_VERSIONS:
        raise SnapshotError(
            f"snapshot format version {payload.get('version') if isinstance(payload, dict) else '?'}"
            f" is not supported (this edgecache reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    if fingerprint is not None and payload.get("fingerprint") != fingerprint:
        raise SnapshotError(
            "snapshot was written with another encoder/projection "
            f"({str(payload.get('fingerprint'))[:16]}... vs {fingerprint[:16]}...); "
            "its vectors cannot be compared with this cache's. Its entries keep their texts: "
            "`edgecache snapshot reembed` (or edgecache.reembed.reembed_snapshot) encodes them again"
        )
    return payload


def entries(payload: dict[str, Any]) -> dict[int, Entry]:
    """The entries of a decoded payload, by id, each checked field by field."""
    try:
        if payload["version"] == 1:
            loaded = [Entry.from_record(r).check() for r in payload["entries"]]
        else:
            loaded = [Entry.from_row(payload["entry_fields"], r).check() for r in payload["entries"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot entries are malformed: {exc}") from exc
    return {e.id: e for e in loaded}


# Write ids a snapshot keeps of its history, newest last: a writer whose write may have landed
# unseen looks for its id here. Older writers' ids age out; 32 x 16 characters per snapshot.
WRITES_KEPT = 32


def writes(payload: dict[str, Any]) -> list[str]:
    """The ids of the writes a snapshot's state holds, newest last ([] before they were kept)."""
    found = payload.get("writes", [])
    if not isinstance(found, list) or len(found) > WRITES_KEPT or not all(isinstance(w, str) for w in found):
        raise SnapshotError("snapshot is malformed: its write history is not a short list of ids")
    return found


def index_bytes(payload: dict[str, Any]) -> bytes:
    data = payload.get("index")
    if not isinstance(data, bytes):
        raise SnapshotError(f"snapshot entries are malformed: index is {type(data).__name__}, not bytes")
    return data
