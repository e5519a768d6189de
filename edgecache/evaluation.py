"""`edgecache eval`: the two QQP protocols and the contextual-chain evaluation.

Every verdict goes through `decision.first_hit`, the same function the cache uses.
Thresholds are chosen on the validation split and only then applied to test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .cache import SemanticCache
from .config import CacheConfig
from .decision import Candidate, Thresholds, decide, first_hit
from .embedder import Embedder
from .evaldata import Conversation, Pair
from .metrics import Scores, scores
from .projection import Projection
from .stores import MemoryStore
from .vectorindex import VectorIndex

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.50, 0.991, 0.01))


def _standalone(entry_id: int, similarity: float) -> Candidate:
    return Candidate(entry_id, similarity, None, False, False, None)


def emulate_storage(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """Vectors as a usearch index of that dtype holds them (unit vectors, i8 = x*127)."""
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "i8":
        return np.clip(np.round(x * 127), -127, 127).astype(np.float32) / 127
    return x


def pairwise(
    a: np.ndarray,
    b: np.ndarray,
    labels: np.ndarray,
    dtype: str = "f32",
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[Scores]:
    """Is the hit decision between the two queries of each pair right?"""
    sa = emulate_storage(a, dtype)
    sb = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = np.sum(sa * sb, axis=1) / np.maximum(np.linalg.norm(sa, axis=1), 1e-12)
    out = []
    for t in thresholds:
        th = Thresholds(t, 1.0)
        hits = np.array([decide(_standalone(0, float(s)), th, 0.0).hit for s in sims])
        tp = int(np.sum(hits & (labels == 1)))
        fp = int(np.sum(hits & (labels == 0)))
        fn = int(np.sum(~hits & (labels == 1)))
        out.append(scores(t, tp, fp, fn, len(labels)))
    return out


def retrieval(
    pairs: Sequence[Pair],
    vec: Callable[[str], np.ndarray],
    dtype: str = "i8",
    connectivity: int = 8,
    top_k: int = 4,
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[list[Scores], dict]:
    """Insert every first question into one cache, query with every second question.

    A hit is right only when it returns the query's own pair and the pair is a duplicate.
    """
    firsts = sorted({p.a for p in pairs})
    key_of = {text: i for i, text in enumerate(firsts)}
    a_vectors = np.stack([vec(t) for t in firsts])
    index = VectorIndex(a_vectors.shape[1], dtype, connectivity)
    index.add(np.arange(len(firsts), dtype=np.uint64), a_vectors)
    found = []
    for p in pairs:
        keys, sims = index.search(vec(p.b), top_k)
        found.append([_standalone(int(k), float(s)) for k, s in zip(keys, sims, strict=True)])
    positives = sum(p.label for p in pairs)
    top1_own = sum(
        1 for p, c in zip(pairs, found, strict=True) if p.label == 1 and c and c[0].entry_id == key_of[p.a]
    )
    out = []
    for t in thresholds:
        th = Thresholds(t, 1.0)
        tp = fp = 0
        for p, cands in zip(pairs, found, strict=True):
            verdict = first_hit(cands, th, 0.0)
            if not verdict.hit or verdict.candidate is None:
                continue
            if p.label == 1 and verdict.candidate.entry_id == key_of[p.a]:
                tp += 1
            else:
                fp += 1
        out.append(scores(t, tp, fp, positives - tp, len(pairs)))
    info = {
        "entries": len(firsts),
        "queries": len(pairs),
        "duplicates": positives,
        "top1_own_pair_rate": top1_own / max(positives, 1),
        "index_bytes_saved": len(index.to_bytes()),
    }
    return out, info


def index_bytes_per_entry(vectors: np.ndarray, dtype: str, connectivity: int = 8) -> dict:
    """Bytes per entry measured from a real index: serialized size and memory growth."""
    n = len(vectors)
    half = n // 2
    index = VectorIndex(vectors.shape[1], dtype, connectivity)
    index.add(np.arange(half, dtype=np.uint64), vectors[:half])
    mem_half, saved_half = index.memory_bytes(), len(index.to_bytes())
    index.add(np.arange(half, n, dtype=np.uint64), vectors[half:])
    mem_full, saved_full = index.memory_bytes(), len(index.to_bytes())
    return {
        "entries": n,
        "saved_bytes_per_entry": saved_full / n,
        "saved_marginal_bytes_per_entry": (saved_full - saved_half) / (n - half),
        "memory_marginal_bytes_per_entry": (mem_full - mem_half) / (n - half),
    }


class ArrayEmbedder:
    """An Embedder over precomputed encoder vectors, so the real cache runs on eval data."""

    def __init__(self, table: dict[str, np.ndarray], projection: Projection, fingerprint: str):
        self._table, self._projection = table, projection
        self.dim, self.fingerprint = projection.out_dim, fingerprint

    def embed(self, texts: list[str]):
        from .embedder import Embedded

        return Embedded(
            self._projection.apply(np.stack([self._table[t] for t in texts])), [False] * len(texts)
        )


def contextual(conversations: Sequence[Conversation], embedder: Embedder, config: CacheConfig) -> dict:
    """Follow-ups must hit only under a matching first turn (MeanCache's contextual test).

    Cache: every first turn (standalone) and every follow-up under its first turn.
    Positives: the paraphrased follow-up under the paraphrased first turn must return its
    own entry; the paraphrased first turn alone must return the first turn's entry.
    Negatives: each follow-up under another conversation's first turn, and each
    follow-up asked standalone, must miss.
    """
    cache = SemanticCache("eval", store=MemoryStore(), config=config, embedder=embedder)
    own: dict[tuple[str, str], int] = {}
    first_ids: dict[str, int] = {}
    for c in conversations:
        if c.u0 not in first_ids:
            first_ids[c.u0] = cache.insert(c.u0, "first turn")
        if (c.u0, c.u1) not in own:
            own[(c.u0, c.u1)] = cache.insert(c.u1, "follow-up", context=[c.u0])
    tp = fp = fn = 0
    negatives = false_hits = 0
    for c in conversations:
        if c.u0_paraphrase and c.u1_paraphrase:
            got = cache.lookup(c.u1_paraphrase, context=[c.u0_paraphrase])
            tp, fp, fn = _count(got, own[(c.u0, c.u1)], tp, fp, fn)
            got = cache.lookup(c.u0_paraphrase)
            tp, fp, fn = _count(got, first_ids[c.u0], tp, fp, fn)
    n = len(conversations)
    pairs_under_other = {(u0, u1) for (u0, u1) in own}
    for i, c in enumerate(conversations):
        other = conversations[(i + n // 2) % n].u0
        if other == c.u0 or (other, c.u1) in pairs_under_other:
            continue
        for got in (cache.lookup(c.u1, context=[other]), cache.lookup(c.u1)):
            negatives += 1
            if got.hit:
                false_hits += 1
                fp += 1
    s = scores(config.context_threshold, tp, fp, fn, tp + fn + negatives)
    return {**s.to_dict(), "negatives": negatives, "false_hits_on_negatives": false_hits}


def _count(got, expected: int, tp: int, fp: int, fn: int) -> tuple[int, int, int]:
    if got.hit and got.entry_id == expected:
        return tp + 1, fp, fn
    if got.hit:
        return tp, fp + 1, fn + 1
    return tp, fp, fn + 1
