"""The hit decision: the one place that says whether a cached entry answers a query.

Pure functions over numbers, so every surface (SDK, local service, Lambda, Ray Serve,
evaluation) shares it and it is testable without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    HIT = "hit"
    BELOW_THRESHOLD = "below_threshold"
    CONTEXT_MISMATCH = "context_mismatch"
    # One side is a follow-up and the other standalone: never comparable.
    CONTEXT_SHAPE = "context_shape"
    EXPIRED = "expired"
    DISPUTED = "disputed"
    # A false-hit guard (edgecache.guards) saw the texts differ in what matters.
    GUARDED = "guarded"
    EMPTY = "empty"
    # The decision said hit but the response body was gone from the document store.
    BODY_MISSING = "body_missing"


@dataclass(frozen=True)
class Candidate:
    """What the decision needs to know about one nearest neighbour."""

    entry_id: int
    similarity: float
    # Cosine of the two context-chain embeddings; None unless both sides have context.
    context_similarity: float | None
    query_has_context: bool
    entry_has_context: bool
    expires_at: float | None
    wrong_feedback: int = 0
    right_feedback: int = 0
    # Why a false-hit guard vetoes this pair ("numbers", "negation", ...); None: no objection.
    guard: str | None = None


@dataclass(frozen=True)
class Thresholds:
    similarity: float
    context: float
    # Paraphrased follow-ups spread wider than standalone queries; the context check
    # guards them, so they may use a lower query threshold.
    followup: float | None = None

    def for_query(self, has_context: bool) -> float:
        if has_context and self.followup is not None:
            return self.followup
        return self.similarity


def strictest(a: Thresholds, b: Thresholds) -> Thresholds:
    """The thresholds that satisfy both (a query and an entry of different categories)."""
    followup = None if a.followup is None or b.followup is None else max(a.followup, b.followup)
    return Thresholds(max(a.similarity, b.similarity), max(a.context, b.context), followup)


@dataclass(frozen=True)
class Decision:
    hit: bool
    reason: Reason
    candidate: Candidate | None


def decide(candidate: Candidate, thresholds: Thresholds, now: float) -> Decision:
    """Is this candidate a hit? Checks are ordered from cheapest to most specific."""
    if candidate.expires_at is not None and now >= candidate.expires_at:
        return Decision(False, Reason.EXPIRED, candidate)
    if candidate.wrong_feedback > candidate.right_feedback:
        return Decision(False, Reason.DISPUTED, candidate)
    # Written as "not at or above" so a NaN similarity is a miss, never a hit.
    if not candidate.similarity >= thresholds.for_query(candidate.query_has_context):
        return Decision(False, Reason.BELOW_THRESHOLD, candidate)
    if candidate.query_has_context != candidate.entry_has_context:
        return Decision(False, Reason.CONTEXT_SHAPE, candidate)
    if candidate.query_has_context and (
        candidate.context_similarity is None or not candidate.context_similarity >= thresholds.context
    ):
        return Decision(False, Reason.CONTEXT_MISMATCH, candidate)
    # Last: a guard objects to texts that pass every other check ("France" / "Japan" contexts
    # are a context mismatch first, whatever the guards would say of the two turns).
    if candidate.guard is not None:
        return Decision(False, Reason.GUARDED, candidate)
    return Decision(True, Reason.HIT, candidate)


def first_hit(
    candidates: Iterable[Candidate],
    thresholds: Thresholds | Callable[[Candidate], Thresholds],
    now: float,
) -> Decision:
    """The most similar candidate that is a hit; else the verdict on the most similar one.

    `thresholds` may depend on the candidate (its category's policy).
    """
    rule = thresholds if callable(thresholds) else (lambda _: thresholds)
    best_miss: Decision | None = None
    for cand in sorted(candidates, key=lambda c: c.similarity, reverse=True):
        verdict = decide(cand, rule(cand), now)
        if verdict.hit:
            return verdict
        if best_miss is None:
            best_miss = verdict
    return best_miss or Decision(False, Reason.EMPTY, None)
