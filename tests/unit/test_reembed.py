import pytest

from edgecache import LocalFolderStore, MemoryStore, SemanticCache, SnapshotError, snapshot
from edgecache.cli import main
from edgecache.errors import ConflictError, InvalidInputError
from edgecache.reembed import reembed_snapshot
from edgecache.stores import user_key
from tests.helpers import HashingEmbedder


@pytest.fixture
def old_snapshot(make_cache):
    """A saved cache with a standalone entry (hit once, feedback given) and a follow-up."""
    store = MemoryStore()
    cache = make_cache(store=store)
    cache.insert("how do I cook rice", "boil it")
    cache.insert("and its population", "68 million", context=["tell me about france"])
    hit = cache.lookup("how do I cook rice")
    cache.feedback(hit.entry_id, correct=True)
    cache.save()
    return cache, store.get(cache.key)


def test_a_snapshot_encoded_again_serves_under_the_new_encoder(old_snapshot, config, clock):
    cache, data = old_snapshot
    new = HashingEmbedder(dim=128, fingerprint="new-build")
    with pytest.raises(SnapshotError, match="reembed"):
        SemanticCache("alice", store=MemoryStore(), config=config, embedder=new).restore(data)

    result = reembed_snapshot(data, config, new)
    assert (result.entries, result.dropped, result.clipped_contexts) == (2, [], 0)
    assert result.previous_fingerprint == cache.embedder.fingerprint
    upgraded = SemanticCache("alice", store=MemoryStore(), config=config, embedder=new, clock=clock)
    upgraded.restore(result.data)

    standalone = upgraded.lookup("how do I cook rice")
    assert standalone.hit and standalone.response == "boil it"
    assert upgraded.lookup("and its population", context=["tell me about france"]).response == "68 million"
    assert not upgraded.lookup("and its population", context=["tell me about japan"]).hit
    before, after = cache.get(standalone.entry_id), upgraded.get(standalone.entry_id)
    assert (after.hits, after.right_feedback, after.category) == (before.hits + 1, 1, before.category)
    # i8 vectors of 128 instead of 256 dimensions; f16 context vectors likewise.
    assert after.size == before.size - 128
    followup = next(e for e in cache._entries.values() if e.context_vector is not None)
    assert upgraded.get(followup.id).size == followup.size - 128 - 2 * 128


def test_a_current_snapshot_is_left_alone(old_snapshot, config):
    cache, data = old_snapshot
    assert reembed_snapshot(data, config, cache.embedder) is None


def test_followups_without_their_context_text_are_left_out(old_snapshot, config):
    cache, data = old_snapshot
    payload = snapshot.decode(data, None)
    fields = payload["entry_fields"]
    for row in payload["entries"]:  # as written before entries kept their context's text
        row[fields.index("context")] = None
    payload.pop("version")
    result = reembed_snapshot(snapshot.encode(payload), config, HashingEmbedder(fingerprint="new"))
    followup = next(e.id for e in cache._entries.values() if e.context_vector is not None)
    assert (result.entries, result.dropped) == (1, [followup])


def test_a_damaged_snapshot_is_refused_before_any_encoding(old_snapshot, config):
    _, data = old_snapshot
    new = HashingEmbedder(fingerprint="new")
    with pytest.raises(SnapshotError, match="checksum"):
        reembed_snapshot(data[:-1] + bytes([data[-1] ^ 1]), config, new)
    assert new.calls == 0


def test_cli_encodes_a_folder_again_and_keeps_each_original(
    old_snapshot, config, clock, tmp_path, monkeypatch, capsys
):
    cache, data = old_snapshot
    store = LocalFolderStore(tmp_path)
    store.put(cache.key, data)
    store.put(user_key("bob"), b"not a snapshot")
    store.put("notes.txt", b"not ours")
    new = HashingEmbedder(dim=256, fingerprint="new-build-256")
    monkeypatch.setattr("edgecache.reembed.shared_embedder", lambda *a, **k: new)

    assert main(["snapshot", "reembed", "--store", str(tmp_path)]) == 1  # bob's is unreadable
    out = capsys.readouterr().out
    assert "2 entries encoded again" in out and "unreadable" in out and "1 left as they were" in out
    aside = f"{cache.key}.pre-{cache.embedder.fingerprint[:12]}"
    assert store.get(aside) == data
    assert store.get(user_key("bob")) == b"not a snapshot"
    assert store.get("notes.txt") == b"not ours"
    assert (
        SemanticCache("alice", store=store, config=config, embedder=new, clock=clock)
        .lookup("how do I cook rice")
        .hit
    )

    main(["snapshot", "reembed", "--store", str(tmp_path)])
    assert f"{cache.key[:12]}: current" in capsys.readouterr().out


def test_cli_names_a_missing_folder(tmp_path, capsys):
    assert main(["snapshot", "reembed", "--store", str(tmp_path / "missing")]) == 2
    assert "no snapshot folder" in capsys.readouterr().err


def test_cli_leaves_a_snapshot_written_meanwhile(old_snapshot, tmp_path, monkeypatch, capsys):
    cache, data = old_snapshot
    LocalFolderStore(tmp_path).put(cache.key, data)
    new = HashingEmbedder(fingerprint="another-build")
    monkeypatch.setattr("edgecache.reembed.shared_embedder", lambda *a, **k: new)

    def raced(self, key, new, expected):  # another process saved this user after it was read
        raise ConflictError(f"{key} changed since it was read")

    monkeypatch.setattr(LocalFolderStore, "put_if", raced)
    assert main(["snapshot", "reembed", "--store", str(tmp_path)]) == 1
    assert "run again" in capsys.readouterr().out
    assert (tmp_path / cache.key).read_bytes() == data


def test_cli_reports_a_snapshot_it_cannot_encode_and_goes_on(old_snapshot, tmp_path, monkeypatch, capsys):
    cache, data = old_snapshot
    store = LocalFolderStore(tmp_path)
    store.put(cache.key, data)
    store.put(user_key("bob"), data.replace(b"alice", b"bob00"))  # damaged
    new = HashingEmbedder(fingerprint="another-build")
    monkeypatch.setattr("edgecache.reembed.shared_embedder", lambda *a, **k: new)
    real = reembed_snapshot

    def refusing(data, *a, **k):
        if data == store.get(cache.key):
            raise InvalidInputError("the embedder refused a text")
        return real(data, *a, **k)

    monkeypatch.setattr("edgecache.reembed.reembed_snapshot", refusing)
    assert main(["snapshot", "reembed", "--store", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "cannot be re-encoded: the embedder refused a text" in out and "2 left as they were" in out


def test_a_stored_query_insert_would_now_refuse_is_encoded_as_written(old_snapshot, config):
    _, data = old_snapshot
    payload = snapshot.decode(data, None)
    at = payload["entry_fields"].index("query")
    next(r for r in payload["entries"] if r[at] == "how do I cook rice")[at] = (
        "\u3164"  # blank, refused today
    )
    result = reembed_snapshot(snapshot.encode(payload), config, HashingEmbedder(fingerprint="another-build"))
    assert result is not None and result.entries == 2
