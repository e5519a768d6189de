"""Per-category policy inside the cache: TTLs, quotas, thresholds, load, hybrid bodies."""

import pytest

from edgecache import CacheConfig, InvalidInputError, MemoryStore, Reason, SemanticCache, SnapshotError
from edgecache.load import FixedSignal
from edgecache.policy import Policy

MINUTE = 60.0


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = self.writes = self.deletes = 0

    def get(self, key):
        self.reads += 1
        return super().get(key)

    def put(self, key, data, expires_at=None):
        self.writes += 1
        super().put(key, data, expires_at)

    def delete(self, key):
        self.deletes += 1
        super().delete(key)


def policy(**categories) -> Policy:
    return Policy.from_dict({"categories": categories})


def test_explicit_category_sets_ttl_and_expired_entries_never_hit(make_cache, clock):
    cache = make_cache(ttl_seconds=86_400.0)
    weather = cache.insert("weather in paris today", "sunny", category="time_sensitive")
    fact = cache.insert("who wrote hamlet", "Shakespeare", category="stable_fact")
    assert cache.get(weather).category == "time_sensitive"
    clock.now += 15 * MINUTE - 1
    assert cache.lookup("weather in paris today").hit
    clock.now += 1
    got = cache.lookup("weather in paris today")
    assert not got.hit and got.reason == Reason.EXPIRED
    # The cache-wide TTL (one day) caps the 90-day stable_fact default.
    assert cache.lookup("who wrote hamlet").entry_id == fact
    clock.now += 86_400
    assert cache.lookup("who wrote hamlet").reason == Reason.EXPIRED
    assert cache.purge_expired() == 2
    assert cache.stats().categories["time_sensitive"]["expired"] == 1


def test_unknown_category_is_refused_before_anything_is_stored(make_cache):
    cache = make_cache()
    with pytest.raises(InvalidInputError, match="unknown category"):
        cache.insert_many(["a", "b"], ["1", "2"], categories=[None, "nope"])
    with pytest.raises(InvalidInputError, match="unknown category"):
        cache.lookup("a", category="nope")
    assert len(cache) == 0


def test_quota_evicts_only_within_its_category_by_its_strategy(make_cache, clock):
    cache = make_cache(policy=policy(code={"max_entries": 2, "eviction": "lfu"}))
    keep = cache.insert("how to reverse a list in python", "x[::-1]", category="code")
    cache.insert("capital of peru", "Lima", category="stable_fact")
    second = cache.insert("sort a dict by value", "sorted(...)", category="code")
    clock.now += 1
    assert cache.lookup("how to reverse a list in python").entry_id == keep  # one hit
    clock.now += 1
    third = cache.insert("read a csv file with pandas", "pd.read_csv", category="code")
    ids = {e for e in (keep, second, third) if e in cache._entries}
    assert ids == {keep, third}  # LFU dropped the never-hit older one
    assert len(cache) == 3
    stats = cache.stats().categories
    assert stats["code"]["evictions"] == 1 and stats["code"]["entries"] == 2
    assert stats["stable_fact"]["evictions"] == 0


def test_byte_quota(make_cache):
    cache = make_cache(policy=policy(small_talk={"max_bytes": 3000}))
    for i in range(10):
        cache.insert(f"hello there number {i}", "hi! " * 100, category="small_talk")
    held = cache.stats().categories["small_talk"]
    assert 0 < held["bytes"] <= 3000 and held["evictions"] == 10 - held["entries"]


def test_expired_entries_are_evicted_before_live_ones(make_cache, clock):
    cache = make_cache(policy=policy(other={"max_entries": 2, "eviction": "lru"}))
    live = cache.insert("alpha beta gamma", "1", category="other")
    clock.now += 1
    short = cache.insert("delta epsilon zeta", "2", category="other", ttl_seconds=1)
    clock.now += 5
    cache.insert("eta theta iota", "3", category="other")
    assert live in cache._entries and short not in cache._entries


def test_category_threshold_and_strictest_of_query_and_entry(make_cache):
    strict = policy(personal={"threshold": 0.99}, small_talk={"threshold": 0.3})
    cache = make_cache(policy=strict)
    cache.insert("what is my account balance please", "$10", category="personal")
    loose_query = cache.lookup("what is my account balance", category="small_talk")
    assert not loose_query.hit and loose_query.reason == Reason.BELOW_THRESHOLD
    cache.insert("hello how are you doing today", "fine", category="small_talk")
    got = cache.lookup("hello how are you", category="small_talk")
    assert got.hit and got.threshold == pytest.approx(0.3)


def test_load_relaxes_threshold_and_stretches_ttl_within_bounds_then_restores(make_cache, clock):
    load = FixedSignal(0.0)
    cfg = CacheConfig(
        threshold=0.9,
        policy=policy(small_talk={"max_relax": 0.2, "max_ttl_factor": 3.0, "ttl_seconds": 100}),
    )
    cache = SemanticCache("u", config=cfg, embedder=make_cache().embedder, clock=clock, load=load)
    cache.insert("hello how are you doing today my friend", "fine", category="small_talk")
    query = "hello how are you doing today"
    sim = cache.lookup(query, category="small_talk").similarity
    assert 0.7 < sim < 0.9
    assert cache.lookup(query, category="small_talk").reason == Reason.BELOW_THRESHOLD
    load.set(1.0)
    got = cache.lookup(query, category="small_talk")
    assert got.hit and got.threshold == pytest.approx(0.7)
    clock.now += 250  # past the 100 s TTL, within 3 x 100 s under full load
    assert cache.lookup(query, category="small_talk").hit
    clock.now += 51
    assert cache.lookup(query, category="small_talk").reason == Reason.EXPIRED
    load.set(0.0)
    clock.now -= 200  # back at 101 s: load gone, base TTL applies again
    assert cache.lookup(query, category="small_talk").reason == Reason.EXPIRED


def test_categories_without_relax_never_loosen(make_cache, clock):
    load = FixedSignal(1.0)
    cfg = CacheConfig(threshold=0.9)
    cache = SemanticCache("u", config=cfg, embedder=make_cache().embedder, clock=clock, load=load)
    cache.insert("what is my account balance today", "$10", category="personal")
    got = cache.lookup("what is my balance", category="personal")
    assert 0.7 < got.similarity < 0.9
    assert not got.hit and got.threshold == pytest.approx(0.9)


def test_classifier_places_queries_by_seeds(make_cache):
    cats = {
        "categories": [
            {"name": "animals", "seeds": ["dog cat horse", "cat dog pet"]},
            {"name": "food", "seeds": ["pizza pasta bread", "bread cheese pizza"]},
        ],
        "fallback": "food",
    }
    cache = make_cache(policy=Policy.from_dict(cats))
    assert cache.lookup("my dog and cat").category == "animals"
    eid = cache.insert("pizza with cheese", "yum")
    assert cache.get(eid).category == "food"
    assert cache.stats().categories["animals"]["lookups"] == 1


def test_custom_category_without_seeds_needs_classify_off(make_cache):
    from edgecache.errors import ConfigError

    bad = Policy.from_dict({"categories": [{"name": "a"}, {"name": "b"}], "fallback": "b"})
    with pytest.raises(ConfigError, match="needs seeds"):
        make_cache(policy=bad)
    ok = Policy.from_dict({"categories": [{"name": "a"}, {"name": "b"}], "fallback": "b", "classify": False})
    assert make_cache(policy=ok).lookup("x").category == "b"


def test_hybrid_layout_reads_bodies_only_on_hits(embedder, clock, config):
    bodies, snaps = CountingStore(), MemoryStore()
    cache = SemanticCache("alice", store=snaps, config=config, embedder=embedder, clock=clock, bodies=bodies)
    eid = cache.insert("how do I enable two factor auth", "Settings > Security")
    assert cache._entries[eid].response is None and bodies.writes == 1
    reads = bodies.reads
    for _ in range(5):
        assert not cache.lookup("recipe for banana bread").hit
    assert bodies.reads == reads  # misses never touch the document store
    got = cache.lookup("how do I enable two factor auth")
    assert got.hit and got.response == "Settings > Security" and bodies.reads == reads + 1
    assert cache.get(eid).response == "Settings > Security"
    cache.save()
    assert b"Settings > Security" not in snaps.get(cache.key)
    again = SemanticCache("alice", store=snaps, config=config, embedder=embedder, clock=clock, bodies=bodies)
    assert again.lookup("how do I enable two factor auth").response == "Settings > Security"
    with pytest.raises(SnapshotError, match="bodies"):
        SemanticCache("alice", store=snaps, config=config, embedder=embedder, clock=clock)
    again.delete(eid)
    assert bodies.get(f"{again.key}.{eid}") is None


def test_hybrid_missing_body_is_a_miss_and_drops_the_entry(embedder, clock, config):
    bodies = MemoryStore()
    cache = SemanticCache("bob", config=config, embedder=embedder, clock=clock, bodies=bodies)
    eid = cache.insert("what is the capital of france", "Paris")
    bodies.delete(f"{cache.key}.{eid}")
    got = cache.lookup("what is the capital of france")
    assert not got.hit and got.reason == Reason.BODY_MISSING
    assert len(cache) == 0


def test_hybrid_bodies_of_users_never_mix(embedder, clock, config):
    bodies = MemoryStore()
    alice = SemanticCache("alice", config=config, embedder=embedder, clock=clock, bodies=bodies)
    bob = SemanticCache("bob", config=config, embedder=embedder, clock=clock, bodies=bodies)
    alice.insert("my secret plan", "alice's")
    bob.insert("my secret plan", "bob's")
    assert alice.lookup("my secret plan").response == "alice's"
    assert bob.lookup("my secret plan").response == "bob's"
    alice.clear()
    assert bob.lookup("my secret plan").response == "bob's"


def test_failed_body_write_stores_nothing(embedder, clock, config):
    class Broken(MemoryStore):
        def put(self, key, data, expires_at=None):
            if data == b"2":
                raise OSError("disk full")
            super().put(key, data, expires_at)

    bodies = Broken()
    cache = SemanticCache("carol", config=config, embedder=embedder, clock=clock, bodies=bodies)
    with pytest.raises(OSError):
        cache.insert_many(["one thing", "another thing"], ["1", "2"])
    assert len(cache) == 0 and not bodies._data  # the first body was taken back


def test_restore_maps_retired_categories_to_the_fallback(make_cache):
    store = MemoryStore()
    old = make_cache(store=store)
    old.insert("weather in rome", "rain", category="time_sensitive")
    old.save()
    narrow = Policy.from_dict({"categories": [{"name": "misc"}], "fallback": "misc", "classify": False})
    new = make_cache(store=store, policy=narrow)
    assert new.stats().categories["misc"]["entries"] == 1


def test_wrong_feedback_raises_the_category_threshold(embedder, clock):
    cfg = CacheConfig(threshold=0.5, policy=Policy(false_hit_target=0.05, classify=False))
    cache = SemanticCache("dora", config=cfg, embedder=embedder, clock=clock)
    eid = cache.insert("alpha beta gamma delta", "x")
    first = cache.lookup("alpha beta gamma zeta")  # similarity 0.75
    assert first.hit and first.threshold == pytest.approx(0.5)
    for _ in range(30):
        got = cache.lookup("alpha beta gamma zeta")
        if not got.hit:
            break
        cache.feedback(eid, correct=False)
        cache._entries[eid].wrong_feedback = 0  # keep the entry itself undisputed: test the threshold
    later = cache.lookup("alpha beta gamma zeta")
    assert not later.hit and later.reason == Reason.BELOW_THRESHOLD and later.threshold >= 0.75
    assert cache.lookup("alpha beta gamma delta").hit  # exact repeats still hit


def test_feedback_counts_once_per_served_hit(embedder, clock):
    seen = []

    class Recorder:
        def threshold(self, key, default):
            from edgecache.calibration import ThresholdChoice

            return ThresholdChoice(default, 1.0, 0, 0, "default_cold_start")

        def count_lookups(self, key, n=1, served_at=None):
            pass

        def observe(self, key, similarity, correct, served_at=None):
            seen.append((key, round(similarity, 3), correct, served_at))

    cfg = CacheConfig(threshold=0.5, policy=Policy(false_hit_target=0.05, classify=False))
    cache = SemanticCache("erin", config=cfg, embedder=embedder, clock=clock, calibrator=Recorder())
    eid = cache.insert("alpha beta gamma delta", "x")
    cache.lookup("alpha beta gamma zeta")
    cache.feedback(eid, correct=True)
    cache.feedback(eid, correct=True)
    assert seen == [("other", 0.75, True, 0.5)]


def test_registry_shares_and_persists_feedback_statistics(tmp_path, embedder, clock):
    from edgecache import LocalFolderStore
    from edgecache.registry import CALIBRATION_KEY, CacheRegistry

    cfg = CacheConfig(threshold=0.5, policy=Policy(false_hit_target=0.05, classify=False))
    store = LocalFolderStore(tmp_path)
    registry = CacheRegistry(store, cfg, embedder, clock=clock)
    with registry.use("a", mutate=True) as a:
        eid = a.insert("alpha beta gamma delta", "x")
        assert a.lookup("alpha beta gamma zeta").hit
        a.feedback(eid, correct=False)
    with registry.use("b") as b:
        assert b.rules.calibrator is a.rules.calibrator
    registry.flush()
    assert store.get(CALIBRATION_KEY) is not None
    again = CacheRegistry(store, cfg, embedder, clock=clock)
    assert again.calibrator is not None and again.calibrator.keys() == ["other"]
    store.put(CALIBRATION_KEY, b"garbage")
    fresh = CacheRegistry(store, cfg, embedder, clock=clock)
    assert fresh.calibrator.keys() == [] and store.get(f"{CALIBRATION_KEY}.bad") == b"garbage"


def _feedback_counted(calibrator) -> int:
    return sum(
        row[1]
        for key in calibrator.to_dict()["keys"].values()
        for rows in key["online"].values()
        for row in rows
    )


def _give_feedback(registry, user: str, times: int) -> None:
    with registry.use(user, mutate=True) as cache:
        eid = cache.insert("alpha beta gamma delta", "x")
        for _ in range(times):
            assert cache.lookup("alpha beta gamma delta").hit
            cache.feedback(eid, correct=True)


def test_processes_sharing_statistics_add_theirs_up(tmp_path, embedder, clock):
    from edgecache import LocalFolderStore
    from edgecache.registry import CacheRegistry

    cfg = CacheConfig(threshold=0.5, policy=Policy(false_hit_target=0.05, classify=False))
    first, second = (CacheRegistry(LocalFolderStore(tmp_path), cfg, embedder, clock=clock) for _ in range(2))
    _give_feedback(first, "a", 7)
    _give_feedback(second, "b", 5)
    first.flush()
    second.flush()
    assert (
        _feedback_counted(CacheRegistry(LocalFolderStore(tmp_path), cfg, embedder, clock=clock).calibrator)
        == 12
    )
    assert _feedback_counted(second.calibrator) == 12  # took in the first's on its flush
    _give_feedback(first, "a", 1)
    first.flush()  # adds its one, takes in the second's five; nothing counted twice
    assert _feedback_counted(first.calibrator) == 13
    assert (
        _feedback_counted(CacheRegistry(LocalFolderStore(tmp_path), cfg, embedder, clock=clock).calibrator)
        == 13
    )


def test_statistics_that_fail_to_save_are_saved_by_the_next_flush(embedder, clock):
    from edgecache.registry import CALIBRATION_KEY, CacheRegistry

    class Failing(MemoryStore):
        fail = True

        def put_if(self, key, data, expected):
            if key == CALIBRATION_KEY and self.fail:
                raise OSError("store unreachable")
            return super().put_if(key, data, expected)

    cfg = CacheConfig(threshold=0.5, policy=Policy(false_hit_target=0.05, classify=False))
    store = Failing()
    registry = CacheRegistry(store, cfg, embedder, clock=clock)
    _give_feedback(registry, "a", 3)
    with pytest.raises(OSError):
        registry.flush()
    store.fail = False
    assert registry.flush() == 0  # no cache changed; the statistics are still written
    assert _feedback_counted(CacheRegistry(store, cfg, embedder, clock=clock).calibrator) == 3


def test_bodies_expire_no_earlier_than_their_entry_could_be_served(embedder, clock, config):
    seen = {}

    class Recording(MemoryStore):
        def put(self, key, data, expires_at=None):
            seen[data] = expires_at
            super().put(key, data, expires_at)

    cache = SemanticCache("fay", config=config, embedder=embedder, clock=clock, bodies=Recording())
    cache.insert("weather in lima today", "warm", category="time_sensitive")  # 15 min, up to 2x under load
    cache.insert("who wrote hamlet", "Shakespeare", category="stable_fact", ttl_seconds=100)
    cache.insert("some other question", "forever", category="other")  # no TTL
    assert seen[b"warm"] == clock.now + 2 * 15 * 60
    assert seen[b"Shakespeare"] == clock.now + 2 * 100
    assert seen[b"forever"] is None


def test_large_caches_evict_a_percent_at_a_time_and_never_exceed_the_limit(make_cache):
    cache = make_cache(max_entries=300)
    cache.insert_many([f"question number {i} on topic {i * 3}" for i in range(300)], ["r"] * 300)
    cache.insert("one more question here", "r")
    assert len(cache) == 300 - 3  # over by one: frees 1 + 1% of 300
    for i in range(10):
        cache.insert(f"later question {i}", "r")
        assert len(cache) <= 300
    assert sum(c["evictions"] for c in cache.stats().categories.values()) == 301 + 10 - len(cache)
