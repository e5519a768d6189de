"""Disk cache of encoder outputs for evaluation runs (re-encoding QQP takes minutes)."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .encoder import Encoder, batches
from .home import edgecache_home

# How the vectors were computed, beside the model: batched runs (before 2026-11-30) gave
# vectors that depended on their batch-mates, so they must not be read as today's.
ENCODING = "one text per run"


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # eval extra not installed: run without a bar
        return None
    return tqdm(total=total, desc=desc, unit="sent", mininterval=2.0)


def encode_cached(
    encoder: Encoder, texts: list[str], batch_size: int = 64, desc: str = "encoding", progress: bool = True
) -> np.ndarray:
    """Encoder vectors for `texts` (n, dim), read from EDGECACHE_HOME/embeddings when present.

    Saving is best effort: on a read-only home (a Lambda layer under /opt) the vectors are
    still returned, just not kept."""
    digest = hashlib.sha256(f"{encoder.fingerprint}:{ENCODING}".encode())
    for t in texts:
        digest.update(t.encode("utf-8", "surrogatepass") + b"\x00")
    path = edgecache_home() / "embeddings" / f"{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    bar = _progress(len(texts), desc) if progress else None
    for idx in batches(len(texts), batch_size):
        out[idx] = encoder.encode_detailed([texts[i] for i in idx]).vectors
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, out)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
    return out
