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
