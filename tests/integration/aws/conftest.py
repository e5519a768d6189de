"""A local AWS endpoint for the session: moto's server on 127.0.0.1, in its own process.

The clients are made by `edgecache.aws_stores.make_client`, as in production, with only
`endpoint_url` pointing at the local server. Credentials and region come from the
environment, as Lambda provides them; here they are dummies, and every variable or file
that could point boto3 at a real account is masked for the session.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgecache.aws_stores import DynamoDocumentStore, S3Store, create_resources, make_client

ROOT = Path(__file__).resolve().parents[3]
BUCKET = "edgecache-test-snapshots"
TABLE = "edgecache-test-bodies"
_MASKED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_DYNAMODB",
)


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy credentials and us-east-1; nothing can reach a real account."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _MASKED:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def aws_endpoint(aws_env: None) -> Iterator[str]:
    """Start `tests.integration.aws.moto_server` (port chosen by the OS), yield its URL, stop it.

    A separate process so that the server and the clients each get a core; it serves until
    its stdin closes, so it also goes away if this session dies.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.aws.moto_server"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline() if ready else ""
            if not line.strip().isdigit():
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"moto server did not start: {tail}")
            yield f"http://127.0.0.1:{int(line)}"
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass(frozen=True)
class AwsClients:
    endpoint: str
    s3: Any
    dynamodb: Any
    bucket: str
    table: str


@pytest.fixture(scope="session")
def aws(aws_endpoint: str) -> AwsClients:
    """Production-configured clients against the local endpoint; bucket and table created."""
    s3 = make_client("s3", endpoint_url=aws_endpoint)
    dynamodb = make_client("dynamodb", endpoint_url=aws_endpoint)
    create_resources(s3, dynamodb, BUCKET, TABLE)
    return AwsClients(aws_endpoint, s3, dynamodb, BUCKET, TABLE)


@pytest.fixture
def s3_store(aws: AwsClients) -> S3Store:
    """An S3Store under a prefix of its own, so tests never see each other's objects."""
    return S3Store(aws.bucket, prefix=f"t-{uuid.uuid4().hex[:12]}/", client=aws.s3)


@pytest.fixture
def doc_store(aws: AwsClients) -> DynamoDocumentStore:
    return DynamoDocumentStore(aws.table, client=aws.dynamodb)


@pytest.fixture
def fresh_key() -> str:
    """A store key no other test uses (the table is shared by the session)."""
    return uuid.uuid4().hex
