"""Caching a function's LLM call: look up first, call and insert on a miss."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec

from .cache import SemanticCache

P = ParamSpec("P")


def cached(cache: SemanticCache, ttl_seconds: float | None = None):
    """Decorate `fn(prompt, *args, context=None, **kwargs) -> str`.

    The prompt (first positional argument) and the optional `context` keyword (the
    previous user turns) form the cache key; other arguments are passed through and
    are not part of the key, so use one cache per model/system prompt.
    """

    def decorate(fn: Callable[..., str]) -> Callable[..., str]:
        @functools.wraps(fn)
        def wrapper(prompt: str, *args, context: list[str] | None = None, **kwargs) -> str:
            found = cache.lookup(prompt, context=context)
            if found.hit and found.response is not None:
                return found.response
            if context is None:
                answer = fn(prompt, *args, **kwargs)
            else:
                answer = fn(prompt, *args, context=context, **kwargs)
            cache.insert(prompt, answer, context=context, ttl_seconds=ttl_seconds)
            return answer

        return wrapper

    return decorate
