"""Many users' caches in one process: lazy loading, a bounded LRU, and write-back."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import snapshot
from .cache import COUNTERS, SemanticCache
from .calibration import OnlineCalibrator
from .config import CacheConfig
from .embedder import Embedder
from .errors import ConflictError, SnapshotError
from .load import LoadSignal
from .stores import MemoryStore, Store, VersionedStore, check_user, update_versioned, user_key

log = logging.getLogger("edgecache")

# Store key of the shared feedback statistics; user keys are 40 hex digits, so no clash.
CALIBRATION_KEY = "calibration"


class CacheRegistry:
    """Holds at most `max_loaded` users' caches; the least recently used is saved and dropped."""

    def __init__(
        self,
        store: Store,
        config: CacheConfig,
        embedder: Embedder,
        max_loaded: int = 256,
        clock: Callable[[], float] = time.time,
        *,
        bodies: Store | None = None,
        load: LoadSignal | None = None,
        refresh_seconds: float | None = None,
    ) -> None:
        self.store, self.config, self.embedder = store, config, embedder
        # Shared by every user's cache: one backend, one document store, and one set of
        # feedback statistics (every user's feedback tightens the category thresholds).
        self.bodies, self.load = bodies, load
        # Several processes serving the same users (Lambda containers, service workers):
        # a cache older than this re-reads the store before use, so one container's
        # inserts hit in the others. None: this process is the only writer.
        self.refresh_seconds = refresh_seconds
        self.calibrator = self._load_calibrator() if config.policy.false_hit_target is not None else None
        self.max_loaded = max_loaded
        self._clock = clock
        self._caches: OrderedDict[str, SemanticCache] = OrderedDict()
        self._dirty: set[str] = set()
        # Caches in use by a request are pinned: evicting one mid-insert could save it
        # before the insert lands and drop it after, losing the entry.
        self._pins: dict[str, int] = {}
        # Evicted caches until their save is done: a request for the user meanwhile takes
        # the cache back instead of loading a snapshot that lacks its unsaved changes.
        # Counted: the same cache can be taken back and evicted again while its first save
        # still runs, and it must stay findable until the last one is done.
        self._leaving: dict[str, tuple[SemanticCache, int]] = {}
        self._load_locks = [threading.Lock() for _ in range(64)]
        self._lock = threading.Lock()
        # Counters of caches this process no longer holds, per category: with the loaded
        # caches' own they make process totals that never go down when a user is evicted.
        self._retired: dict[str, Counter[str]] = {}

    @contextmanager
    def use(self, user: str, mutate: bool = False) -> Iterator[SemanticCache]:
        """The user's cache, pinned in memory for the block; marked for saving if mutate."""
        cache = self._get(user)
        try:
            yield cache
        finally:
            self._unpin(user, mutate)

    def _unpin(self, user: str, mutate: bool = False) -> None:
        with self._lock:
            if mutate:
                self._dirty.add(user)
            self._pins[user] -= 1
            if not self._pins[user]:
                del self._pins[user]
            evicted = self._overflow()
        self._save_all(evicted)

    def clear(self, user: str) -> str | None:
        """Empty the user's cache and save it. A stored snapshot that cannot be read (damaged,
        or written by another encoder), whether it stopped the user from loading or was
        written after the user loaded, is moved to "<key>.bad" ("<key>.bad.2" and on when that
        is taken), never deleted, and the user starts empty; returns that key, else None."""
        try:
            with self.use(user, mutate=True) as cache:
                cache.clear()
        except SnapshotError as exc:
            aside = self._set_aside(user, exc)
            with self.use(user, mutate=True) as cache:
                cache.clear()
            return aside
        try:
            self._save(user, cache)
            return None
        except SnapshotError as exc:  # what is stored now cannot be merged with
            aside = self._set_aside(user, exc)
            self._save(user, cache)
            return aside

    def _set_aside(self, user: str, why: SnapshotError) -> str | None:
        """Move the user's stored snapshot aside if it still cannot be read; its new key."""
        # One set-aside per user at a time in this process: a second clear racing the first
        # finds the damaged snapshot already moved and moves nothing.
        with self._load_lock(user):
            data = self.store.get(user_key(user))
            if data is None or self._readable(user, data):  # moved, or replaced by a good one
                return None
            empty = SemanticCache(user, config=self.config, embedder=self.embedder, bodies=self.bodies)
            aside = move_aside(self.store, user_key(user), data, empty.to_bytes())
        if aside is not None:
            log.warning("user snapshot unreadable (%s); kept as %s, the user starts empty", why, aside)
        return aside

    def _readable(self, user: str, data: bytes) -> bool:
        held = MemoryStore()
        held.put(user_key(user), data)
        try:
            SemanticCache(user, store=held, config=self.config, embedder=self.embedder, bodies=self.bodies)
        except SnapshotError:
            return False
        return True

    def _load_lock(self, user: str) -> threading.Lock:
        return self._load_locks[hash(user) % len(self._load_locks)]

    def _get(self, user: str) -> SemanticCache:
        check_user(user)
        cache = self._pin_held(user)
        if cache is None:
            # One load of a user at a time: a load begun before another request's copy of the
            # user was installed, changed, evicted and saved would install a stale snapshot.
            with self._load_lock(user):
                cache = self._pin_held(user)
                if cache is None:
                    # Reading a snapshot takes a while: not under the registry lock.
                    loaded = SemanticCache(
                        user,
                        store=self.store,
                        config=self.config,
                        embedder=self.embedder,
                        clock=self._clock,
                        bodies=self.bodies,
                        load=self.load,
                        calibrator=self.calibrator,
                    )
                    with self._lock:
                        self._caches[user] = loaded
                        self._pins[user] = self._pins.get(user, 0) + 1
                        evicted = self._overflow()
                    self._save_all(evicted)
                    return loaded
        stale = (
            self.refresh_seconds is not None and time.monotonic() - cache.synced_at >= self.refresh_seconds
        )
        if stale:
            try:
                cache.refresh()
            except BaseException:
                self._unpin(user)
                raise
        return cache

    def _pin_held(self, user: str) -> SemanticCache | None:
        """The user's cache if this process holds it (loaded, or evicted and still saving),
        pinned and made most recently used."""
        with self._lock:
            cache = self._caches.get(user)
            if cache is None and user in self._leaving:
                cache = self._caches[user] = self._leaving[user][0]
            if cache is not None:
                self._caches.move_to_end(user)
                self._pins[user] = self._pins.get(user, 0) + 1
            return cache

    def _overflow(self) -> list[tuple[str, SemanticCache]]:
        """Remove least recently used, unpinned caches beyond max_loaded (lock held)."""
        out = []
        for user in list(self._caches):
            if len(self._caches) - len(out) <= self.max_loaded:
                break
            if user not in self._pins:
                out.append((user, self._caches[user]))
        for user, cache in out:
            del self._caches[user]
            self._leaving[user] = (cache, self._leaving.get(user, (cache, 0))[1] + 1)
        return out

    def _save_all(self, caches: list[tuple[str, SemanticCache]]) -> None:
        for user, cache in caches:
            try:
                self._save(user, cache)
            except Exception:
                # Keep the unsaved cache loaded rather than lose its entries.
                with self._lock:
                    self._caches.setdefault(user, cache)
            finally:
                with self._lock:
                    saving = self._leaving[user][1] - 1
                    if saving:
                        self._leaving[user] = (cache, saving)
                    else:
                        del self._leaving[user]
                        if self._caches.get(user) is not cache:  # gone for good, not taken back
                            self._retire(cache)

    def _save(self, user: str, cache: SemanticCache) -> None:
        with self._lock:
            was_dirty = user in self._dirty
            self._dirty.discard(user)
        if not was_dirty:
            return
        try:
            cache.save()
        except Exception:
            with self._lock:
                self._dirty.add(user)
            log.exception("saving a cache snapshot failed; will retry on the next flush")
            raise

    def flush(self) -> int:
        """Save every cache changed since its last save; returns how many were written.

        A cache that fails to save stays dirty (retried on the next flush) and does not keep
        the others from being written; the first failure is raised once all were tried."""
        with self._lock:
            pending = [(u, self._caches[u]) for u in self._dirty if u in self._caches]
        written, failure = 0, None
        for user, cache in pending:
            try:
                self._save(user, cache)
                written += 1
            except Exception as exc:  # logged by _save
                failure = failure or exc
        if self.calibrator is not None and self.calibrator.has_unsaved():
            try:
                self._save_calibration(self.calibrator)
            except Exception as exc:  # its counts stay unsaved, for the next flush
                log.exception("saving the calibration statistics failed; will retry on the next flush")
                failure = failure or exc
        if failure is not None:
            raise failure
        return written

    def _load_calibrator(self) -> OnlineCalibrator:
        """The saved feedback statistics under the configured target, or fresh ones.

        Statistics from another encoder, or a damaged file, are set aside (renamed), never
        silently overwritten: they are thresholds in another similarity scale.
        """
        data = self.store.get(CALIBRATION_KEY)
        try:
            return self._calibration_from(data)
        except _UnusableStatistics as exc:
            self._set_statistics_aside(exc)
        return self._calibration_from(None)

    def _save_calibration(self, calibrator: OnlineCalibrator) -> None:
        """Add what this process counted to the stored statistics, which every process serving
        these users adds to: written over, the others' feedback would be lost. This process
        then takes in theirs."""
        counted = calibrator.take_unsaved()

        def add_ours(data: bytes | None) -> bytes:
            return self._encode_calibration(data, counted)

        try:
            try:
                written = self._update(add_ours)
            except _UnusableStatistics as exc:
                self._set_statistics_aside(exc)
                written = self._update(add_ours)
        except BaseException:
            calibrator.add_unsaved(counted)
            raise
        calibrator.adopt(snapshot.decode(written, self.embedder.fingerprint)["calibration"])

    def _update(self, change: Callable[[bytes | None], bytes]) -> bytes:
        if isinstance(self.store, VersionedStore):
            return update_versioned(self.store, CALIBRATION_KEY, change)
        written = change(self.store.get(CALIBRATION_KEY))
        self.store.put(CALIBRATION_KEY, written)
        return written

    def _encode_calibration(self, data: bytes | None, counted: dict | None = None) -> bytes:
        """The stored statistics `data` (fresh ones for None) with `counted` added, as stored."""
        stored = self._calibration_from(data)
        if counted:
            stored.add_counts(counted)
        return snapshot.encode({"fingerprint": self.embedder.fingerprint, "calibration": stored.to_dict()})

    def _calibration_from(self, data: bytes | None) -> OnlineCalibrator:
        """Stored statistics under this configuration's settings (fresh ones for None)."""
        settings = self.config.policy.calibration_settings()
        if data is None:
            return OnlineCalibrator(**settings)
        try:
            saved = snapshot.decode(data, self.embedder.fingerprint)["calibration"]
            saved["settings"] |= settings
            return OnlineCalibrator.from_dict(saved)
        except (SnapshotError, ValueError, KeyError, TypeError) as exc:
            raise _UnusableStatistics(data, exc) from exc

    def _set_statistics_aside(self, unusable: _UnusableStatistics) -> None:
        aside = move_aside(self.store, CALIBRATION_KEY, unusable.data, self._encode_calibration(None))
        if aside is not None:
            log.warning("calibration statistics unusable (%s); kept as %s", unusable.why, aside)

    def _retire(self, cache: SemanticCache) -> None:
        _add_counters(self._retired, cache)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per category, the counters (`cache.COUNTERS`) of every cache this process has
        held since it started, loaded or not: they only ever go up."""
        with self._lock:
            # A cache taken back while its eviction still saves is in both: count it once.
            caches = {id(c): c for c in [*self._caches.values(), *(c for c, _ in self._leaving.values())]}
            out = {k: Counter(v) for k, v in self._retired.items()}
        for cache in caches.values():
            _add_counters(out, cache)
        return {k: {c: v[c] for c in COUNTERS} for k, v in out.items()}

    def loaded(self) -> list[SemanticCache]:
        with self._lock:
            return list(self._caches.values())


def _add_counters(totals: dict[str, Counter[str]], cache: SemanticCache) -> None:
    """Add the cache's per-category counters (not its gauges) to `totals`."""
    for category, counts in cache.stats().categories.items():
        totals.setdefault(category, Counter()).update({c: counts[c] for c in COUNTERS})


class _UnusableStatistics(Exception):
    """Stored calibration statistics that cannot be read here (damaged, another encoder's)."""

    def __init__(self, data: bytes, why: Exception) -> None:
        super().__init__(str(why))
        self.data, self.why = data, why


def move_aside(store: Store, key: str, data: bytes, empty: bytes) -> str | None:
    """Keep `data`, stored under `key` and unusable, as the first free "<key>.bad[.n]" and put
    `empty` in its place; that key. None when `key` no longer holds `data`: another process
    replaced or moved it meanwhile, and nothing is touched.

    Where the store has conditional writes, the name is claimed by a create-only write, so
    another process doing the same cannot overwrite what this one kept, and `key` is replaced
    only while it still holds `data`: a good snapshot another process writes between the
    check and the replacement is kept (a plain delete would remove it)."""
    versioned = isinstance(store, VersionedStore)
    current = store.get_versioned(key) if versioned else (store.get(key), None)
    if current is None or current[0] != data:
        return None
    n = 1
    while True:
        aside = f"{key}.bad" if n == 1 else f"{key}.bad.{n}"
        n += 1
        if versioned:
            try:
                store.put_if(aside, data, expected=None)
            except ConflictError:
                continue
            break
        if store.get(aside) is None:
            store.put(aside, data)
            break
    if not versioned:
        store.put(key, empty)
        return aside
    try:
        store.put_if(key, empty, expected=current[1])
    except ConflictError:
        store.delete(aside)  # claimed by this call, read by no one
        return None
    return aside
