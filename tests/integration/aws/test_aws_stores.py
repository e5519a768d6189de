"""S3Store and DynamoDocumentStore against a real HTTP endpoint (moto's server on 127.0.0.1).

boto3 talks to it exactly as to AWS: signed requests, retries, conditional headers and
condition expressions are all evaluated by the server, not by a mock of our classes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time

import pytest
from botocore.stub import Stubber

from edgecache import CacheConfig, SemanticCache
from edgecache.aws_stores import (
    MAX_ITEM_BYTES,
    DynamoDocumentStore,
    S3Store,
    StoreAccessDeniedError,
    StoreNotFoundError,
    create_resources,
    make_client,
)
from edgecache.errors import ConflictError, EdgecacheError, InvalidInputError
from edgecache.stores import Store, VersionedStore, update_versioned, user_key
from tests.helpers import HashingEmbedder

pytestmark = pytest.mark.integration


def raw_item(aws, key: str) -> dict | None:
    return aws.dynamodb.get_item(TableName=aws.table, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")


def both(s3_store: S3Store, doc_store: DynamoDocumentStore) -> list[VersionedStore]:
    return [s3_store, doc_store]


# -- the Store protocol ------------------------------------------------------------------


def test_both_implement_the_store_and_versioned_store_protocols(s3_store, doc_store):
    for store in both(s3_store, doc_store):
        assert isinstance(store, Store) and isinstance(store, VersionedStore)


def test_round_trip_delete_and_missing_key(s3_store, doc_store, fresh_key):
    payload = bytes(range(256)) * 40  # binary, not just text
    for store in both(s3_store, doc_store):
        assert store.get(fresh_key) is None
        assert store.get_versioned(fresh_key) is None
        store.put(fresh_key, payload)
        assert store.get(fresh_key) == payload
        store.put(fresh_key, b"second")
        assert store.get(fresh_key) == b"second"
        store.delete(fresh_key)
        assert store.get(fresh_key) is None
        store.delete(fresh_key)  # deleting twice is fine


def test_s3_objects_live_under_the_prefix_and_are_encrypted(aws, s3_store, fresh_key):
    s3_store.put(fresh_key, b"snapshot")
    head = aws.s3.head_object(Bucket=aws.bucket, Key=s3_store.prefix + fresh_key)
    assert head["ServerSideEncryption"] == "AES256"
    s3_store.put_if(fresh_key, b"snapshot 2", head["ETag"])
    head = aws.s3.head_object(Bucket=aws.bucket, Key=s3_store.prefix + fresh_key)
    assert head["ServerSideEncryption"] == "AES256"  # conditional writes are encrypted too


def test_s3_kms_encryption_names_the_key(aws, fresh_key):
    store = S3Store(aws.bucket, prefix="kms/", client=aws.s3, sse="aws:kms", kms_key_id="alias/edgecache")
    store.put(fresh_key, b"snapshot")
    head = aws.s3.head_object(Bucket=aws.bucket, Key="kms/" + fresh_key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/edgecache")
    assert store.get(fresh_key) == b"snapshot"


def test_keys_of_two_users_never_collide(aws, s3_store, doc_store):
    alice, bob = user_key("alice@example.com"), user_key("bob@example.com")
    assert alice != bob
    for store in both(s3_store, doc_store):
        store.put(alice, b"alice's snapshot")
        store.put(bob, b"bob's snapshot")
        store.put(f"{alice}.1", b"alice's body 1")
        store.put(f"{bob}.1", b"bob's body 1")
        assert store.get(alice) == b"alice's snapshot" and store.get(bob) == b"bob's snapshot"
        assert store.get(f"{alice}.1") == b"alice's body 1" and store.get(f"{bob}.1") == b"bob's body 1"
        store.delete(alice)
        assert store.get(alice) is None and store.get(bob) == b"bob's snapshot"
    listed = aws.s3.list_objects_v2(Bucket=aws.bucket, Prefix=s3_store.prefix)["Contents"]
    names = sorted(o["Key"] for o in listed)
    assert names == sorted(s3_store.prefix + k for k in (bob, f"{alice}.1", f"{bob}.1"))
    assert not any("alice" in n or "bob" in n for n in names)  # hashes only, never the user id


def test_two_prefixes_in_one_bucket_are_separate(aws, fresh_key):
    one = S3Store(aws.bucket, prefix="app-one/", client=aws.s3)
    two = S3Store(aws.bucket, prefix="app-two/", client=aws.s3)
    one.put(fresh_key, b"one")
    assert two.get(fresh_key) is None


def test_bad_keys_and_data_are_refused_before_any_call(s3_store, doc_store):
    for store in both(s3_store, doc_store):
        for key in ("", "../escape", "a/b", "x" * 201, "user id with spaces"):
            with pytest.raises(InvalidInputError):
                store.put(key, b"x")
        with pytest.raises(InvalidInputError):
            store.put("k", "not bytes")  # type: ignore[arg-type]


# -- optimistic concurrency --------------------------------------------------------------


def test_put_if_chains_versions_and_refuses_stale_ones(s3_store, doc_store, fresh_key):
    for store in both(s3_store, doc_store):
        first = store.put_if(fresh_key, b"v1", None)  # create: must not exist yet
        assert store.get_versioned(fresh_key) == (b"v1", first)
        with pytest.raises(ConflictError):
            store.put_if(fresh_key, b"again", None)  # exists now
        second = store.put_if(fresh_key, b"v2", first)
        assert second != first
        with pytest.raises(ConflictError):
            store.put_if(fresh_key, b"stale", first)  # first is no longer current
        store.put(fresh_key, b"v3")  # an unconditional write also moves the version
        with pytest.raises(ConflictError):
            store.put_if(fresh_key, b"stale", second)
        assert store.get(fresh_key) == b"v3"
        _, current = store.get_versioned(fresh_key)
        store.delete(fresh_key)
        with pytest.raises(ConflictError):
            store.put_if(fresh_key, b"resurrected", current)  # deleted since it was read
        assert store.get(fresh_key) is None


def test_dynamodb_versions_never_repeat_after_a_delete(doc_store, fresh_key):
    """A token from before a delete must not match the re-created item (no ABA)."""
    old = doc_store.put_if(fresh_key, b"a", None)
    doc_store.delete(fresh_key)
    new = doc_store.put_if(fresh_key, b"b", None)
    assert new != old
    with pytest.raises(ConflictError):
        doc_store.put_if(fresh_key, b"stale", old)


@pytest.mark.parametrize("which", ["s3", "dynamodb"])
def test_concurrent_read_modify_write_loses_nothing(which, s3_store, doc_store, fresh_key):
    """8 threads x 25 increments of one counter with get_versioned + put_if, retried on conflict."""
    store = s3_store if which == "s3" else doc_store
    threads, increments = 8, 25
    attempts = 0
    count_lock = threading.Lock()
    errors: list[BaseException] = []

    def increment(current: bytes | None) -> bytes:
        nonlocal attempts
        with count_lock:
            attempts += 1
        return str(int(current or b"0") + 1).encode()

    def worker() -> None:
        try:
            for _ in range(increments):
                # moto serves one request at a time, ~10 ms each, so a read-modify-write
                # under 8 clients takes ~10x longer than on AWS: back off on that scale.
                update_versioned(store, fresh_key, increment, base_delay=0.05, max_delay=1.0)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not errors, errors
    assert store.get(fresh_key) == str(threads * increments).encode()  # nothing lost
    assert attempts > threads * increments  # the writers really did collide and retry
    print(f"{which}: {attempts} attempts for 200 increments in {time.perf_counter() - started:.1f} s")


# -- DynamoDB TTL and size ---------------------------------------------------------------


def test_ttl_attribute_is_written_and_enabled(aws, doc_store, fresh_key):
    ttl = aws.dynamodb.describe_time_to_live(TableName=aws.table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    expires = time.time() + 3600.5
    doc_store.put(fresh_key, b"body", expires_at=expires)
    item = raw_item(aws, fresh_key)
    assert item["expires_at"] == {"N": str(math.ceil(expires))}
    assert item["body"] == {"B": b"body"}
    doc_store.put(fresh_key, b"body")  # a plain put replaces the item: no TTL left behind
    assert "expires_at" not in raw_item(aws, fresh_key)
    token = doc_store.put_if(fresh_key, b"body", doc_store.get_versioned(fresh_key)[1], expires_at=expires)
    assert raw_item(aws, fresh_key)["expires_at"] == {"N": str(math.ceil(expires))}
    assert doc_store.get_versioned(fresh_key) == (b"body", token)


def test_expired_item_reads_as_absent_before_dynamodb_removes_it(aws, fresh_key):
    now = [1_000_000.0]
    store = DynamoDocumentStore(aws.table, client=aws.dynamodb, clock=lambda: now[0])
    token = store.put_if(fresh_key, b"fresh", None, expires_at=now[0] + 60)
    assert store.get(fresh_key) == b"fresh"
    now[0] += 61
    assert store.get(fresh_key) is None and store.get_versioned(fresh_key) is None
    assert raw_item(aws, fresh_key) is not None  # still physically there
    with pytest.raises(ConflictError):
        store.put_if(fresh_key, b"late", token)  # expired since it was read
    assert store.put_if(fresh_key, b"new", None) != token  # absent, so creating it works
    assert store.get(fresh_key) == b"new"


def test_default_ttl_applies_when_the_caller_gives_none(aws, fresh_key):
    store = DynamoDocumentStore(
        aws.table, client=aws.dynamodb, default_ttl_seconds=600, clock=lambda: 2_000_000.0
    )
    store.put(fresh_key, b"body")  # what SemanticCache calls: put(key, data)
    assert raw_item(aws, fresh_key)["expires_at"] == {"N": "2000600"}


def test_oversized_item_is_refused_with_nothing_written(aws, doc_store):
    key = "k" * 200  # the longest key: the tightest room for the body
    with pytest.raises(InvalidInputError, match="400000-byte item limit"):
        doc_store.put(key, b"x" * (doc_store.max_body_bytes + 1))
    with pytest.raises(InvalidInputError):
        doc_store.put_if(key, b"x" * MAX_ITEM_BYTES, None)
    assert raw_item(aws, key) is None
    # The largest accepted body really fits in one item on the server.
    doc_store.put(key, b"x" * doc_store.max_body_bytes, expires_at=time.time() + 60)
    assert len(doc_store.get(key)) == doc_store.max_body_bytes
    doc_store.delete(key)


# -- errors ------------------------------------------------------------------------------


def test_missing_bucket_and_table_raise_clear_errors(aws, fresh_key):
    s3 = S3Store("edgecache-no-such-bucket", client=aws.s3)
    with pytest.raises(StoreNotFoundError, match=rf"s3://edgecache-no-such-bucket/edgecache/{fresh_key}"):
        s3.get(fresh_key)
    with pytest.raises(StoreNotFoundError, match="NoSuchBucket"):
        s3.put(fresh_key, b"x")
    table = DynamoDocumentStore("edgecache-no-such-table", client=aws.dynamodb)
    with pytest.raises(StoreNotFoundError, match=rf"'edgecache-no-such-table' key '{fresh_key}'"):
        table.get(fresh_key)
    with pytest.raises(StoreNotFoundError):
        table.put_if(fresh_key, b"x", None)


def test_access_denied_is_wrapped_without_the_aws_message(aws_endpoint, fresh_key):
    """AWS's message names the caller's principal; ours names bucket, key and code only."""
    client = make_client("s3", endpoint_url=aws_endpoint)
    store = S3Store("edgecache-test-snapshots", client=client)
    secret_message = "User: arn:aws:sts::123456789012:assumed-role/edgecache-prod/fn is not authorized"
    with Stubber(client) as stub:
        stub.add_client_error("get_object", "AccessDenied", secret_message, http_status_code=403)
        with pytest.raises(StoreAccessDeniedError) as info:
            store.get(fresh_key)
    text = str(info.value)
    assert "edgecache-test-snapshots" in text and fresh_key in text and "AccessDenied" in text
    assert "arn:aws" not in text and "123456789012" not in text
    assert isinstance(info.value, EdgecacheError) and isinstance(info.value, PermissionError)


def test_unreachable_endpoint_is_a_store_error_not_a_hang(aws_env, fresh_key):
    client = make_client("dynamodb", endpoint_url="http://127.0.0.1:9")  # discard port: refused
    started = time.perf_counter()
    with pytest.raises(EdgecacheError, match="EndpointConnectionError"):
        DynamoDocumentStore("edgecache-test-bodies", client=client).get(fresh_key)
    assert time.perf_counter() - started < 20


def test_create_resources_is_idempotent_and_locks_the_bucket_down(aws):
    create_resources(aws.s3, aws.dynamodb, aws.bucket, aws.table)  # second call: no error
    block = aws.s3.get_public_access_block(Bucket=aws.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rules = aws.s3.get_bucket_encryption(Bucket=aws.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    table = aws.dynamodb.describe_table(TableName=aws.table)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]


# -- the cache on AWS --------------------------------------------------------------------


@pytest.fixture
def open_cache(aws, config: CacheConfig):
    """Opens a user's cache as a new Lambda instance would: fresh clients and stores."""
    embedder = HashingEmbedder()
    prefix = f"cache-{os.urandom(6).hex()}/"

    def open_(user: str) -> SemanticCache:
        return SemanticCache(
            user,
            store=S3Store(aws.bucket, prefix=prefix, client=make_client("s3", endpoint_url=aws.endpoint)),
            bodies=DynamoDocumentStore(aws.table, client=make_client("dynamodb", endpoint_url=aws.endpoint)),
            config=config,
            embedder=embedder,
        )

    open_.prefix = prefix
    return open_


def test_semantic_cache_snapshot_on_s3_bodies_in_dynamodb(aws, open_cache):
    prefix = open_cache.prefix
    cache = open_cache("alice@example.com")
    entry_id = cache.insert("How do I reset my password?", "Open Settings > Security > Reset password.")
    cache.save()

    key = user_key("alice@example.com")
    snapshot = aws.s3.get_object(Bucket=aws.bucket, Key=prefix + key)
    assert snapshot["ServerSideEncryption"] == "AES256"
    blob = snapshot["Body"].read()
    assert b"Reset password" not in blob and b"alice" not in blob  # the body lives in DynamoDB
    assert raw_item(aws, f"{key}.{entry_id}")["body"] == {"B": b"Open Settings > Security > Reset password."}

    reloaded = open_cache("alice@example.com")
    assert len(reloaded) == 1
    hit = reloaded.lookup("How do I reset my password?")
    assert hit.hit and hit.entry_id == entry_id
    assert hit.response == "Open Settings > Security > Reset password."
    assert open_cache("bob@example.com").lookup("How do I reset my password?").reason == "empty"

    reloaded.delete(entry_id)  # the body goes with the entry
    assert raw_item(aws, f"{key}.{entry_id}") is None


def test_two_instances_saving_one_users_cache_lose_no_insert(open_cache):
    """Two Lambda instances open the same user's cache, insert, and save one after the other:
    the second save's conditional write fails on S3, it merges the first one's snapshot and
    saves again, so the next instance sees both entries."""
    first, second = open_cache("carol"), open_cache("carol")
    a = first.insert("How do I export my contacts?", "Settings > Contacts > Export.")
    b = second.insert("Which port does SSH use?", "Port 22.")
    first.save()
    second.save()
    third = open_cache("carol")
    assert len(third) == 2
    assert third.lookup("How do I export my contacts?").entry_id == a
    assert third.lookup("Which port does SSH use?").response == "Port 22."
    assert third.lookup("Which port does SSH use?").entry_id == b


# -- packaging ---------------------------------------------------------------------------


def test_core_import_needs_no_boto3_and_the_aws_module_says_how_to_get_it():
    code = (
        "import sys\n"
        "sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "import edgecache\n"
        "from edgecache import SemanticCache, LocalFolderStore\n"
        "try:\n"
        "    import edgecache.aws_stores\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'edgecache[aws]'" in out.stdout
