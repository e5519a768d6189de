"""Caching a function's LLM call: look up first, call and insert on a miss."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec

from .cache import SemanticCache
from .errors import InvalidInputError
from .load import BackendMonitor
from .numbers import is_positive

P = ParamSpec("P")
log = logging.getLogger("edgecache")


def _status_of(exc: BaseException) -> int:
    """HTTP status of a failed call when the client library exposes one (openai, httpx, requests)."""
    for owner in (exc, getattr(exc, "response", None)):
        status = getattr(owner, "status_code", None)
        if isinstance(status, int) and 100 <= status <= 599:
            return status
    return 500


def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling `fn` gives a coroutine: a coroutine function, an object whose
    `__call__` is one (which iscoroutinefunction does not look into), or a partial of either."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    # Calling an object runs its type's __call__, so a class with an async __call__ is not
    # itself async: calling the class makes an instance.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def cached(
    cache: SemanticCache,
    ttl_seconds: float | None = None,
    monitor: BackendMonitor | None = None,
    category: str | None = None,
):
    """Decorate `fn(prompt, *args, context=None, **kwargs) -> str`, a coroutine function (or
    a partial of one, or an object with an `async def __call__`), or a method (`self`/`cls`
    come before the prompt).

    The prompt (the first argument) and the optional `context` argument (the previous user
    turns, passed by keyword or in its place) form the cache key; other arguments are passed
    through and are not part of the key, so use one cache per model/system prompt.
    `monitor`: timings and failures (429s) of the calls made on misses feed it, so the
    cache can relax within its policy's bounds while the backend is overloaded (pass the
    same monitor as the cache's `load`). `category`: skip the classifier.
    Arguments are checked here, not on the first call.
    """
    if not isinstance(cache, SemanticCache):
        raise InvalidInputError(f"cached() needs a SemanticCache, got {type(cache).__name__}")
    if ttl_seconds is not None and not is_positive(ttl_seconds):
        raise InvalidInputError(f"ttl_seconds must be a positive number, got {ttl_seconds!r}")
    if monitor is not None and not isinstance(monitor, BackendMonitor):
        raise InvalidInputError(f"monitor must be a BackendMonitor, got {type(monitor).__name__}")
    if category is not None:
        cache.rules.check(category)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        # A method's first parameter is its instance (or class), not the prompt.
        prompt_param = next((p for p in signature.parameters.values() if p.name not in ("self", "cls")), None)
        takes_context = "context" in signature.parameters
        label = getattr(fn, "__qualname__", fn)

        def key(args: tuple, kwargs: dict) -> tuple[object, object]:
            # A call fn would refuse is refused here too, before any lookup.
            bound = signature.bind(*args, **kwargs)
            prompt = None
            if prompt_param is not None:
                prompt = bound.arguments.get(prompt_param.name)
                if prompt_param.kind is inspect.Parameter.VAR_POSITIONAL:
                    prompt = prompt[0] if prompt else None
            # Read where fn itself would find it: `ask(q, ctx)` is a follow-up as much as
            # `ask(q, context=ctx)`.
            context = bound.arguments.get("context") if takes_context else kwargs.get("context")
            return prompt, context

        def record(started: float, exc: BaseException | None = None) -> None:
            if monitor is not None:
                monitor.record(time.monotonic() - started, *(() if exc is None else (_status_of(exc),)))

        def keep(prompt: object, answer: object, context: object) -> None:
            try:
                cache.insert(prompt, answer, context=context, ttl_seconds=ttl_seconds, category=category)
            except InvalidInputError as exc:
                # The call is paid for: the caller gets its result even when it cannot be cached.
                log.warning("result of %s not cached: %s", label, exc)

        if _is_async(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs) -> Any:
                prompt, context = key(args, kwargs)
                # The encoder runs in a worker thread, so the event loop keeps serving meanwhile.
                found = await asyncio.to_thread(cache.lookup, prompt, context=context, category=category)
                if found.hit and found.response is not None:
                    return found.response
                started = time.monotonic()
                try:
                    answer = await fn(*args, **kwargs)
                except Exception as exc:
                    record(started, exc)
                    raise
                record(started)
                await asyncio.to_thread(keep, prompt, answer, context)
                return answer

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs) -> Any:
            prompt, context = key(args, kwargs)
            found = cache.lookup(prompt, context=context, category=category)
            if found.hit and found.response is not None:
                return found.response
            started = time.monotonic()
            try:
                answer = fn(*args, **kwargs)
            except Exception as exc:
                record(started, exc)
                raise
            record(started)
            if inspect.isawaitable(answer):
                # Caching it would store the awaitable, and a later hit would hand back a str
                # where the caller awaits one.
                log.warning(
                    "result of %s not cached: it returned an awaitable; declare it `async def` "
                    "so the cache awaits it",
                    label,
                )
            else:
                keep(prompt, answer, context)
            return answer

        return wrapper

    return decorate
