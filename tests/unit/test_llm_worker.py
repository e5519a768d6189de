"""The LLM worker without Ray: request parsing, the compressed-context LRU, and `LLMService`
driven over its HTTP-shaped entry point with the tiny random Llama (edgecache.llm.testing)."""

from __future__ import annotations

import json

import pytest

from edgecache.errors import ConfigError
from edgecache.httperrors import RequestError
from edgecache.llm.protocol import GenerationRequest, WorkerConfig, parse_request

torch = pytest.importorskip("torch")
pytest.importorskip("kvpress")

from edgecache.llm.presses import PRESSES, make_press  # noqa: E402
from edgecache.llm.presses.measure import HEAD_MASK_ATTRIBUTES  # noqa: E402
from edgecache.llm.testing import _CORPUS, tiny_model  # noqa: E402
from edgecache.llm.worker import (  # noqa: E402
    CompressedContext,
    ContextCache,
    LLMService,
    context_key,
)

CONTEXT = " ".join(_CORPUS * 3)  # ~580 tiny-tokenizer tokens
QUESTION = "What is the secret number?"


# ---------------------------------------------------------------- parsing (no model)


def _err(body, kind="completion", ctype="application/json", **config):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as info:
        parse_request(raw, ctype, kind, WorkerConfig(**config))
    assert set(info.value.body()["error"]) == {"code", "message"}
    return info.value.status, info.value.code


def test_parse_good_requests():
    cfg = WorkerConfig(press="snapkv", budget=0.5)
    req = parse_request(b'{"prompt": "hi", "max_tokens": 3}', "application/json", "completion", cfg)
    assert (req.kind, req.prompt, req.max_tokens, req.press, req.budget) == (
        "completion",
        "hi",
        3,
        "snapkv",
        0.5,
    )
    assert req.temperature == 0.0 and not req.stream and req.context is None
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ],
        "context": "ctx",
        "kv_press": "KNorm",
        "kv_budget": 0.25,
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": "\n",
        "max_completion_tokens": 5,
        "temperature": 0.7,
        "seed": 3,
        "n": 1,
        "user": "u",
    }
    req = parse_request(json.dumps(body).encode(), "application/json; charset=utf-8", "chat", cfg)
    assert req.messages[0].role == "system" and req.messages[1].content == "a\nb"
    assert (req.context, req.press, req.budget, req.stream, req.stop) == ("ctx", "knorm", 0.25, True, ("\n",))
    assert (req.max_tokens, req.temperature, req.seed, req.model) == (5, 0.7, 3, "m")
    assert req.include_usage is True
    full = parse_request(b'{"prompt": "x", "kv_press": "full", "kv_budget": 0.1}', "", "completion", cfg)
    assert (full.press, full.budget) == ("full", 1.0)


def test_parse_errors():
    assert _err(b"{nope") == (400, "bad_json")
    assert _err(b'{"prompt": "caf\xe9"}') == (400, "bad_encoding")  # latin-1, not UTF-8
    assert _err(b'{"prompt": "\\ud800"}') == (400, "bad_encoding")  # lone surrogate
    assert _err(b"[1]") == (400, "bad_request")
    assert _err(b"x", ctype="text/plain") == (415, "unsupported_media")
    assert _err({"prompt": "x" * 100}, max_body_bytes=50) == (413, "body_too_large")
    assert _err({}) == (400, "bad_request")
    assert _err({"prompt": ""}) == (400, "empty")
    assert _err({"prompt": "   "}) == (400, "empty")
    assert _err({"prompt": 5}) == (400, "bad_type")
    assert _err({"prompt": ["a", "b"]}) == (400, "unsupported")
    assert _err({"prompt": "a", "context": ""}) == (400, "empty")
    assert _err({"prompt": "a", "frobnicate": 1}) == (400, "unknown_field")
    assert _err({"prompt": "a", "n": 2}) == (400, "unsupported")
    assert _err({"prompt": "a", "logprobs": 3}) == (400, "unsupported")
    assert _err({"prompt": "a", "echo": True}) == (400, "unsupported")
    assert _err({"prompt": "a", "max_tokens": 0}) == (400, "invalid_max_tokens")
    assert _err({"prompt": "a", "max_tokens": 9}, max_new_tokens=8, default_max_tokens=4) == (
        400,
        "invalid_max_tokens",
    )
    assert _err({"prompt": "a", "max_tokens": "3"}) == (400, "bad_type")
    assert _err({"prompt": "a", "max_tokens": True}) == (400, "bad_type")
    assert _err({"prompt": "a", "temperature": 3}) == (400, "invalid_temperature")
    assert _err({"prompt": "a", "top_p": 0}) == (400, "invalid_top_p")
    assert _err({"prompt": "a", "stop": ["a"] * 5}) == (400, "bad_type")
    assert _err({"prompt": "a", "stream": "yes"}) == (400, "bad_type")
    for budget in (0, -0.5, 1.5, "0.5", True, None):
        assert _err({"prompt": "a", "kv_budget": budget})[0] == 400, budget
    assert _err({"prompt": "a", "kv_budget": 0}) == (400, "invalid_kv_budget")
    assert _err({"prompt": "a", "kv_press": 3}) == (400, "bad_type")
    assert _err({"prompt": "a", "kv_press": "knorm"}, allow_press_override=False) == (
        400,
        "press_override_disabled",
    )
    assert _err({"messages": []}, "chat") == (400, "empty")
    assert _err({"messages": "hi"}, "chat") == (400, "bad_type")
    assert _err({"messages": [{"role": "robot", "content": "x"}]}, "chat") == (400, "bad_role")
    assert _err({"messages": [{"role": "assistant", "content": "x"}]}, "chat") == (400, "bad_request")
    assert _err({"messages": [{"role": "user", "content": " "}]}, "chat") == (400, "empty")
    assert _err({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "chat") == (
        400,
        "unsupported",
    )
    assert _err(
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "chat"
    ) == (
        400,
        "unsupported",
    )
    assert _err({"messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "chat") == (
        400,
        "unknown_field",
    )


def test_worker_config():
    assert WorkerConfig(press=" SnapKV ").press == "snapkv"
    assert WorkerConfig(max_new_tokens=10).default_max_tokens == 10
    for bad in (
        {"budget": 0},
        {"budget": 1.5},
        {"budget": True},
        {"max_new_tokens": 0},
        {"num_gpus": -1},
        {"torch_threads": 0},
        {"model": ""},
        {"press_options": "x"},
    ):
        with pytest.raises(ConfigError):
            WorkerConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        WorkerConfig.from_dict({"presss": "x"})
    cfg = WorkerConfig.from_strings(
        {
            "budget": "0.25",
            "max_new_tokens": "32",
            "allow_press_override": "false",
            "model": "none",
            "torch_threads": "1",
            "press_options": '{"window_size": 32}',
            "num_gpus": "1",
        }
    )
    assert (cfg.budget, cfg.max_new_tokens, cfg.allow_press_override, cfg.model) == (0.25, 32, False, None)
    assert (cfg.torch_threads, cfg.press_options, cfg.num_gpus) == (1, {"window_size": 32}, 1.0)
    with pytest.raises(ConfigError, match="not a int"):
        WorkerConfig.from_strings({"max_new_tokens": "many"})
    with pytest.raises(ConfigError, match="not a boolean"):
        WorkerConfig.from_strings({"allow_press_override": "ture"})
    with pytest.raises(ConfigError, match="unknown"):
        WorkerConfig.from_strings({"presss": "x"})


# ---------------------------------------------------------------- the LRU (no model)


def _entry(tokens: int) -> CompressedContext:
    k = torch.zeros(1, 2, tokens, 4)
    return CompressedContext(((k, k.clone()),), context_length=tokens * 2)


def test_context_cache_lru():
    one = _entry(4).nbytes
    assert one == 2 * 2 * 4 * 4 * 4
    lru = ContextCache(max_entries=3, max_bytes=10 * one)
    keys = [context_key([i, i + 1], "snapkv", 0.5) for i in range(5)]
    assert context_key([1, 2], "snapkv", 0.5) == context_key([1, 2], "snapkv", 0.5)
    assert len({context_key([1, 2], "snapkv", 0.5), context_key([1, 2], "snapkv", 0.25)}) == 2
    assert len({context_key([1, 2], "snapkv", 0.5), context_key([1, 2], "knorm", 0.5)}) == 2
    assert context_key([1, 2], "x", 1) != context_key([2, 1], "x", 1)
    assert lru.get(keys[0]) is None
    for k in keys[:3]:
        assert lru.put(k, _entry(4))
    assert lru.get(keys[0]) is not None  # keys[0] becomes the most recent
    lru.put(keys[3], _entry(4))  # over 3 entries: evicts keys[1], the least recent
    assert keys[1] not in lru and keys[0] in lru and len(lru) == 3
    s = lru.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["bytes"]) == (1, 1, 1, 3 * one)
    # the byte bound: a 9-unit entry pushes out the two least recent (3 + 9 > 10 units)
    assert lru.put(keys[4], _entry(36))
    assert len(lru) == 2 and lru.bytes == 10 * one and keys[2] not in lru and keys[0] not in lru
    assert not lru.put(keys[0], _entry(44)) and lru.stats()["too_large"] == 1 and len(lru) == 2
    # replacing an entry re-counts its bytes: 10 - 1 + 2 units evicts keys[4]
    assert lru.put(keys[3], _entry(8))
    assert lru.bytes == 2 * one and keys[4] not in lru and keys[3] in lru
    with pytest.raises(ConfigError):
        ContextCache(0, 1)


# ---------------------------------------------------------------- the service, tiny model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _service(tiny, **config) -> LLMService:
    config.setdefault("press", "knorm")
    config.setdefault("budget", 0.5)
    config.setdefault("min_compress_tokens", 16)
    return LLMService(WorkerConfig(**config), loaded=tiny)


def _post(svc, path, body, expect=200):
    reply = svc.handle("POST", path, json.dumps(body).encode() if isinstance(body, dict) else body)
    assert reply.status == expect, reply.body
    return reply.body


def test_completion_and_chat_shapes(tiny):
    svc = _service(tiny)
    assert svc.model_name == "tiny-llama"
    out = _post(svc, "/v1/completions", {"prompt": "The quick brown fox", "max_tokens": 4})
    assert (
        out["object"] == "text_completion" and out["id"].startswith("cmpl-") and out["model"] == "tiny-llama"
    )
    assert isinstance(out["created"], int) and len(out["choices"]) == 1
    choice = out["choices"][0]
    assert (
        choice["index"] == 0
        and isinstance(choice["text"], str)
        and choice["finish_reason"] in ("stop", "length")
    )
    prompt_tokens = len(tiny.tokenizer("The quick brown fox")["input_ids"])
    usage = out["usage"]
    assert usage["prompt_tokens"] == prompt_tokens and 1 <= usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 4

    out = _post(
        svc, "/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 3}
    )
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"]["role"] == "assistant"
    rendered = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    assert out["usage"]["prompt_tokens"] == len(tiny.tokenizer(rendered)["input_ids"])

    models = svc.handle("GET", "/v1/models").body
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny-llama"]
    assert svc.handle("GET", "/v1/completions").status == 405
    assert svc.handle("POST", "/v1/models").status == 405
    assert svc.handle("GET", "/v2/nothing").status == 404
    wrong = _post(svc, "/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404)
    assert wrong["error"]["code"] == "model_not_found"


def test_context_reuse_skips_prefill_and_keeps_the_cache_intact(tiny):
    svc = _service(tiny, press="snapkv", budget=0.25, press_options={"window_size": 8})
    # Seeded sampling makes the answer depend on every logit, so any change to the cache
    # a request decodes from shows up as a different text.
    body = {"prompt": QUESTION, "context": CONTEXT, "max_tokens": 12, "temperature": 1.0, "seed": 7}
    first = _post(svc, "/v1/completions", body)
    kv = first["kv_cache"]
    assert not kv["reused"] and kv["compressed"] and kv["prefill_ms"] > 0
    n_ctx = len(tiny.tokenizer(CONTEXT)["input_ids"])
    assert kv["context_tokens"] == n_ctx and kv["kept_tokens"] == int(n_ctx * 0.25)

    (key, entry), *_ = svc.contexts._entries.items()
    assert key == context_key(tiny.tokenizer(CONTEXT)["input_ids"], "snapkv", 0.25)
    # (inference-mode tensors keep no version counter: compare values and storage)
    snapshot = [(k.clone(), v.clone(), k.data_ptr(), v.data_ptr()) for k, v in entry.layers]

    second = _post(svc, "/v1/completions", body)
    assert second["kv_cache"]["reused"] and second["kv_cache"]["prefill_ms"] == 0
    assert second["choices"] == first["choices"]
    _post(
        svc, "/v1/completions", {**body, "prompt": "Which city is the capital of France?", "max_tokens": 20}
    )
    for (k, v), (k0, v0, kptr, vptr) in zip(entry.layers, snapshot, strict=True):
        assert k.data_ptr() == kptr and v.data_ptr() == vptr
        assert torch.equal(k, k0) and torch.equal(v, v0)
    third = _post(svc, "/v1/completions", body)
    assert third["choices"] == first["choices"]

    stats = svc.handle("GET", "/stats").body
    cc = stats["context_cache"]
    assert (cc["hits"], cc["misses"], cc["entries"]) == (3, 1, 1)
    assert cc["prefill_seconds_saved"] > 0 and stats["requests"] == 4

    # a worker that never saw the context computes the same answer from scratch
    fresh = _service(tiny, press="snapkv", budget=0.25, press_options={"window_size": 8})
    assert _post(fresh, "/v1/completions", body)["choices"] == first["choices"]
    # ... and a different context gives a different one (this test can fail)
    other = _post(fresh, "/v1/completions", {**body, "context": " ".join(reversed(_CORPUS * 3))})
    assert other["choices"] != first["choices"]

    # another budget or press is another entry
    quarter = _post(svc, "/v1/completions", {**body, "kv_budget": 0.5})["kv_cache"]
    assert not quarter["reused"] and quarter["kept_tokens"] == int(n_ctx * 0.5)
    assert not _post(svc, "/v1/completions", {**body, "kv_press": "full"})["kv_cache"]["reused"]
    assert svc.stats()["context_cache"]["entries"] == 3


@pytest.mark.parametrize("press", sorted(PRESSES))
def test_every_registry_press_serves_and_reuses(tiny, press):
    svc = _service(tiny, press=press, budget=0.25)
    body = {"prompt": QUESTION, "context": CONTEXT, "max_tokens": 4, "temperature": 1.0, "seed": 3}
    first = _post(svc, "/v1/completions", body)
    second = _post(svc, "/v1/completions", body)
    assert not first["kv_cache"]["reused"] and second["kv_cache"]["reused"]
    assert second["choices"] == first["choices"]
    kv = first["kv_cache"]
    full_bytes = _post(svc, "/v1/completions", {**body, "kv_press": "full"})["kv_cache"]["kv_bytes"]
    if press == "full":
        assert not kv["compressed"] and kv["kv_bytes"] == full_bytes
    else:
        assert kv["compressed"] and kv["kv_bytes"] < full_bytes
    # Only SentenceKV's offload holds the full prefill off the device, and the LRU counts it.
    offloaded = kv["kv_offloaded_bytes"]
    assert (offloaded == full_bytes) if press == "sentencekv_offload" else offloaded == 0
    held = kv["kv_bytes"] + offloaded + (full_bytes if press != "full" else 0)  # + the full entry
    assert svc.stats()["context_cache"]["bytes"] == held


def test_matches_kvpress_pipeline(tiny):
    """Chat with a `context` is kvpress's pipeline layout: the same answer, hit or miss."""
    from kvpress import KVPressTextGenerationPipeline

    pipe = KVPressTextGenerationPipeline(model=tiny.model, tokenizer=tiny.tokenizer)
    svc = _service(tiny, press="snapkv", budget=0.3, press_options={"window_size": 8})
    for context in (CONTEXT, " ".join(reversed(_CORPUS * 2))):
        want = pipe(
            context + "\n\n",
            question=QUESTION,
            press=make_press("snapkv", 0.3, window_size=8),
            max_new_tokens=10,
        )["answer"]
        body = {"messages": [{"role": "user", "content": QUESTION}], "context": context, "max_tokens": 10}
        for reused in (False, True):
            out = _post(svc, "/v1/chat/completions", body)
            assert out["kv_cache"]["reused"] is reused
            assert out["choices"][0]["message"]["content"] == want


def test_chat_history_is_the_reused_context(tiny):
    svc = _service(tiny)
    system = {"role": "system", "content": CONTEXT}
    a = _post(
        svc,
        "/v1/chat/completions",
        {"messages": [system, {"role": "user", "content": "one?"}], "max_tokens": 2},
    )
    b = _post(
        svc,
        "/v1/chat/completions",
        {"messages": [system, {"role": "user", "content": "two?"}], "max_tokens": 2},
    )
    assert not a["kv_cache"]["reused"] and b["kv_cache"]["reused"]
    assert a["kv_cache"]["context_tokens"] == b["kv_cache"]["context_tokens"] > 500


def test_short_contexts_are_not_compressed_and_lru_evicts(tiny):
    svc = _service(tiny, min_compress_tokens=64, context_cache_entries=2)
    short = _post(svc, "/v1/completions", {"prompt": "x", "context": "The quick brown fox.", "max_tokens": 1})
    assert not short["kv_cache"]["compressed"]
    assert short["kv_cache"]["kept_tokens"] == short["kv_cache"]["context_tokens"]
    for text in (CONTEXT, CONTEXT + " More."):
        _post(svc, "/v1/completions", {"prompt": "x", "context": text, "max_tokens": 1})
    again = _post(svc, "/v1/completions", {"prompt": "x", "context": "The quick brown fox.", "max_tokens": 1})
    assert not again["kv_cache"]["reused"] and svc.contexts.evictions >= 1


def test_bad_requests_then_the_worker_keeps_serving(tiny):
    svc = _service(tiny, max_context_tokens=300, max_new_tokens=16, default_max_tokens=8)
    good = {"prompt": QUESTION, "max_tokens": 2}
    cases = [
        (b"{not json", "bad_json"),
        (b'{"prompt": "\xff\xfe"}', "bad_encoding"),
        ({"prompt": ""}, "empty"),
        ({"prompt": QUESTION, "context": CONTEXT}, "context_length_exceeded"),  # ~580 tokens > 300
        ({"prompt": QUESTION, "max_tokens": 16, "context": " ".join(_CORPUS[:3])}, None),
        ({"prompt": QUESTION, "kv_press": "nosuchpress"}, "invalid_kv_press"),
        ({"prompt": QUESTION, "kv_budget": 0}, "invalid_kv_budget"),
        ({"prompt": QUESTION, "kv_budget": 2}, "invalid_kv_budget"),
        ({"prompt": QUESTION, "max_tokens": 17}, "invalid_max_tokens"),
        ({"prompt": ["a", "b"]}, "unsupported"),
    ]
    for body, code in cases:
        if code is None:
            assert _post(svc, "/v1/completions", body)["usage"]["completion_tokens"] >= 1
            continue
        out = _post(svc, "/v1/completions", body, 400)
        assert out["error"]["code"] == code, (body, out)
        assert _post(svc, "/v1/completions", good)["usage"]["completion_tokens"] >= 1
    stats = svc.stats()
    assert stats["errors"] == {"400": 9} and stats["requests"] == 2 * 9 + 1
    # a prompt that fits but leaves too little room for max_tokens
    long_prompt = " ".join(_CORPUS)
    n = len(tiny.tokenizer(long_prompt)["input_ids"])
    tight = _service(tiny, max_context_tokens=n + 5)
    out = _post(tight, "/v1/completions", {"prompt": long_prompt, "max_tokens": 6}, 400)
    assert out["error"]["code"] == "context_length_exceeded" and str(n + 5) in out["error"]["message"]
    assert _post(tight, "/v1/completions", {"prompt": long_prompt, "max_tokens": 5})["choices"]
    with pytest.raises(ConfigError, match="press"):
        _service(tiny, press="nosuchpress")


def _events(reply) -> list:
    assert reply.status == 200 and reply.stream is not None
    raw = b"".join(reply.stream).decode()
    chunks = [c for c in raw.split("\n\n") if c]
    assert all(c.startswith("data: ") for c in chunks)
    assert chunks[-1] == "data: [DONE]"
    return [json.loads(c[6:]) for c in chunks[:-1]]


def test_streaming_matches_non_streaming(tiny):
    svc = _service(tiny)
    body = {"messages": [{"role": "user", "content": QUESTION}], "context": CONTEXT, "max_tokens": 12}
    whole = _post(svc, "/v1/chat/completions", body)
    events = _events(
        svc.handle(
            "POST",
            "/v1/chat/completions",
            json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode(),
        )
    )
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == [whole["choices"][0]["finish_reason"]]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
    assert events[-1]["kv_cache"]["reused"]

    events = _events(
        svc.handle(
            "POST",
            "/v1/completions",
            json.dumps({"prompt": QUESTION, "max_tokens": 5, "stream": True}).encode(),
        )
    )
    assert all(e["object"] == "text_completion" for e in events)
    plain = _post(svc, "/v1/completions", {"prompt": QUESTION, "max_tokens": 5})
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]


def test_stop_strings(tiny):
    svc = _service(tiny)
    body = {"prompt": "The secret number is", "max_tokens": 16, "temperature": 1.0, "seed": 1}
    text = _post(svc, "/v1/completions", body)["choices"][0]["text"]
    assert len(text) >= 6, text
    stop = text[3:5]
    cut = text[: text.find(stop)]
    out = _post(svc, "/v1/completions", {**body, "stop": [stop]})
    assert out["choices"][0]["text"] == cut and out["choices"][0]["finish_reason"] == "stop"
    events = _events(
        svc.handle("POST", "/v1/completions", json.dumps({**body, "stop": stop, "stream": True}).encode())
    )
    assert "".join(e["choices"][0]["text"] for e in events) == cut


def test_sampling_is_seeded(tiny):
    svc = _service(tiny)
    body = {"prompt": QUESTION, "max_tokens": 10, "temperature": 1.0}
    a = _post(svc, "/v1/completions", {**body, "seed": 1})["choices"][0]["text"]
    assert _post(svc, "/v1/completions", {**body, "seed": 1})["choices"][0]["text"] == a
    others = {_post(svc, "/v1/completions", {**body, "seed": s})["choices"][0]["text"] for s in (2, 3, 4)}
    assert others - {a}


def test_head_wise_press_masks_are_restored(tiny):
    """TaskKV keeps per-head masks on the attention modules: they travel with the cached
    context and are cleared after each decode."""
    svc = _service(tiny, press="taskkv", budget=0.25)
    attn = [m for _, m in svc._attention]
    body = {"prompt": QUESTION, "context": CONTEXT, "max_tokens": 6, "temperature": 1.0, "seed": 5}
    first = _post(svc, "/v1/completions", body)
    (entry,) = svc.contexts._entries.values()
    assert entry.masked, "taskkv left no masks: the restore path is not exercised"
    assert all(getattr(m, a, None) is None for m in attn for a in HEAD_MASK_ATTRIBUTES)
    # an unrelated request in between (its prefill resets the modules' masks)
    _post(
        svc, "/v1/completions", {"prompt": "The quick brown fox", "context": CONTEXT[:200], "max_tokens": 3}
    )
    second = _post(svc, "/v1/completions", body)
    assert second["kv_cache"]["reused"] and second["choices"] == first["choices"]


def test_generation_request_defaults():
    req = GenerationRequest(kind="completion", press="full", budget=1.0, prompt="x")
    assert req.max_tokens is None and req.stop == () and req.include_usage is False


def test_ray_app_takes_resources_from_the_config():
    pytest.importorskip("ray.serve")
    from edgecache.llm.worker import app, build_app

    # as `serve run edgecache.llm.worker:build_app key=value ...` passes them: strings
    built = build_app({"press": "snapkv", "budget": "0.25", "num_gpus": "1", "torch_threads": "1"})
    dep = built._bound_deployment
    assert dep.name == "LLMWorker" and dep.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert WorkerConfig.from_dict(dep.init_args[0]) == WorkerConfig(
        press="snapkv", budget=0.25, num_gpus=1, torch_threads=1
    )
    dep = app({"ray_actor_options": {"num_cpus": 0.5}, "num_replicas": 2}, press="knorm")._bound_deployment
    assert dep.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.0} and dep.num_replicas == 2
    with pytest.raises(ConfigError):
        app(budget=0)  # refused before anything reaches Ray
