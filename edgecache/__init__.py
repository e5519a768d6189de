"""edgecache: a per-user semantic cache for LLM services.

from edgecache import SemanticCache, LocalFolderStore
cache = SemanticCache("user-123", store=LocalFolderStore("./caches"))
hit = cache.lookup("How do I enable 2FA?")
"""

from . import _native  # noqa: F401  (fixes the onnxruntime-before-usearch import order)
from .cache import SemanticCache
from .config import CacheConfig
from .decision import Candidate, Decision, Reason, Thresholds, decide, first_hit
from .errors import (
    ConfigError,
    EdgecacheError,
    EntryNotFoundError,
    InvalidInputError,
    ModelNotBuiltError,
    SnapshotError,
)
from .results import CacheStats, Entry, InsertResult, LookupResult
from .stores import LocalFolderStore, MemoryStore, Store
from .wrap import cached

__version__ = "0.1.0"

__all__ = [
    "CacheConfig",
    "CacheStats",
    "Candidate",
    "ConfigError",
    "Decision",
    "EdgecacheError",
    "Entry",
    "EntryNotFoundError",
    "InsertResult",
    "InvalidInputError",
    "LocalFolderStore",
    "LookupResult",
    "MemoryStore",
    "ModelNotBuiltError",
    "Reason",
    "SemanticCache",
    "SnapshotError",
    "Store",
    "Thresholds",
    "cached",
    "decide",
    "first_hit",
]
