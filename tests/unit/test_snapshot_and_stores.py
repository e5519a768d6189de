import os

import pytest

from edgecache import LocalFolderStore, MemoryStore, SnapshotError
from edgecache import snapshot as snap
from edgecache.errors import InvalidInputError
from edgecache.stores import user_key


def test_round_trip():
    data = snap.encode({"fingerprint": "fp", "entries": [1, 2]})
    assert snap.decode(data, "fp")["entries"] == [1, 2]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: b"XXXXXXXX" + d[8:], "magic"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
        (lambda d: d[:50] + bytes([d[50] ^ 0xFF]) + d[51:], "checksum"),
    ],
)
def test_corruption_is_detected(mutate, message):
    data = snap.encode({"fingerprint": "fp", "entries": list(range(20))})
    with pytest.raises(SnapshotError, match=message):
        snap.decode(mutate(data), "fp")


def test_fingerprint_mismatch():
    with pytest.raises(SnapshotError, match="another encoder"):
        snap.decode(snap.encode({"fingerprint": "a"}), "b")


def test_user_keys_are_hashes_that_do_not_collide():
    assert user_key("alice") != user_key("alice ")
    assert "alice" not in user_key("alice")


@pytest.mark.parametrize("store_factory", [MemoryStore, lambda: None])
def test_store_contract(tmp_path, store_factory):
    store = store_factory() or LocalFolderStore(tmp_path)
    assert store.get("k1") is None
    store.put("k1", b"one")
    store.put("k1", b"two")
    assert store.get("k1") == b"two"
    store.delete("k1")
    store.delete("k1")
    assert store.get("k1") is None
    for bad in ("../escape", "", "a/b", "..", ".", ".report.tmp", ".key.lock"):
        with pytest.raises(InvalidInputError):
            store.put(bad, b"x")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    store = LocalFolderStore(tmp_path)
    store.put("user", b"good snapshot")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put("user", b"half written")
    monkeypatch.undo()
    assert store.get("user") == b"good snapshot"
    assert [p.name for p in tmp_path.iterdir()] == ["user"]  # no temp file left behind


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_take_the_mode_the_umask_gives(tmp_path, umask, mode):
    # Workers sharing a folder under other Unix users of one group must read each other's
    # snapshots; a private temp file renamed into place used to make every snapshot 0600.
    old = os.umask(umask)
    try:
        store = LocalFolderStore(tmp_path)
        store.put("k", b"one")
        store.put_if("k", b"two", store.get_versioned("k")[1])
    finally:
        os.umask(old)
    assert (tmp_path / "k").stat().st_mode & 0o777 == mode
    assert store.get("k") == b"two"


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    import time

    from edgecache.stores import STALE_TEMP_SECONDS

    store = LocalFolderStore(tmp_path)
    store.put("k", b"kept")
    stale, fresh = tmp_path / ".k.dead.tmp", tmp_path / ".k.live.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half a snapshot")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    LocalFolderStore(tmp_path)
    assert not stale.exists() and fresh.exists() and store.get("k") == b"kept"


def _index_bytes(n: int, dtype: str = "i8", removed: int = 0) -> bytes:
    import numpy as np

    from edgecache.vectorindex import VectorIndex

    index = VectorIndex(16, dtype, 8)
    if n:
        index.add(np.arange(n, dtype=np.uint64), np.random.default_rng(n).standard_normal((n, 16)))
    for key in range(removed):
        index.remove(key)
    return index.to_bytes()


@pytest.mark.parametrize(
    ("n", "dtype", "removed"), [(0, "i8", 0), (1, "i8", 0), (300, "i8", 40), (300, "f16", 0)]
)
def test_sound_index_graphs_pass_the_check(n, dtype, removed):
    from edgecache.vectorindex import check_graph

    check_graph(_index_bytes(n, dtype, removed))


def test_a_damaged_index_graph_is_refused_before_usearch_reads_it():
    import struct

    from edgecache.vectorindex import check_graph

    data = bytearray(_index_bytes(300))
    # The first node's first neighbour: after the vectors, the metadata, the header and levels.
    first = 8 + 300 * 16 + 64 + 40 + 2 * 300
    assert struct.unpack_from("<I", data, first + 10)[0] > 0  # it has neighbours
    struct.pack_into("<I", data, first + 14, 10**6)
    with pytest.raises(SnapshotError, match="outside the index"):
        check_graph(bytes(data))
    struct.pack_into("<I", data, first + 10, 17)  # more neighbours than level 0 holds (16)
    with pytest.raises(SnapshotError, match="more neighbours"):
        check_graph(bytes(data))
    with pytest.raises(SnapshotError, match="length"):
        check_graph(_index_bytes(300)[:-4])


def test_an_index_of_another_metric_is_refused():
    import numpy as np

    from edgecache._native import Index, MetricKind
    from edgecache.vectorindex import check_graph

    other = Index(ndim=16, metric=MetricKind.L2sq, dtype="i8", connectivity=8)
    other.add(np.arange(10, dtype=np.uint64), np.random.default_rng(0).standard_normal((10, 16)))
    with pytest.raises(SnapshotError, match="cosine"):
        check_graph(bytes(other.save()))


def test_random_damage_with_a_recomputed_checksum_never_crashes_the_process():
    """Bit flips in a snapshot's index bytes, the checksum recomputed (a faulty writer): each
    snapshot is refused or serves lookups. Run apart, so a crash fails this test only."""
    import subprocess
    import sys

    code = """
import random
from edgecache import MemoryStore, SemanticCache, SnapshotError, snapshot
from tests.helpers import HashingEmbedder
embedder = HashingEmbedder()
cache = SemanticCache("u", store=MemoryStore(), embedder=embedder)
for i in range(60):
    cache.insert(f"question number {i} on topic {i * 7}", f"answer {i}")
for entry_id in list(cache._entries)[::9]:
    cache.delete(entry_id)
payload = snapshot.decode(cache.to_bytes(), None)
for trial in range(300):
    rng, damaged = random.Random(trial), bytearray(payload["index"])
    for _ in range(rng.choice([1, 2, 8, 32])):
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
    other = SemanticCache("u", store=MemoryStore(), embedder=embedder)
    try:
        other.restore(snapshot.encode({**payload, "index": bytes(damaged)}))
    except SnapshotError:
        continue
    for i in range(60):
        other.lookup(f"question number {i} on topic {i * 7}")
print("done")
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr[-2000:]
