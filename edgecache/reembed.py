"""Carry a snapshot over to another encoder build or projection by encoding its texts again.

A snapshot's vectors are only comparable with those of the encoder and projection that wrote
them, so a cache refuses a snapshot with another fingerprint (`SnapshotError`). An upgrade that
ships a new encoder build would otherwise leave every stored cache unreadable. Entries keep
their query text and the text of their context chain (`Entry.context`), which is all a
vector is computed from, so the vectors can be computed again and nothing else changes: ids,
responses, counts, feedback, categories and expiry stay as they were.

Two kinds of entry cannot be carried exactly:
- follow-ups from snapshots written before entries kept their context's text: there is
  nothing to encode, so they are left out (`Reembedded.dropped`; with response bodies in a
  document store, theirs stay there);
- follow-ups whose context was longer than `CONTEXT_GUARD_CHARS`: the entry kept that many
  characters, so the new context vector reads those (about 500 tokens of English, more than
  the encoder's 256, so it rarely differs; counted in `Reembedded.clipped_contexts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import snapshot
from .cache import CONTEXT_GUARD_CHARS, stored_query_text
from .config import CacheConfig
from .embedder import Embedder, shared_embedder
from .errors import InvalidInputError
from .results import ENTRY_FIELDS
from .vectorindex import VectorIndex, all_finite, stored_vector_bytes, vector_bytes

BATCH = 64


@dataclass(frozen=True)
class Reembedded:
    data: bytes  # the snapshot with new vectors
    previous_fingerprint: str
    entries: int  # carried over
    dropped: list[int]  # follow-ups without their context's text
    clipped_contexts: int


def _encode(embedder: Embedder, texts: list[str], progress: Callable[[int, int], None] | None) -> np.ndarray:
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for start in range(0, len(texts), BATCH):
        out[start : start + BATCH] = embedder.embed(texts[start : start + BATCH]).vectors
        if progress is not None:
            progress(min(start + BATCH, len(texts)), len(texts))
    if not all_finite(out):
        raise InvalidInputError("the embedder returned NaN or infinite values")
    return out


def reembed_snapshot(
    data: bytes,
    config: CacheConfig | None = None,
    embedder: Embedder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Reembedded | None:
    """The snapshot `data` with every vector computed by `embedder` (default: the shared one
    of `config.projection`), or None when its vectors already come from that embedder.

    The snapshot is checked (magic, checksum, format, fields) before anything is encoded; the
    caller writes the result where it wants, so the original is never touched here.
    """
    config = config or CacheConfig()
    embedder = embedder or shared_embedder(config.projection, threads=config.encoder_threads)
    payload = snapshot.decode(data, None)
    if payload.get("fingerprint") == embedder.fingerprint:
        return None
    entries = snapshot.entries(payload)
    old_vector = stored_vector_bytes(snapshot.index_bytes(payload))
    kept = [e for e in entries.values() if e.context_vector is None or e.context is not None]
    dropped = sorted(entries.keys() - {e.id for e in kept})
    followups = [e for e in kept if e.context_vector is not None]
    texts = [stored_query_text(e.query) for e in kept] + [str(e.context) for e in followups]
    vectors = _encode(embedder, texts, progress)

    new_vector = vector_bytes(embedder.dim, config.dtype)
    index = VectorIndex(embedder.dim, config.dtype, config.connectivity)
    if kept:
        index.add(np.asarray([e.id for e in kept], dtype=np.uint64), vectors[: len(kept)])
    for e in kept:
        e.size += new_vector - old_vector
    for e, v in zip(followups, vectors[len(kept) :], strict=True):
        context_vector = v.astype(np.float16).tobytes()
        e.size += len(context_vector) - len(e.context_vector or b"")
        e.context_vector = context_vector
    rewritten = {
        **payload,
        "fingerprint": embedder.fingerprint,
        "entry_fields": list(ENTRY_FIELDS),
        "entries": [e.to_row() for e in kept],
        "index": index.to_bytes(),
    }
    return Reembedded(
        data=snapshot.encode(rewritten),
        previous_fingerprint=str(payload.get("fingerprint")),
        entries=len(kept),
        dropped=dropped,
        clipped_contexts=sum(len(str(e.context)) >= CONTEXT_GUARD_CHARS for e in followups),
    )


__all__ = ["Reembedded", "reembed_snapshot"]
