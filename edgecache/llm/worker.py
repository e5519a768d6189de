"""`LLMWorker`: a Ray Serve deployment answering OpenAI-style requests with a compressed KV cache.

    from ray import serve
    from edgecache.llm.worker import app
    serve.run(app(press="snapkv", budget=0.25), route_prefix="/llm")

or `serve run edgecache.llm.worker:build_app press=snapkv budget=0.25` (docs/llm.md).

HTTP API (JSON; bodies as OpenAI's, plus `context`, `kv_press`, `kv_budget`, see
`edgecache.llm.protocol`):

    POST /v1/completions        {"prompt": "...", "max_tokens": 8}
    POST /v1/chat/completions   {"messages": [...], "stream": true}
    GET  /v1/models             the served model
    GET  /stats                 requests, tokens, context-cache hits/misses/bytes

How a request runs. Its prompt is split in two: a *context* (the `context` field, or for
chat everything the chat template puts before the last user message, or for a bare
completion every prompt token but the last) and a *question* (the rest). The context is
prefilled with the press installed (kvpress's `press(model)` context manager, exactly as
`KVPressTextGenerationPipeline._forward` does it), so its KV cache is compressed to
`budget`; the question is then fed uncompressed and the answer decoded, with RoPE
positions continuing from the context's original length, as in kvpress's pipeline.

Context reuse. The prefilled context is kept in an LRU (`ContextCache`) keyed by
(sha256 of its token ids, press, budget). A later request with the same context skips the
prefill and the compression. Stored tensors are never written to: each request decodes
into a fresh `DynamicCache` holding copies of them. (kvpress's pipeline instead keeps one
cache object and, after each question, slices every layer back to its pre-question length;
that leaves the context values intact, since DynamicLayer appends with `torch.cat`, but the
object itself is shared state, wrong for interleaved requests.) Head-wise presses keep
per-head masks on the attention modules, not in the cache, until the next prefill; they are
saved with the entry and put back before each decode.

Decoding is our loop rather than kvpress's `generate_answer`, because that returns only
the final string: an OpenAI response needs token counts, a finish reason, stop strings,
sampling and streaming. It follows the same steps (question forward with explicit
position ids, then one token at a time).

One replica serves one request at a time (`threading.Lock`): the press hooks and the
head-wise masks live on the shared model. Requests are parsed and checked before they
wait for the model, and a bad one gets a 4xx with {"error": {"code", "message"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..httperrors import RequestError, check_declared_length
from .model import PACKAGED_NAME
from .protocol import GenerationRequest, Kind, WorkerConfig, parse_request

logger = logging.getLogger(__name__)

ROUTES: dict[str, Kind] = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}

__all__ = [
    "CompressedContext",
    "ContextCache",
    "ContextKey",
    "LLMService",
    "LLMWorker",
    "Reply",
    "WorkerConfig",
    "app",
    "build_app",
    "deployment",
]


# ---------------------------------------------------------------- the compressed-context LRU


@dataclass(frozen=True)
class ContextKey:
    digest: str  # sha256 of the context's token ids
    press: str
    budget: float


def context_key(token_ids: list[int], press: str, budget: float) -> ContextKey:
    raw = b"".join(int(t).to_bytes(4, "little", signed=False) for t in token_ids)
    return ContextKey(hashlib.sha256(raw).hexdigest(), press, float(budget))


@dataclass
class CompressedContext:
    """The KV cache of one prefilled (and compressed) context. Never written to once stored.

    layers: (keys, values) per layer, (1, kv_heads, kept_tokens, head_dim) each.
    context_length: tokens before compression; the question's RoPE positions start here.
    masked: (attention-module name, attribute) -> head mask (head-wise presses only).
    offload: the full prefill KV a press keeps off the device for questions to retrieve from
    (SentenceKV's `SentenceStore`), or None.
    """

    layers: tuple[tuple[Any, Any], ...]
    context_length: int
    masked: dict[tuple[str, str], Any] = field(default_factory=dict)
    prefill_s: float = 0.0
    compressed: bool = False
    offload: Any = None

    @property
    def nbytes(self) -> int:
        """KV bytes a request attends to before its question (on the device)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    @property
    def offloaded_bytes(self) -> int:
        return self.offload.nbytes if self.offload is not None else 0

    @property
    def held_bytes(self) -> int:
        """All the memory the entry holds, offloaded KV included: what the LRU bounds."""
        return self.nbytes + self.offloaded_bytes

    @property
    def kept_tokens(self) -> int:
        """The longest layer's length (layer-adaptive presses keep different lengths)."""
        return max((int(k.shape[-2]) for k, _ in self.layers), default=0)

    def fresh_cache(self) -> Any:
        """A new DynamicCache holding copies of the stored tensors, for one request to extend."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in self.layers])


class ContextCache:
    """LRU of `CompressedContext`s bounded by entry count and by KV bytes; thread-safe.

    An entry larger than `max_bytes` on its own is not stored (it would evict everything
    and then itself)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ConfigError("ContextCache needs max_entries >= 1 and max_bytes >= 1")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[ContextKey, CompressedContext] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.too_large = 0
        self.seconds_saved = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: ContextKey) -> bool:
        return key in self._entries

    def get(self, key: ContextKey) -> CompressedContext | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            self.seconds_saved += entry.prefill_s
            return entry

    def put(self, key: ContextKey, entry: CompressedContext) -> bool:
        size = entry.held_bytes
        with self._lock:
            if size > self.max_bytes:
                self.too_large += 1
                return False
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.held_bytes
            self._entries[key] = entry
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.held_bytes
                self.evictions += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self.bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "too_large": self.too_large,
                "prefill_seconds_saved": round(self.seconds_saved, 4),
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
            }


# ---------------------------------------------------------------- replies and text assembly


@dataclass
class Reply:
    """What `LLMService.handle` answers: a JSON body, or a stream of SSE byte chunks."""

    status: int
    body: dict[str, Any] | None = None
    stream: Iterator[bytes] | None = None


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


class _TextAssembler:
    """Turns generated token ids into text pieces safe to send: a piece never ends inside a
    multi-byte character (decoded as U+FFFD until complete) or inside what may become a stop
    string, and the text ends before the first stop string."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False
        # The answer as a whole, from one decode of all ids: what a non-streamed response
        # returns even if a tokenizer's decode of a prefix is not a prefix of the whole.
        self.final = ""

    def _text(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.ids.append(token)
        full = self._text()
        cut = min((i for i in (full.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.final = full[:cut]
            return self._emit(self.final)
        safe = len(full.rstrip("\ufffd"))
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, safe), 0, -1):
                if full[:safe].endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return self._emit(full[: safe - hold])

    def finish(self) -> str:
        if self.stopped:
            return ""
        self.final = self._text()
        return self._emit(self.final)

    def _emit(self, text: str) -> str:
        piece = text[len(self.sent) :] if text.startswith(self.sent) else ""
        if len(text) > len(self.sent):
            self.sent = text
        return piece


# ---------------------------------------------------------------- the worker core


@dataclass
class Prepared:
    """A request checked against the tokenizer and limits, ready for the model."""

    request: GenerationRequest
    context_ids: list[int]
    question_ids: list[int]
    max_tokens: int
    press: Any


@dataclass
class _Generation:
    """What one decode produced, filled in as it runs."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "length"
    reused: bool = False
    compressed: bool = False
    kept_tokens: int = 0
    kv_bytes: int = 0
    kv_offloaded_bytes: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


def _served_name(model: str | None) -> str:
    """The id `/v1/models` shows: a built copy's manifest name (its folder is a content
    hash), a folder's name, or the hub id."""
    if model is None:
        return PACKAGED_NAME
    path = Path(model).expanduser()
    if not path.exists():
        return model
    try:
        name = json.loads((path / "manifest.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else path.name


class LLMService:
    """Model + tokenizer + press registry + context LRU: what one replica runs, without Ray.

    loaded: an `edgecache.llm.model.LoadedModel` (default: `load_model(config.model, ...)`).
    """

    def __init__(self, config: WorkerConfig | dict[str, Any] | None = None, loaded: Any = None) -> None:
        if config is None:
            config = WorkerConfig()
        self.config = config if isinstance(config, WorkerConfig) else WorkerConfig.from_dict(config)
        if self.config.torch_threads is not None:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        if loaded is None:
            from .model import load_model

            loaded = load_model(self.config.model, device=self.config.device, dtype=self.config.dtype)
            default_name = _served_name(self.config.model)
        else:
            default_name = _served_name(self.config.model or str(loaded.source))
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, str(loaded.device)
        self.source = str(loaded.source)
        self.model_name = self.config.model_name or default_name
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_context_tokens = min(
            self.config.max_context_tokens, int(limit or self.config.max_context_tokens)
        )
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids = {int(t) for t in eos_ids if t is not None}
        try:
            self.make_press(self.config.press, self.config.budget)
        except RequestError as exc:
            raise ConfigError(f"WorkerConfig press/budget: {exc.message}") from None
        self.contexts = ContextCache(self.config.context_cache_entries, self.config.context_cache_bytes)
        self._model_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._attention = [
            (n, m) for n, m in self.model.named_modules() if type(m).__name__.endswith("Attention")
        ]
        self.created = int(time.time())
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.errors: dict[int, int] = {}

    # ------------------------------------------------------------ presses

    def make_press(self, name: str, budget: float) -> Any:
        """The press for (name, budget) (None for "full"), or a 400 RequestError naming what
        is wrong. The budget is already validated (`WorkerConfig`, `protocol._press`)."""
        from .presses import make_press

        # The configured options belong to the configured press; another press a request
        # picks runs with its defaults. The tokenizer is for presses that read text
        # structure (SentenceKV).
        options = self.config.press_options if name == self.config.press else {}
        try:
            press = make_press(name, budget, tokenizer=self.tokenizer, **options)
        except ConfigError as exc:
            raise RequestError(400, "invalid_kv_press", str(exc)) from None
        if press is None:
            return None
        from kvpress import DecodingPress, PrefillDecodingPress

        if isinstance(press, DecodingPress | PrefillDecodingPress):
            # Its cache changes while decoding, so a compressed context could not be shared.
            raise RequestError(
                400, "invalid_kv_press", f"press {name!r} compresses during decoding; unsupported"
            )
        return press

    # ------------------------------------------------------------ prompts

    def _encode(self, text: str, first: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=first)["input_ids"])

    def _chat_parts(self, request: GenerationRequest) -> tuple[str, str]:
        """(context text, question text) of a chat: the template's rendering split where the
        last user message's question begins."""
        *history, last = request.messages
        marker = f"<<edgecache-question-{uuid.uuid4().hex}>>"
        content = f"{request.context}\n\n{marker}" if request.context else marker
        turns = [{"role": m.role, "content": m.content} for m in history] + [
            {"role": "user", "content": content}
        ]
        if getattr(self.tokenizer, "chat_template", None):
            rendered = str(
                self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            )
        else:
            rendered = "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"
        before, found, after = rendered.partition(marker)
        if not found:
            raise ConfigError("the chat template dropped the last user message")
        return before, last.content + after

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Tokenize and check limits; a RequestError (4xx) for what the model cannot take."""
        if request.model is not None and request.model != self.model_name:
            raise RequestError(
                404, "model_not_found", f"model {request.model!r} is not served here; use {self.model_name!r}"
            )
        press = self.make_press(request.press, request.budget)
        if request.kind == "chat":
            context, question = self._chat_parts(request)
            context_ids = self._encode(context, True)
            question_ids = self._encode(question, not context_ids)
        elif request.context is not None:
            context_ids = self._encode(request.context, True)
            question_ids = self._encode(request.prompt, False)
        else:
            ids = self._encode(request.prompt, True)
            # The last token is fed as the question: decoding needs its logits, and kvpress
            # compresses only what is prefilled before the question.
            context_ids, question_ids = ids[:-1], ids[-1:]
        if not question_ids:
            raise RequestError(400, "empty", "the prompt tokenizes to nothing")
        total = len(context_ids) + len(question_ids)
        room = self.max_context_tokens - total
        if room < 1 or (request.max_tokens is not None and request.max_tokens > room):
            asked = request.max_tokens or 1
            raise RequestError(
                400,
                "context_length_exceeded",
                f"the prompt has {total} tokens and {asked} more were asked for; "
                f"this worker's limit is {self.max_context_tokens} tokens",
            )
        max_tokens = request.max_tokens or min(self.config.default_max_tokens, room)
        return Prepared(request, context_ids, question_ids, max_tokens, press)

    # ------------------------------------------------------------ prefill, compression, reuse

    def _prefill(self, prepared: Prepared) -> tuple[CompressedContext | None, bool]:
        """The context's compressed cache, from the LRU or freshly prefilled; (None, False) when
        the context is empty."""
        import torch
        from transformers import DynamicCache

        ids = prepared.context_ids
        if not ids:
            return None, False
        request = prepared.request
        key = context_key(ids, request.press, request.budget)
        entry = self.contexts.get(key)
        if entry is not None:
            return entry, True
        compress = prepared.press is not None and len(ids) >= self.config.min_compress_tokens
        cache = DynamicCache()
        t0 = time.perf_counter()
        with torch.inference_mode(), prepared.press(self.model) if compress else contextlib.nullcontext():
            # Without the LM head, as kvpress's pipeline prefills: only the cache is wanted.
            self.model.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=cache)
        layers = tuple((layer.keys, layer.values) for layer in cache.layers)
        # Imported here, not at the top: importing the presses imports kvpress, which this module
        # leaves to the replica (a driver only binds the deployment).
        from .presses.measure import HEAD_MASK_ATTRIBUTES

        masked = {}
        for name, module in self._attention:
            for attr in HEAD_MASK_ATTRIBUTES:
                value = getattr(module, attr, None)
                if value is not None:
                    masked[name, attr] = value
        offload = getattr(prepared.press, "store", None) if compress else None
        entry = CompressedContext(layers, len(ids), masked, time.perf_counter() - t0, compress, offload)
        self.contexts.put(key, entry)
        return entry, False

    def _restore_masks(self, entry: CompressedContext | None) -> None:
        from .presses.measure import HEAD_MASK_ATTRIBUTES

        for name, module in self._attention:
            for attr in HEAD_MASK_ATTRIBUTES:
                value = entry.masked.get((name, attr)) if entry is not None else None
                if value is not None or getattr(module, attr, None) is not None:
                    setattr(module, attr, value)

    # ------------------------------------------------------------ decoding

    def _pick(self, logits: Any, request: GenerationRequest, generator: Any) -> int:
        import torch

        if request.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float().cpu() / request.temperature, dim=-1)
        if request.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            sorted_p = sorted_p * ((sorted_p.cumsum(0) - sorted_p) < request.top_p)
            return int(order[torch.multinomial(sorted_p, 1, generator=generator)])
        return int(torch.multinomial(probs, 1, generator=generator))

    def _decode(self, prepared: Prepared, gen: _Generation) -> Iterator[str]:
        """Text pieces of the answer; holds the model lock until the generator finishes or
        is closed (a client that hangs up mid-stream)."""
        import torch

        request = prepared.request
        text = _TextAssembler(self.tokenizer, request.stop)
        generator = torch.Generator()
        if request.seed is not None:
            generator.manual_seed(request.seed)
        else:
            generator.seed()
        with self._model_lock, torch.inference_mode():
            entry, gen.reused = self._prefill(prepared)
            if entry is not None:
                gen.compressed, gen.kept_tokens, gen.kv_bytes, gen.kv_offloaded_bytes = (
                    entry.compressed,
                    entry.kept_tokens,
                    entry.nbytes,
                    entry.offloaded_bytes,
                )
                gen.prefill_s = 0.0 if gen.reused else entry.prefill_s
            self._restore_masks(entry)
            cache = entry.fresh_cache() if entry is not None else None
            start = entry.context_length if entry is not None else 0
            t0 = time.perf_counter()
            ids = torch.tensor([prepared.question_ids], device=self.device)
            positions = torch.arange(start, start + ids.shape[1], device=self.device).unsqueeze(0)
            if cache is None:
                from transformers import DynamicCache

                cache = DynamicCache()
            retrieval = contextlib.ExitStack()
            if entry is not None and entry.offload is not None:
                # SentenceKV's offload: the question brings back what compression evicted.
                retrieval.enter_context(entry.offload.retrieving(self.model))
            try:
                for _ in range(prepared.max_tokens):
                    out = self.model(
                        input_ids=ids, past_key_values=cache, position_ids=positions, logits_to_keep=1
                    )
                    token = self._pick(out.logits[0, -1], request, generator)
                    gen.completion_tokens += 1
                    if token in self.eos_ids:
                        gen.finish_reason = "stop"
                        break
                    piece = text.push(token)
                    if piece:
                        yield piece
                    if text.stopped:
                        gen.finish_reason = "stop"
                        break
                    ids = torch.tensor([[token]], device=self.device)
                    positions = positions[:, -1:] + 1
                tail = text.finish()
                gen.text = text.final
                if tail:
                    yield tail
            finally:
                retrieval.close()
                gen.decode_s = time.perf_counter() - t0
                # A head-wise mask left on the model would corrupt the next uncompressed prefill.
                self._restore_masks(None)

    # ------------------------------------------------------------ OpenAI responses

    def _usage(self, prepared: Prepared, gen: _Generation) -> dict[str, int]:
        prompt = len(prepared.context_ids) + len(prepared.question_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": gen.completion_tokens,
            "total_tokens": prompt + gen.completion_tokens,
        }

    def _kv_report(self, prepared: Prepared, gen: _Generation) -> dict[str, Any]:
        return {
            "press": prepared.request.press,
            "budget": prepared.request.budget,
            "context_tokens": len(prepared.context_ids),
            "kept_tokens": gen.kept_tokens,
            "kv_bytes": gen.kv_bytes,
            "kv_offloaded_bytes": gen.kv_offloaded_bytes,
            "compressed": gen.compressed,
            "reused": gen.reused,
            "prefill_ms": round(gen.prefill_s * 1000, 2),
            "decode_ms": round(gen.decode_s * 1000, 2),
        }

    def _count(self, prepared: Prepared, gen: _Generation) -> None:
        with self._stats_lock:
            self.prompt_tokens += len(prepared.context_ids) + len(prepared.question_ids)
            self.completion_tokens += gen.completion_tokens

    def complete(self, prepared: Prepared) -> dict[str, Any]:
        """The whole answer as an OpenAI (chat) completion object."""
        gen = _Generation()
        for _ in self._decode(prepared, gen):
            pass
        text = gen.text
        self._count(prepared, gen)
        chat = prepared.request.kind == "chat"
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": gen.finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": gen.finish_reason, "logprobs": None}
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": self._usage(prepared, gen),
            "kv_cache": self._kv_report(prepared, gen),
        }

    def stream(self, prepared: Prepared) -> Iterator[bytes]:
        """The answer as OpenAI's server-sent events, ending with `data: [DONE]`."""
        chat = prepared.request.kind == "chat"
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
        }

        def chunk(piece: str | None, finish: str | None = None) -> bytes:
            if chat:
                delta: dict[str, Any] = {} if piece is None else {"content": piece}
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
            return _sse({**base, "choices": [choice]})

        gen = _Generation()
        if chat:
            yield _sse(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    ],
                }
            )
        try:
            for piece in self._decode(prepared, gen):
                yield chunk(piece)
        except Exception as exc:  # the status line is gone: report in-band, as OpenAI does
            logger.exception("generation failed mid-stream")
            self._error(500)
            yield _sse({"error": {"code": "internal_error", "message": str(exc)}})
            return
        self._count(prepared, gen)
        yield chunk(None, gen.finish_reason)
        if prepared.request.include_usage:
            yield _sse(
                {
                    **base,
                    "choices": [],
                    "usage": self._usage(prepared, gen),
                    "kv_cache": self._kv_report(prepared, gen),
                }
            )
        yield _sse("[DONE]")

    # ------------------------------------------------------------ HTTP-shaped entry point

    def _error(self, status: int) -> None:
        with self._stats_lock:
            self.errors[status] = self.errors.get(status, 0) + 1

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "edgecache"}
            ],
        }

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            counts = {
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "errors": {str(k): v for k, v in sorted(self.errors.items())},
            }
        return {
            "model": self.model_name,
            "source": self.source,
            "device": self.device,
            "press": self.config.press,
            "budget": self.config.budget,
            "max_context_tokens": self.max_context_tokens,
            **counts,
            "context_cache": self.contexts.stats(),
        }

    def handle(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> Reply:
        """One HTTP request, routed: what the Ray deployment calls, and what tests drive directly."""
        path = "/" + path.strip("/")
        try:
            if path in ROUTES:
                if method != "POST":
                    raise RequestError(405, "method_not_allowed", f"{path} takes POST")
                with self._stats_lock:
                    self.requests += 1
                request = parse_request(body, content_type, ROUTES[path], self.config)
                prepared = self.prepare(request)
                if request.stream:
                    return Reply(200, stream=self.stream(prepared))
                return Reply(200, self.complete(prepared))
            if path in ("/v1/models", "/stats"):
                if method != "GET":
                    raise RequestError(405, "method_not_allowed", f"{path} takes GET")
                return Reply(200, self.models() if path == "/v1/models" else self.stats())
            raise RequestError(
                404,
                "not_found",
                f"no route {path}; use /v1/completions, /v1/chat/completions, /v1/models, /stats",
            )
        except RequestError as exc:
            self._error(exc.status)
            return Reply(exc.status, exc.body())
        except Exception as exc:  # the replica keeps serving; the client learns it was us
            logger.exception("request failed")
            self._error(500)
            return Reply(
                500, {"error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}}
            )


# ---------------------------------------------------------------- the Ray Serve deployment


class LLMWorker:
    """The deployment's body (wrapped by `deployment()`): HTTP in, `LLMService` underneath."""

    def __init__(self, config: dict[str, Any] | WorkerConfig) -> None:
        self.service = LLMService(config)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        limit = self.service.config.max_body_bytes
        try:
            check_declared_length(request.headers, limit)
        except RequestError as error:
            self.service._error(error.status)
            return JSONResponse(error.body(), status_code=error.status)
        body = await request.body()
        ctype = request.headers.get("content-type", "")
        # The model runs in a thread so that the replica's event loop keeps answering
        # /stats and queueing requests meanwhile.
        reply = await asyncio.get_running_loop().run_in_executor(
            None, self.service.handle, request.method, path, body, ctype
        )
        if reply.stream is not None:
            return StreamingResponse(reply.stream, media_type="text/event-stream")
        return JSONResponse(reply.body, status_code=reply.status)


def deployment(**options: Any) -> Any:
    """`LLMWorker` as a Ray Serve deployment; `options` go to `serve.deployment`."""
    from ray import serve

    options.setdefault("name", "LLMWorker")
    return serve.deployment(**options)(LLMWorker)


def app(deployment_options: dict[str, Any] | None = None, **config: Any) -> Any:
    """A bound application: `serve.run(app(press="snapkv", budget=0.25, num_gpus=1))`.

    The replica's `ray_actor_options` take num_cpus/num_gpus from the config unless
    `deployment_options` sets them."""
    cfg = WorkerConfig(**config)  # validated here, before Ray
    options = dict(deployment_options or {})
    actor = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, **options.get("ray_actor_options", {})}
    options["ray_actor_options"] = actor
    return deployment(**options).bind(cfg.to_dict())


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for `serve run edgecache.llm.worker:build_app press=snapkv ...` and
    Serve config files (`args` = WorkerConfig fields; CLI values arrive as strings)."""
    cfg = WorkerConfig.from_strings(dict(args))
    return app(**cfg.to_dict())
