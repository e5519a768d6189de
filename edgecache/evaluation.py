"""`edgecache eval`: the two QQP protocols and the contextual-chain evaluation.

Every verdict goes through `decision.first_hit`, the same function the cache uses.
Thresholds are chosen on the validation split and only then applied to test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .cache import SemanticCache
from .config import CacheConfig
from .decision import Candidate, Thresholds, decide, first_hit
from .embedder import Embedder
from .evaldata import Conversation, FollowUpPair, Pair
from .metrics import Scores, scores
from .stores import MemoryStore
from .vectorindex import VectorIndex

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.50, 0.991, 0.01))


def _standalone(entry_id: int, similarity: float, guard: str | None = None) -> Candidate:
    return Candidate(entry_id, similarity, None, False, False, None, guard=guard)


def emulate_storage(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """Vectors as a usearch index of that dtype holds them (unit vectors, i8 = x*127)."""
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "i8":
        return np.clip(np.round(x * 127), -127, 127).astype(np.float32) / 127
    return x


def pairwise_hits(
    a: np.ndarray,
    b: np.ndarray,
    dtype: str = "f32",
    thresholds: Sequence[float] = THRESHOLDS,
    vetoes: Sequence[str | None] | None = None,
) -> np.ndarray:
    """(len(thresholds), n) booleans: is each pair's decision a hit at each threshold?

    `vetoes` holds each pair's false-hit guard verdict (see `guards.veto`), if guards are on.
    """
    vetoes = vetoes if vetoes is not None else [None] * len(a)
    sa = emulate_storage(a, dtype)
    sb = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = np.sum(sa * sb, axis=1) / np.maximum(np.linalg.norm(sa, axis=1), 1e-12)
    return np.array(
        [
            [
                decide(_standalone(0, float(s), v), Thresholds(t, 1.0), 0.0).hit
                for s, v in zip(sims, vetoes, strict=True)
            ]
            for t in thresholds
        ],
        dtype=bool,
    ).reshape(len(thresholds), len(a))


def sweep_of(
    hits: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    rows: np.ndarray | None = None,
) -> list[Scores]:
    """Scores per threshold from `pairwise_hits`, over all pairs or only `rows`."""
    if rows is not None:
        hits, labels = hits[:, rows], labels[rows]
    positive = labels == 1
    out = []
    for t, h in zip(thresholds, hits, strict=True):
        tp, fp, fn = int(np.sum(h & positive)), int(np.sum(h & ~positive)), int(np.sum(~h & positive))
        out.append(scores(t, tp, fp, fn, len(labels)))
    return out


def pairwise(
    a: np.ndarray,
    b: np.ndarray,
    labels: np.ndarray,
    dtype: str = "f32",
    thresholds: Sequence[float] = THRESHOLDS,
    vetoes: Sequence[str | None] | None = None,
) -> list[Scores]:
    """Is the hit decision between the two queries of each pair right?"""
    return sweep_of(pairwise_hits(a, b, dtype, thresholds, vetoes), labels, thresholds)


def balanced_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """MeanCache's test construction: every duplicate pair and as many non-duplicates.

    Its published pairwise F1 (GPTCache 0.834, MeanCache 0.864) is measured on such a
    half-duplicate set; F1 depends on that share, so comparisons need the same one.
    """
    positive = np.flatnonzero(labels == 1)
    negative = np.flatnonzero(labels == 0)
    if len(negative) < len(positive):
        raise ValueError(f"{len(negative)} non-duplicates cannot balance {len(positive)} duplicates")
    picked = np.random.default_rng(seed).choice(negative, len(positive), replace=False)
    return np.sort(np.concatenate([positive, picked]))


def retrieval(
    pairs: Sequence[Pair],
    vec: Callable[[str], np.ndarray],
    dtype: str = "i8",
    connectivity: int = 8,
    top_k: int = 4,
    thresholds: Sequence[float] = THRESHOLDS,
    known_duplicates: frozenset[tuple[str, str]] = frozenset(),
    guard: Callable[[str, str], str | None] | None = None,
) -> tuple[list[Scores], dict]:
    """Insert every first question into one cache, query with every second question.

    A hit is right only when it returns the query's own pair and the pair is a duplicate.
    `info["lenient_precision"]` (per threshold) also accepts a hit on another entry with the
    query's exact text or one labelled its duplicate in QQP: the strict rule counts those
    answers wrong although a user would get the right one.
    """
    firsts = sorted({p.a for p in pairs})
    key_of = {text: i for i, text in enumerate(firsts)}
    a_vectors = np.stack([vec(t) for t in firsts])
    index = VectorIndex(a_vectors.shape[1], dtype, connectivity)
    index.add(np.arange(len(firsts), dtype=np.uint64), a_vectors)
    found = []
    for p in pairs:
        keys, sims = index.search(vec(p.b), top_k)
        found.append(
            [
                _standalone(int(k), float(s), guard(p.b, firsts[int(k)]) if guard else None)
                for k, s in zip(keys, sims, strict=True)
            ]
        )
    positives = sum(p.label for p in pairs)
    top1_own = sum(
        1 for p, c in zip(pairs, found, strict=True) if p.label == 1 and c and c[0].entry_id == key_of[p.a]
    )

    def acceptable(query: str, entry_id: int) -> bool:
        text = firsts[entry_id]
        return text.strip().casefold() == query.strip().casefold() or (text, query) in known_duplicates

    out, lenient = [], []
    for t in thresholds:
        th = Thresholds(t, 1.0)
        tp = fp = ok = 0
        for p, cands in zip(pairs, found, strict=True):
            verdict = first_hit(cands, th, 0.0)
            if not verdict.hit or verdict.candidate is None:
                continue
            if p.label == 1 and verdict.candidate.entry_id == key_of[p.a]:
                tp += 1
            else:
                fp += 1
                ok += acceptable(p.b, verdict.candidate.entry_id)
        out.append(scores(t, tp, fp, positives - tp, len(pairs)))
        lenient.append((tp + ok) / (tp + fp) if tp + fp else 1.0)
    info = {
        "entries": len(firsts),
        "queries": len(pairs),
        "duplicates": positives,
        "top1_own_pair_rate": top1_own / max(positives, 1),
        "index_bytes_saved": len(index.to_bytes()),
        "lenient_precision": dict(zip(thresholds, lenient, strict=True)),
    }
    return out, info


def index_bytes_per_entry(vectors: np.ndarray, dtype: str, connectivity: int = 8) -> dict:
    """Bytes per entry measured from a real index (vectors + HNSW graph + keys, as serialized).

    The marginal number (second half of the entries) excludes the fixed header.
    """
    n = len(vectors)
    half = n // 2
    index = VectorIndex(vectors.shape[1], dtype, connectivity)
    index.add(np.arange(half, dtype=np.uint64), vectors[:half])
    at_half = index.serialized_bytes()
    index.add(np.arange(half, n, dtype=np.uint64), vectors[half:])
    full = index.serialized_bytes()
    return {
        "entries": n,
        "bytes_per_entry": full / n,
        "marginal_bytes_per_entry": (full - at_half) / (n - half),
        "vector_bytes": vectors.shape[1] * {"f32": 4, "f16": 2, "i8": 1}[dtype],
    }


NEGATIVE_KINDS = ("other_first_turn", "other_follow_up", "standalone")

# Words that frame a first turn without naming its topic ("Explain the significance of X").
_FRAMING = frozenset(
    "a an the of in on to and or for is are was were what who how why when which describe explain "
    "tell me about can you could please give overview significance importance main key features "
    "history role impact".split()
)


def same_topic(first_a: str, first_b: str) -> bool:
    """Ground truth for "is this the same conversation topic", independent of any model.

    The data rephrases first turns ("Describe the significance of the Mona Lisa." /
    "Describe the cultural significance of the Mona Lisa."), and a follow-up under a
    rephrased first turn is a correct hit. Topic words (framing words removed) of the
    shorter turn must mostly appear in the other.
    """
    words_a, words_b = (
        {w for w in re.findall(r"[a-z0-9]+", t.lower()) if w not in _FRAMING} for t in (first_a, first_b)
    )
    if not words_a or not words_b:
        return first_a.strip().lower() == first_b.strip().lower()
    return len(words_a & words_b) / min(len(words_a), len(words_b)) > 0.5


def contextual(
    conversations: Sequence[Conversation],
    embedder: Embedder,
    config: CacheConfig,
    carries_over: Mapping[tuple[str, frozenset[str]], bool] | None = None,
) -> dict:
    """Follow-ups must hit only under a matching first turn (MeanCache's contextual test).

    Cache: every first turn (standalone) and, per distinct follow-up text, the first
    conversation that asks it (under its first turn).
    Whether a follow-up's answer under one first turn also answers it under another is
    `carries_over[(follow-up, {first turns})]` where judged (`evaldata.load_shared_followups`),
    else `same_topic` of the two first turns.
    Positives: a cached conversation's paraphrased follow-up under its paraphrased first
    turn must return that follow-up (or the same follow-up cached under a first turn its
    answer carries over to); the paraphrased first turn alone must return a first turn on
    its topic; a follow-up asked under another conversation's first turn its cached answer
    carries over to must return it (`shared_follow_up`; d1 asks one follow-up under several
    wordings of a first turn).
    Negatives, each must miss:
    - other_first_turn: the same follow-up words under a first turn its answer does not
      carry over to ("what is its population?" after Japan, cached after France);
    - other_follow_up: another conversation's follow-up asked under a cached first turn its
      answer does not carry over to (the topic matches, the question does not);
    - standalone: a follow-up asked with no context.
    `precision`/`f1` count every kind; `meancache_*` count only other_first_turn and
    standalone, the negatives of MeanCache's own protocol; `follow_ups_only` leaves out the
    paraphrased first turns asked alone (positives of standalone retrieval, not of context:
    most of the hits on new_claude are theirs).
    """
    cache = SemanticCache("eval", store=MemoryStore(), config=config, embedder=embedder)
    first_ids: dict[str, int] = {}
    cached: dict[str, tuple[Conversation, int]] = {}
    for c in conversations:
        if c.u0 not in first_ids:
            first_ids[c.u0] = cache.insert(c.u0, "first turn")
        if c.u1 not in cached:
            cached[c.u1] = (c, cache.insert(c.u1, "follow-up", context=[c.u0]))
    tp = fp = fn = 0
    false_hits = dict.fromkeys(NEGATIVE_KINDS, 0)
    negatives = dict.fromkeys(NEGATIVE_KINDS, 0)
    first_of = {entry_id: u0 for u0, entry_id in first_ids.items()}
    owner_of = {entry_id: c for c, entry_id in cached.values()}

    def answers_it(follow_up: str, cached_under: str, asked_under: str) -> bool:
        if cached_under == asked_under:
            return True
        judged = (carries_over or {}).get((follow_up, frozenset((cached_under, asked_under))))
        return same_topic(cached_under, asked_under) if judged is None else judged

    def answered_by(follow_up: str, asked_under: str) -> Callable[[int], bool]:
        """The entries that answer `follow_up` asked after `asked_under`: the follow-up cached
        under a first turn its answer carries over to."""

        def right(eid: int) -> bool:
            owner = owner_of.get(eid)
            if owner is None or owner.u1 != follow_up:
                return False
            return answers_it(follow_up, owner.u0, asked_under)

        return right

    def right_first(c: Conversation) -> Callable[[int], bool]:
        return lambda eid: eid in first_of and same_topic(first_of[eid], c.u0)

    shared = {"asked": 0, "right_hits": 0}
    first_turns = [0, 0, 0]  # tp, fp, fn of the paraphrased first turns asked alone
    asked: set[tuple[str, str]] = set()

    def ask_follow_up(follow_up: str, asked_under: str, kind: str) -> None:
        """A follow-up asked after another conversation's first turn: a positive when the
        cache holds an answer that carries over (d1 repeats follow-ups under rephrased first
        turns), else a negative of `kind`. Each question counts once: the data repeats rows."""
        nonlocal tp, fp, fn
        if (follow_up, asked_under) in asked:
            return
        asked.add((follow_up, asked_under))
        got = cache.lookup(follow_up, context=[asked_under])
        owner = cached[follow_up][0]
        if answers_it(follow_up, owner.u0, asked_under):
            right = answered_by(follow_up, asked_under)
            shared["asked"] += 1
            shared["right_hits"] += got.hit and right(got.entry_id)
            tp, fp, fn = _count(got, right, tp, fp, fn)
        else:
            negatives[kind] += 1
            false_hits[kind] += got.hit

    for c, _ in cached.values():
        if c.u0_paraphrase and c.u1_paraphrase:
            got = cache.lookup(c.u1_paraphrase, context=[c.u0_paraphrase])
            tp, fp, fn = _count(got, answered_by(c.u1, c.u0), tp, fp, fn)
            first_turns = list(_count(cache.lookup(c.u0_paraphrase), right_first(c), *first_turns))
    follow_ups = list(cached.values())
    for i, (c, _) in enumerate(follow_ups):
        other = follow_ups[(i + len(follow_ups) // 2) % len(follow_ups)][0]
        negatives["standalone"] += 1
        false_hits["standalone"] += cache.lookup(c.u1).hit
        if other.u0 != c.u0:
            ask_follow_up(other.u1, c.u0, "other_follow_up")
    for c in conversations:
        if c.u0 != cached[c.u1][0].u0:
            ask_follow_up(c.u1, c.u0, "other_first_turn")
    n_neg = sum(negatives.values())
    out = {
        "negatives": negatives,
        "false_hits": false_hits,
        "false_hit_rate": {k: false_hits[k] / max(negatives[k], 1) for k in NEGATIVE_KINDS},
        "shared_follow_up": shared,
    }
    first_tp, first_fp, first_fn = first_turns
    if tp + fn:
        follow_ups = scores(config.followup_threshold, tp, fp + sum(false_hits.values()), fn, tp + fn + n_neg)
        out["follow_ups_only"] = {"negatives": negatives, **follow_ups.to_dict()}
    tp, fp, fn = tp + first_tp, fp + first_fp, fn + first_fn
    if tp + fn:  # sets with neither paraphrases nor shared follow-ups have no positives
        out.update(
            scores(
                config.followup_threshold, tp, fp + sum(false_hits.values()), fn, tp + fn + n_neg
            ).to_dict()
        )
        mc_fp = fp + false_hits["other_first_turn"] + false_hits["standalone"]
        mc = scores(config.followup_threshold, tp, mc_fp, fn, tp + fn + n_neg)
        out.update({"meancache_precision": mc.precision, "meancache_f1": mc.f1})
    return out


def followup_pairs(pairs: Sequence[FollowUpPair], embedder: Embedder, config: CacheConfig) -> dict:
    """Same-topic follow-ups: one cache holds every cached follow-up under its first turn;
    each asked follow-up (under its own wording of that first turn) must return its pair's
    entry when it asks the same thing, and must miss when it asks something else."""
    cache = SemanticCache("eval", store=MemoryStore(), config=config, embedder=embedder)
    ids = cache.insert_many(
        [p.cached for p in pairs], ["follow-up"] * len(pairs), contexts=[[p.context] for p in pairs]
    )
    tp = fp = fn = negatives = false_hits = 0
    for p, entry_id in zip(pairs, ids, strict=True):
        got = cache.lookup(p.asked, context=[p.asked_context])
        if p.must_hit:
            tp, fp, fn = _count(got, lambda eid, own=entry_id: eid == own, tp, fp, fn)
        else:
            negatives += 1
            false_hits += got.hit
    return {
        "negatives": {"same_topic": negatives},
        "false_hits": {"same_topic": false_hits},
        "false_hit_rate": {"same_topic": false_hits / max(negatives, 1)},
        **scores(config.followup_threshold, tp, fp + false_hits, fn, len(pairs)).to_dict(),
    }


def pooled(*results: dict) -> dict:
    """One precision / recall / F1 over several evaluations' counts."""
    tp, fp, fn = (sum(r[k] for r in results) for k in ("tp", "fp", "fn"))
    n = sum(r["tp"] + r["fn"] + sum(r["negatives"].values()) for r in results)
    return scores(results[0]["threshold"], tp, fp, fn, n).to_dict()


def _count(got, is_right: Callable[[int], bool], tp: int, fp: int, fn: int) -> tuple[int, int, int]:
    """A positive query: right if it hits an entry that answers it (same question, same topic)."""
    if got.hit and is_right(got.entry_id):
        return tp + 1, fp, fn
    if got.hit:
        return tp, fp + 1, fn + 1
    return tp, fp, fn + 1
