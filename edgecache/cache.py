"""SemanticCache: one user's cache (index + entries), persisted as snapshots in a Store."""

from __future__ import annotations

import copy
import dataclasses
import heapq
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import snapshot
from .categories import CategoryRules, RulesNow
from .config import CacheConfig
from .decision import Candidate, Reason, Thresholds, first_hit
from .embedder import Embedder, shared_embedder
from .errors import ConfigError, ConflictError, EntryNotFoundError, InvalidInputError, SnapshotError
from .eviction import STRATEGIES
from .followups import FollowUpTable
from .guards import asks_another_kind, names_a_new_turn, veto
from .load import LoadSignal
from .metadata import checked_metadata
from .numbers import is_positive
from .results import ENTRY_FIELDS, CacheStats, Entry, InsertResult, LookupResult
from .stores import WRITE_ATTEMPTS, MemoryStore, Store, VersionedStore, backoff, check_user, user_key
from .text import MAX_ENCODED_CHARS, CleanText, clean_context, clean_query, clean_response
from .vectorindex import VectorIndex, all_finite, checked_vectors, vector_bytes

if TYPE_CHECKING:
    from .calibration import OnlineCalibrator


def context_text(turns: list[str]) -> str:
    """The context chain as the encoder and the guards read it: user turns, oldest first."""
    return "\n".join(turns)


# What an entry keeps of its context's text for the guards: about what the encoder reads of it
# (256 tokens), not the up to 2 x 32k characters a chain may hold.
CONTEXT_GUARD_CHARS = 2048


COUNTERS = ("lookups", "hits", "inserts", "wrong_feedback", "right_feedback", "evictions", "expired")
# Texts per encoder call when inserting; each text still gets its own graph run (Encoder).
INSERT_BATCH = 64
# How far a standalone lookup searches past follow-ups that share its words.
MAX_REACH = 256


def _headroom(limit: int | None) -> int:
    """Room an eviction frees beyond the limit: 1% of it (none below 100). Ranking the pool is
    linear in its size, so freeing one entry per insert made a full 20k-entry cache spend
    ~45 ms on every insert; freeing 1% at a time makes that once per 1% of inserts."""
    return limit // 100 if limit else 0


class SemanticCache:
    """A per-user semantic cache. Thread-safe; one instance per user.

    The user id must come from the caller's authentication, never from request data.

    `bodies`: a document store for response bodies (hybrid layout). With one, only the
    index and small metadata stay in memory and in snapshots; a body is read only when a
    lookup hits, so a miss never touches the document store.
    `load`: a backend load signal that may relax thresholds and stretch TTLs within each
    category's bounds. `calibrator`: shared feedback statistics for error-bounded
    thresholds (one per process is best: feedback from every user then counts).
    """

    def __init__(
        self,
        user: str,
        store: Store | None = None,
        config: CacheConfig | None = None,
        embedder: Embedder | None = None,
        clock: Callable[[], float] = time.time,
        *,
        bodies: Store | None = None,
        load: LoadSignal | None = None,
        calibrator: OnlineCalibrator | None = None,
    ) -> None:
        self.user = check_user(user)
        if config is not None and not isinstance(config, CacheConfig):
            raise ConfigError(f"config must be a CacheConfig, got {type(config).__name__}")
        for name, value in (("store", store), ("bodies", bodies)):
            if value is not None and not isinstance(value, Store):
                raise ConfigError(f"{name} must be a Store (get/put/delete), got {type(value).__name__}")
        self.config = config or CacheConfig()
        self.store = store if store is not None else MemoryStore()
        self.bodies = bodies
        self.embedder = embedder or shared_embedder(
            self.config.projection, threads=self.config.encoder_threads
        )
        self.rules = CategoryRules(self.config, self.embedder, load=load, calibrator=calibrator)
        self._clock = clock
        self._lock = threading.RLock()
        # One save or refresh at a time: two saves from one cache would merge each other's
        # snapshots, and a refresh could adopt a snapshot older than one just saved.
        self._sync_lock = threading.Lock()
        self._index = VectorIndex(self.embedder.dim, self.config.dtype, self.config.connectivity)
        self._vector_bytes = vector_bytes(self.embedder.dim, self.config.dtype)
        self._entries: dict[int, Entry] = {}
        self._followups = FollowUpTable(self.embedder.dim)
        self._by_text: dict[str, list[int]] = {}  # standalone entries by their query as written
        # Changes not yet in the stored snapshot: what a merge with another writer's
        # snapshot must re-apply (vectors kept exactly, for re-adding to the index).
        self._pending_add: dict[int, np.ndarray] = {}
        self._pending_remove: set[int] = set()
        # Writes whose outcome is unknown, by write id: in flight, or failed in a way that may
        # have landed (an fsync error after the rename; an S3 PUT that timed out, was retried
        # and lost its condition to itself). A merge with a snapshot holding one of them must
        # not apply that write's changes twice (counts doubled, deleted entries back).
        self._unconfirmed: dict[str, _Pending] = {}
        # Ids of the writes the state derives from, newest last (`snapshot.writes`).
        self._lineage: list[str] = []
        self._replacing = False  # after `restore`: the next save writes over, never merges
        # Hits and feedback since the last save, by entry: counts add up, so a merge adds
        # them to the other writer's copy of the entry instead of losing them.
        self._pending_counts: dict[int, Counter[str]] = {}
        self._version: str | None = None  # of the stored snapshot this state derives from
        self.synced_at = time.monotonic()  # last read or write of the store
        self._counts: dict[str, Counter[str]] = {name: Counter() for name in self.config.policy.names}
        # Entries and bytes held per category, kept current so quota checks cost O(1).
        self._held: dict[str, list[int]] = {name: [0, 0] for name in self.config.policy.names}
        # Bodies of removed entries, deleted from the document store outside the lock.
        self._dead_bodies: list[str] = []
        if isinstance(self.store, VersionedStore):
            found = self.store.get_versioned(self.key)
            if found is not None:
                self._load(found[0])
                self._version = found[1]
        else:
            existing = self.store.get(self.key)
            if existing is not None:
                self._load(existing)

    @property
    def key(self) -> str:
        return user_key(self.user)

    def _body_key(self, entry_id: int) -> str:
        return f"{self.key}.{entry_id}"

    # -- embedding -------------------------------------------------------------------

    def _embed(
        self, queries: list[CleanText], turns: list[list[CleanText]], batch_size: int = 64
    ) -> tuple[np.ndarray, dict[int, np.ndarray], list[bool], np.ndarray, dict[int, str]]:
        """Index vectors (the query alone), context-chain vectors by position, truncation
        flags, the vectors the category classifier reads (see Embedded.raw), and by position
        the start of the context chain's text that the guards compare (`CONTEXT_GUARD_CHARS`).

        Measured on MeanCache's contextual data: indexing a follow-up by the joint text of
        context + query lets a shared context swamp the question ("when was it signed" hit
        "when was it completed"), so the query and its context are embedded and checked apart.
        """
        texts = [q.normalized for q in queries]
        queryv, rawv, truncated = self._vectors(texts, batch_size)
        chains, ctx, ctx_truncated = self._context_vectors(turns, batch_size)
        # Only what the encoder reads counts: the query, and the turns its context chain kept.
        flags = [q.clipped or truncated[i] or ctx_truncated.get(i, False) for i, q in enumerate(queries)]
        guarded = {i: context_text(chain)[:CONTEXT_GUARD_CHARS] for i, chain in chains.items()}
        return queryv, ctx, flags, rawv, guarded

    def _context_vectors(
        self, turns: list[list[CleanText]], batch_size: int
    ) -> tuple[dict[int, list[str]], dict[int, np.ndarray], dict[int, bool]]:
        """By position: the turns each context chain keeps, its vector, and whether anything
        the chain was given went unread.

        A chain is its last `context_turns` turns, less its oldest turns while the encoder
        would truncate it: the encoder reads a text from its start, so a long earlier turn (a
        pasted report) would hide the latest one, and "What is its population?" after the
        report and "Tell me about Germany" would get the answer cached after the report and
        "Tell me about France". The latest turn is always kept."""
        keep = self.config.context_turns
        given = {i: ts[-keep:] for i, ts in enumerate(turns) if ts}
        chains = {i: [t.normalized for t in ts] for i, ts in given.items()}
        vectors: dict[int, np.ndarray] = {}
        cut: dict[int, bool] = {}
        todo = list(chains)
        while todo:
            allv, _, truncated = self._vectors([context_text(chains[i]) for i in todo], batch_size)
            # The index checks query vectors; a zero context vector would match no context.
            checked_vectors(allv, self.embedder.dim)
            again = []
            for i, v, t in zip(todo, allv, truncated, strict=True):
                vectors[i] = v
                if t and len(chains[i]) > 1:
                    chains[i] = chains[i][1:]
                    cut[i] = True
                    again.append(i)
                else:
                    cut[i] = cut.get(i, False) or t or any(x.clipped for x in given[i][-len(chains[i]) :])
            todo = again
        return chains, vectors, cut

    def _vectors(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """The embedder's vectors, its raw vectors (its own where it has none) and truncation
        flags, for texts in batches; refused when not of the declared shape or not finite."""
        # Filled by slices, batch by batch: a bulk insert holds its vectors once, not twice.
        allv = np.empty((len(texts), self.embedder.dim), dtype=np.float32)
        rawv: np.ndarray | None = None
        truncated: list[bool] = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            out = self.embedder.embed(batch)
            end = start + len(batch)
            if np.shape(out.vectors) != (len(batch), self.embedder.dim):
                raise InvalidInputError(
                    f"the embedder returned vectors of shape {np.shape(out.vectors)} for {len(batch)}"
                    f" texts; it declares dimension {self.embedder.dim}"
                )
            allv[start:end] = out.vectors
            if out.raw is not None:
                if rawv is None:
                    rawv = np.zeros((len(texts), out.raw.shape[1]), dtype=np.float32)
                rawv[start:end] = out.raw
            truncated += out.truncated
        if not all_finite(allv):
            # A NaN context vector would compare as neither above nor below any threshold.
            raise InvalidInputError("the embedder returned NaN or infinite values")
        return allv, (rawv if rawv is not None else allv), truncated

    # -- API -------------------------------------------------------------------------

    def lookup(
        self, query: object, context: list[str] | None = None, category: str | None = None
    ) -> LookupResult:
        """Answer from the cache if an entry means the same in the same context.

        `category` overrides the classifier when the caller knows it.
        """
        cleaned, turns = clean_query(query), clean_context(context)
        vectors, contexts, flags, topics, chains = self._embed([cleaned], [turns])
        vector, ctx, truncated, asked_context = vectors[0], contexts.get(0), flags[0], chains.get(0)
        query_category = self.rules.categorize(topics, [category])[0]
        now = self._clock()
        rules = self.rules.now()
        with self._lock:
            keys, sims = self._index.search(vector, self.config.top_k)
            if ctx is None:
                floor = rules.thresholds(query_category).similarity
                keys, sims = self._past_followups(vector, keys, sims, floor)
            self._counts[query_category]["lookups"] += 1  # counted once the query proved searchable
            found = dict(zip(keys.tolist(), sims.tolist(), strict=True))
            if ctx is None and cleaned.original in self._by_text:
                # A word-for-word repeat, which the graph search can miss among many near
                # duplicates (more so after deletions), is always a candidate.
                same = [i for i in self._by_text[cleaned.original] if i not in found]
                found.update(zip(same, self._index.similarities(same, vector), strict=True))
            if ctx is not None:
                # Follow-ups asked in this conversation, even where entries with other contexts
                # ("can you give me an example?" asked in many) fill the nearest k.
                more = [
                    i for i, _ in self._followups.matches(ctx, self.rules.loosest_context) if i not in found
                ]
                found.update(zip(more, self._index.similarities(more, vector), strict=True))

            def pair_rule(entry_id: int) -> Thresholds:
                return rules.pair(query_category, self._entries[entry_id].category)

            candidates = [
                self._candidate(k, s, ctx, cleaned.normalized, asked_context, rules, pair_rule)
                for k, s in found.items()
            ]
            verdict = first_hit(
                [c for c in candidates if c is not None], lambda c: pair_rule(c.entry_id), now
            )
            cand = verdict.candidate
            if ctx is None:
                self.rules.count_lookup(
                    query_category, rules.thresholds(query_category).for_query(ctx is not None)
                )
            # What the query was held to: against an entry of another category, the stricter pair.
            threshold = (
                pair_rule(cand.entry_id) if cand is not None else rules.thresholds(query_category)
            ).for_query(ctx is not None)
            if not verdict.hit or cand is None:
                return LookupResult(
                    False,
                    verdict.reason,
                    similarity=cand.similarity if cand else None,
                    context_similarity=cand.context_similarity if cand else None,
                    truncated=truncated,
                    category=query_category,
                    threshold=threshold,
                )
            entry = self._entries[cand.entry_id]
            response = entry.response
        if self.bodies is not None:
            # Outside the lock: a document store read may be a network round trip.
            response = self._read_body(entry.id)
            if response is None:
                return LookupResult(
                    False,
                    Reason.BODY_MISSING,
                    similarity=cand.similarity,
                    truncated=truncated,
                    category=query_category,
                    threshold=threshold,
                )
        with self._lock:
            entry.hits += 1
            entry.last_used_at = now
            self._pending_counts.setdefault(entry.id, Counter())["hits"] += 1
            if ctx is None:
                entry.last_similarity, entry.last_threshold = cand.similarity, threshold
                entry.last_category = query_category
            self._counts[query_category]["hits"] += 1
        return LookupResult(
            True,
            Reason.HIT,
            entry_id=entry.id,
            response=response,
            similarity=cand.similarity,
            context_similarity=cand.context_similarity,
            truncated=truncated,
            metadata=copy.deepcopy(entry.metadata),
            category=query_category,
            threshold=threshold,
        )

    def _past_followups(
        self, vector: np.ndarray, keys: np.ndarray, sims: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The nearest entries, reaching past follow-ups for a standalone lookup (lock held).

        A standalone query is answered by standalone entries only. When follow-ups with its
        words ("can you give me an example?", cached in many conversations) fill all of the
        nearest k at or above the threshold, its own entry lies further out: the search
        widens until a standalone entry or a similarity below the threshold comes back, up
        to MAX_REACH entries (a word-for-word repeat is found beyond that by its text).
        """
        k = len(keys)
        while (
            k
            and len(keys) == k
            and sims[-1] >= threshold
            and k < min(len(self._index), MAX_REACH)
            and all(e is None or e.context_vector is not None for e in map(self._entries.get, keys.tolist()))
        ):
            k *= 4
            keys, sims = self._index.search(vector, k)
        return keys, sims

    def _read_body(self, entry_id: int) -> str | None:
        """The stored response, or None (and the entry dropped) when its body is gone."""
        assert self.bodies is not None
        data = self.bodies.get(self._body_key(entry_id))
        if data is None:
            with self._lock:
                if entry_id in self._entries:
                    self._remove(entry_id)
            return None
        return data.decode("utf-8")

    def _candidate(
        self,
        entry_id: int,
        similarity: float,
        ctx: np.ndarray | None,
        query: str,
        asked_context: str | None,
        rules: RulesNow,
        pair_rule: Callable[[int], Thresholds],
    ) -> Candidate | None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        # The guards cost more than the rest of the decision (0.6 of a 6 ms lookup when run on
        # every neighbour); the decision reads them only at or above the threshold.
        guarded = self.config.guards and similarity >= pair_rule(entry_id).for_query(ctx is not None)
        context_similarity = None
        if ctx is not None and entry.context_vector is not None:
            # Clipped: the stored float16 vector's rounding can put a cosine a hair past 1.
            context_similarity = min(1.0, max(-1.0, float(_context_vector(entry) @ ctx)))
        return Candidate(
            entry_id=entry_id,
            similarity=similarity,
            context_similarity=context_similarity,
            query_has_context=ctx is not None,
            entry_has_context=entry.context_vector is not None,
            expires_at=rules.expires_at(entry),
            wrong_feedback=entry.wrong_feedback,
            right_feedback=entry.right_feedback,
            guard=self._guard(query, entry, asked_context) if guarded else None,
        )

    def _guard(self, query: str, entry: Entry, asked_context: str | None) -> str | None:
        """Why the guards veto this entry for the query: its text, or its context chain's (a
        follow-up cached after "World War I" must not answer one asked after "World War II")."""
        why = veto(query, entry.query, *self._unseen(query, stored_query_text(entry.query)))
        if why is None and asked_context is not None and entry.context is not None:
            if asks_another_kind(query, entry.query):
                return "answer kind"
            if names_a_new_turn(asked_context, entry.context):
                return "context turn"
            why = veto(asked_context, entry.context, *self._unseen(asked_context, entry.context))
            return None if why is None else f"context {why}"
        return why

    def _unseen(self, *texts: str) -> list[tuple[str, ...]]:
        """What the embedder's model cannot see of each text (none if it cannot say)."""
        unseen = getattr(self.embedder, "unseen", None)
        return unseen(list(texts)) if unseen is not None else [()] * len(texts)

    def insert(
        self,
        query: object,
        response: object,
        context: list[str] | None = None,
        ttl_seconds: float | None = None,
        metadata: dict[str, Any] | None = None,
        category: str | None = None,
    ) -> int:
        """Store a response; returns the new entry id."""
        return self.insert_detailed(query, response, context, ttl_seconds, metadata, category).entry_id

    def insert_detailed(
        self,
        query: object,
        response: object,
        context: list[str] | None = None,
        ttl_seconds: float | None = None,
        metadata: dict[str, Any] | None = None,
        category: str | None = None,
    ) -> InsertResult:
        """`insert`, also saying whether the query or a context turn was truncated."""
        ids, truncated = self._insert(
            [query], [response], [context], ttl_seconds, [metadata], INSERT_BATCH, [category]
        )
        return InsertResult(ids[0], truncated[0])

    def insert_many(
        self,
        queries: list[object],
        responses: list[object],
        contexts: list[list[str] | None] | None = None,
        ttl_seconds: float | None = None,
        metadata: list[dict[str, Any] | None] | None = None,
        batch_size: int = INSERT_BATCH,
        categories: list[str | None] | None = None,
    ) -> list[int]:
        """Store many responses at once (batched encoding); all are validated before any is stored.

        TTL: `ttl_seconds` if given, else the category's, else the cache-wide one.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        return self._insert(queries, responses, contexts, ttl_seconds, metadata, batch_size, categories)[0]

    def _insert(
        self,
        queries: list[object],
        responses: list[object],
        contexts: list[list[str] | None] | None,
        ttl_seconds: float | None,
        metadata: list[dict[str, Any] | None] | None,
        batch_size: int,
        categories: list[str | None] | None,
    ) -> tuple[list[int], list[bool]]:
        """New entry ids and, for each, whether its text was truncated."""
        lists = {"queries": queries, "responses": responses, "contexts": contexts}
        lists |= {"metadata": metadata, "categories": categories}
        for name, value in lists.items():
            required = name in ("queries", "responses")
            if (value is not None or required) and not isinstance(value, list | tuple):
                raise InvalidInputError(f"{name} must be a list, got {type(value).__name__}")
        n = len(queries)
        contexts = contexts if contexts is not None else [None] * n
        metadata = metadata if metadata is not None else [None] * n
        categories = categories if categories is not None else [None] * n
        if not len(responses) == len(contexts) == len(metadata) == len(categories) == n:
            raise InvalidInputError("queries, responses, contexts, metadata and categories differ in length")
        if n == 0:
            return [], []
        if ttl_seconds is not None and not is_positive(ttl_seconds):
            raise InvalidInputError(f"ttl_seconds must be a positive number, got {ttl_seconds!r}")
        metadata = [checked_metadata(m) for m in metadata]
        for c in categories:
            if c is not None:
                self.rules.check(c)
        response_texts = [clean_response(r) for r in responses]
        cleaned = [clean_query(q) for q in queries]
        turns = [clean_context(c) for c in contexts]
        vectors, ctx_of, truncated, topics, chains = self._embed(cleaned, turns, batch_size)
        # Checked before any body is written: a vector the index refuses leaves nothing behind.
        vectors = checked_vectors(vectors, self.embedder.dim)
        names = self.rules.categorize(topics, categories)
        with self._lock:
            ids = self._new_ids(n)
        now = self._clock()
        ttls = [self.rules.ttl(name, ttl_seconds) for name in names]
        if self.bodies is not None:
            # A body must outlive its entry's longest possible life (TTL stretched under load).
            keep = [
                now + t * self.rules.max_ttl_factor(name) if t else None
                for t, name in zip(ttls, names, strict=True)
            ]
            self._write_bodies(ids, response_texts, keep)
        with self._lock:
            self._index.add(np.asarray(ids, dtype=np.uint64), vectors)
            for i, entry_id in enumerate(ids):
                ctx = ctx_of.get(i)
                ttl = ttls[i]
                context_vector = ctx.astype(np.float16).tobytes() if ctx is not None else None
                context = chains.get(i)
                entry = Entry(
                    id=entry_id,
                    query=cleaned[i].original,
                    response=None if self.bodies is not None else response_texts[i],
                    context_turns=len(turns[i]),
                    context_vector=context_vector,
                    created_at=now,
                    expires_at=now + ttl if ttl else None,
                    last_used_at=now,
                    metadata=metadata[i],
                    category=names[i],
                    size=len(cleaned[i].original.encode("utf-8", "surrogatepass"))
                    + len(response_texts[i].encode("utf-8", "surrogatepass"))
                    + self._vector_bytes
                    + len(context_vector or b"")
                    + len((context or "").encode("utf-8", "surrogatepass")),
                    context=context,
                )
                self._add(entry)
                self._pending_add[entry_id] = vectors[i].copy()
                self._counts[names[i]]["inserts"] += 1
            for name in dict.fromkeys(names):
                self._enforce_quota(name, now)
            self._evict_over_limit(now)
        self._drop_bodies()
        return ids, truncated

    def _write_bodies(self, ids: list[int], texts: list[str], expires: list[float | None]) -> None:
        assert self.bodies is not None
        written: list[str] = []
        try:
            for entry_id, text, expires_at in zip(ids, texts, expires, strict=True):
                key = self._body_key(entry_id)
                self.bodies.put(key, text.encode("utf-8", "surrogatepass"), expires_at=expires_at)
                written.append(key)
        except BaseException:
            for key in written:
                self.bodies.delete(key)
            raise

    def _new_ids(self, n: int) -> list[int]:
        """Random 52-bit ids (exact in JSON numbers): two writers of one user's cache never
        hand out the same id, so their snapshots merge without renumbering (lock held)."""
        ids: list[int] = []
        while len(ids) < n:
            candidate = secrets.randbits(52)
            if candidate and candidate not in self._entries and candidate not in ids:
                ids.append(candidate)
        return ids

    def _add(self, entry: Entry) -> None:
        self._entries[entry.id] = entry
        if entry.context_vector is not None:
            self._followups.add(entry.id, _context_vector(entry))
        else:
            self._by_text.setdefault(entry.query, []).append(entry.id)
        held = self._held[entry.category]
        held[0] += 1
        held[1] += entry.size

    def _remove(self, entry_id: int, why: str | None = None) -> None:
        entry = self._entries.pop(entry_id)
        self._index.remove(entry_id)
        self._followups.remove(entry_id)
        same = self._by_text.get(entry.query)
        if same is not None and entry_id in same:
            same.remove(entry_id)
            if not same:
                del self._by_text[entry.query]
        self._pending_counts.pop(entry_id, None)
        # An entry added since the last save is in no stored snapshot, unless the save in
        # flight wrote it: then a merge with that snapshot must not bring it back.
        if self._pending_add.pop(entry_id, None) is None or any(
            entry_id in w.added for w in self._unconfirmed.values()
        ):
            self._pending_remove.add(entry_id)
        held = self._held[entry.category]
        held[0] -= 1
        held[1] -= entry.size
        if why is not None:
            self._counts[entry.category][why] += 1
        if self.bodies is not None:
            self._dead_bodies.append(self._body_key(entry_id))

    def _drop_bodies(self) -> None:
        if self.bodies is None:
            return
        with self._lock:
            dead, self._dead_bodies = self._dead_bodies, []
        for key in dead:
            self.bodies.delete(key)

    def _evict(self, pool: list[Entry], strategy: str, now: float, entries: int, size: int) -> None:
        """Remove entries from `pool` until `entries` and `size` more have gone: expired first,
        then in the order of the eviction strategy."""
        order = STRATEGIES[strategy].key
        # A heap, not a sort: a full cache evicts one or two entries per insert, and heapify is
        # linear where sorting 50k entries on every insert costs tens of milliseconds.
        ranked = [(not (e.expires_at is not None and now >= e.expires_at), order(e), e.id, e) for e in pool]
        heapq.heapify(ranked)
        while ranked and (entries > 0 or size > 0):
            entry = heapq.heappop(ranked)[3]
            self._remove(entry.id, "evictions")
            entries, size = entries - 1, size - entry.size

    def _enforce_quota(self, name: str, now: float) -> None:
        cat = self.config.policy.category(name)
        count, size = self._held[name]
        over_entries = count - cat.max_entries if cat.max_entries is not None else 0
        over_bytes = size - cat.max_bytes if cat.max_bytes is not None else 0
        if over_entries > 0 or over_bytes > 0:
            pool = [e for e in self._entries.values() if e.category == name]
            extra_entries = _headroom(cat.max_entries) if over_entries > 0 else 0
            extra_bytes = _headroom(cat.max_bytes) if over_bytes > 0 else 0
            self._evict(pool, cat.eviction, now, over_entries + extra_entries, over_bytes + extra_bytes)

    def _evict_over_limit(self, now: float) -> None:
        limit = self.config.max_entries
        if limit is not None and len(self._entries) > limit:
            over = len(self._entries) - limit + _headroom(limit)
            self._evict(list(self._entries.values()), "lru", now, over, 0)

    def feedback(self, entry_id: int, correct: bool) -> Entry:
        """Record whether a hit was right; an entry judged wrong more often than right stops hitting.

        With a false-hit target set, the verdict also moves the category's threshold.
        """
        if not isinstance(correct, bool):
            raise InvalidInputError("correct must be true or false")
        with self._lock:
            entry = self._get(entry_id)
            verdict = "right_feedback" if correct else "wrong_feedback"
            setattr(entry, verdict, getattr(entry, verdict) + 1)
            self._counts[entry.category][verdict] += 1
            self._pending_counts.setdefault(entry.id, Counter())[verdict] += 1
            served = dataclasses.replace(entry)
            # One verdict per served hit: a second call about the same hit changes the
            # entry's counts but is not new evidence about the threshold.
            entry.last_similarity = None
            updated = entry.copy()
        self.rules.observe(served, correct)
        return updated

    def get(self, entry_id: int) -> Entry:
        """A copy of the entry, with its response read from the document store if kept there."""
        with self._lock:
            entry = self._get(entry_id).copy()
        if self.bodies is not None:
            data = self.bodies.get(self._body_key(entry.id))
            entry.response = data.decode("utf-8") if data is not None else None
        return entry

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
        self._drop_bodies()

    def clear(self) -> None:
        with self._lock:
            for entry_id in list(self._entries):
                self._remove(entry_id)
        self._drop_bodies()

    def purge_expired(self) -> int:
        now = self._clock()
        with self._lock:
            expired = [
                e.id for e in self._entries.values() if e.expires_at is not None and now >= e.expires_at
            ]
            for entry_id in expired:
                self._remove(entry_id, "expired")
        self._drop_bodies()
        return len(expired)

    def stats(self) -> CacheStats:
        with self._lock:
            per_category = {
                name: {
                    **{c: self._counts[name][c] for c in COUNTERS},
                    "entries": self._held[name][0],
                    "bytes": self._held[name][1],
                }
                for name in self._counts
            }
            return CacheStats(
                entries=len(self._entries),
                lookups=sum(c["lookups"] for c in self._counts.values()),
                hits=sum(c["hits"] for c in self._counts.values()),
                inserts=sum(c["inserts"] for c in self._counts.values()),
                index_bytes=self._index.serialized_bytes(),
                dim=self.embedder.dim,
                dtype=self.config.dtype,
                categories=per_category,
            )

    def __len__(self) -> int:
        return len(self._entries)

    # -- persistence -----------------------------------------------------------------

    def to_bytes(self) -> bytes:
        with self._lock:
            return self._encode(self._lineage)

    def _encode(self, writes: list[str]) -> bytes:
        return snapshot.encode(
            {
                "fingerprint": self.embedder.fingerprint,
                "user_key": self.key,
                "bodies_external": self.bodies is not None,
                "entry_fields": list(ENTRY_FIELDS),
                "entries": [e.to_row() for e in self._entries.values()],
                "index": self._index.to_bytes(),
                "writes": writes,
            }
        )

    def save(self) -> None:
        """Write a snapshot to the store (atomically, for stores that support it).

        With a versioned store (S3, DynamoDB, the local stores) the write is conditional on
        the version this cache last read or wrote. When another writer (another Lambda
        container, another worker) saved in between, its snapshot is read and merged: its
        inserts and deletes are kept, ours are applied on top (our hits and feedback are
        added to its counts), and the write is retried. Inserts, deletes, hits and feedback
        are never lost.
        """
        with self._sync_lock:
            self._save()

    def _save(self) -> None:
        if not isinstance(self.store, VersionedStore):
            data, pending, _ = self._encode_pending()
            self.store.put(self.key, data)
            self._synced(pending, None)
            return
        # Each lost write merges the other writer's snapshot and backs off before retrying.
        for attempt in range(WRITE_ATTEMPTS):
            if attempt:
                backoff(attempt - 1)
            data, pending, expected = self._encode_pending()
            try:
                version = self.store.put_if(self.key, data, expected)
            except ConflictError:
                current = self.store.get_versioned(self.key)
                if current is None or self._replacing:  # deleted meanwhile, or to be written over
                    with self._lock:
                        self._version = None if current is None else current[1]
                else:
                    self._merge(*current)
                continue
            self._synced(pending, version)
            return
        raise ConflictError(f"could not save {self.key}: {WRITE_ATTEMPTS} concurrent writes in a row")

    def _encode_pending(self) -> tuple[bytes, _Pending, str | None]:
        """A snapshot of now, the unsaved changes it holds, and the stored version it derives
        from. The write stays unconfirmed until the store says it is in (`_synced`)."""
        with self._lock:
            write_id = secrets.token_hex(8)
            pending = _Pending(
                set(self._pending_add),
                set(self._pending_remove),
                {k: Counter(v) for k, v in self._pending_counts.items()},
                [*self._lineage, write_id][-snapshot.WRITES_KEPT :],
            )
            self._unconfirmed[write_id] = pending
            return self._encode(pending.writes), pending, self._version

    def _synced(self, written: _Pending, version: str | None) -> None:
        """The snapshot `written` is the stored one now: forget the changes it holds. Every
        earlier write either landed before it (and was merged) or never will."""
        with self._lock:
            self._forget(written)
            self._unconfirmed.clear()
            self._lineage = written.writes
            self._version = version
            self._replacing = False
            self.synced_at = time.monotonic()

    def _forget(self, written: _Pending) -> None:
        """Drop the unsaved changes that a stored snapshot already holds (lock held)."""
        for entry_id in written.added:
            self._pending_add.pop(entry_id, None)
        self._pending_remove -= written.removed
        for entry_id, counts in written.counts.items():
            left = self._pending_counts.pop(entry_id, Counter()) - counts
            if left:  # hits or feedback that came in while the snapshot was written
                self._pending_counts[entry_id] = left

    def refresh(self) -> bool:
        """Take in what other writers saved since this cache last read or wrote the store
        (keeping this cache's unsaved changes). Returns whether anything was taken in."""
        self.synced_at = time.monotonic()
        if not isinstance(self.store, VersionedStore):
            return False
        with self._sync_lock:
            current = self.store.get_versioned(self.key)
            if current is None or current[1] == self._version or self._replacing:
                return False
            self._merge(*current)
            return True

    def restore(self, data: bytes) -> None:
        """Replace the in-memory state with a snapshot; on any error nothing changes. The next
        save writes this state over what the store holds then, whoever wrote it: a restore
        chooses a state, it is not a change to merge with other writers' (a merge would bring
        back entries the restored snapshot does not hold)."""
        self._load(data)
        with self._lock:
            self._pending_add.clear()
            self._pending_remove.clear()
            self._pending_counts.clear()
            self._replacing = True

    def _load(self, data: bytes) -> None:
        entries, index, writes = self._decode(data)
        with self._lock:
            self._install(entries, index)
            self._lineage = writes

    def _merge(self, data: bytes, version: str) -> None:
        """Adopt another writer's snapshot with this cache's unsaved inserts, deletes, hits and
        feedback on top. Where that snapshot holds a write of this cache's whose outcome was
        unknown, the changes that write carried are in it already and are not applied again."""
        entries, index, writes = self._decode(data)
        with self._lock:
            landed = [w for w in self._unconfirmed if w in writes]
            if landed:
                # Each write holds every change the ones before it held: the latest is enough.
                self._forget(self._unconfirmed[landed[-1]])
                order = list(self._unconfirmed)
                for w in order[: order.index(landed[-1]) + 1]:
                    del self._unconfirmed[w]
            for entry_id in self._pending_remove & entries.keys():
                del entries[entry_id]
                index.remove(entry_id)
            for entry_id, counts in self._pending_counts.items():
                theirs, ours = entries.get(entry_id), self._entries.get(entry_id)
                if theirs is None or ours is None or entry_id in self._pending_add:
                    continue  # gone there, or new here (our own copy is kept whole below)
                for name, n in counts.items():
                    setattr(theirs, name, getattr(theirs, name) + n)
                if ours.last_used_at > theirs.last_used_at:
                    theirs.last_used_at = ours.last_used_at
                    # What the next feedback is about: the hit this cache served.
                    theirs.last_similarity, theirs.last_threshold = ours.last_similarity, ours.last_threshold
                    theirs.last_category = ours.last_category
            for entry_id, vector in self._pending_add.items():
                if entry_id in self._entries and entry_id not in entries:
                    entries[entry_id] = self._entries[entry_id]
                    index.add(entry_id, vector)
            self._install(entries, index)
            self._lineage = writes
            self._version = version

    def _decode(self, data: bytes) -> tuple[dict[int, Entry], VectorIndex, list[str]]:
        payload = snapshot.decode(data, self.embedder.fingerprint)
        if payload.get("user_key") != self.key:
            raise SnapshotError("snapshot belongs to another user")
        external = bool(payload.get("bodies_external", False))
        if external != (self.bodies is not None):
            raise SnapshotError(
                "snapshot keeps response bodies in a document store; open it with bodies=<store>"
                if external
                else "snapshot holds response bodies inline; open it without a bodies store"
            )
        entries = snapshot.entries(payload)
        index = VectorIndex(self.embedder.dim, self.config.dtype, self.config.connectivity)
        index.load_bytes(snapshot.index_bytes(payload))
        if len(index) != len(entries):
            raise SnapshotError(f"snapshot index holds {len(index)} vectors for {len(entries)} entries")
        if not index.holds_all(list(entries)):
            raise SnapshotError("snapshot index and entries disagree: some entry ids have no vector")
        if not external and any(e.response is None for e in entries.values()):
            raise SnapshotError("snapshot holds entries without a response and no document store for them")
        for entry in entries.values():
            # Categories the current policy no longer has fall back rather than fail to load.
            if entry.category not in self._held:
                entry.category = self.config.policy.fallback
        if any(
            e.context_vector is not None and len(e.context_vector) != 2 * self.embedder.dim
            for e in entries.values()
        ):
            raise SnapshotError(f"snapshot holds context vectors that are not {self.embedder.dim}-d")
        return entries, index, snapshot.writes(payload)

    def _install(self, entries: dict[int, Entry], index: VectorIndex) -> None:
        """Replace the state with decoded entries (lock held); `_add` rebuilds what derives from them."""
        self._index, self._entries = index, {}
        self._held = {name: [0, 0] for name in self.config.policy.names}
        self._followups = FollowUpTable(self.embedder.dim)
        self._by_text = {}
        for entry in entries.values():
            self._add(entry)


def stored_query_text(query: str) -> str:
    """The start of a stored query as the encoder reads it (what the guards compare and a
    re-embedding encodes)."""
    # The encoder reads at most MAX_ENCODED_CHARS after whitespace is collapsed: normalizing a
    # stored query of megabytes in full took a good part of a second on every lookup near it.
    return _normalized_start(query[: 4 * MAX_ENCODED_CHARS])


@lru_cache(maxsize=64)
def _normalized_start(text: str) -> str:
    try:
        return clean_query(text).normalized
    except InvalidInputError:
        # A snapshot's query that insert would refuse now (written by an older release, whose
        # idea of blank was narrower): compared as written rather than failing the lookup.
        return text


def _context_vector(entry: Entry) -> np.ndarray:
    assert entry.context_vector is not None
    return np.frombuffer(entry.context_vector, dtype=np.float16).astype(np.float32)


class _Pending(NamedTuple):
    """The unsaved changes a snapshot being written holds."""

    added: set[int]
    removed: set[int]
    counts: dict[int, Counter[str]]
    writes: list[str]  # the snapshot's lineage, this write's id last
