"""The driver's TFUP fit over pass 1's streamed rows, holding O(classes x shots) vectors."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..tfup import TFUPAdapter, paper_shots, select_representatives
from .config import BatchJobConfig
from .errors import BatchJobError


class _CandidatePool:
    """Per class, the `m` rows with the highest selection probability seen so far (ties: the
    earlier row), so that TFUP's selection can run on the pool instead of on every row."""

    def __init__(self, class_embeddings: np.ndarray, m: int, temperature: float) -> None:
        self.w = class_embeddings
        self.m, self.t = m, np.float32(temperature)
        self.rows = np.zeros((0,), dtype=np.int64)
        self.feats = np.zeros((0, class_embeddings.shape[1]), dtype=np.float32)
        self.p = np.zeros((0, class_embeddings.shape[0]), dtype=np.float64)

    def add(self, feats: np.ndarray, first_row: int) -> None:
        if not len(feats):
            return
        logits = self.t * (feats @ self.w.T)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float64)
        # Rows arrive in increasing order and the pool keeps them sorted, so the stable sort below
        # breaks probability ties by row, as select_representatives does over the whole set.
        rows = np.concatenate([self.rows, first_row + np.arange(len(feats))])
        f = np.concatenate([self.feats, feats])
        pp = np.concatenate([self.p, p])
        top = np.argsort(-pp, axis=0, kind="stable")[: self.m]
        keep = np.unique(top)
        self.rows, self.feats, self.p = rows[keep], f[keep], pp[keep]


@dataclass
class Pass1:
    """What the driver learns from pass 1: the fitted adapter, how many images were embedded,
    the skipped files, the shots per class, and the summed busy seconds of the read/decode tasks
    and of the embedding actors."""

    adapter: TFUPAdapter
    valid: int
    errors: list[dict[str, str]]
    shots: int
    read_busy_s: float
    embed_busy_s: float


def fit_from_batches(
    batches: Iterable[dict[str, np.ndarray]],
    class_embeddings: np.ndarray,
    config: BatchJobConfig,
    fingerprint: str,
    progress: Callable[[str], None],
) -> Pass1:
    """Stream pass 1's rows (path, embedding, error, read_s, embed_s) once: collect the skipped
    files, count the embedded ones, sum the stages' busy time, pool candidates; then TFUP's
    selection on the pool."""
    cfg = config.tfup
    c = class_embeddings.shape[0]
    max_k = cfg.shots or cfg.max_shots
    pool = _CandidatePool(class_embeddings, cfg.candidate_factor * max_k, cfg.select_temperature)
    errors: list[dict[str, str]] = []
    n = 0
    read_s = embed_s = 0.0
    for batch in batches:
        read_s += float(np.sum(batch.get("read_s", 0.0)))
        embed_s += float(np.sum(batch.get("embed_s", 0.0)))
        err = np.asarray(batch["error"], dtype=object)
        bad = err != ""
        for path, reason in zip(batch["path"][bad], err[bad], strict=True):
            errors.append({"path": str(path), "reason": str(reason)})
        feats = np.asarray(batch["embedding"], dtype=np.float32)[~bad]
        pool.add(feats, n)
        n += len(feats)
    if n == 0:
        raise BatchJobError(f"none of the input files is a decodable image ({len(errors)} skipped)")
    shots = cfg.shots or paper_shots(n, c, cfg.cache_proportion, cfg.min_shots, cfg.max_shots)
    sel = select_representatives(
        pool.feats, class_embeddings, shots, cfg.candidate_factor, cfg.select_temperature
    )
    adapter = TFUPAdapter(
        class_embeddings, pool.feats[sel.indices], sel.labels, cfg, fingerprint, list(config.class_names)
    )
    progress(
        f"TFUP cache: {len(sel.indices)} entries ({sel.shots}/class) from {n} images, pool {len(pool.rows)}"
    )
    return Pass1(adapter, n, errors, sel.shots, read_s, embed_s)
