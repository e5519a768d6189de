import threading

import numpy as np
import pytest

from edgecache import (
    CacheConfig,
    ConfigError,
    EntryNotFoundError,
    InvalidInputError,
    LocalFolderStore,
    MemoryStore,
    Reason,
    SemanticCache,
    SnapshotError,
    cached,
)
from edgecache.embedder import Embedded
from edgecache.registry import CacheRegistry
from edgecache.results import Entry
from edgecache.vectorindex import VectorIndex
from tests.helpers import HashingEmbedder, run_in_threads


def test_insert_then_lookup_hits_own_entry(make_cache):
    cache = make_cache()
    eid = cache.insert("how do I enable two factor auth", "Settings > Security", metadata={"m": 1})
    cache.insert("what is the capital of france", "Paris")
    got = cache.lookup("How do I enable two factor auth?")
    assert got.hit and got.entry_id == eid and got.response == "Settings > Security"
    assert got.metadata == {"m": 1} and got.similarity > 0.99
    miss = cache.lookup("recipe for banana bread")
    assert not miss.hit and miss.response is None
    stats = cache.stats()
    assert (stats.entries, stats.lookups, stats.hits) == (2, 2, 1)


def test_a_word_for_word_repeat_hits_even_when_the_graph_search_misses_it(make_cache):
    cache = make_cache()
    eid = cache.insert("shared worker 2 item 129 subject 338136", "r1")
    near = cache.insert("shared worker 2 item 129 subject 338137", "r2")
    twin = cache.insert("shared worker 2 item 129 subject 338136", "r1 again")
    cache.delete(twin)  # the text's other entry goes: this one must stay reachable by its text
    found_nothing = (np.zeros(0, np.uint64), np.zeros(0, np.float32))
    only_near = (np.array([near], np.uint64), np.array([0.95], np.float32))
    for search_result in (found_nothing, only_near):  # what an approximate search can return
        cache._index.search = lambda vector, k, result=search_result: result
        got = cache.lookup("shared worker 2 item 129 subject 338136")
        assert got.hit and got.entry_id == eid and got.similarity > 0.99
    assert not cache.lookup("shared worker 2 item 129 subject 338136", context=["other talk"]).hit
    cache.delete(eid)
    assert not cache.lookup("shared worker 2 item 129 subject 338136").hit


def test_empty_cache_misses(make_cache):
    assert make_cache().lookup("anything").reason == Reason.EMPTY


def test_context_chain_separates_same_words(make_cache):
    cache = make_cache()
    france = cache.insert("what is its population", "68 million", context=["tell me about france"])
    assert cache.lookup("what is its population", context=["tell me about japan"]).reason == (
        Reason.CONTEXT_MISMATCH
    )
    standalone_ask = cache.lookup("what is its population")
    assert not standalone_ask.hit
    assert standalone_ask.reason in (Reason.CONTEXT_SHAPE, Reason.BELOW_THRESHOLD)
    assert cache.lookup("what is its population", context=["tell me about france"]).entry_id == france
    standalone = cache.insert("what is the population of japan", "125 million")
    assert cache.lookup("what is the population of japan", context=["hi"]).reason == Reason.CONTEXT_SHAPE
    assert cache.lookup("what is the population of japan").entry_id == standalone


def test_generic_follow_up_is_found_under_its_own_context(make_cache):
    # Nine conversations ask the same words; the index's 4 nearest cannot hold them all,
    # so each conversation must still reach its own entry through its context.
    cache = make_cache(top_k=4)
    topics = ["france", "japan", "kenya", "peru", "chile", "norway", "egypt", "india", "canada"]
    ids = {t: cache.insert("can you give me an example", t, context=[f"tell me about {t}"]) for t in topics}
    store = MemoryStore()
    for restored in (False, True):
        for t in topics:
            got = cache.lookup("can you give me an example", context=[f"tell me about {t}"])
            assert got.hit and got.entry_id == ids[t], t
        if not restored:
            cache.store = store
            cache.save()
            cache = make_cache(store=store, top_k=4)
    cache.delete(ids["peru"])
    gone = cache.lookup("can you give me an example", context=["tell me about peru"])
    assert not gone.hit and gone.reason == Reason.CONTEXT_MISMATCH
    cache.clear()
    assert cache.lookup("can you give me an example", context=["tell me about chile"]).reason == Reason.EMPTY


def test_snapshot_with_malformed_context_vector_is_refused(make_cache):
    from edgecache import snapshot

    cache = make_cache()
    cache.insert("and its population", "x", context=["tell me about france"])
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    payload["entries"][0][payload["entry_fields"].index("context_vector")] = b"\x00" * 6
    payload.pop("version")
    with pytest.raises(SnapshotError, match="context vectors"):
        cache.restore(snapshot.encode(payload))
    assert cache.lookup("and its population", context=["tell me about france"]).hit


def test_snapshot_rows_of_the_wrong_width_are_refused(make_cache):
    from edgecache import snapshot

    cache = make_cache()
    cache.insert("how do I cook rice", "boil it")
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    payload["entries"][0] = payload["entries"][0][:-1]
    payload.pop("version")
    with pytest.raises(SnapshotError, match="malformed"):
        cache.restore(snapshot.encode(payload))
    assert cache.lookup("how do I cook rice").hit


def test_snapshots_written_before_entries_kept_their_context_text_still_load(make_cache):
    from edgecache import snapshot

    cache = make_cache(context_threshold=0.5)
    eid = cache.insert("when did it end", "1918", context=["tell me about World War I"])
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    at = payload["entry_fields"].index("context")
    payload["entry_fields"].pop(at)
    payload["entries"] = [row[:at] + row[at + 1 :] for row in payload["entries"]]
    payload.pop("version")
    old = make_cache(context_threshold=0.5)
    old.restore(snapshot.encode(payload))
    assert old.get(eid).context is None
    # Without the text only the vectors decide, as they did when it was written.
    assert old.lookup("when did it end", context=["tell me about World War II"]).entry_id == eid


def test_snapshots_from_a_later_version_load_without_its_new_fields(make_cache):
    from edgecache import snapshot

    cache = make_cache()
    eid = cache.insert("how do I cook rice", "boil it")
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    payload["entry_fields"].append("added_later")
    payload["entries"] = [[*row, "x"] for row in payload["entries"]]
    payload.pop("version")
    rolled_back = make_cache()
    rolled_back.restore(snapshot.encode(payload))
    assert rolled_back.lookup("how do I cook rice").entry_id == eid


def test_format_1_snapshots_still_load(make_cache):
    """Format 1 stored each entry as a map; caches saved before format 2 must open."""
    import hashlib
    from dataclasses import asdict

    import msgpack

    from edgecache import snapshot

    cache = make_cache()
    cache.insert("how do I cook rice", "boil it", metadata={"model": "m"})
    cache.insert("and its population", "67 million", context=["tell me about france"])
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    names = payload.pop("entry_fields")
    rows = [Entry.from_row(names, r) for r in payload["entries"]]
    body = msgpack.packb({**payload, "entries": [asdict(e) for e in rows], "version": 1}, use_bin_type=True)
    old = snapshot.MAGIC + hashlib.sha256(body).digest() + body
    fresh = make_cache()
    fresh.restore(old)
    assert fresh.lookup("how do I cook rice").response == "boil it"
    assert fresh.lookup("and its population", context=["tell me about france"]).response == "67 million"
    assert len(fresh.to_bytes()) < len(old)


def test_only_recent_context_turns_count(make_cache):
    cache = make_cache(context_turns=1)
    eid = cache.insert("and its population", "x", context=["old topic", "tell me about france"])
    assert cache.lookup("and its population", context=["other start", "tell me about france"]).entry_id == eid


def test_ttl_with_controllable_clock(make_cache, clock):
    cache = make_cache()
    eid = cache.insert("bitcoin price today", "$1", ttl_seconds=60)
    clock.now += 59
    assert cache.lookup("bitcoin price today").entry_id == eid
    clock.now += 1
    assert cache.lookup("bitcoin price today").reason == Reason.EXPIRED
    assert cache.purge_expired() == 1 and len(cache) == 0


def test_default_ttl_from_config(make_cache, clock):
    cache = make_cache(ttl_seconds=10)
    cache.insert("weather in paris", "sunny")
    clock.now += 10
    assert not cache.lookup("weather in paris").hit


def test_feedback_disputes_entry(make_cache):
    cache = make_cache()
    eid = cache.insert("enable 2fa", "yes")
    cache.feedback(eid, correct=False)
    assert cache.lookup("enable 2fa").reason == Reason.DISPUTED
    cache.feedback(eid, correct=True)
    assert cache.lookup("enable 2fa").hit
    with pytest.raises(InvalidInputError):
        cache.feedback(eid, correct="no")
    with pytest.raises(EntryNotFoundError):
        cache.feedback(999, correct=True)


def test_delete_and_clear(make_cache):
    cache = make_cache()
    a = cache.insert("alpha question", "a")
    cache.insert("beta question", "b")
    cache.delete(a)
    assert not cache.lookup("alpha question").hit or cache.lookup("alpha question").entry_id != a
    with pytest.raises(EntryNotFoundError):
        cache.delete(a)
    with pytest.raises(InvalidInputError):
        cache.delete("1")
    cache.clear()
    assert len(cache) == 0 and cache.lookup("beta question").reason == Reason.EMPTY


def test_max_entries_evicts_least_recently_used(make_cache, clock):
    cache = make_cache(max_entries=2)
    first = cache.insert("first question here", "1")
    clock.now += 1
    cache.insert("second question here", "2")
    clock.now += 1
    assert cache.lookup("first question here").hit  # refreshes first
    clock.now += 1
    cache.insert("third question here", "3")
    assert len(cache) == 2
    assert cache.lookup("first question here").entry_id == first
    assert not cache.lookup("second question here").hit


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.insert("", "r"),
        lambda c: c.insert("q", None),
        lambda c: c.insert(b"\xff", "r"),
        lambda c: c.insert("q", "r", ttl_seconds=-1),
        lambda c: c.insert("q", "r", ttl_seconds=10**400),
        lambda c: c.insert("q", "r", metadata=[1]),
        lambda c: c.insert("q", "r", context="not a list"),
        lambda c: c.insert_many(["ok", ""], ["a", "b"]),
        lambda c: c.insert_many(["ok"], ["a", "b"]),
        lambda c: c.lookup("   "),
        lambda c: c.lookup(None),
    ],
)
def test_bad_input_is_refused_and_nothing_is_lost(make_cache, call):
    cache = make_cache()
    cache.insert("keep me safe", "kept")
    with pytest.raises(InvalidInputError):
        call(cache)
    assert len(cache) == 1 and cache.lookup("keep me safe").response == "kept"


def test_huge_query_is_truncated_and_says_so(make_cache):
    cache = make_cache()
    got = cache.lookup("tell me " * 200_000)
    assert got.truncated and not got.hit
    stored = cache.insert_detailed("tell me " * 200_000, "long")
    assert stored.truncated and cache.lookup("tell me " * 200_000).entry_id == stored.entry_id
    assert not cache.insert_detailed("short", "r", context=["a context"]).truncated
    assert cache.insert_detailed("short", "r", context=["tell me " * 200_000]).truncated


def test_nan_and_wrong_shape_vectors_are_refused():
    index = VectorIndex(4)
    with pytest.raises(InvalidInputError, match="NaN"):
        index.add(1, np.array([np.nan, 0, 0, 1], np.float32))
    with pytest.raises(InvalidInputError, match="dimension"):
        index.add(1, np.ones(5, np.float32))
    with pytest.raises(InvalidInputError, match="zero"):
        index.search(np.zeros(4, np.float32), 1)
    assert len(index) == 0


def test_index_similarities_match_its_search():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((6, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # the cache stores unit vectors
    index = VectorIndex(16, "i8")
    index.add(np.arange(1, 7, dtype=np.uint64), vectors)
    query = vectors[0] + 0.3 * vectors[1]
    query /= np.linalg.norm(query)
    keys, sims = index.search(query, 6)
    by_key = dict(zip(keys.tolist(), sims.tolist(), strict=True))
    # The search also quantizes the query to int8; these compare it in float: ~1e-3 apart.
    assert index.similarities([4], query) == pytest.approx([by_key[4]], abs=0.01)
    assert index.similarities([2, 5], query) == pytest.approx([by_key[2], by_key[5]], abs=0.01)
    assert index.similarities([], query) == []
    with pytest.raises(KeyError):
        index.similarities([99], query)


def test_a_context_chain_drops_its_oldest_turns_until_the_encoder_reads_it_whole(make_cache, embedder):
    class FirstWords:
        """Reads a text's first 8 words, as the encoder reads its first 256 word pieces."""

        dim, fingerprint = embedder.dim, embedder.fingerprint

        def __init__(self):
            self.read: list[str] = []

        def embed(self, texts):
            words = [t.split(" ") for t in texts]
            self.read += texts
            out = embedder.embed([" ".join(w[:8]) for w in words])
            return Embedded(out.vectors, [len(w) > 8 for w in words], out.raw)

    cache = make_cache(context_turns=4)
    cache.embedder = reader = FirstWords()
    report = "a long pasted report about trade and demographic trends"
    got = cache.insert_detailed(
        "what is its population", "68 million", context=[report, report, "about france", "ok"]
    )
    assert got.truncated and cache.get(got.entry_id).context == "about france\nok"
    assert reader.read[1:] == [
        f"{report}\n{report}\nabout france\nok",
        f"{report}\nabout france\nok",
        "about france\nok",
    ]
    assert not cache.lookup("what is its population", context=[report, "about germany", "ok"]).hit
    assert cache.lookup("what is its population", context=["x", report, "about france", "ok"]).hit
    # The latest turn is kept whatever its length; what it hides is reported.
    long = cache.insert_detailed("and then", "r", context=["about france", report + " " + report])
    assert long.truncated and cache.get(long.entry_id).context == report + " " + report
    fits = cache.insert_detailed("and then", "r", context=["one two", "three four"])
    assert not fits.truncated and cache.get(fits.entry_id).context == "one two\nthree four"


def test_nan_from_the_embedder_is_refused_and_loses_nothing(make_cache, embedder):
    """A NaN context vector compares as neither above nor below a threshold; it must not
    slip a follow-up past the context check, nor be stored."""

    class NanFor:
        dim, fingerprint = embedder.dim, embedder.fingerprint

        def embed(self, texts):
            out = embedder.embed(texts)
            vectors = out.vectors.copy()
            vectors[[i for i, t in enumerate(texts) if "poison" in t]] = np.nan
            return Embedded(vectors, out.truncated, out.raw)

    cache = make_cache()
    cache.embedder = NanFor()
    kept = cache.insert("what is its population", "68 million", context=["tell me about france"])
    with pytest.raises(InvalidInputError, match="NaN"):
        cache.lookup("what is its population", context=["poison japan"])
    with pytest.raises(InvalidInputError, match="NaN"):
        cache.insert("what is the capital", "x", context=["poison"])
    with pytest.raises(InvalidInputError, match="NaN"):
        cache.insert_many(["fine question", "poison question"], ["a", "b"])
    assert len(cache) == 1
    assert cache.lookup("what is its population", context=["tell me about france"]).entry_id == kept


class ZeroFor:
    """An embedder that returns a zero vector for texts holding "poison"."""

    def __init__(self, embedder, dim=None):
        self.inner, self.fingerprint = embedder, embedder.fingerprint
        self.dim = dim or embedder.dim

    def embed(self, texts):
        out = self.inner.embed(texts)
        vectors = out.vectors.copy()
        vectors[[i for i, t in enumerate(texts) if "poison" in t]] = 0.0
        return Embedded(vectors, out.truncated, out.raw)


def test_zero_vectors_from_the_embedder_are_refused_and_leave_nothing(embedder, clock, config):
    bodies = MemoryStore()
    cache = SemanticCache("u", config=config, embedder=ZeroFor(embedder), clock=clock, bodies=bodies)
    kept = cache.insert("what is its population", "68 million", context=["tell me about france"])
    for call in (
        lambda: cache.insert("what is the capital", "x", context=["poison"]),
        lambda: cache.insert("poison question", "x"),
        lambda: cache.lookup("what is its population", context=["poison japan"]),
        lambda: cache.lookup("poison question"),
    ):
        with pytest.raises(InvalidInputError, match="zero"):
            call()
    assert len(cache) == 1 and list(bodies._data) == [f"{cache.key}.{kept}"]  # no orphaned body
    assert cache.stats().lookups == 0  # a refused lookup is not counted
    assert cache.lookup("what is its population", context=["tell me about france"]).entry_id == kept


def test_an_embedder_of_the_wrong_dimension_gets_a_clear_error(make_cache, embedder):
    cache = make_cache()
    kept = cache.insert("keep this", "kept")
    cache.embedder = ZeroFor(embedder, dim=embedder.dim + 1)
    with pytest.raises(InvalidInputError, match="shape"):
        cache.insert("another question", "x")
    with pytest.raises(InvalidInputError, match="shape"):
        cache.lookup("keep this")
    cache.embedder = embedder
    assert len(cache) == 1 and cache.lookup("keep this").entry_id == kept


@pytest.mark.parametrize(
    "arguments", [{"config": {"threshold": 0.9}}, {"store": "/tmp/folder"}, {"bodies": object()}]
)
def test_the_cache_refuses_arguments_of_the_wrong_kind(embedder, arguments):
    with pytest.raises(ConfigError, match=next(iter(arguments))):
        SemanticCache("u", embedder=embedder, **arguments)


@pytest.mark.parametrize("response", ["", "   ", "\u200b \n", None, 5])
def test_an_empty_or_non_text_response_is_refused(make_cache, response):
    cache = make_cache()
    cache.insert("keep this", "kept")
    with pytest.raises(InvalidInputError, match="response"):
        cache.insert("another question", response)
    with pytest.raises(InvalidInputError, match="response"):
        cache.insert_many(["q1", "q2"], ["fine", response])
    assert len(cache) == 1 and cache.lookup("keep this").response == "kept"


def test_the_threshold_reported_is_the_one_the_query_was_held_to(embedder):
    config = CacheConfig.from_dict({"policy": {"categories": {"code": {"threshold": 0.95}}}})
    cache = SemanticCache("u", config=config, embedder=embedder)
    cache.insert("how do i sort a list in python quickly", "sorted(xs)", category="code")
    got = cache.lookup("how do i sort a list in python", category="other")
    assert not got.hit and got.reason == Reason.BELOW_THRESHOLD
    assert got.similarity < got.threshold == 0.95  # the stricter pair, not other's 0.8


def test_context_similarity_stays_a_cosine(make_cache, embedder):
    """Context vectors are stored as float16; rounding up can put a cosine past 1."""
    rng = np.random.default_rng(0)
    while True:  # a unit vector whose float16 copy has a dot product above 1 with it
        u = rng.standard_normal(embedder.dim).astype(np.float32)
        u /= np.linalg.norm(u)
        if float(u.astype(np.float16).astype(np.float32) @ u) > 1.0:
            break

    class SameContext:
        dim, fingerprint = embedder.dim, embedder.fingerprint

        def embed(self, texts):
            out = embedder.embed(texts)
            vectors = out.vectors.copy()
            vectors[[i for i, t in enumerate(texts) if t.startswith("context")]] = u
            return Embedded(vectors, out.truncated, out.raw)

    cache = make_cache()
    cache.embedder = SameContext()
    cache.insert("and what about its size", "r", context=["context one"])
    got = cache.lookup("and what about its size", context=["context one"])
    assert got.hit and got.context_similarity == 1.0


def test_feedback_returns_a_copy(make_cache):
    cache = make_cache()
    eid = cache.insert("what is the capital of france", "Paris")
    returned = cache.feedback(eid, False)
    assert returned.wrong_feedback == 1
    returned.wrong_feedback, returned.response = 0, "Berlin"
    assert cache.lookup("what is the capital of france").reason == Reason.DISPUTED
    assert cache.get(eid).response == "Paris"


@pytest.mark.parametrize(
    ("queries", "responses"),
    [("ab", ["x", "y"]), (["a", "b"], "xy"), ([], ["x"]), (("a",), []), (None, []), ([], None)],
)
def test_insert_many_wants_lists_of_one_length(make_cache, queries, responses):
    cache = make_cache()
    with pytest.raises(InvalidInputError, match=r"list|length"):
        cache.insert_many(queries, responses)
    assert len(cache) == 0


def test_index_search_agrees_with_usearchs_own_search():
    """The index calls usearch's compiled search directly; it must find what Index.search finds."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    index = VectorIndex(16, "i8")
    assert [a.size for a in index.search(vectors[0], 4)] == [0, 0]
    index.add(np.arange(1, 301, dtype=np.uint64), vectors)
    for query, k in [(vectors[3], 4), (rng.standard_normal(16).astype(np.float32), 10), (vectors[7], 500)]:
        keys, sims = index.search(query, k)
        theirs = index._index.search(query, min(k, len(index)), threads=1)
        assert keys.tolist() == np.asarray(theirs.keys).tolist()
        assert sims == pytest.approx(1.0 - np.asarray(theirs.distances), abs=1e-6)
    assert len(index.search(vectors[7], 500)[0]) == 300
    with np.errstate(over="ignore"):  # its square overflows, yet every value is finite
        assert len(index.search(np.full(16, 1e20, np.float32), 1)[0]) == 1
    for bad in (np.full(16, np.inf, np.float32), np.ones(15, np.float32), np.ones((2, 16), np.float32)):
        with pytest.raises(InvalidInputError):
            index.search(bad, 1)


def test_snapshot_round_trip_through_folder_store(tmp_path, make_cache, clock):
    store = LocalFolderStore(tmp_path)
    cache = make_cache(store=store)
    eid = cache.insert("persist this question", "answer", context=["first turn"], ttl_seconds=100)
    cache.feedback(eid, True)
    cache.save()
    again = make_cache(store=store)
    assert len(again) == 1
    got = again.lookup("persist this question", context=["first turn"])
    assert got.hit and got.entry_id == eid and again.get(eid).right_feedback == 1
    assert again.insert("another one", "x") != eid  # ids are never reused


def test_a_snapshot_restores_from_any_bytes_like_value(make_cache):
    saved = make_cache()
    entry_id = saved.insert("how do I enable two factor auth", "Settings > Security")
    for data in (memoryview(saved.to_bytes()), bytearray(saved.to_bytes())):
        loaded = make_cache()
        loaded.restore(data)
        assert loaded.lookup("how do I enable two factor auth").entry_id == entry_id


def test_corrupted_snapshot_raises_and_keeps_state(tmp_path, make_cache):
    store = LocalFolderStore(tmp_path)
    cache = make_cache(store=store)
    cache.insert("valuable entry", "v")
    cache.save()
    good = store.get(cache.key)
    broken = good[:-5] + b"\x00\x00\x00\x00\x00"
    with pytest.raises(SnapshotError, match="checksum"):
        cache.restore(broken)
    assert cache.lookup("valuable entry").hit
    (tmp_path / cache.key).write_bytes(broken)
    with pytest.raises(SnapshotError):
        make_cache(store=store)
    assert (tmp_path / cache.key).read_bytes() == broken  # loading never rewrites the file


def test_snapshot_from_other_encoder_or_user_is_refused(make_cache, clock, config):
    store = MemoryStore()
    cache = make_cache(store=store)
    cache.insert("q", "r")
    cache.save()
    other = SemanticCache(
        "alice",
        store=MemoryStore(),
        config=config,
        embedder=HashingEmbedder(fingerprint="other"),
        clock=clock,
    )
    with pytest.raises(SnapshotError, match="another encoder"):
        other.restore(store.get(cache.key))
    bob = make_cache(user="bob")
    with pytest.raises(SnapshotError, match="another user"):
        bob.restore(store.get(cache.key))


def test_users_never_see_each_others_entries(embedder, config, tmp_path):
    registry = CacheRegistry(LocalFolderStore(tmp_path), config, embedder, max_loaded=1)
    with registry.use("alice", mutate=True) as alice:
        alice.insert("my secret diagnosis", "alice only")
    for _ in range(2):  # once loaded, once after eviction and reload from disk
        with registry.use("bob") as bob:
            assert not bob.lookup("my secret diagnosis").hit
            assert len(bob) == 0
        with registry.use("alice") as alice:
            assert alice.lookup("my secret diagnosis").response == "alice only"


def test_registry_saves_evicted_and_flushes(embedder, config, tmp_path):
    store = LocalFolderStore(tmp_path)
    registry = CacheRegistry(store, config, embedder, max_loaded=1)
    with registry.use("u1", mutate=True) as c:
        c.insert("question one", "1")
    with registry.use("u2", mutate=True) as c:  # evicts u1, which is saved
        c.insert("question two", "2")
    assert len(SemanticCache("u1", store=store, config=config, embedder=embedder)) == 1
    assert registry.flush() == 1
    assert len(SemanticCache("u2", store=store, config=config, embedder=embedder)) == 1


def test_clearing_a_damaged_snapshot_again_keeps_the_first_one_set_aside(embedder, config):
    from edgecache.stores import user_key

    store, key = MemoryStore(), user_key("dana")
    for garbage in (b"first damage", b"second damage"):
        store.put(key, garbage)
        CacheRegistry(store, config, embedder).clear("dana")
    assert store.get(f"{key}.bad") == b"first damage" and store.get(f"{key}.bad.2") == b"second damage"
    assert len(SemanticCache("dana", store=store, config=config, embedder=embedder)) == 0


def test_concurrent_clears_of_a_damaged_snapshot_set_it_aside_once(embedder, config):
    from edgecache.stores import user_key

    store, key = MemoryStore(), user_key("dana")
    store.put(key, b"damage")
    registry, results = CacheRegistry(store, config, embedder), []
    errors = run_in_threads(lambda: results.append(registry.clear("dana")), [() for _ in range(8)])
    assert not errors
    assert sorted(map(str, results)) == [f"{key}.bad"] + ["None"] * 7
    assert store.get(f"{key}.bad") == b"damage" and store.get(f"{key}.bad.2") is None


def test_clear_never_overwrites_a_set_aside_snapshot_another_process_just_wrote(embedder, config):
    from edgecache.stores import user_key

    key = user_key("dana")

    class BlindStore(MemoryStore):
        """Reads "<key>.bad" as absent, as a process does that looked just before another wrote it."""

        def get(self, k):
            return None if k == f"{key}.bad" else super().get(k)

    store = BlindStore()
    store.put(f"{key}.bad", b"kept by the other process")
    store.put(key, b"damage")
    assert CacheRegistry(store, config, embedder).clear("dana") == f"{key}.bad.2"
    assert super(BlindStore, store).get(f"{key}.bad") == b"kept by the other process"
    assert store.get(f"{key}.bad.2") == b"damage"


def test_a_good_snapshot_written_while_a_damaged_one_is_set_aside_is_kept(embedder, config):
    from edgecache.registry import move_aside
    from edgecache.stores import user_key

    key = user_key("dana")
    good = SemanticCache("dana", config=config, embedder=embedder)
    good.insert("what is the capital of peru", "Lima")

    class Racing(MemoryStore):
        """Another process saves a good snapshot just after this one claims "<key>.bad"."""

        def put_if(self, k, data, expected):
            version = super().put_if(k, data, expected)
            if k == f"{key}.bad":
                self.put(key, good.to_bytes())
            return version

    store = Racing()
    store.put(key, b"damage")
    assert move_aside(store, key, b"damage", b"empty") is None
    assert store.get(f"{key}.bad") is None
    assert len(SemanticCache("dana", store=store, config=config, embedder=embedder)) == 1


def test_concurrent_inserts_and_lookups_lose_nothing(make_cache):
    cache = make_cache()

    def worker(n):
        for i in range(50):
            cache.insert(f"thread {n} question {i}", f"{n}-{i}")
            cache.lookup(f"thread {n} question {i // 2}")

    errors = run_in_threads(worker, [(n,) for n in range(6)])
    assert not errors
    assert len(cache) == 300 and len({e for e in cache._entries}) == 300
    restored = make_cache()
    restored.restore(cache.to_bytes())
    assert len(restored) == 300


def test_cached_decorator_calls_llm_once(make_cache):
    cache = make_cache()
    calls = []

    @cached(cache)
    def ask(prompt, temperature=0.0, context=None):
        calls.append((prompt, context))
        return f"answer to {prompt}"

    assert ask("what is edgecache") == "answer to what is edgecache"
    assert ask("What is edgecache?") == "answer to what is edgecache"
    ask("and the price", context=["edgecache pricing"])
    ask("and the price", context=["something unrelated entirely"])
    assert len(calls) == 3


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"cache": None}, "needs a SemanticCache"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": float("nan")}, "ttl_seconds"),
        ({"monitor": 5}, "BackendMonitor"),
        ({"category": "bogus"}, "unknown category"),
    ],
)
def test_cached_decorator_refuses_bad_arguments_when_made(make_cache, arguments, message):
    with pytest.raises(InvalidInputError, match=message):
        cached(**({"cache": make_cache()} | arguments))


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "8", None, True])
def test_insert_many_refuses_a_bad_batch_size(make_cache, batch_size):
    cache = make_cache()
    with pytest.raises(InvalidInputError, match="batch_size"):
        cache.insert_many(["How tall is Everest?"], ["8849 m"], batch_size=batch_size)
    assert len(cache) == 0


def test_cached_decorator_reads_a_context_passed_in_its_place(make_cache):
    """`ask(q, ctx)` is the same follow-up as `ask(q, context=ctx)`: its context keys the cache."""
    cache = make_cache()
    calls = []

    @cached(cache)
    def ask(prompt, context=None):
        calls.append(context)
        return f"answer under {context}"

    assert ask("what is its population", ["tell me about france"]) == "answer under ['tell me about france']"
    assert ask("what is its population", ["tell me about japan"]) == "answer under ['tell me about japan']"
    assert ask("what is its population") == "answer under None"  # standalone: not the follow-ups' answer
    assert ask(prompt="what is its population", context=["tell me about france"]).endswith("france']")
    assert len(calls) == 3
    with pytest.raises(TypeError):
        ask("q", ["c"], "one too many")
    assert len(calls) == 3


def test_cached_decorator_awaits_a_coroutine_function(make_cache):
    import asyncio

    cache = make_cache()
    calls = []

    @cached(cache)
    async def ask(prompt, context=None):
        calls.append(prompt)
        await asyncio.sleep(0)
        return f"answer to {prompt}"

    async def main() -> list[str]:
        return [await ask("what is edgecache"), await ask("What is edgecache?"), await ask("other thing")]

    assert asyncio.run(main()) == ["answer to what is edgecache"] * 2 + ["answer to other thing"]
    assert calls == ["what is edgecache", "other thing"] and len(cache) == 2


def test_cached_decorator_on_a_method_keys_on_the_prompt_not_the_instance(make_cache):
    cache = make_cache()

    class Bot:
        calls = 0

        @cached(cache)
        def ask(self, prompt, context=None):
            Bot.calls += 1
            return f"answer to {prompt}"

    bot = Bot()
    assert bot.ask("what is edgecache") == bot.ask("What is edgecache?") == "answer to what is edgecache"
    assert Bot.calls == 1 and cache.lookup("what is edgecache").hit


def test_cached_decorator_returns_what_it_cannot_cache(make_cache, caplog):
    cache = make_cache()
    answers = iter([None, 42, "\ud800", "fine"])

    @cached(cache)
    def ask(prompt: str):
        return next(answers)

    assert [ask("what is the answer") for _ in range(4)] == [None, 42, "\ud800", "fine"]
    assert ask("what is the answer") == "fine" and len(cache) == 1
    assert caplog.text.count("not cached") == 3


def test_cached_decorator_feeds_the_backend_monitor(make_cache):
    from edgecache.load import BackendMonitor

    class Throttled(Exception):
        status_code = 429

    monitor = BackendMonitor(overloaded_429_rate=0.5)
    cache = make_cache()

    @cached(cache, monitor=monitor, category="code")
    def ask(prompt):
        if "busy" in prompt:
            raise Throttled()
        return "ok"

    assert ask("sort a list in python") == "ok"
    assert cache.lookup("sort a list in python").category == "code"
    for _ in range(2):
        with pytest.raises(Throttled):
            ask("busy backend")
    assert monitor.level() == 1.0  # 2 of 3 calls were 429s


def test_a_user_asked_for_while_its_eviction_saves_gets_the_same_cache(embedder, config):
    from tests.unit.test_concurrent_writers import GatedStore

    store = GatedStore()
    registry = CacheRegistry(store, config, embedder, max_loaded=1)
    with registry.use("u1", mutate=True) as c:
        unsaved = c.insert("question one", "1")
    store.gated = True
    evicting = threading.Thread(target=lambda: registry.use("u2").__enter__())
    evicting.start()  # loading u2 evicts u1, whose save now waits at the gate
    assert store.writing.wait(10)
    store.gated = False
    with registry.use("u1", mutate=True) as c:  # not re-read from the store (it lacks the entry)
        assert c.lookup("question one").entry_id == unsaved
        c.delete(unsaved)
    store.release.set()
    evicting.join()
    registry.flush()
    assert len(SemanticCache("u1", store=store, config=config, embedder=embedder)) == 0


def test_flush_writes_every_cache_even_when_one_fails(embedder, config):
    from edgecache.stores import user_key

    class FailsFor(MemoryStore):
        def put_if(self, key, data, expected):
            if key == user_key("broken"):
                raise OSError("disk full")
            return super().put_if(key, data, expected)

    store = FailsFor()
    registry = CacheRegistry(store, config, embedder)
    for user in ("broken", "fine-1", "fine-2"):
        with registry.use(user, mutate=True) as c:
            c.insert(f"a question of {user}", "r")
    with pytest.raises(OSError, match="disk full"):
        registry.flush()
    for user in ("fine-1", "fine-2"):
        assert len(SemanticCache(user, store=store, config=config, embedder=embedder)) == 1
    assert "broken" in registry._dirty  # retried on the next flush


def test_registry_under_eviction_pressure_loses_no_insert_or_delete(embedder, config, tmp_path):
    store = LocalFolderStore(tmp_path)
    registry = CacheRegistry(store, config, embedder, max_loaded=1)
    kept: dict[str, list[int]] = {f"user-{u}": [] for u in range(5)}

    def work(user: str, t: int) -> None:
        for i in range(20):
            with registry.use(user, mutate=True) as cache:
                entry_id = cache.insert(f"{user} thread {t} note {i} on invoice {t * 100 + i}", "r")
            if i % 4 == 0:
                with registry.use(user, mutate=True) as cache:
                    cache.delete(entry_id)  # never "not found": the id was just handed out
            else:
                kept[user].append(entry_id)

    errors = run_in_threads(work, [(u, t) for u in kept for t in range(2)])
    assert not errors
    registry.flush()
    for user, ids in kept.items():
        assert set(SemanticCache(user, store=store, config=config, embedder=embedder)._entries) == set(ids)


def test_a_snapshot_with_a_valid_checksum_but_bad_fields_is_refused(make_cache):
    from edgecache import snapshot

    cache = make_cache()
    cache.insert("a perfectly good question", "answer")
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    fields = payload["entry_fields"]
    for name, bad in (("expires_at", "soon"), ("query", 12), ("metadata", [1])):
        row = list(payload["entries"][0])
        row[fields.index(name)] = bad
        broken = snapshot.encode({**payload, "entries": [row]})
        with pytest.raises(SnapshotError, match=name):
            make_cache().restore(broken)
    for index in (None, "/etc/passwd"):
        with pytest.raises(SnapshotError):
            make_cache().restore(snapshot.encode({**payload, "index": index}))
    target = make_cache()
    target.insert("kept", "kept")
    with pytest.raises(SnapshotError):
        target.restore(snapshot.encode({**payload, "index": None}))
    assert target.lookup("kept").hit


def test_a_snapshot_whose_values_cannot_be_served_or_saved_is_refused(make_cache):
    from edgecache import snapshot

    cache = make_cache()
    cache.insert("a perfectly good question", "answer")
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    fields = payload["entry_fields"]
    for name, bad, why in (
        ("response", None, "without a response"),  # inline bodies: a hit would serve None
        ("hits", 2**64 - 1, "hits is out of range"),  # the next hit could never be saved
        ("id", 99, "disagree"),  # an entry the index has no vector for
        ("expires_at", float("nan"), "expires_at is nan"),  # would never expire
        ("metadata", {"x": b"\x00"}, "bytes is not a JSON value"),  # a hit could not be sent as JSON
    ):
        row = list(payload["entries"][0])
        row[fields.index(name)] = bad
        target = make_cache()
        target.insert("kept", "kept")
        with pytest.raises(SnapshotError, match=why):
            target.restore(snapshot.encode({**payload, "entries": [row]}))
        assert target.lookup("kept").hit


def test_an_entry_whose_query_insert_now_refuses_still_loads_and_is_read(make_cache):
    """An older release took queries of characters that print blank (a Hangul filler): its
    snapshots still load, and the guards read such an entry's query without failing."""
    from edgecache import snapshot

    cache = make_cache()
    cache.insert("how to bake bread", "knead it")
    payload = snapshot.decode(cache.to_bytes(), cache.embedder.fingerprint)
    row = list(payload["entries"][0])
    row[payload["entry_fields"].index("query")] = "\u3164 \u200b"
    loaded = make_cache()
    loaded.restore(snapshot.encode({**payload, "entries": [row]}))
    assert loaded.lookup("how to bake bread").hit  # its vector still answers; nothing raises


def test_a_snapshot_saved_under_another_dtype_is_rebuilt_as_configured(make_cache):
    saved = make_cache(dtype="i8")
    entry_id = saved.insert("how do I enable two factor auth", "Settings > Security")
    loaded = make_cache(dtype="f16")
    loaded.restore(saved.to_bytes())
    assert loaded._index._index.dtype == VectorIndex(4, "f16")._index.dtype
    assert loaded.lookup("how do I enable two factor auth").entry_id == entry_id
    assert loaded.stats().dtype == "f16"
