"""AWS stores: snapshots on S3, response bodies in DynamoDB (`pip install 'edgecache[aws]'`).

Why two services. A snapshot (index + metadata) is one object per user, read once per cold
start and rewritten on flush: S3 is the cheap, durable home for that. Response bodies in
the hybrid layout are many small documents, each read alone on a hit and best expired by
the backend itself: DynamoDB items with a TTL attribute fit that.

Both stores implement the `Store` protocol (`get`/`put`/`delete` of bytes by key) and add
optimistic concurrency (`get_versioned` / `put_if`, the `stores.VersionedStore` protocol):
several Lambda instances may serve the same user, or update one shared record, at the same
time, and a plain `put` would let the last writer silently drop the others' changes.
`SemanticCache.save` uses the pair (merge and retry on ConflictError); `stores.update_versioned`
is the same read-modify-write loop for any other shared record.

Keys are already hashes (`stores.user_key`, body keys `f"{user_key}.{entry_id}"`), so no
user id ever reaches a bucket key or a table item. Nothing here logs or raises data, and
error messages name the bucket/table, the key and the AWS error code only: the service
message from AWS (which can name the caller's IAM principal) stays in the chained cause.

This module needs boto3; `import edgecache` does not, and never imports this module.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "edgecache.aws_stores needs boto3; install it with: pip install 'edgecache[aws]'"
    ) from exc

from .errors import ConfigError, ConflictError, EdgecacheError, InvalidInputError
from .numbers import is_positive
from .stores import VersionedStore, _check_key

__all__ = [
    "DynamoDocumentStore",
    "S3Store",
    "StoreAccessDeniedError",
    "StoreError",
    "StoreNotFoundError",
    "VersionedStore",
    "create_resources",
    "make_client",
]


# -- errors ------------------------------------------------------------------------------


class StoreError(EdgecacheError):
    """An AWS call failed (network, throttling past the retries, an unexpected reply)."""


class StoreNotFoundError(StoreError):
    """The bucket or table does not exist (or lives in another region or account)."""


class StoreAccessDeniedError(StoreError, PermissionError):
    """The credentials may not make this call on this bucket, table or KMS key."""


_MISSING = frozenset({"NoSuchBucket", "ResourceNotFoundException"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "KMS.AccessDeniedException",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _translate(exc: ClientError | BotoCoreError, what: str, hint: str) -> StoreError:
    """Our error for a boto error: names what failed, never the AWS message or request data."""
    if isinstance(exc, BotoCoreError):
        # e.g. EndpointConnectionError, ReadTimeoutError, NoCredentialsError.
        return StoreError(f"{what} failed: {type(exc).__name__}")
    code, status = _code(exc) or "Unknown", _status(exc)
    detail = f"{what} failed: {code} (HTTP {status})"
    if code in _MISSING:
        return StoreNotFoundError(f"{detail}; {hint} does not exist in this region/account")
    if code in _DENIED or status == 403:
        return StoreAccessDeniedError(f"{detail}; check the IAM policy for {hint}")
    return StoreError(detail)


# -- clients -----------------------------------------------------------------------------


def make_client(service: str, *, endpoint_url: str | None = None) -> Any:
    """A boto3 client configured for Lambda: short timeouts, standard retry mode.

    A fresh session per client (boto3 sessions are not thread-safe; clients are). Region and
    credentials come from the environment as Lambda sets them (AWS_REGION, the execution
    role). `endpoint_url` is for a local emulator only; tests change nothing else.
    The defaults (60 s read timeout, legacy retries) would let one slow call eat a whole
    Lambda invocation; a cache read that slow is worth less than asking the LLM.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=2,
        read_timeout=10,
        tcp_keepalive=True,
    )
    try:
        return boto3.session.Session().client(service, endpoint_url=endpoint_url, config=config)
    except NoRegionError as exc:
        raise ConfigError("no AWS region configured: set AWS_REGION (Lambda sets it)") from exc


# -- optimistic concurrency --------------------------------------------------------------


def _check_data(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInputError(f"store data must be bytes, got {type(data).__name__}")
    return bytes(data)


def _check_token(expected: object) -> str | None:
    if expected is not None and (not isinstance(expected, str) or not expected):
        raise InvalidInputError("expected version must be a non-empty string or None")
    return expected


# -- S3 ----------------------------------------------------------------------------------

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._/-]{0,512}$")
_SSE = ("AES256", "aws:kms")


def _require_conditional_writes() -> None:
    """S3 conditional writes (PutObject IfMatch / IfNoneMatch) arrived in botocore 1.36. An
    older copy (an old Lambda runtime's) would send unconditional writes: refuse instead."""
    import botocore

    version = tuple(int(x) for x in re.findall(r"\d+", botocore.__version__)[:2])
    if version < (1, 36):
        raise ConfigError(
            f"S3Store needs botocore >= 1.36 for conditional writes, found {botocore.__version__}; "
            "bundle boto3>=1.36 with the function"
        )


class S3Store:
    """Snapshots as S3 objects at `prefix + key`, encrypted at rest on every write.

    SSE is requested on each put rather than trusted to the bucket default, so a bucket
    created without default encryption still never holds a plaintext snapshot; `aws:kms`
    uses `kms_key_id` (or the account's aws/s3 key) with an S3 Bucket Key, which cuts KMS
    requests (and cost) per object.

    `get_versioned`/`put_if` use the object's ETag with S3 conditional writes (If-Match /
    If-None-Match: *), which S3 applies atomically. Grant `s3:ListBucket` on the bucket
    besides Get/Put/DeleteObject: without it S3 answers a missing key (a user never seen
    before) with 403, which this store must report as access denied, not as "absent".
    Thread-safe: boto3 clients are, and the store keeps no other state.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "edgecache/",
        client: Any = None,
        sse: str = "AES256",
        kms_key_id: str | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET.match(bucket):
            raise ConfigError(f"invalid S3 bucket name {bucket!r}")
        if not isinstance(prefix, str) or not _PREFIX.match(prefix) or prefix.startswith("/"):
            raise ConfigError(f"invalid S3 key prefix {prefix!r}")
        if sse not in _SSE:
            raise ConfigError(f"sse must be one of {_SSE}, got {sse!r}")
        if kms_key_id is not None and sse != "aws:kms":
            raise ConfigError("kms_key_id needs sse='aws:kms'")
        _require_conditional_writes()
        self.bucket, self.prefix = bucket, prefix
        self.client = client if client is not None else make_client("s3")
        self._sse: dict[str, Any] = {"ServerSideEncryption": sse}
        if sse == "aws:kms":
            self._sse["BucketKeyEnabled"] = True
            if kms_key_id is not None:
                self._sse["SSEKMSKeyId"] = kms_key_id

    def object_key(self, key: str) -> str:
        """The S3 object key for a store key."""
        return self.prefix + _check_key(key)

    def _where(self, op: str, key: str) -> str:
        return f"S3 {op} s3://{self.bucket}/{self.prefix}{key}"

    def _hint(self) -> str:
        return f"bucket {self.bucket!r}"

    def get(self, key: str) -> bytes | None:
        found = self.get_versioned(key)
        return None if found is None else found[0]

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(data, ETag), or None when the object does not exist."""
        name = self.object_key(key)
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=name)
            data = reply["Body"].read()
        except ClientError as exc:
            if _code(exc) == "NoSuchKey":
                return None
            raise _translate(exc, self._where("GetObject", key), self._hint()) from exc
        except BotoCoreError as exc:
            raise _translate(exc, self._where("GetObject", key), self._hint()) from exc
        return data, reply["ETag"]

    def put(self, key: str, data: bytes, expires_at: float | None = None) -> None:
        """`expires_at` is ignored: S3 has no per-object expiry (lifecycle rules are per prefix)."""
        self._put(key, _check_data(data), {})

    def put_if(self, key: str, data: bytes, expected: str | None) -> str:
        """Write only if the object still has ETag `expected` (None: only if it does not exist).

        Returns the new ETag. Raises ConflictError when another writer got there first,
        including when the object was deleted since it was read.
        """
        body, expected = _check_data(data), _check_token(expected)
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        return self._put(key, body, condition)

    def _put(self, key: str, body: bytes, condition: dict[str, str]) -> str:
        name = self.object_key(key)
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=name, Body=body, **self._sse, **condition)
        except ClientError as exc:
            code = _code(exc)
            lost = code in ("PreconditionFailed", "ConditionalRequestConflict") or _status(exc) in (412, 409)
            # If-Match on an object deleted since it was read: 404 NoSuchKey, also a lost race.
            if condition and (lost or (code == "NoSuchKey" and "IfMatch" in condition)):
                raise ConflictError(
                    f"S3 object s3://{self.bucket}/{name} changed since it was read ({code})"
                ) from exc
            raise _translate(exc, self._where("PutObject", key), self._hint()) from exc
        except BotoCoreError as exc:
            raise _translate(exc, self._where("PutObject", key), self._hint()) from exc
        return reply["ETag"]

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error (as in S3)."""
        name = self.object_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self._where("DeleteObject", key), self._hint()) from exc


# -- DynamoDB ----------------------------------------------------------------------------

_TABLE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_ATTRIBUTE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
_RESERVED_ATTRIBUTES = ("pk", "body", "version")
# DynamoDB refuses items over 400 KB (409,600 bytes), counted as UTF-8 attribute names plus
# values. Stopping at 400,000 leaves a margin, so a size estimate off by a few bytes is
# refused here, before any AWS call, never half-way by AWS (moto refuses over 405,000).
MAX_ITEM_BYTES = 400_000
# A number attribute takes at most 21 bytes (38 significant digits).
_NUMBER_BYTES = 21


class DynamoDocumentStore:
    """Response bodies as DynamoDB items: `pk` (string key), `body` (binary), `version`, TTL.

    Reads are strongly consistent: a body is written on insert and may be read by the very
    next lookup, possibly from another Lambda instance. An item whose TTL attribute has
    passed reads as absent even before DynamoDB's background TTL deletion removes it
    (that can take days). `put(key, data, expires_at=...)` sets the TTL (epoch seconds);
    without it, `default_ttl_seconds` (if set) still bounds how long an orphaned body lives.

    An item is at most 400 KB, so a body may be up to 400,000 bytes minus a few hundred bytes
    of attributes (`max_body_bytes`): an LLM response is far smaller. A bigger one raises
    InvalidInputError before any AWS call, so nothing is written.

    `version` is a number: `put_if` writes only where it still equals the token read
    (DynamoDB condition expressions, atomic per item); every write adds 1. A new item starts
    at a random 52-bit number, not 1, so a reader holding a token from before a delete can
    never match a re-created item that happens to reach the same count.

    Meant for bodies, not snapshots: a snapshot grows with every entry and soon passes
    400 KB, so keep `store=` on S3. Thread-safe like S3Store.
    """

    def __init__(
        self,
        table: str,
        client: Any = None,
        ttl_attribute: str | None = "expires_at",
        *,
        default_ttl_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(table, str) or not _TABLE.match(table):
            raise ConfigError(f"invalid DynamoDB table name {table!r}")
        if ttl_attribute is not None and (
            not isinstance(ttl_attribute, str)
            or not _ATTRIBUTE.match(ttl_attribute)
            or ttl_attribute in _RESERVED_ATTRIBUTES
        ):
            raise ConfigError(f"invalid TTL attribute name {ttl_attribute!r}")
        if default_ttl_seconds is not None:
            if ttl_attribute is None:
                raise ConfigError("default_ttl_seconds needs a ttl_attribute")
            if not is_positive(default_ttl_seconds):
                raise ConfigError(f"default_ttl_seconds must be positive, got {default_ttl_seconds!r}")
        self.table, self.ttl_attribute = table, ttl_attribute
        self.default_ttl_seconds = default_ttl_seconds
        self.client = client if client is not None else make_client("dynamodb")
        self._clock = clock

    @property
    def max_body_bytes(self) -> int:
        """The largest body this store accepts for a key of the maximum length (200)."""
        return MAX_ITEM_BYTES - self._overhead(200)

    def _overhead(self, key_length: int) -> int:
        size = len("pk") + key_length + len("body") + len("version") + _NUMBER_BYTES
        if self.ttl_attribute is not None:
            size += len(self.ttl_attribute.encode()) + _NUMBER_BYTES
        return size

    def _where(self, op: str, key: str) -> str:
        return f"DynamoDB {op} table {self.table!r} key {key!r}"

    def _hint(self) -> str:
        return f"table {self.table!r}"

    def _expired(self, item: dict[str, Any], now: float) -> bool:
        if self.ttl_attribute is None or self.ttl_attribute not in item:
            return False
        try:
            return float(item[self.ttl_attribute]["N"]) <= now
        except (KeyError, TypeError, ValueError):
            return False  # not a number: DynamoDB's TTL ignores it too

    def get(self, key: str) -> bytes | None:
        found = self.get_versioned(key)
        return None if found is None else found[0]

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(body, version token), or None when absent or expired."""
        _check_key(key)
        try:
            reply = self.client.get_item(TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self._where("GetItem", key), self._hint()) from exc
        item = reply.get("Item")
        if item is None or self._expired(item, self._clock()):
            return None
        return bytes(item["body"]["B"]), str(item["version"]["N"])

    def put(self, key: str, data: bytes, expires_at: float | None = None) -> None:
        """Write unconditionally (bumping the version, so racing `put_if`s see the change)."""
        self._write(key, _check_data(data), expires_at, conditional=False, expected=None)

    def put_if(self, key: str, data: bytes, expected: str | None, expires_at: float | None = None) -> str:
        """Write only if the item's version is still `expected` (None: only if absent or expired).

        Returns the new version token; raises ConflictError when another writer got there
        first (or the item was deleted or expired since it was read).
        """
        body, expected = _check_data(data), _check_token(expected)
        if expected is not None and not expected.isdigit():
            raise InvalidInputError(f"not a DynamoDB version token: {expected!r}")
        return self._write(key, body, expires_at, conditional=True, expected=expected)

    def _write(
        self, key: str, body: bytes, expires_at: float | None, *, conditional: bool, expected: str | None
    ) -> str:
        _check_key(key)
        room = MAX_ITEM_BYTES - self._overhead(len(key))
        if len(body) > room:
            raise InvalidInputError(
                f"body of {len(body)} bytes for key {key!r} is over DynamoDB's {MAX_ITEM_BYTES}-byte "
                f"item limit (at most {room} bytes with this key); nothing was written"
            )
        if expires_at is None and self.default_ttl_seconds is not None:
            expires_at = self._clock() + self.default_ttl_seconds
        if expires_at is not None:
            if self.ttl_attribute is None:
                raise InvalidInputError("expires_at given but this store has no ttl_attribute")
            if not is_positive(expires_at):
                raise InvalidInputError(f"expires_at must be a positive epoch time, got {expires_at!r}")

        # DynamoDB refuses names/values an expression does not use: add each only where used.
        names = {"#b": "body", "#v": "version"}
        values: dict[str, Any] = {
            ":b": {"B": body},
            ":one": {"N": "1"},
            ":start": {"N": str(secrets.randbits(52))},
        }
        update = "SET #b = :b, #v = if_not_exists(#v, :start) + :one"
        if self.ttl_attribute is not None:
            names["#t"] = self.ttl_attribute
            if expires_at is not None:
                values[":t"] = {"N": str(math.ceil(expires_at))}
                update += ", #t = :t"
            else:
                update += " REMOVE #t"
        args: dict[str, Any] = {}
        if conditional:
            # An expired item that DynamoDB has not removed yet counts as absent, as in `get`.
            live = "(attribute_not_exists(#t) OR #t > :now)" if self.ttl_attribute is not None else ""
            if expected is None:
                names["#pk"] = "pk"
                condition = "attribute_not_exists(#pk)" + (f" OR NOT {live}" if live else "")
            else:
                values[":expected"] = {"N": expected}
                condition = "#v = :expected" + (f" AND {live}" if live else "")
            args["ConditionExpression"] = condition
            if live:
                values[":now"] = {"N": str(math.floor(self._clock()))}
        try:
            reply = self.client.update_item(
                TableName=self.table,
                Key={"pk": {"S": key}},
                UpdateExpression=update,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="UPDATED_NEW",
                **args,
            )
        except ClientError as exc:
            code = _code(exc)
            if conditional and code in (
                "ConditionalCheckFailedException",
                "TransactionConflictException",
            ):
                raise ConflictError(
                    f"DynamoDB item {key!r} in table {self.table!r} changed since it was read"
                ) from exc
            raise _translate(exc, self._where("UpdateItem", key), self._hint()) from exc
        except BotoCoreError as exc:
            raise _translate(exc, self._where("UpdateItem", key), self._hint()) from exc
        return str(reply["Attributes"]["version"]["N"])

    def delete(self, key: str) -> None:
        """Delete the item; deleting a missing key is not an error (as in DynamoDB)."""
        _check_key(key)
        try:
            self.client.delete_item(TableName=self.table, Key={"pk": {"S": key}})
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self._where("DeleteItem", key), self._hint()) from exc


# -- resources ---------------------------------------------------------------------------


def create_resources(
    s3_client: Any,
    dynamodb_client: Any,
    bucket: str,
    table: str,
    ttl_attribute: str = "expires_at",
) -> None:
    """Create (or bring up to date) the bucket and the table these stores expect. Idempotent.

    Bucket: default encryption (SSE-S3 with a Bucket Key) as a second line behind the
    per-put SSE, and all four public-access blocks on, because snapshots are user data.
    Table: `pk` string hash key, on-demand billing (a cache's traffic follows its users'),
    TTL enabled on `ttl_attribute` so expired bodies cost nothing to remove. DynamoDB
    encrypts every table at rest by default. For tests and docs; production resources
    belong in the Terraform module.
    """
    try:
        region = s3_client.meta.region_name
        location = (
            {}
            if region in (None, "us-east-1")
            else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        )
        try:
            s3_client.create_bucket(Bucket=bucket, **location)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise
        s3_client.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3_client.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, f"creating S3 bucket {bucket!r}", f"bucket {bucket!r}") from exc
    try:
        try:
            dynamodb_client.create_table(
                TableName=table,
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":
                raise
        dynamodb_client.get_waiter("table_exists").wait(
            TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        ttl = dynamodb_client.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
        if ttl.get("AttributeName") != ttl_attribute or ttl.get("TimeToLiveStatus") not in (
            "ENABLED",
            "ENABLING",
        ):
            dynamodb_client.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute},
            )
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, f"creating DynamoDB table {table!r}", f"table {table!r}") from exc
