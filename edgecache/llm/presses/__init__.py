"""KV-cache compression presses: kvpress baselines plus WindowKV, CompressKV, TaskKV, SentenceKV
(with and without its offload).

Every press is a kvpress press: a dataclass whose hooks run after each attention layer
during prefill and replace that layer's cached keys/values with the entries it keeps
(`with press(model): model.model(input_ids=..., past_key_values=cache)`, or kvpress's
`KVPressTextGenerationPipeline`). Decoding then runs on the compressed cache unchanged,
except with `sentencekv_offload`, whose questions bring back evicted sentences from the
store it offloads to (`with press.retrieving(model):`).

`make_press(name, budget)` is the one entry point used by the worker and the benchmarks.
`budget` is the fraction of the KV cache KEPT, in (0, 1]; kvpress itself speaks of
`compression_ratio = 1 - budget`. "full" returns None (no press, full cache).

Our presses share three conventions, chosen to match how kvpress's own presses behave:
- the budget is counted per layer over all positions of the prefilled sequence (the
  observation window included), so "0.1" means one tenth of the full cache's entries;
- scores are computed from the *observation window*: the last `window_size` queries of
  the prefill, i.e. the end of the context, which in kvpress's pipeline is compressed
  before (and independently of) the question, so one compressed cache serves many questions;
- with grouped-query attention (SmolLM2: 9 query heads over 3 KV heads) one cached KV head
  serves several query heads, so query-head scores are averaged over each KV head's group
  before any choice is made.

Modules: `registry` (make_press, press_spec, PRESSES), `windowkv`, `compresskv`, `taskkv`, `sentencekv`
(our presses), `selection` (their base), `scoring` and `budgets` (shared helpers), `measure`
(kv_entries, kv_bytes), `masks` (the attention patch for uneven caches, applied on import).
"""

# Importing the package applies the attention patch that uneven caches (our presses, PyramidKV)
# need, whichever module is used.
from . import masks  # noqa: F401
from .budgets import allocate_budgets
from .compresskv import CompressKVPress
from .measure import kv_bytes, kv_entries
from .registry import PRESSES, PressSpec, make_press, press_spec, validate_budget
from .sentencekv import (
    OffloadingSentenceKVPress,
    SentenceKVPress,
    SentenceStore,
    sentence_boundary_ids,
    sentence_spans,
)
from .taskkv import TaskKVPress
from .windowkv import TASKS, WindowKVPress, classify_task

__all__ = [
    "PRESSES",
    "TASKS",
    "CompressKVPress",
    "OffloadingSentenceKVPress",
    "PressSpec",
    "SentenceKVPress",
    "SentenceStore",
    "TaskKVPress",
    "WindowKVPress",
    "allocate_budgets",
    "classify_task",
    "kv_bytes",
    "kv_entries",
    "make_press",
    "press_spec",
    "sentence_boundary_ids",
    "sentence_spans",
    "validate_budget",
]
