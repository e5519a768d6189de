"""`edgecache serve` as a real process on 127.0.0.1, driven over HTTP."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def start(store, *options):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecache.cli", "serve", "--port", "0", "--store", str(store), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stdout.read()}")


def call(port, path, body, user):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if user:
        headers["X-Edgecache-User"] = user
    conn.request("POST", path, json.dumps(body), headers)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_serve_isolates_users_and_persists_across_restart(tmp_path):
    proc, port = start(tmp_path)
    try:
        status, out = call(
            port, "/v1/insert", {"query": "What is my account balance?", "response": "$12"}, "alice"
        )
        assert status == 200
        assert call(port, "/v1/lookup", {"query": "what's my account balance"}, "alice")[1]["hit"]
        assert not call(port, "/v1/lookup", {"query": "What is my account balance?"}, "bob")[1]["hit"]
        assert call(port, "/v1/lookup", {"query": "x"}, None)[0] == 401
    finally:
        stop(proc)
    proc, port = start(tmp_path)
    try:
        status, out = call(port, "/v1/lookup", {"query": "What is my account balance?"}, "alice")
        assert out["hit"] and out["response"] == "$12"
    finally:
        stop(proc)


def test_workers_sharing_a_store_see_each_others_changes(tmp_path):
    def until(check):
        deadline = time.time() + 20
        while not check():
            assert time.time() < deadline, "the other worker never saw the change"
            time.sleep(0.1)

    options = ("--refresh-seconds", "0.2", "--flush-seconds", "0.1")
    (a, port_a), (b, port_b) = start(tmp_path, *options), start(tmp_path, *options)
    question = {"query": "How do I reset my password?"}
    try:
        # b loads the user first, so what it sees of a's insert comes from a refresh.
        assert not call(port_b, "/v1/lookup", question, "alice")[1]["hit"]
        status, out = call(port_a, "/v1/insert", {**question, "response": "Settings > Security"}, "alice")
        assert status == 200
        until(lambda: call(port_b, "/v1/lookup", question, "alice")[1]["hit"])
        assert call(port_b, "/v1/delete", {"entry_id": out["entry_id"]}, "alice")[0] == 200
        until(lambda: not call(port_a, "/v1/lookup", question, "alice")[1]["hit"])
    finally:
        stop(a)
        stop(b)
    c, port_c = start(tmp_path)
    try:
        assert not call(port_c, "/v1/lookup", question, "alice")[1]["hit"]  # the delete stayed
    finally:
        stop(c)
