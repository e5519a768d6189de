"""The Lambda handler run by AWS's own runtime client (awslambdaric), as Lambda runs it,
against a Runtime API on 127.0.0.1, with S3 and DynamoDB served by the local moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgecache.home import edgecache_home
from tests.integration.lambda_runtime import RuntimeAPI
from tests.unit.test_lambda_handler import event

ROOT = Path(__file__).resolve().parents[3]
pytest.importorskip("awslambdaric")


@pytest.fixture
def runtime():
    api = RuntimeAPI().start()
    yield api
    api.stop()


def container(api: RuntimeAPI, aws, prefix: str) -> subprocess.Popen:
    """One Lambda execution environment: a fresh process running the runtime client."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": "edgecache",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        # The only difference from production: where AWS is.
        "AWS_ENDPOINT_URL": aws.endpoint,
        "PYTHONPATH": str(ROOT / "functions"),
        "EDGECACHE_HOME": str(edgecache_home()),
        "EDGECACHE_BUCKET": aws.bucket,
        "EDGECACHE_PREFIX": prefix,
        "EDGECACHE_TABLE": aws.table,
        # Every request re-reads the snapshot, so each container sees the others' inserts.
        "EDGECACHE_REFRESH_SECONDS": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "awslambdaric", "edgecache_functions.handler.handle"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def call(api: RuntimeAPI, path: str, body: dict | None, sub: str | None = "alice", **kw) -> tuple[int, dict]:
    out = api.invoke(event(path, body, sub=sub, **kw))
    return out["statusCode"], json.loads(out["body"])


def stop(*procs: subprocess.Popen) -> str:
    logs = []
    for p in procs:
        p.kill()
        out, _ = p.communicate(timeout=10)
        logs.append(out)
    return "\n".join(logs)


def test_handler_under_the_real_runtime_client(runtime, aws):
    prefix = f"lambda-{uuid.uuid4().hex[:8]}/"
    first = container(runtime, aws, prefix)
    try:
        started = time.perf_counter()
        status, out = call(
            runtime, "/v1/insert", {"query": "how do I rotate my api key", "response": "Keys page"}
        )
        cold = time.perf_counter() - started
        assert status == 200 and "entry_id" in out
        warm = []
        for _ in range(5):
            started = time.perf_counter()
            status, out = call(runtime, "/v1/lookup", {"query": "How do I rotate my API key?"})
            warm.append(time.perf_counter() - started)
            assert status == 200 and out["hit"] and out["response"] == "Keys page"
        assert (
            call(runtime, "/v1/lookup", {"query": "how do I rotate my api key"}, sub="bob")[1]["hit"] is False
        )
        assert call(runtime, "/v1/lookup", {"query": "x"}, sub=None)[0] == 401
        assert call(runtime, "/v1/lookup", None)[0] == 400  # no body
        assert call(runtime, "/v1/lookup", None, raw="{oops")[0] == 400
        # A cold container reads alice's snapshot from S3 and the body from DynamoDB.
        logs = stop(first)
        second = container(runtime, aws, prefix)
        status, out = call(runtime, "/v1/lookup", {"query": "how do I rotate my api key"})
        assert status == 200 and out["hit"] and out["response"] == "Keys page"
        logs += stop(second)
    finally:
        if first.poll() is None:
            stop(first)
    assert "rotate" not in logs  # query text is not logged
    metrics = [json.loads(line) for line in logs.splitlines() if line.startswith('{"_aws"')]
    assert metrics and all("latency_ms" in m for m in metrics)
    print(f"cold first request {cold * 1000:.0f} ms, warm lookups median {sorted(warm)[2] * 1000:.1f} ms")


def test_concurrent_containers_lose_no_insert(runtime, aws):
    prefix = f"lambda-{uuid.uuid4().hex[:8]}/"
    containers = [container(runtime, aws, prefix) for _ in range(3)]
    try:
        queries = [f"question number {i} about subject {i * 7}" for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda q: call(runtime, "/v1/insert", {"query": q, "response": q.upper()}), queries)
            )
        assert all(status == 200 for status, _ in results)
        for q in queries:
            status, out = call(runtime, "/v1/lookup", {"query": q})
            assert status == 200 and out["hit"] and out["response"] == q.upper(), q
    finally:
        stop(*containers)
    # A fresh container, after all of them wrote concurrently, sees every insert.
    fresh = container(runtime, aws, prefix)
    try:
        stats = call(runtime, "/v1/stats", None, method="GET")[1]
        assert stats["entries"] == 24
    finally:
        stop(fresh)


def test_upstream_key_comes_from_secrets_manager(aws, monkeypatch):
    from edgecache.aws_stores import make_client
    from edgecache_functions.handler import _upstream_key

    secrets = make_client("secretsmanager", endpoint_url=aws.endpoint)
    arn = secrets.create_secret(Name=f"edgecache-{uuid.uuid4().hex[:8]}", SecretString="sk-from-secrets")[
        "ARN"
    ]
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    assert _upstream_key({"EDGECACHE_UPSTREAM_SECRET_ARN": arn, "EDGECACHE_UPSTREAM_API_KEY": "ignored"}) == (
        "sk-from-secrets"
    )
    assert _upstream_key({"EDGECACHE_UPSTREAM_API_KEY": "sk-env"}) == "sk-env"
