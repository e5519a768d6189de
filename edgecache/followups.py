"""Follow-up entries indexed by their conversation, so a lookup finds them by context first.

A follow-up hits only under a matching context chain. The nearest neighbours of its
question alone may all be entries from other conversations: generic follow-ups ("can you
give me an example?", "how much does it cost?") are asked in many, and the one under this
conversation's context can rank below the k nearest. So a lookup with context also takes
the follow-ups whose context matches, from one small matrix of context vectors.
"""

from __future__ import annotations

import numpy as np

# The most follow-ups one lookup compares: a user with thousands of follow-ups under one
# context must not turn a lookup into thousands of comparisons.
MAX_MATCHES = 64


class FollowUpTable:
    """Context-chain vectors of one user's follow-up entries, one row per entry."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids: list[int] = []
        self._row: dict[int, int] = {}
        self._vectors = np.zeros((16, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, entry_id: int, context_vector: np.ndarray) -> None:
        if entry_id in self._row:
            self._vectors[self._row[entry_id]] = context_vector
            return
        if len(self._ids) == len(self._vectors):
            grown = np.zeros((2 * len(self._vectors), self.dim), dtype=np.float32)
            grown[: len(self._ids)] = self._vectors[: len(self._ids)]
            self._vectors = grown
        self._row[entry_id] = len(self._ids)
        self._vectors[len(self._ids)] = context_vector
        self._ids.append(entry_id)

    def remove(self, entry_id: int) -> None:
        """Drop a row by moving the last row into its place (order does not matter)."""
        row = self._row.pop(entry_id, None)
        if row is None:
            return
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._ids[row], self._vectors[row] = moved, self._vectors[last]
            self._row[moved] = row
        self._ids.pop()

    def matches(self, context_vector: np.ndarray, min_similarity: float) -> list[tuple[int, float]]:
        """(entry id, context similarity) of the follow-ups whose context is at least
        `min_similarity` alike, most alike first (at most MAX_MATCHES); when none is, the
        single most alike, so a miss can say the context did not match."""
        n = len(self._ids)
        if n == 0:
            return []
        sims = self._vectors[:n] @ context_vector
        rows = np.flatnonzero(sims >= min_similarity)
        if len(rows) == 0:
            rows = np.array([int(np.argmax(sims))])
        elif len(rows) > MAX_MATCHES:
            rows = rows[np.argpartition(-sims[rows], MAX_MATCHES)[:MAX_MATCHES]]
        rows = rows[np.argsort(-sims[rows], kind="stable")]
        return [(self._ids[r], float(sims[r])) for r in rows]
