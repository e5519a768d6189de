"""Exceptions raised by edgecache. Every one derives from EdgecacheError."""


class EdgecacheError(Exception):
    """Base class of every error edgecache raises on purpose."""


class InvalidInputError(EdgecacheError, ValueError):
    """A query, response, user id or vector that edgecache refuses to store or search."""


class ConfigError(EdgecacheError, ValueError):
    """A configuration value outside its allowed range."""


class ModelNotBuiltError(EdgecacheError, FileNotFoundError):
    """A model (the ONNX encoder, the packaged LLM) has not been built into EDGECACHE_HOME yet."""


class SnapshotError(EdgecacheError):
    """A snapshot that is corrupted, truncated, or from another encoder/projection."""


class EntryNotFoundError(EdgecacheError, KeyError):
    """An entry id that the user's cache does not hold."""


class ConflictError(EdgecacheError):
    """A conditional write lost a race: the stored version changed since it was read."""
