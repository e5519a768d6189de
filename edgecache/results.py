"""Typed values returned by the cache API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .decision import Reason


@dataclass
class Entry:
    id: int
    query: str
    response: str
    context_turns: int
    context_vector: bytes | None  # float16 bytes of the projected context embedding
    created_at: float
    expires_at: float | None
    last_used_at: float
    hits: int = 0
    right_feedback: int = 0
    wrong_feedback: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entry:
        return cls(**record)


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reason"] = str(self.reason)
        return out


@dataclass(frozen=True)
class CacheStats:
    entries: int
    lookups: int
    hits: int
    inserts: int
    index_bytes: int
    dim: int
    dtype: str

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}
