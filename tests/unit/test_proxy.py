"""The OpenAI-compatible caching proxy against a real local upstream speaking OpenAI's format."""

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from edgecache import LocalFolderStore
from edgecache.load import BackendMonitor
from edgecache.proxy import ProxySettings, Upstream, namespace
from edgecache.registry import CacheRegistry
from edgecache.server import CacheServer


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers 'answer to: <last user message>'; streams when asked; 429 on 'throttle'."""

    protocol_version = "HTTP/1.1"
    calls: ClassVar[list[dict]] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        assert self.path == "/v1/chat/completions"
        assert self.headers["Authorization"] == "Bearer sk-test"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.calls.append(body)
        last = body["messages"][-1]["content"]
        if "throttle" in last:
            data = json.dumps({"error": {"message": "rate limited", "type": "rate_limit"}}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        answer = f"answer to: {last}"
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            pieces = [{"role": "assistant", "content": ""}] + [{"content": w + " "} for w in answer.split()]
            for delta in pieces:
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            stop = {"index": 0, "delta": {}, "finish_reason": "stop"}
            end = {"id": "x", "object": "chat.completion.chunk", "choices": [stop]}
            self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            return
        data = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def upstream():
    FakeOpenAI.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def proxy(tmp_path, embedder, config, upstream):
    monitor = BackendMonitor(normal_seconds=1, overloaded_seconds=5)
    registry = CacheRegistry(LocalFolderStore(tmp_path), config, embedder, load=monitor)
    host, port = upstream.server_address[:2]
    settings = ProxySettings(f"http://{host}:{port}/v1", api_key="sk-test")
    srv = CacheServer(registry, "127.0.0.1", 0, upstream=Upstream(settings, monitor))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(timeout=5)


def chat(srv, messages, user="alice", headers=None, **extra):
    conn = http.client.HTTPConnection(*srv.address, timeout=10)
    body = {"model": "gpt-test", "messages": messages, **extra}
    hdrs = {
        "Content-Type": "application/json",
        **({"X-Edgecache-User": user} if user else {}),
        **(headers or {}),
    }
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), raw


def text_of(raw: bytes) -> str:
    return json.loads(raw)["choices"][0]["message"]["content"]


def streamed_text(raw: bytes) -> str:
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_miss_forwards_and_caches_then_hit_skips_upstream(proxy):
    ask = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "how do I reset my password"},
    ]
    status, headers, raw = chat(proxy, ask)
    assert status == 200 and headers["X-Edgecache"] == "miss"
    assert text_of(raw) == "answer to: how do I reset my password"
    status, headers, raw = chat(proxy, [*ask[:1], {"role": "user", "content": "How do I reset my password?"}])
    assert (
        status == 200 and headers["X-Edgecache"] == "hit" and float(headers["X-Edgecache-Similarity"]) > 0.9
    )
    body = json.loads(raw)
    assert body["object"] == "chat.completion" and body["model"] == "gpt-test"
    assert text_of(raw) == "answer to: how do I reset my password"
    assert len(FakeOpenAI.calls) == 1


def test_streaming_on_both_paths(proxy):
    ask = [{"role": "user", "content": "tell me about caching layers"}]
    status, headers, raw = chat(proxy, ask, stream=True)
    assert (
        status == 200 and headers["X-Edgecache"] == "miss" and headers["Content-Type"] == "text/event-stream"
    )
    assert streamed_text(raw).strip() == "answer to: tell me about caching layers"
    status, headers, raw = chat(proxy, ask, stream=True)
    assert (
        headers["X-Edgecache"] == "hit"
        and streamed_text(raw).strip() == "answer to: tell me about caching layers"
    )
    status, headers, raw = chat(proxy, ask)  # a streamed miss fills the cache for plain requests too
    assert headers["X-Edgecache"] == "hit"
    assert len(FakeOpenAI.calls) == 1


def test_model_system_prompt_and_user_separate_caches(proxy):
    ask = [{"role": "user", "content": "what is the capital of france"}]
    chat(proxy, ask)
    assert chat(proxy, ask)[1]["X-Edgecache"] == "hit"
    assert chat(proxy, ask, model="other-model")[1]["X-Edgecache"] == "miss"
    assert chat(proxy, [{"role": "system", "content": "answer in french"}, *ask])[1]["X-Edgecache"] == "miss"
    assert chat(proxy, ask, user="bob")[1]["X-Edgecache"] == "miss"
    assert namespace("a", "m", "") != namespace("a#", "m", "")


def test_context_comes_from_earlier_user_turns(proxy):
    france = [
        {"role": "user", "content": "tell me about france"},
        {"role": "assistant", "content": "France is..."},
        {"role": "user", "content": "what is its population"},
    ]
    japan = [{"role": "user", "content": "tell me about japan"}, *france[1:]]
    chat(proxy, france)
    assert chat(proxy, france)[1]["X-Edgecache"] == "hit"
    assert chat(proxy, japan)[1]["X-Edgecache"] == "miss"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"temperature": 1.2}, "temperature"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
def test_bypass_policy_never_caches(proxy, extra, reason):
    ask = [{"role": "user", "content": "write me a poem about the sea"}]
    for _ in range(2):
        status, headers, _ = chat(proxy, ask, **extra)
        assert status == 200 and headers["X-Edgecache"] == f"bypass; {reason}"
    assert len(FakeOpenAI.calls) == 2
    assert chat(proxy, ask)[1]["X-Edgecache"] == "miss"  # nothing was stored


def test_cache_control_headers(proxy):
    ask = [{"role": "user", "content": "explain vector databases"}]
    chat(proxy, ask, headers={"Cache-Control": "no-store"})
    assert chat(proxy, ask)[1]["X-Edgecache"] == "miss"  # no-store: not inserted
    assert chat(proxy, ask, headers={"Cache-Control": "no-cache"})[1]["X-Edgecache"] == "miss"
    assert chat(proxy, ask)[1]["X-Edgecache"] == "hit"


def test_upstream_errors_pass_through_uncached(proxy):
    ask = [{"role": "user", "content": "please throttle me"}]
    status, _, raw = chat(proxy, ask)
    assert status == 429 and json.loads(raw)["error"]["type"] == "rate_limit"
    assert chat(proxy, ask)[0] == 429 and len(FakeOpenAI.calls) == 2
    assert proxy.registry.load.rate_limit.level() > 0  # the monitor saw the 429s


def test_bad_requests_and_unreachable_upstream(proxy, upstream, tmp_path, embedder, config):
    assert chat(proxy, [{"role": "user", "content": "hi"}], user=None)[0] == 401
    for messages in ([], "hello", [{"role": "user", "content": ""}]):
        status, _, raw = chat(proxy, messages)
        assert status == 400 and "error" in json.loads(raw)
    assert chat(proxy, [{"role": "user", "content": "x"}], model="")[0] == 400
    registry = CacheRegistry(LocalFolderStore(tmp_path / "b"), config, embedder)
    dead = CacheServer(registry, "127.0.0.1", 0, upstream=Upstream(ProxySettings("http://127.0.0.1:9/v1")))
    thread = threading.Thread(target=dead.serve_forever, daemon=True)
    thread.start()
    try:
        status, _, raw = chat(dead, [{"role": "user", "content": "anyone there"}])
        assert status == 502 and json.loads(raw)["error"]["type"] == "upstream_unreachable"
    finally:
        dead.shutdown()
        thread.join(timeout=5)


def test_proxy_off_without_upstream(tmp_path, embedder, config):
    registry = CacheRegistry(LocalFolderStore(tmp_path), config, embedder)
    srv = CacheServer(registry, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert chat(srv, [{"role": "user", "content": "x"}])[0] == 404
    finally:
        srv.shutdown()
        thread.join(timeout=5)
