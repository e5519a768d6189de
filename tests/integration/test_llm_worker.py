"""The LLM worker on a real local Ray Serve with SmolLM2, over HTTP on 127.0.0.1.

One Ray start for the module (~15-20 s on 2 cores, plus the replica loading SmolLM2);
outputs are kept short (max_tokens <= 8).
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest

from tests.integration.processes import LISTEN, free_port, is_loopback, listening_on, local_ray, tcp_sockets

pytestmark = pytest.mark.integration

pytest.importorskip("torch")
pytest.importorskip("kvpress")

NEEDLE = "The access code for the vault is 4817."


def _context() -> str:
    """~1k tokens of real text (MT-bench questions) with a needle in the middle."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "categories" / "mt_bench_questions.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        sentences = [t for r in rows[:40] for t in r["turns"]]
    except OSError:
        sentences = [f"Sentence number {i} talks about the weather in a different city." for i in range(120)]
    text = " ".join(sentences)[:4000]
    middle = len(text) // 2
    return f"{text[:middle]} {NEEDLE} {text[middle:]}"


# ---------------------------------------------------------------- the served worker


@pytest.fixture(scope="module")
def served():
    from edgecache.llm.model import ModelNotAvailableError, ensure_packaged_model

    try:
        ensure_packaged_model(progress=lambda _: None)
    except ModelNotAvailableError as exc:
        pytest.skip(f"SmolLM2 not available: {exc}")
    pytest.importorskip("ray", reason="ray is not installed: pip install 'edgecache[serve]'")
    from ray import serve

    from edgecache.llm.worker import app

    port = free_port()
    with local_ray(num_cpus=2) as run:
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            t0 = time.perf_counter()
            serve.run(
                app(
                    press="snapkv",
                    budget=0.5,
                    num_cpus=1,
                    torch_threads=1,
                    max_context_tokens=2048,
                    max_new_tokens=8,
                    default_max_tokens=8,
                ),
                name="llm",
                route_prefix="/llm",
            )
            yield {"port": port, "ray": run.ray, "pids": run.pids(), "deploy_s": time.perf_counter() - t0}
        finally:
            serve.shutdown()


def _http(port, method, path, body=None, ctype="application/json", raw=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(
            method, "/llm" + path, body=data, headers={"Content-Type": ctype} if data is not None else {}
        )
        resp = conn.getresponse()
        content = resp.read()
        if raw:
            return resp.status, resp.getheader("content-type", ""), content
        return resp.status, json.loads(content) if content else None
    finally:
        conn.close()


def test_node_and_http_on_loopback(served):
    ray = served["ray"]
    assert ray._private.worker.global_worker.node.node_ip_address == "127.0.0.1"
    assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
    http_listeners = listening_on(served["port"], served["pids"])
    assert http_listeners and all(is_loopback(a) for a in http_listeners), http_listeners


def test_models_and_completion(served):
    port = served["port"]
    status, models = _http(port, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
    status, out = _http(
        port, "POST", "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 4}
    )
    assert status == 200, out
    assert out["object"] == "text_completion" and out["model"] == "smollm2-135m-instruct"
    assert out["choices"][0]["text"].strip() and out["choices"][0]["finish_reason"] in ("stop", "length")
    assert "Paris" in out["choices"][0]["text"], out["choices"][0]["text"]
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_chat_reuses_the_compressed_context(served):
    port, context = served["port"], _context()
    ask = {"role": "user", "content": "What is the access code for the vault? Answer with the number."}
    body = {"messages": [ask], "context": context, "max_tokens": 8}
    status, first = _http(port, "POST", "/v1/chat/completions", body)
    assert status == 200, first
    kv = first["kv_cache"]
    assert first["object"] == "chat.completion" and first["choices"][0]["message"]["role"] == "assistant"
    assert not kv["reused"] and kv["compressed"] and kv["context_tokens"] > 500
    assert kv["kept_tokens"] == int(kv["context_tokens"] * 0.5)
    other = {"role": "user", "content": "Which code opens the vault?"}
    status, second = _http(port, "POST", "/v1/chat/completions", {**body, "messages": [other]})
    assert status == 200 and second["kv_cache"]["reused"] and second["kv_cache"]["prefill_ms"] == 0
    status, third = _http(port, "POST", "/v1/chat/completions", body)
    assert status == 200 and third["kv_cache"]["reused"]
    # decoding from the shared cache left it as it was
    assert third["choices"] == first["choices"]
    status, stats = _http(port, "GET", "/stats")
    cc = stats["context_cache"]
    assert status == 200 and cc["hits"] >= 2 and cc["prefill_seconds_saved"] > 0
    print(
        f"\nSmolLM2 chat, {kv['context_tokens']}-token context, snapkv 0.5: "
        f"prefill {kv['prefill_ms']:.0f} ms on the miss, 0 on hits; decode {kv['decode_ms']:.0f} / "
        f"{second['kv_cache']['decode_ms']:.0f} ms"
    )


def test_streaming_chat(served):
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "stream": True}
    status, ctype, raw = _http(served["port"], "POST", "/v1/chat/completions", body, raw=True)
    assert status == 200 and ctype.startswith("text/event-stream")
    chunks = [c for c in raw.decode().split("\n\n") if c]
    assert chunks[-1] == "data: [DONE]" and all(c.startswith("data: ") for c in chunks)
    events = [json.loads(c[6:]) for c in chunks[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events).strip()


def test_bad_requests_get_4xx_and_the_worker_keeps_serving(served):
    port = served["port"]
    status, before = _http(port, "GET", "/stats")
    cases = [
        ("/v1/completions", b"{not json", "application/json", 400, "bad_json"),
        ("/v1/completions", b'{"prompt": "caf\xe9"}', "application/json", 400, "bad_encoding"),
        ("/v1/completions", {"prompt": ""}, "application/json", 400, "empty"),
        ("/v1/completions", {"prompt": 42}, "application/json", 400, "bad_type"),
        (
            "/v1/completions",
            {"prompt": "x", "kv_press": "nosuchpress"},
            "application/json",
            400,
            "invalid_kv_press",
        ),
        ("/v1/completions", {"prompt": "x", "kv_budget": 0}, "application/json", 400, "invalid_kv_budget"),
        ("/v1/completions", {"prompt": "x", "kv_budget": 1.5}, "application/json", 400, "invalid_kv_budget"),
        ("/v1/completions", {"prompt": "word " * 3000}, "application/json", 400, "context_length_exceeded"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 9}, "application/json", 400, "invalid_max_tokens"),
        ("/v1/chat/completions", {"messages": []}, "application/json", 400, "empty"),
        ("/v1/completions", b"prompt=x", "application/x-www-form-urlencoded", 415, "unsupported_media"),
        ("/v1/nothing", {"prompt": "x"}, "application/json", 404, "not_found"),
    ]
    for path, body, ctype, want, code in cases:
        status, out = _http(port, "POST", path, body, ctype)
        assert (status, out["error"]["code"]) == (want, code), (
            path,
            body if isinstance(body, dict) else body[:20],
            out,
        )
        assert set(out["error"]) == {"code", "message"} and out["error"]["message"]
    status, out = _http(port, "POST", "/v1/completions", {"prompt": "One, two, three,", "max_tokens": 3})
    assert status == 200 and out["usage"]["completion_tokens"] >= 1
    status, after = _http(port, "GET", "/stats")
    # the same replica answered throughout: its counters went on from where they were
    assert after["requests"] == before["requests"] + 12
    assert sum(after["errors"].values()) == sum(before["errors"].values()) + len(cases)


def test_all_traffic_stayed_on_loopback(served):
    """Every connected TCP socket Ray's processes hold, after the traffic above, has both
    ends on 127.0.0.1. (Ray's gRPC servers still *listen* on all interfaces; nothing
    connects to them from outside.)"""
    sockets = tcp_sockets(served["pids"])
    connected = [(a, b, pid) for a, b, state, pid in sockets if state != LISTEN]
    assert len(connected) > 5, "too few sockets seen: the check would prove nothing"
    outside = [(a, b, pid) for a, b, pid in connected if not (is_loopback(a) and is_loopback(b))]
    assert not outside, outside
