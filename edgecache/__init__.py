"""edgecache: a per-user semantic cache for LLM services."""

from . import _native  # noqa: F401  (fixes the onnxruntime-before-usearch import order)
