"""Typed values returned by the cache API."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .decision import Reason
from .errors import InvalidInputError
from .metadata import checked_metadata


@dataclass
class Entry:
    id: int
    query: str
    # None while the body lives in a separate document store (fetched only on a hit).
    response: str | None
    context_turns: int
    context_vector: bytes | None  # float16 bytes of the projected context embedding
    created_at: float
    expires_at: float | None
    last_used_at: float
    hits: int = 0
    right_feedback: int = 0
    wrong_feedback: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    category: str = "other"
    # Bytes this entry holds: query + response text, its vectors in the index and context.
    size: int = 0
    # The standalone query it last answered (its similarity, the threshold that let it
    # through, its category): what the next feedback is about, for error-bounded thresholds.
    last_similarity: float | None = None
    last_threshold: float | None = None
    last_category: str | None = None
    # The start of the text of the context turns its vector read (`SemanticCache._context_vectors`):
    # the guards compare it with a lookup's, since "World War I" and "World War II" embed at
    # cosine 0.85.
    context: str | None = None

    def copy(self) -> Entry:
        """A copy the caller may change, metadata included, without changing the cache."""
        return replace(self, metadata=copy.deepcopy(self.metadata))

    def to_row(self) -> list[Any]:
        """Values in `ENTRY_FIELDS` order: snapshots store the names once, not per entry."""
        return [getattr(self, name) for name in ENTRY_FIELDS]

    @classmethod
    def from_row(cls, names: list[str], row: list[Any]) -> Entry:
        """An entry from a snapshot row; fields the writer did not have take their defaults,
        and fields of a later version are dropped (a rolled-back reader still loads)."""
        if len(names) != len(row):
            raise ValueError(f"row has {len(row)} values for {len(names)} fields")
        return cls(**{k: v for k, v in zip(names, row, strict=True) if k in _FIELD_NAMES})

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entry:
        """An entry from a format-1 snapshot, which stored each entry as a map."""
        return cls(**record)

    def check(self) -> Entry:
        """This entry, or a ValueError naming the first field of the wrong type: a snapshot
        whose checksum holds can still come from a faulty writer, and a bad field would
        otherwise fail every later lookup instead of the load."""
        for name, allowed in _KINDS:
            value = getattr(self, name)
            if type(value) not in allowed:  # exact types, as msgpack gives them: a bool is no count
                raise ValueError(f"entry {self.id!r}: {name} is {type(value).__name__}")
        for name in _COUNTERS:
            # Counters go up from here and must still pack as msgpack's 64-bit ints when saved.
            if not 0 <= getattr(self, name) < 2**63:
                raise ValueError(f"entry {self.id!r}: {name} is out of range")
        for name in _TIMES:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # a NaN expiry would never expire
                raise ValueError(f"entry {self.id!r}: {name} is {value}")
        # Metadata insert refuses would fail every later save or hit (saves pack it, hits
        # return it as JSON).
        if self.metadata:
            try:
                self.metadata = checked_metadata(self.metadata)
            except InvalidInputError as exc:
                raise ValueError(f"entry {self.id!r}: {exc}") from None
        return self


_NONE, _NUMBER = type(None), frozenset({int, float})
_KINDS: tuple[tuple[str, frozenset[type]], ...] = (
    ("id", frozenset({int})),
    ("query", frozenset({str})),
    ("response", frozenset({str, _NONE})),
    ("context_turns", frozenset({int})),
    ("context_vector", frozenset({bytes, _NONE})),
    ("created_at", _NUMBER),
    ("expires_at", _NUMBER | {_NONE}),
    ("last_used_at", _NUMBER),
    ("hits", frozenset({int})),
    ("right_feedback", frozenset({int})),
    ("wrong_feedback", frozenset({int})),
    ("metadata", frozenset({dict})),
    ("category", frozenset({str})),
    ("size", frozenset({int})),
    ("last_similarity", _NUMBER | {_NONE}),
    ("last_threshold", _NUMBER | {_NONE}),
    ("last_category", frozenset({str, _NONE})),
    ("context", frozenset({str, _NONE})),
)
_COUNTERS = ("id", "context_turns", "hits", "right_feedback", "wrong_feedback", "size")
_TIMES = ("created_at", "expires_at", "last_used_at", "last_similarity", "last_threshold")


ENTRY_FIELDS = tuple(f.name for f in fields(Entry))
_FIELD_NAMES = frozenset(ENTRY_FIELDS)


@dataclass(frozen=True)
class LookupResult:
    hit: bool
    reason: Reason
    entry_id: int | None = None
    response: str | None = None
    similarity: float | None = None
    context_similarity: float | None = None
    # The query (or a context turn) was longer than the encoder reads; only its start was used.
    truncated: bool = False
    metadata: dict[str, Any] | None = None
    category: str | None = None
    # The similarity threshold this query was held to (category policy, feedback, load).
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reason"] = str(self.reason)
        return out


@dataclass(frozen=True)
class InsertResult:
    entry_id: int
    # The query (or a context turn) was longer than the encoder reads; only its start was used.
    truncated: bool = False


@dataclass(frozen=True)
class CacheStats:
    entries: int
    lookups: int
    hits: int
    inserts: int
    index_bytes: int
    dim: int
    dtype: str
    # Per category: lookups, hits, inserts, wrong/right feedback, evictions, expired, entries, bytes.
    categories: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}
