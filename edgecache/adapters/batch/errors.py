"""The batch job's error type."""

from __future__ import annotations

from ...errors import EdgecacheError


class BatchJobError(EdgecacheError):
    """A batch job that cannot start or finish: unreadable input listing, unwritable output,
    an embedding stage that fails its self-check."""
