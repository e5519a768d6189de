"""@cached on callables that are async without being `async def` functions themselves."""

import asyncio
import functools

import pytest

from edgecache import cached


class AsyncLLM:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, prompt: str, style: str = "plain") -> str:
        self.calls.append(prompt)
        await asyncio.sleep(0)
        return f"{style} answer to {prompt}"


async def _ask_twice(ask) -> list[str]:
    return [await ask("what is edgecache"), await ask("What is edgecache?")]


def test_an_object_with_an_async_call_is_cached_as_a_coroutine_function(make_cache):
    cache, llm = make_cache(), AsyncLLM()
    ask = cached(cache)(llm)
    assert asyncio.run(_ask_twice(ask)) == ["plain answer to what is edgecache"] * 2
    assert llm.calls == ["what is edgecache"] and len(cache) == 1


@pytest.mark.parametrize("wrapped", ["object", "function"])
def test_a_partial_of_an_async_callable_is_cached_as_a_coroutine_function(make_cache, wrapped):
    cache, llm = make_cache(), AsyncLLM()

    async def function(prompt: str, style: str = "plain") -> str:
        return await llm(prompt, style)

    ask = cached(cache)(functools.partial(llm if wrapped == "object" else function, style="terse"))
    assert asyncio.run(_ask_twice(ask)) == ["terse answer to what is edgecache"] * 2
    assert llm.calls == ["what is edgecache"]


def test_a_class_with_an_async_call_is_not_taken_for_a_coroutine_function(make_cache):
    class Answer(AsyncLLM):
        def __init__(self, prompt: str) -> None:
            super().__init__()
            self.prompt = prompt

        def __str__(self) -> str:
            return f"answer to {self.prompt}"

    ask = cached(make_cache())(Answer)
    assert isinstance(ask("what is edgecache"), Answer)  # called, not awaited


def test_a_sync_function_returning_an_awaitable_is_not_cached(make_cache, caplog):
    cache, llm = make_cache(), AsyncLLM()

    @cached(cache)
    def ask(prompt: str):
        return llm(prompt)

    async def main() -> list[str]:
        return [await ask("what is edgecache"), await ask("what is edgecache")]

    assert asyncio.run(main()) == ["plain answer to what is edgecache"] * 2
    assert len(llm.calls) == 2 and len(cache) == 0
    assert caplog.text.count("declare it `async def`") == 2
