"""Entry metadata: JSON values only, checked at insert so that saves and hits never fail later."""

import math

import pytest

from edgecache import InvalidInputError, LocalFolderStore
from edgecache.metadata import MAX_DEPTH, MAX_METADATA_BYTES, checked_metadata


def nested(depth: int) -> dict:
    out: dict = {"leaf": 1}
    for _ in range(depth - 1):
        out = {"a": out}
    return out


def test_json_values_are_copied_deeply():
    given = {"cost": 0.25, "tags": ("a", "b"), "user": {"tier": "pro", "n": 2**63}, "ok": None, "x": True}
    out = checked_metadata(given)
    assert out == {
        "cost": 0.25,
        "tags": ["a", "b"],
        "user": {"tier": "pro", "n": 2**63},
        "ok": None,
        "x": True,
    }
    given["user"]["tier"] = "changed"
    assert out["user"]["tier"] == "pro"
    assert checked_metadata(None) == {}
    assert checked_metadata(nested(MAX_DEPTH)) == nested(MAX_DEPTH)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ([1, 2], "must be a dict"),
        ({"o": object()}, "not a JSON value"),
        ({"b": b"bytes"}, "not a JSON value"),
        ({"n": math.nan}, "not a finite number"),
        ({"n": [math.inf]}, "not a finite number"),
        ({"n": 10**30}, "64 bits"),
        ({"n": -(2**63) - 1}, "64 bits"),
        ({1: "int key"}, "keys must be strings"),
        ({"s": "\ud800"}, "not valid UTF-8"),
        ({"\udfff": 1}, "not valid UTF-8"),
        (nested(MAX_DEPTH + 1), "nested deeper"),
        ({"big": "x" * (MAX_METADATA_BYTES + 1)}, "the limit is"),
    ],
)
def test_values_a_snapshot_or_a_reply_cannot_carry_are_refused(bad, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        checked_metadata(bad)


def test_refused_metadata_stores_nothing_and_saves_keep_working(make_cache, tmp_path):
    cache = make_cache(store=LocalFolderStore(tmp_path))
    kept = cache.insert("keep this question", "kept", metadata={"source": "docs"})
    for bad in ({"o": object()}, {"n": 10**30}, nested(600)):
        with pytest.raises(InvalidInputError):
            cache.insert("a question with bad metadata", "r", metadata=bad)
        with pytest.raises(InvalidInputError):
            cache.insert_many(["fine question", "another"], ["1", "2"], metadata=[None, bad])
    assert list(cache._entries) == [kept]
    cache.save()
    again = make_cache(store=LocalFolderStore(tmp_path))
    assert again.lookup("keep this question").metadata == {"source": "docs"}


def test_metadata_handed_out_is_a_copy_the_cache_does_not_share(make_cache):
    """A caller changing what a hit, get() or feedback() returned must change nothing stored:
    an object slipped into the cache's own metadata would fail every later save."""
    cache = make_cache()
    entry_id = cache.insert("How do I bake bread?", "Flour", metadata={"tags": ["a"], "by": {"n": 1}})
    cache.lookup("How do I bake bread?").metadata["tags"].append(object())
    cache.get(entry_id).metadata["by"]["n"] = {1, 2}
    cache.feedback(entry_id, True).metadata["tags"].append(b"x")
    assert cache.get(entry_id).metadata == {"tags": ["a"], "by": {"n": 1}}
    cache.save()
