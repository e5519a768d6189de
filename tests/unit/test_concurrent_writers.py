"""Several writers of one user's cache (Lambda containers, service workers) lose nothing."""

import threading

import pytest

from edgecache import LocalFolderStore, MemoryStore, SemanticCache
from edgecache.decision import Reason
from edgecache.errors import ConflictError, SnapshotError
from tests.helpers import run_in_threads


def writer(store, embedder, clock, config, bodies=None):
    return SemanticCache(
        "shared-user", store=store, config=config, embedder=embedder, clock=clock, bodies=bodies
    )


def test_versioned_stores_refuse_stale_writes(tmp_path):
    for store in (MemoryStore(), LocalFolderStore(tmp_path)):
        first = store.put_if("k", b"one", None)
        with pytest.raises(ConflictError):
            store.put_if("k", b"two", None)  # must not exist yet
        second = store.put_if("k", b"two", first)
        with pytest.raises(ConflictError):
            store.put_if("k", b"three", first)  # stale version
        assert store.get_versioned("k") == (b"two", second)


def test_concurrent_inserts_and_deletes_merge(embedder, clock, config):
    store = MemoryStore()
    a = writer(store, embedder, clock, config)
    keep = a.insert("what is the capital of peru", "Lima")
    gone = a.insert("what is the capital of chile", "Santiago")
    a.save()
    b = writer(store, embedder, clock, config)  # loads keep + gone
    a.delete(gone)
    added_by_a = a.insert("how tall is mount everest", "8849 m")
    a.save()
    added_by_b = b.insert("who painted the mona lisa", "Leonardo")
    b.save()  # conflicts with a's save, merges, retries
    for cache in (b, writer(store, embedder, clock, config)):
        assert set(cache._entries) == {keep, added_by_a, added_by_b}
        assert cache.lookup("who painted the mona lisa").entry_id == added_by_b
        assert cache.lookup("how tall is mount everest").entry_id == added_by_a
        assert not cache.lookup("what is the capital of chile").hit
    b.delete(keep)
    a.insert("what is the speed of light", "c")
    a.save()
    b.save()
    final = writer(store, embedder, clock, config)
    assert keep not in final._entries and len(final) == 3


@pytest.mark.parametrize("kind", ["memory", "folder"])
def test_many_threads_many_writers_lose_no_insert(tmp_path, embedder, clock, config, kind):
    shared = MemoryStore() if kind == "memory" else None

    def work(i: int) -> None:
        # Each writer is its own cache instance, as in separate containers.
        store = shared if shared is not None else LocalFolderStore(tmp_path)
        cache = writer(store, embedder, clock, config)
        for j in range(10):
            cache.insert(f"writer {i} question number {j} about topic {i * 100 + j}", f"{i}/{j}")
            cache.save()

    errors = run_in_threads(work, [(i,) for i in range(8)])
    assert not errors
    final = writer(shared if shared is not None else LocalFolderStore(tmp_path), embedder, clock, config)
    assert len(final) == 80
    assert final.lookup("writer 3 question number 7 about topic 307").response == "3/7"


def test_merge_keeps_hybrid_bodies_readable(embedder, clock, config):
    store, bodies = MemoryStore(), MemoryStore()
    a = writer(store, embedder, clock, config, bodies)
    b = writer(store, embedder, clock, config, bodies)
    a.insert("first question here", "first body")
    b.insert("second question here", "second body")
    a.save()
    b.save()
    fresh = writer(store, embedder, clock, config, bodies)
    assert fresh.lookup("first question here").response == "first body"
    assert fresh.lookup("second question here").response == "second body"


def test_refresh_takes_in_other_writers_inserts(embedder, clock, config):
    store = MemoryStore()
    a = writer(store, embedder, clock, config)
    b = writer(store, embedder, clock, config)
    a.insert("what is the capital of peru", "Lima")
    a.save()
    assert not b.lookup("what is the capital of peru").hit  # b has not looked since
    mine = b.insert("who painted the mona lisa", "Leonardo")  # unsaved: survives the refresh
    assert b.refresh() and not b.refresh()
    assert b.lookup("what is the capital of peru").response == "Lima"
    assert b.lookup("who painted the mona lisa").entry_id == mine


def test_hits_and_feedback_survive_another_writers_save(embedder, clock, config):
    """Counts add up: a merge adds this cache's unsaved hits and feedback to the other
    writer's copy of the entry, so a dispute is not undone by someone else's save."""
    store = MemoryStore()
    a = writer(store, embedder, clock, config)
    wrong = a.insert("what is the capital of australia", "Sydney")
    a.save()
    b = writer(store, embedder, clock, config)
    assert b.lookup("what is the capital of australia").hit
    b.feedback(wrong, False)
    assert b.lookup("what is the capital of australia").reason == Reason.DISPUTED
    a.lookup("what is the capital of australia")  # a's own hit on the same entry
    a.insert("who painted the mona lisa", "Leonardo")
    a.save()
    assert b.refresh()
    assert b.lookup("what is the capital of australia").reason == Reason.DISPUTED
    b.save()  # nothing lost, nothing counted twice
    a.save()  # conflicts with b's save: merges b's snapshot, adds a's unsaved hit
    for cache in (a, b, writer(store, embedder, clock, config)):
        cache.refresh()
        entry = cache.get(wrong)
        assert (entry.wrong_feedback, entry.right_feedback, entry.hits) == (1, 0, 2)
        assert cache.lookup("what is the capital of australia").reason == Reason.DISPUTED


class LandsThenFails(MemoryStore):
    """Its next conditional write lands, then reports failure: an fsync error after the
    rename, or an S3 PUT that timed out, was retried and lost its condition to itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_with: Exception | None = None

    def put_if(self, key, data, expected):
        version = super().put_if(key, data, expected)
        if self.fail_with is not None:
            failure, self.fail_with = self.fail_with, None
            raise failure
        return version


def _hit_and_dispute(cache: SemanticCache) -> int:
    kept = cache.insert("how tall is mount everest", "8849 m")
    cache.save()
    assert cache.lookup("how tall is mount everest").hit
    cache.feedback(kept, correct=False)
    return kept


@pytest.mark.parametrize(
    "failure",
    [OSError(5, "I/O error"), ConflictError("changed since it was read")],
    ids=["error", "conflict"],
)
def test_a_write_that_landed_but_failed_is_not_applied_twice(embedder, clock, config, failure):
    store = LandsThenFails()
    cache = writer(store, embedder, clock, config)
    kept = _hit_and_dispute(cache)
    gone = cache.insert("what is the capital of france", "Paris")
    store.fail_with = failure
    if isinstance(failure, OSError):
        with pytest.raises(OSError):
            cache.save()
    else:
        cache.save()  # merges the snapshot it wrote itself, then writes again
    cache.delete(gone)
    cache.save()
    for seen in (cache, writer(store, embedder, clock, config)):
        assert gone not in seen._entries
        entry = seen.get(kept)
        assert (entry.hits, entry.wrong_feedback) == (1, 1)


def test_a_landed_write_another_writer_built_on_is_not_applied_twice(embedder, clock, config):
    store = LandsThenFails()
    mine = writer(store, embedder, clock, config)
    kept = _hit_and_dispute(mine)
    gone = mine.insert("what is the capital of france", "Paris")
    store.fail_with = OSError(5, "I/O error")
    with pytest.raises(OSError):
        mine.save()
    other = writer(store, embedder, clock, config)  # reads what landed, adds to it
    other.insert("who painted the mona lisa", "Leonardo")
    other.save()
    mine.delete(gone)
    mine.save()  # conflicts with other's save, which holds the write that landed
    final = writer(store, embedder, clock, config)
    assert gone not in final._entries and len(final) == 2
    assert (final.get(kept).hits, final.get(kept).wrong_feedback) == (1, 1)


def test_a_restored_state_is_written_over_other_writers_saves(embedder, clock, config):
    store = MemoryStore()
    mine = writer(store, embedder, clock, config)
    kept = mine.insert("how tall is mount everest", "8849 m")
    backup = mine.to_bytes()
    mine.insert("what is the capital of france", "Paris")
    mine.save()
    other = writer(store, embedder, clock, config)
    other.insert("who painted the mona lisa", "Leonardo")
    other.save()
    mine.restore(backup)
    assert not mine.refresh()  # the restore is not undone by what others saved
    after = mine.insert("what is the boiling point of water", "100 C")
    mine.save()
    assert set(writer(store, embedder, clock, config)._entries) == {kept, after}
    other.insert("how far is the moon", "384,400 km")
    other.save()  # from here on, saves merge again
    assert len(writer(store, embedder, clock, config)) == 3


def test_a_snapshots_write_history_is_checked(embedder, clock, config):
    from edgecache import snapshot

    cache = writer(MemoryStore(), embedder, clock, config)
    cache.insert("how tall is mount everest", "8849 m")
    payload = snapshot.decode(cache.to_bytes(), None)
    for bad in ("abc", [1, 2], ["w"] * (snapshot.WRITES_KEPT + 1)):
        with pytest.raises(SnapshotError, match="write history"):
            cache.restore(snapshot.encode({**payload, "writes": bad}))
    del payload["writes"]  # written before writes were kept
    cache.restore(snapshot.encode(payload))
    assert len(cache) == 1


def test_registry_refreshes_caches_older_than_its_interval(embedder, clock, config):
    from edgecache.registry import CacheRegistry

    store = MemoryStore()
    other = CacheRegistry(store, config, embedder, clock=clock)
    mine = CacheRegistry(store, config, embedder, clock=clock, refresh_seconds=0)
    with mine.use("u") as cache:
        assert not cache.lookup("what is the capital of peru").hit
    with other.use("u", mutate=True) as cache:
        cache.insert("what is the capital of peru", "Lima")
    other.flush()
    with mine.use("u") as cache:
        assert cache.lookup("what is the capital of peru").hit


def test_a_refresh_that_fails_releases_the_cache(embedder, clock, config):
    from edgecache.registry import CacheRegistry
    from edgecache.stores import user_key

    store = MemoryStore()
    registry = CacheRegistry(store, config, embedder, clock=clock, max_loaded=1, refresh_seconds=0)
    with registry.use("u", mutate=True) as cache:
        cache.insert("what is the capital of peru", "Lima")
    registry.flush()
    store.put(user_key("u"), b"written by something else")
    for _ in range(3):
        with pytest.raises(SnapshotError), registry.use("u"):
            pass
    assert registry._pins == {}
    with registry.use("v", mutate=True) as cache:  # evicts u, held by nothing now
        cache.insert("what is the capital of chile", "Santiago")
    assert [c.user for c in registry.loaded()] == ["v"]


def test_clear_sets_aside_a_snapshot_damaged_after_the_user_loaded(embedder, clock, config):
    from edgecache.registry import CacheRegistry
    from edgecache.stores import user_key

    store, key = MemoryStore(), user_key("u")
    registry = CacheRegistry(store, config, embedder, clock=clock)
    with registry.use("u", mutate=True) as cache:
        cache.insert("what is the capital of peru", "Lima")
    registry.flush()
    store.put(key, b"damaged since")
    with registry.use("u", mutate=True) as cache:
        cache.insert("what is the capital of chile", "Santiago")
    with pytest.raises(SnapshotError):
        registry.flush()  # nothing to merge with: kept in memory, not written over
    assert registry.clear("u") == f"{key}.bad"
    assert store.get(f"{key}.bad") == b"damaged since"
    assert len(SemanticCache("u", store=store, config=config, embedder=embedder)) == 0
    assert registry.flush() == 0 and registry.clear("u") is None


def test_clear_never_sets_aside_a_snapshot_that_reads(embedder, clock, config):
    from edgecache.registry import CacheRegistry
    from edgecache.stores import user_key

    store, key = MemoryStore(), user_key("u")
    good = SemanticCache("u", store=store, config=config, embedder=embedder)
    good.insert("what is the capital of peru", "Lima")
    good.save()
    # As when another worker cleared the damage and saved a good snapshot in between.
    assert CacheRegistry(store, config, embedder)._set_aside("u", SnapshotError("was damaged")) is None
    assert (
        store.get(f"{key}.bad") is None
        and len(SemanticCache("u", store=store, config=config, embedder=embedder)) == 1
    )


class GatedStore(MemoryStore):
    """A MemoryStore whose writes wait at a gate: a save held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.writing, self.release = threading.Event(), threading.Event()
        self.gated = False

    def _wait(self) -> None:
        if self.gated:
            self.writing.set()
            assert self.release.wait(10)

    def put(self, key, data, expires_at=None):
        self._wait()
        super().put(key, data, expires_at)

    def put_if(self, key, data, expected):
        self._wait()
        return super().put_if(key, data, expected)


def test_an_entry_deleted_while_its_save_is_in_flight_stays_deleted(embedder, clock, config):
    store = GatedStore()
    a = writer(store, embedder, clock, config)
    a.save()
    doomed = a.insert("what is the capital of chile", "Santiago")
    store.gated = True
    saving = threading.Thread(target=a.save)
    saving.start()
    assert store.writing.wait(10)  # the snapshot being written holds `doomed`
    a.delete(doomed)
    store.gated = False
    store.release.set()
    saving.join()
    b = writer(store, embedder, clock, config)
    assert doomed in b._entries  # that snapshot, as written
    b.insert("who painted the mona lisa", "Leonardo")
    b.save()
    assert a.refresh()  # takes in b's snapshot, which still holds `doomed`
    assert doomed not in a._entries and not a.lookup("what is the capital of chile").hit
    a.save()
    assert doomed not in writer(store, embedder, clock, config)._entries


def test_saves_and_deletes_from_many_threads_lose_no_delete(tmp_path, embedder, clock, config):
    cache = writer(LocalFolderStore(tmp_path), embedder, clock, config)
    kept, deleted = [], []

    def work(t: int) -> None:
        for i in range(25):
            entry_id = cache.insert(f"thread {t} asks question {i} about widget {t * 100 + i}", "r")
            (deleted if i % 5 == 0 else kept).append(entry_id)
            if i % 5 == 0:
                cache.delete(entry_id)
            if i % 4 == 0:
                cache.save()

    errors = run_in_threads(work, [(t,) for t in range(8)])
    cache.save()
    assert not errors
    for fresh in (cache, writer(LocalFolderStore(tmp_path), embedder, clock, config)):
        assert set(fresh._entries) == set(kept)
