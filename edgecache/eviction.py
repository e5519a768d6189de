"""Which entries go first when a category is over its quota: a small strategy interface.

A strategy maps an entry to a sort key; the lowest key is evicted first. Keys are
computed from the entry alone so the cache can evict without per-strategy state.
"""

from __future__ import annotations

from typing import Protocol

from .results import Entry


class EvictionStrategy(Protocol):
    name: str

    def key(self, entry: Entry) -> tuple: ...


class LeastRecentlyUsed:
    name = "lru"

    def key(self, entry: Entry) -> tuple:
        return (entry.last_used_at, entry.id)


class LeastFrequentlyUsed:
    """Fewest hits first; among equals the least recently used."""

    name = "lfu"

    def key(self, entry: Entry) -> tuple:
        return (entry.hits, entry.last_used_at, entry.id)


class CostAware:
    """GreedyDual-Size-Frequency's value: (hits + 1) x cost of a miss / bytes held.

    An entry that saves an expensive LLM call (metadata["cost"], e.g. dollars or seconds
    of the original call) or hits often is worth its bytes; a large, cheap, unused one is
    not. Without a cost every entry costs 1, which leaves frequency per byte.
    """

    name = "cost"

    def key(self, entry: Entry) -> tuple:
        cost = entry.metadata.get("cost", 1.0)
        if not isinstance(cost, int | float) or isinstance(cost, bool) or not cost > 0:
            cost = 1.0
        return ((entry.hits + 1) * float(cost) / max(entry.size, 1), entry.last_used_at, entry.id)


STRATEGIES: dict[str, EvictionStrategy] = {
    s.name: s for s in (LeastRecentlyUsed(), LeastFrequentlyUsed(), CostAware())
}
