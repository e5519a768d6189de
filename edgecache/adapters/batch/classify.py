"""Pass 2's stage (Ray Data tasks): label embeddings with the fitted adapter."""

from __future__ import annotations

import hashlib

import numpy as np

from ..tfup import TFUPAdapter

_ADAPTERS: dict[str, TFUPAdapter] = {}


def classify_batch(
    batch: dict[str, np.ndarray], adapter_bytes: bytes, top_k: int, include_embeddings: bool
) -> dict[str, np.ndarray]:
    key = hashlib.sha256(adapter_bytes).hexdigest()
    adapter = _ADAPTERS.get(key)
    if adapter is None:  # parsed once per worker process, not once per batch
        adapter = _ADAPTERS[key] = TFUPAdapter.from_bytes(adapter_bytes)
    ok = np.asarray(batch["error"], dtype=object) == ""
    feats = np.asarray(batch["embedding"], dtype=np.float32)[ok]
    names = np.asarray(adapter.class_names, dtype=object)
    out: dict[str, np.ndarray] = {"path": np.asarray(batch["path"], dtype=object)[ok]}
    if not len(feats):
        empty = np.zeros((0,), dtype=object)
        out.update(label=empty, score=np.zeros(0), zero_shot_label=empty, zero_shot_score=np.zeros(0))
        out.update(top_k_labels=np.zeros((0, top_k), dtype=object), top_k_scores=np.zeros((0, top_k)))
        if include_embeddings:
            out["embedding"] = np.zeros((0, adapter.dim), dtype=np.float32)
        return out
    proba = adapter.predict_proba(feats)
    zs = adapter.zero_shot_logits(feats)
    zs = np.exp(zs - zs.max(axis=1, keepdims=True))
    zs /= zs.sum(axis=1, keepdims=True)
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
    zi = zs.argmax(axis=1)
    out["label"] = names[order[:, 0]]
    out["score"] = np.take_along_axis(proba, order[:, :1], axis=1)[:, 0].astype(np.float64)
    out["zero_shot_label"] = names[zi]
    out["zero_shot_score"] = zs[np.arange(len(zi)), zi].astype(np.float64)
    out["top_k_labels"] = names[order]
    out["top_k_scores"] = np.take_along_axis(proba, order, axis=1).astype(np.float64)
    if include_embeddings:
        out["embedding"] = feats
    return out
