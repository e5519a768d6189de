"""Configuration and request parsing (OpenAI protocol) for the LLM worker (`edgecache.llm.worker`).

Torch-free and Ray-free on purpose: everything a client can get wrong is decided here,
from bytes and a content type, so it is unit-testable without a model and the worker
refuses a bad request before touching the model (which it could not do concurrently).

Request bodies follow OpenAI's `/v1/completions` and `/v1/chat/completions`, plus three
optional fields of ours:

    context    a long text shared by several requests; its compressed KV cache is kept
               and reused by the next request with the same context (the question, i.e.
               `prompt` or the last user message, is never compressed)
    kv_press   the compression method for this request (a name of `edgecache.llm.PRESSES`)
    kv_budget  the fraction of the context's KV cache kept, in (0, 1]

Fields OpenAI defines but the worker cannot honour (n > 1, logprobs, tools, echo, ...)
are refused with a 400 naming them rather than silently ignored; unknown fields too, as
OpenAI does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..errors import ConfigError
from ..httperrors import RequestError, decode_json_body
from ..policy import refuse_unknown_keys
from ..settings_strings import dataclass_from_strings

Kind = Literal["completion", "chat"]
ROLES = ("system", "developer", "user", "assistant")

__all__ = [
    "ChatMessage",
    "GenerationRequest",
    "RequestError",
    "WorkerConfig",
    "decode_json_body",
    "parse_request",
]


# ---------------------------------------------------------------- configuration


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"WorkerConfig.{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything an `LLMWorker` replica needs; plain values, so it travels to Ray as a dict.

    model: a Hugging Face causal-LM folder or hub id; None = the packaged SmolLM2 copy
        built by `edgecache llm build`.
    model_name: the id served in `/v1/models` and checked against a request's `model`;
        defaults to the folder's name (or "smollm2-135m-instruct").
    device: "auto" (CUDA when torch sees one, else CPU), "cpu", "cuda" or "cuda:N".
    dtype: "auto" (float32 on CPU, bf16/fp16 on GPU), "float32", "bfloat16", "float16".
    press, budget: the default compression (a `PRESSES` name, "full" = none) and the
        fraction of the context's KV cache it keeps.
    press_options: keyword options of that press (e.g. {"window_size": 32}); a press a
        request picks instead runs with its defaults.
    allow_press_override: whether requests may choose another press/budget.
    max_context_tokens: prompt + completion tokens allowed (capped at the model's own limit).
    max_new_tokens: the largest `max_tokens` a request may ask for.
    default_max_tokens: `max_tokens` when a request gives none (within the room left and
        at most max_new_tokens).
    min_compress_tokens: contexts shorter than this are cached uncompressed: window-based
        presses need more tokens than their observation window, and compressing a short
        context saves next to nothing.
    context_cache_entries, context_cache_bytes: bounds of the LRU of compressed contexts.
    max_body_bytes: larger request bodies get a 413.
    num_cpus, num_gpus: the replica's Ray resources (`ray_actor_options`).
    torch_threads: torch's intra-op threads in the replica (None: torch's default, which
        Ray bounds by num_cpus through OMP_NUM_THREADS). On a CPU shared with other work,
        fewer threads than cores avoids OpenMP threads spinning on descheduled peers,
        which was seen to slow decoding 3-5x.
    """

    model: str | None = None
    model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    press: str = "snapkv"
    budget: float = 0.5
    press_options: dict[str, Any] = field(default_factory=dict)
    allow_press_override: bool = True
    max_context_tokens: int = 4096
    max_new_tokens: int = 512
    default_max_tokens: int = 64
    min_compress_tokens: int = 128
    context_cache_entries: int = 16
    context_cache_bytes: int = 1 << 30
    max_body_bytes: int = 4 << 20
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("model", "model_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"WorkerConfig.{name} must be a non-empty string or None, got {value!r}")
        for name in ("device", "dtype", "press"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"WorkerConfig.{name} must be a string")
        if not isinstance(self.press_options, dict):
            raise ConfigError("WorkerConfig.press_options must be a dict")
        object.__setattr__(self, "press", self.press.strip().lower())
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or not 0 < b <= 1:
            raise ConfigError(f"WorkerConfig.budget must be a number in (0, 1], got {b!r}")
        if not isinstance(self.allow_press_override, bool):
            raise ConfigError("WorkerConfig.allow_press_override must be true or false")
        for name in (
            "max_context_tokens",
            "max_new_tokens",
            "default_max_tokens",
            "min_compress_tokens",
            "context_cache_entries",
            "context_cache_bytes",
            "max_body_bytes",
        ):
            _positive_int(name, getattr(self, name))
        if self.torch_threads is not None:
            _positive_int("torch_threads", self.torch_threads)
        # Lowering the cap alone must not make the (unchanged) default invalid.
        object.__setattr__(self, "default_max_tokens", min(self.default_max_tokens, self.max_new_tokens))
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"WorkerConfig.{name} must be a number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerConfig:
        refuse_unknown_keys(data, {f.name for f in fields(cls)}, "unknown WorkerConfig fields:")
        return cls(**data)

    @classmethod
    def from_strings(cls, args: dict[str, Any]) -> WorkerConfig:
        """From `serve run ... key=value` arguments, where every value arrives as a string."""
        return dataclass_from_strings(cls, args)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- parsed requests


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request. `max_tokens` None = the worker's default (within the room the
    prompt leaves); `budget` is 1.0 for press "full"."""

    kind: Kind
    press: str
    budget: float
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    context: str | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    model: str | None = None
    include_usage: bool = False


_COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "user",
    "n",
    "context",
    "kv_press",
    "kv_budget",
}
_FIELDS: dict[str, set[str]] = {
    "completion": _COMMON | {"prompt", "echo", "logprobs", "best_of", "suffix"},
    "chat": _COMMON | {"messages", "max_completion_tokens", "logprobs", "tools", "tool_choice", "functions"},
}
# Fields the worker accepts only at their "off" value: anything else changes what OpenAI
# would return in ways this worker does not implement.
_ONLY_DEFAULT: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
}
MAX_STOP = 4


def _string(name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RequestError(400, "bad_type", f"{name} must be a string, got {type(value).__name__}")
    try:
        # JSON may carry lone surrogates ("\ud800") that no tokenizer can encode.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "bad_encoding", f"{name} holds an unpaired surrogate") from None
    if not allow_empty and not value.strip():
        raise RequestError(400, "empty", f"{name} is empty")
    return value


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(400, "bad_type", f"{name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(
            400, f"invalid_{name}", f"{name} must lie in {bracket}{low:g}, {high:g}], got {value}"
        )
    return float(value)


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, "bad_type", f"{name} must be an integer, got {value!r}")
    if value < low:
        raise RequestError(400, f"invalid_{name}", f"{name} must be >= {low}, got {value}")
    return value


def _content(i: int, content: Any) -> str:
    """Message content as text: a string or a list of {"type": "text", "text": ...} parts."""
    name = f"messages[{i}].content"
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(400, "unsupported", f"{name}[{j}]: only text parts are supported")
            texts.append(_string(f"{name}[{j}].text", part.get("text"), allow_empty=True))
        content = "\n".join(texts)
    return _string(name, content, allow_empty=True)


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list):
        raise RequestError(400, "bad_type", "messages must be a list of message objects")
    if not value:
        raise RequestError(400, "empty", "messages is empty")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(400, "bad_type", f"messages[{i}] must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(400, "bad_role", f"messages[{i}].role must be one of {', '.join(ROLES)}")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise RequestError(400, "unsupported", f"messages[{i}]: unsupported fields {sorted(extra)}")
        # The chat templates of small models know "system" but not OpenAI's newer "developer".
        out.append(ChatMessage("system" if role == "developer" else role, _content(i, m.get("content"))))
    if out[-1].role != "user":
        raise RequestError(400, "bad_request", "the last message must be the user's")
    if not out[-1].content.strip():
        raise RequestError(400, "empty", f"messages[{len(out) - 1}].content (the question) is empty")
    return tuple(out)


def _press(payload: dict[str, Any], config: WorkerConfig) -> tuple[str, float]:
    name, budget = config.press, config.budget
    overridden = "kv_press" in payload or "kv_budget" in payload
    if overridden and not config.allow_press_override:
        raise RequestError(400, "press_override_disabled", "this worker does not accept kv_press/kv_budget")
    if "kv_press" in payload:
        name = _string("kv_press", payload["kv_press"]).strip().lower()
    if "kv_budget" in payload:
        budget = _number("kv_budget", payload["kv_budget"], 0.0, 1.0, low_open=True)
    if name == "full":
        budget = 1.0
    # Whether the name exists and the budget suits it is the press registry's call
    # (LLMService checks it with make_press before touching the model).
    return name, float(budget)


def parse_request(body: bytes, content_type: str, kind: Kind, config: WorkerConfig) -> GenerationRequest:
    """A validated `GenerationRequest` from an HTTP body, or a RequestError saying what is wrong.

    Token-level limits (the prompt against `max_context_tokens`) need the tokenizer and are
    checked by `LLMService.prepare`.
    """
    payload = decode_json_body(body, content_type, config.max_body_bytes)
    unknown = set(payload) - _FIELDS[kind]
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown fields {sorted(unknown)}")
    for name, allowed in _ONLY_DEFAULT.items():
        if name in payload and not any(
            payload[name] == a and type(payload[name]) is type(a) for a in allowed
        ):
            raise RequestError(
                400, "unsupported", f"{name}={payload[name]!r} is not supported by this worker"
            )

    out: dict[str, Any] = {"kind": kind}
    if kind == "completion":
        if "prompt" not in payload:
            raise RequestError(400, "bad_request", "prompt is required")
        prompt = payload["prompt"]
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise RequestError(400, "unsupported", "give one prompt per request (a string)")
            prompt = prompt[0]
        out["prompt"] = _string("prompt", prompt)
    else:
        if "messages" not in payload:
            raise RequestError(400, "bad_request", "messages is required")
        out["messages"] = _messages(payload["messages"])
    if payload.get("context") is not None:
        out["context"] = _string("context", payload["context"])

    if "max_tokens" in payload and "max_completion_tokens" in payload:
        raise RequestError(400, "bad_request", "give max_tokens or max_completion_tokens, not both")
    for name in ("max_tokens", "max_completion_tokens"):
        if payload.get(name) is not None:
            limit = _integer(name, payload[name], 1)
            if limit > config.max_new_tokens:
                raise RequestError(
                    400,
                    f"invalid_{name}",
                    f"{name} is {limit}; this worker generates at most {config.max_new_tokens}",
                )
            out["max_tokens"] = limit
    if payload.get("temperature") is not None:
        out["temperature"] = _number("temperature", payload["temperature"], 0.0, 2.0)
    if payload.get("top_p") is not None:
        out["top_p"] = _number("top_p", payload["top_p"], 0.0, 1.0, low_open=True)
    if payload.get("seed") is not None:
        out["seed"] = _integer("seed", payload["seed"], 0)
    stop = payload.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOP:
            raise RequestError(400, "bad_type", f"stop must be a string or a list of at most {MAX_STOP}")
        # Whitespace ("\n") is a common stop string; only "" is meaningless.
        out["stop"] = tuple(_string(f"stop[{i}]", s, allow_empty=True) for i, s in enumerate(stops))
        if "" in out["stop"]:
            raise RequestError(400, "empty", "stop strings must not be empty")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool | None):
        raise RequestError(400, "bad_type", "stream must be true or false")
    out["stream"] = bool(stream)
    if payload.get("stream_options") is not None and not isinstance(payload["stream_options"], dict):
        raise RequestError(400, "bad_type", "stream_options must be an object")
    if payload.get("stream_options") and payload["stream_options"].get("include_usage"):
        out["include_usage"] = True
    if payload.get("model") is not None:
        out["model"] = _string("model", payload["model"])
    if payload.get("user") is not None:
        _string("user", payload["user"], allow_empty=True)
    out["press"], out["budget"] = _press(payload, config)
    return GenerationRequest(**out)
