"""The press registry: `PRESSES` and `make_press(name, budget)`, the one entry point."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from kvpress import (
    BasePress,
    ExpectedAttentionPress,
    KnormPress,
    PyramidKVPress,
    SnapKVPress,
    StreamingLLMPress,
)

from ...errors import ConfigError
from .compresskv import CompressKVPress
from .sentencekv import OffloadingSentenceKVPress, SentenceKVPress, sentence_boundary_ids
from .taskkv import TaskKVPress
from .windowkv import WindowKVPress


@dataclass(frozen=True)
class PressSpec:
    name: str
    factory: Callable[..., BasePress] | None
    source: str
    description: str


PRESSES: dict[str, PressSpec] = {
    spec.name: spec
    for spec in (
        PressSpec("full", None, "none", "no compression: the full KV cache"),
        PressSpec("snapkv", SnapKVPress, "kvpress", "SnapKV: observation-window attention, pooled"),
        PressSpec(
            "streamingllm", StreamingLLMPress, "kvpress", "StreamingLLM: attention sinks + recent tokens"
        ),
        PressSpec("knorm", KnormPress, "kvpress", "Knorm: keep keys with the smallest L2 norm"),
        PressSpec(
            "pyramidkv", PyramidKVPress, "kvpress", "PyramidKV: SnapKV with budgets shrinking by depth"
        ),
        PressSpec(
            "expected_attention",
            ExpectedAttentionPress,
            "kvpress",
            "Expected Attention: attention expected from future query statistics",
        ),
        PressSpec(
            "windowkv",
            WindowKVPress,
            "edgecache",
            "WindowKV: task-adaptive windows, layer groups share indices",
        ),
        PressSpec(
            "compresskv",
            CompressKVPress,
            "edgecache",
            "CompressKV: semantic retrieval heads + error-based layer budgets",
        ),
        PressSpec(
            "taskkv",
            TaskKVPress,
            "edgecache",
            "Task-KV: heterogeneous heads keep more; others sinks+recent+middle",
        ),
        PressSpec(
            "sentencekv", SentenceKVPress, "edgecache", "SentenceKV: whole sentences by window attention"
        ),
        PressSpec(
            "sentencekv_offload",
            OffloadingSentenceKVPress,
            "edgecache",
            "SentenceKV with offload: half the budget kept, each question retrieves the rest",
        ),
    )
}


def validate_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
        raise ConfigError(
            f"budget must be a number in (0, 1] (fraction of the KV cache kept), got {budget!r}"
        )
    if not 0.0 < float(budget) <= 1.0:
        raise ConfigError(f"budget must be in (0, 1] (fraction of the KV cache kept), got {budget}")
    return float(budget)


def press_spec(name: str) -> PressSpec:
    """The registry's entry for `name` (any case), or a ConfigError naming the choices."""
    if not isinstance(name, str) or name.lower() not in PRESSES:
        raise ConfigError(f"unknown press {name!r}; choose one of {', '.join(PRESSES)}")
    return PRESSES[name.lower()]


def make_press(name: str, budget: float = 1.0, *, tokenizer: Any = None, **options: Any) -> BasePress | None:
    """A press keeping `budget` (fraction in (0, 1]) of the KV cache; None for "full".

    `tokenizer` is accepted by every press and used by those that read text structure
    (SentenceKV: sentence-ending tokens); other options are the press's dataclass fields
    (e.g. `window_size`, `task` for WindowKV).
    """
    spec = press_spec(name)
    budget = validate_budget(budget)
    if spec.factory is None:
        if options:
            raise ConfigError(f"press 'full' takes no options, got {', '.join(sorted(options))}")
        return None
    allowed = {f.name for f in fields(spec.factory) if f.init} - {"compression_ratio"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(
            f"press {spec.name!r} has no option(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
    if issubclass(spec.factory, SentenceKVPress) and "boundary_token_ids" not in options:
        if tokenizer is None:
            raise ConfigError(f"press {spec.name!r} needs tokenizer= (it splits the context into sentences)")
        options["boundary_token_ids"] = _cached_boundaries(tokenizer)
    try:
        return spec.factory(compression_ratio=1.0 - budget, **options)
    except (AssertionError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid options for press {spec.name!r}: {exc}") from exc


_BOUNDARY_CACHE: dict[int, tuple[Any, tuple[int, ...]]] = {}


def _cached_boundaries(tokenizer: Any) -> tuple[int, ...]:
    # Decoding a 49k vocabulary takes ~1 s; a worker builds many presses with one tokenizer.
    hit = _BOUNDARY_CACHE.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, sentence_boundary_ids(tokenizer))
        _BOUNDARY_CACHE[id(tokenizer)] = hit
    return hit[1]
