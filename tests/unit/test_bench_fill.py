"""The benchmark's fill embedder must hand the cache everything the real embedder would."""

import numpy as np

from edgecache.bench import _PrecomputedFill
from edgecache.embedder import Embedded
from edgecache.projection import identity


class _Real:
    """Stands in for the real encoder + projection: 4-d vectors, one unseen span per text."""

    dim, fingerprint = 4, "real"
    projection = identity(4)

    def embed(self, texts: list[str]) -> Embedded:
        raw = np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (len(texts), 1))
        return Embedded(raw, [False] * len(texts), raw)

    def unseen(self, texts: list[str]) -> list[tuple[str, ...]]:
        return [(t[-1],) for t in texts]


def test_filled_entries_get_the_encoder_vectors_and_the_unseen_check():
    table = {"cached question": np.array([0.0, 1.0, 0.0, 0.0], np.float32)}
    fill = _PrecomputedFill(_Real(), table)
    out = fill.embed(["cached question"])
    # The raw vectors are what the category classifier reads; without them it scored zeros.
    assert out.raw is not None and np.array_equal(out.raw[0], table["cached question"])
    assert fill.unseen(["ab", "cd"]) == [("b",), ("d",)]
