"""Text -> compressed unit vectors: the encoder followed by the projection."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .encoder import Encoder, load_encoder
from .projection import Projection, shipped

log = logging.getLogger("edgecache")


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # (n, dim) float32, unit norm
    truncated: list[bool]


class Embedder(Protocol):
    dim: int
    fingerprint: str

    def embed(self, texts: list[str]) -> Embedded: ...


class ProjectedEncoder:
    def __init__(self, encoder: Encoder, projection: Projection) -> None:
        if projection.in_dim != encoder.dim:
            raise ValueError(f"projection expects {projection.in_dim}-d vectors, encoder gives {encoder.dim}")
        self.encoder, self.projection = encoder, projection
        fitted_on = projection.info.get("fitted_on_encoder")
        if fitted_on and encoder.fingerprint and fitted_on != encoder.fingerprint:
            # Still usable (same weights, tiny numeric drift), but its thresholds were tuned elsewhere.
            log.warning(
                "projection %s was fitted on encoder %s, this encoder is %s; "
                "rebuild with the pinned versions or refit: edgecache model fit-projection",
                projection.name,
                fitted_on[:12],
                encoder.fingerprint[:12],
            )
        self.dim = projection.out_dim
        self.fingerprint = hashlib.sha256(
            f"{encoder.fingerprint}:{projection.fingerprint}".encode()
        ).hexdigest()

    def embed(self, texts: list[str]) -> Embedded:
        out = self.encoder.encode_detailed(texts)
        return Embedded(self.projection.apply(out.vectors), out.truncated)

    def embed_many(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.projection.apply(self.encoder.encode(texts, batch_size=batch_size))


_shared: dict[tuple, ProjectedEncoder] = {}
_shared_lock = threading.Lock()


def shared_embedder(projection: str, threads: int = 1, home: Path | None = None) -> ProjectedEncoder:
    """One loaded model per process and settings: every user's cache shares it."""
    key = (projection, threads, str(home))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = ProjectedEncoder(load_encoder(home, threads=threads), shipped(projection))
        return _shared[key]
