import numpy as np
import pytest

from edgecache import Reason
from edgecache.followups import MAX_MATCHES, FollowUpTable


def _unit(rng: np.random.Generator, dim: int = 8) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_rows_survive_removal_of_others():
    table = FollowUpTable(2)
    for entry_id, angle in [(1, 0.0), (2, 0.5), (3, 1.0), (4, 1.5)]:
        table.add(entry_id, np.array([np.cos(angle), np.sin(angle)], np.float32))
    table.remove(2)
    table.remove(99)  # unknown ids are ignored
    assert len(table) == 3
    got = table.matches(np.array([1.0, 0.0], np.float32), 0.5)
    assert [i for i, _ in got] == [1, 3]  # most alike first
    assert [s for _, s in got] == pytest.approx([1.0, np.cos(1.0)])
    assert [i for i, _ in table.matches(np.array([1.0, 0.0], np.float32), 0.0)] == [1, 3, 4]


def test_no_match_still_names_the_closest_for_the_miss_reason():
    table = FollowUpTable(2)
    assert table.matches(np.array([1.0, 0.0], np.float32), 0.5) == []
    table.add(7, np.array([0.0, 1.0], np.float32))
    table.add(8, np.array([0.6, 0.8], np.float32))
    assert table.matches(np.array([1.0, 0.0], np.float32), 0.9) == [(8, pytest.approx(0.6))]


def test_matches_are_capped_and_growth_keeps_rows():
    rng = np.random.default_rng(1)
    table = FollowUpTable(8)
    ctx = _unit(rng)
    for entry_id in range(1, 3 * MAX_MATCHES):
        table.add(entry_id, ctx if entry_id % 2 else -ctx)
    got = table.matches(ctx, 0.9)
    assert len(got) == MAX_MATCHES and all(i % 2 for i, _ in got)
    table.add(1, -ctx)  # re-adding replaces the row
    assert 1 not in [i for i, _ in table.matches(ctx, 0.9)]


def test_a_standalone_question_reaches_past_follow_ups_with_its_words(make_cache):
    """Follow-ups asking the same words in many conversations fill the nearest k; a standalone
    lookup must still find the standalone entry behind them."""
    cache = make_cache(top_k=4)
    own = cache.insert("can you give me an example", "a standalone example")
    for topic in ["decorators", "grammar", "physics", "tax law", "bread", "chess", "jazz", "rust", "tea"]:
        cache.insert("can you give me an example", f"an example of {topic}", context=[f"explain {topic}"])
    got = cache.lookup("can you give me an example")
    assert got.hit and got.entry_id == own
    cache.delete(own)
    assert cache.lookup("can you give me an example").reason == Reason.CONTEXT_SHAPE
