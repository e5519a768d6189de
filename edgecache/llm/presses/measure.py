"""Measuring what a press kept: cache entries per (layer, KV head) and bytes."""

from __future__ import annotations

import torch

__all__ = ["HEAD_MASK_ATTRIBUTES", "decoder_layers", "kv_bytes", "kv_entries"]

# Where head-wise presses leave per-head masks on the attention modules until the next prefill:
# kvpress's own (AdaKV, DuoAttention...) and ours (TaskKV). The worker saves and restores them
# with each cached context; kv_entries subtracts the positions they hide.
HEAD_MASK_ATTRIBUTES = ("masked_key_indices", "edgecache_masked_keys")


def decoder_layers(model) -> list:
    inner = model.model if hasattr(model, "model") else model
    inner = inner.language_model if hasattr(inner, "language_model") else inner
    return list(inner.layers)


def kv_entries(model, cache) -> torch.Tensor:
    """Entries each (layer, KV head) actually attends to: (num_layers, num_kv_heads), batch 0.

    Physical cache length minus positions masked by head-wise presses (TaskKV, AdaKV).
    Multiply by 2 * head_dim * element size for bytes.
    """
    rows = []
    for layer, cache_layer in zip(decoder_layers(model), cache.layers, strict=False):
        keys = cache_layer.keys
        counts = torch.full((keys.shape[1],), keys.shape[2], dtype=torch.long)
        for attr in HEAD_MASK_ATTRIBUTES:
            masked = getattr(layer.self_attn, attr, None)
            if masked is not None:
                batch_idx, head_idx, _ = masked
                heads = head_idx.cpu()[batch_idx.cpu() == 0]
                counts -= torch.bincount(heads, minlength=keys.shape[1])
        rows.append(counts)
    return torch.stack(rows)


def kv_bytes(model, cache, *, attended: bool = False) -> int:
    """Bytes of keys + values held in `cache` (all batch rows).

    By default what the cache tensors occupy; with `attended=True` only the entries
    attention reads, i.e. without positions masked by head-wise presses.
    """
    total = 0
    counts_per_layer = kv_entries(model, cache) if attended else None
    for i, cache_layer in enumerate(cache.layers):
        keys = cache_layer.keys
        entries = (
            int(counts_per_layer[i].sum()) if counts_per_layer is not None else keys.shape[1] * keys.shape[2]
        )
        total += entries * 2 * keys.shape[-1] * keys.element_size() * keys.shape[0]
    return total
