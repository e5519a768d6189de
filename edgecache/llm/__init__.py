"""LLM workers for the cache-miss path: an OpenAI-compatible Ray Serve worker that prefills each
shared context once into a compressed KV cache, the model it loads, and the presses.

Importing this package is cheap: torch, transformers, kvpress and Ray are imported only when
one of the names below is first used, so `edgecache.cli` can register `edgecache llm`
without pulling torch into the torch-free SDK.

- `edgecache.llm.protocol`: `WorkerConfig` (validated replica settings) and request parsing,
  torch-free and Ray-free.
- `edgecache.llm.worker`: `LLMService` (model + presses + context LRU, no Ray), `LLMWorker`
  (its Ray Serve deployment) and `app(**config)`, the bound application for `serve.run`.
- `edgecache.llm.model`: `build_packaged_model` (SmolLM2 GGUF -> safetensors copy in
  EDGECACHE_HOME), `load_model`, `LoadedModel`, `resolve_device`.
- `edgecache.llm.presses`: `make_press(name, budget)` over kvpress baselines and our
  WindowKV, CompressKV, TaskKV and SentenceKV presses.
- `edgecache.llm.cli`: `edgecache llm build` and `edgecache llm serve` (docs/llm.md).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LoadedModel": "model",
    "ModelNotAvailableError": "model",
    "build_packaged_model": "model",
    "load_model": "model",
    "resolve_device": "model",
    "PRESSES": "presses",
    "make_press": "presses",
    "WorkerConfig": "protocol",
    "LLMService": "worker",
    "LLMWorker": "worker",
    "app": "worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_LAZY)
