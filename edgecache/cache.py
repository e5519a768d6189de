"""SemanticCache: one user's cache (index + entries), persisted as snapshots in a Store."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import snapshot
from .config import CacheConfig
from .decision import Candidate, Reason, first_hit
from .embedder import Embedder, shared_embedder
from .encoder import length_batches
from .errors import EntryNotFoundError, InvalidInputError, SnapshotError
from .guards import veto
from .results import CacheStats, Entry, LookupResult
from .stores import MemoryStore, Store, check_user, user_key
from .text import CleanText, as_text, clean_context, clean_query
from .vectorindex import VectorIndex


def context_text(turns: list[str], keep: int) -> str:
    """The context chain as the encoder sees it: the last `keep` user turns, oldest first."""
    return "\n".join(turns[-keep:])


class SemanticCache:
    """A per-user semantic cache. Thread-safe; one instance per user.

    The user id must come from the caller's authentication, never from request data.
    """

    def __init__(
        self,
        user: str,
        store: Store | None = None,
        config: CacheConfig | None = None,
        embedder: Embedder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.user = check_user(user)
        self.config = config or CacheConfig()
        self.store = store if store is not None else MemoryStore()
        self.embedder = embedder or shared_embedder(
            self.config.projection, threads=self.config.encoder_threads
        )
        self._clock = clock
        self._lock = threading.RLock()
        self._index = VectorIndex(self.embedder.dim, self.config.dtype, self.config.connectivity)
        self._entries: dict[int, Entry] = {}
        self._next_id = 1
        self._lookups = self._hits = self._inserts = 0
        existing = self.store.get(self.key)
        if existing is not None:
            self.restore(existing)

    @property
    def key(self) -> str:
        return user_key(self.user)

    # -- embedding -------------------------------------------------------------------

    def _embed(
        self, queries: list[CleanText], turns: list[list[CleanText]], batch_size: int = 64
    ) -> tuple[np.ndarray, dict[int, np.ndarray], list[bool]]:
        """Index vectors (the query alone), context-chain vectors by position, truncation flags.

        Measured on MeanCache's contextual data: indexing a follow-up by the joint text of
        context + query lets a shared context swamp the question ("when was it signed" hit
        "when was it completed"), so the query and its context are embedded and checked apart.
        """
        contexts = {
            i: context_text([t.normalized for t in ts], self.config.context_turns)
            for i, ts in enumerate(turns)
            if ts
        }
        texts = [q.normalized for q in queries]
        texts += list(contexts.values())
        allv = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        truncated = [False] * len(texts)
        for idx in length_batches(texts, batch_size):
            out = self.embedder.embed([texts[i] for i in idx])
            allv[idx] = out.vectors
            for i, flag in zip(idx, out.truncated, strict=True):
                truncated[i] = flag
        n = len(queries)
        ctx = dict(zip(contexts, allv[n:], strict=True))
        flags = [
            q.clipped or any(t.clipped for t in ts) or truncated[i]
            for i, (q, ts) in enumerate(zip(queries, turns, strict=True))
        ]
        return allv[:n], ctx, flags

    # -- API -------------------------------------------------------------------------

    def lookup(self, query: object, context: list[str] | None = None) -> LookupResult:
        """Answer from the cache if an entry means the same in the same context."""
        cleaned = clean_query(query)
        vectors, contexts, flags = self._embed([cleaned], [clean_context(context)])
        vector, ctx, truncated = vectors[0], contexts.get(0), flags[0]
        now = self._clock()
        with self._lock:
            self._lookups += 1
            keys, sims = self._index.search(vector, self.config.top_k)
            candidates = [
                self._candidate(int(k), float(s), ctx, cleaned.normalized)
                for k, s in zip(keys, sims, strict=True)
            ]
            verdict = first_hit([c for c in candidates if c is not None], self.config.thresholds, now)
            cand = verdict.candidate
            if not verdict.hit or cand is None:
                return LookupResult(
                    False,
                    verdict.reason,
                    similarity=cand.similarity if cand else None,
                    context_similarity=cand.context_similarity if cand else None,
                    truncated=truncated,
                )
            entry = self._entries[cand.entry_id]
            entry.hits += 1
            entry.last_used_at = now
            self._hits += 1
            return LookupResult(
                True,
                Reason.HIT,
                entry_id=entry.id,
                response=entry.response,
                similarity=cand.similarity,
                context_similarity=cand.context_similarity,
                truncated=truncated,
                metadata=dict(entry.metadata),
            )

    def _candidate(
        self, entry_id: int, similarity: float, ctx: np.ndarray | None, query: str
    ) -> Candidate | None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        context_similarity = None
        if ctx is not None and entry.context_vector is not None:
            stored = np.frombuffer(entry.context_vector, dtype=np.float16).astype(np.float32)
            context_similarity = float(stored @ ctx)
        return Candidate(
            entry_id=entry_id,
            similarity=similarity,
            context_similarity=context_similarity,
            query_has_context=ctx is not None,
            entry_has_context=entry.context_vector is not None,
            expires_at=entry.expires_at,
            wrong_feedback=entry.wrong_feedback,
            right_feedback=entry.right_feedback,
            guard=veto(query, entry.query) if self.config.guards else None,
        )

    def insert(
        self,
        query: object,
        response: object,
        context: list[str] | None = None,
        ttl_seconds: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Store a response; returns the new entry id."""
        return self.insert_many([query], [response], [context], ttl_seconds, [metadata])[0]

    def insert_many(
        self,
        queries: list[object],
        responses: list[object],
        contexts: list[list[str] | None] | None = None,
        ttl_seconds: float | None = None,
        metadata: list[dict[str, Any] | None] | None = None,
        batch_size: int = 64,
    ) -> list[int]:
        """Store many responses at once (batched encoding); all are validated before any is stored."""
        n = len(queries)
        if n == 0:
            return []
        contexts = contexts if contexts is not None else [None] * n
        metadata = metadata if metadata is not None else [None] * n
        if not len(responses) == len(contexts) == len(metadata) == n:
            raise InvalidInputError("queries, responses, contexts and metadata differ in length")
        if ttl_seconds is not None and (
            not isinstance(ttl_seconds, int | float) or not math.isfinite(ttl_seconds) or ttl_seconds <= 0
        ):
            raise InvalidInputError(f"ttl_seconds must be a positive number, got {ttl_seconds!r}")
        for m in metadata:
            if m is not None and not isinstance(m, dict):
                raise InvalidInputError("metadata must be a dict")
        response_texts = [as_text(r, "response") for r in responses]
        cleaned = [clean_query(q) for q in queries]
        turns = [clean_context(c) for c in contexts]
        vectors, ctx_of, _ = self._embed(cleaned, turns, batch_size)
        now = self._clock()
        ttl = ttl_seconds if ttl_seconds is not None else self.config.ttl_seconds
        with self._lock:
            ids = list(range(self._next_id, self._next_id + n))
            self._index.add(np.asarray(ids, dtype=np.uint64), vectors)
            for i, entry_id in enumerate(ids):
                ctx = ctx_of.get(i)
                self._entries[entry_id] = Entry(
                    id=entry_id,
                    query=cleaned[i].original,
                    response=response_texts[i],
                    context_turns=len(turns[i]),
                    context_vector=ctx.astype(np.float16).tobytes() if ctx is not None else None,
                    created_at=now,
                    expires_at=now + ttl if ttl else None,
                    last_used_at=now,
                    metadata=dict(metadata[i] or {}),
                )
            self._next_id += n
            self._inserts += n
            self._evict_over_limit()
            return ids

    def _evict_over_limit(self) -> None:
        limit = self.config.max_entries
        if limit is None or len(self._entries) <= limit:
            return
        victims = sorted(self._entries.values(), key=lambda e: e.last_used_at)
        for entry in victims[: len(self._entries) - limit]:
            self._remove(entry.id)

    def _remove(self, entry_id: int) -> None:
        del self._entries[entry_id]
        self._index.remove(entry_id)

    def feedback(self, entry_id: int, correct: bool) -> Entry:
        """Record whether a hit was right; an entry judged wrong more often than right stops hitting."""
        if not isinstance(correct, bool):
            raise InvalidInputError("correct must be true or false")
        with self._lock:
            entry = self._get(entry_id)
            if correct:
                entry.right_feedback += 1
            else:
                entry.wrong_feedback += 1
            return entry

    def get(self, entry_id: int) -> Entry:
        with self._lock:
            return self._get(entry_id)

    def _get(self, entry_id: object) -> Entry:
        if not isinstance(entry_id, int) or isinstance(entry_id, bool):
            raise InvalidInputError(f"entry id must be an integer, got {type(entry_id).__name__}")
        try:
            return self._entries[entry_id]
        except KeyError:
            raise EntryNotFoundError(f"no entry {entry_id} in this user's cache") from None

    def delete(self, entry_id: int) -> None:
        with self._lock:
            self._get(entry_id)
            self._remove(entry_id)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._index.clear()

    def purge_expired(self) -> int:
        now = self._clock()
        with self._lock:
            expired = [
                e.id for e in self._entries.values() if e.expires_at is not None and now >= e.expires_at
            ]
            for entry_id in expired:
                self._remove(entry_id)
            return len(expired)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._entries),
                lookups=self._lookups,
                hits=self._hits,
                inserts=self._inserts,
                index_bytes=self._index.serialized_bytes(),
                dim=self.embedder.dim,
                dtype=self.config.dtype,
            )

    def __len__(self) -> int:
        return len(self._entries)

    # -- persistence -----------------------------------------------------------------

    def to_bytes(self) -> bytes:
        with self._lock:
            return snapshot.encode(
                {
                    "fingerprint": self.embedder.fingerprint,
                    "user_key": self.key,
                    "next_id": self._next_id,
                    "entries": [e.to_record() for e in self._entries.values()],
                    "index": self._index.to_bytes(),
                }
            )

    def save(self) -> None:
        """Write a snapshot to the store (atomically, for stores that support it)."""
        self.store.put(self.key, self.to_bytes())

    def restore(self, data: bytes) -> None:
        """Replace the in-memory state with a snapshot; on any error nothing changes."""
        payload = snapshot.decode(data, self.embedder.fingerprint)
        if payload.get("user_key") != self.key:
            raise SnapshotError("snapshot belongs to another user")
        try:
            entries = {r["id"]: Entry.from_record(r) for r in payload["entries"]}
            next_id = int(payload["next_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot entries are malformed: {exc}") from exc
        index = VectorIndex(self.embedder.dim, self.config.dtype, self.config.connectivity)
        index.load_bytes(payload["index"])
        if len(index) != len(entries):
            raise SnapshotError(f"snapshot index holds {len(index)} vectors for {len(entries)} entries")
        with self._lock:
            self._index, self._entries, self._next_id = index, entries, next_id
