"""The attention patch for caches compressed unevenly across layers and heads (see `_per_layer_mask`)."""

from __future__ import annotations

from collections.abc import Callable

# kvpress patches the same table when imported; imported first, so that ours wraps its wrapper.
import kvpress  # noqa: F401
import torch


def _per_layer_mask(func: Callable) -> Callable:
    """Wrap an attention function for caches compressed unevenly across layers and heads.

    1. Layers of different lengths: transformers 5.2 builds one attention mask for all
       layers, sized from layer 0's cache (`DynamicCache.get_mask_sizes`). After a press
       that keeps different numbers of entries per layer (PyramidKV, WindowKV,
       CompressKV), a multi-token pass over the cache (the question in kvpress's
       pipeline) fails with a size mismatch. Every cached entry is visible to every new
       token, so such a layer's mask is "visible" over its cache, followed by the
       causal block of the new tokens (compressed caches hold no padding: kvpress
       compresses one unpadded sequence at a time).
    2. Heads with different budgets (TaskKV): positions listed in the module's
       `edgecache_masked_keys` (batch, kv head, position) are hidden from that KV head's
       query heads through the mask itself. kvpress's own mechanism for this
       (`masked_key_indices`) overwrites keys with a fake key found by a hyperplane
       search that does not always succeed (it fails on small random models); a mask is
       exact and always exists.

    The wrapper changes nothing when neither applies; a full prefill (as many queries as
    keys) clears the head masks, as kvpress does for its own.
    """

    def wrapper(module, query, key, value, attention_mask, *args, **kwargs):
        new, total = query.shape[-2], key.shape[-2]
        if new == total:
            module.edgecache_masked_keys = None
        elif attention_mask is not None and attention_mask.shape[-1] != total:
            shape = (*attention_mask.shape[:-1], total - new)
            if attention_mask.dtype == torch.bool:
                visible = torch.ones(shape, dtype=torch.bool, device=attention_mask.device)
            else:
                visible = torch.zeros(shape, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([visible, attention_mask[..., -new:]], dim=-1)
        hidden = getattr(module, "edgecache_masked_keys", None)
        if hidden is not None and new != total:
            attention_mask = _hide_positions(attention_mask, hidden, query, key)
        return func(module, query, key, value, attention_mask, *args, **kwargs)

    wrapper._edgecache_per_layer_mask = True  # type: ignore[attr-defined]
    return wrapper


def _hide_positions(
    mask: torch.Tensor | None, hidden: tuple, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    bsz, num_heads, new, _ = query.shape
    total = key.shape[-2]
    if mask is None:
        # No mask is passed when every key is visible to every query (one new token).
        allowed = torch.ones(new, total, dtype=torch.bool, device=query.device)
        allowed[:, total - new :] = torch.ones(new, new, dtype=torch.bool, device=query.device).tril()
        mask = allowed[None, None]
    blocked = torch.zeros(bsz, key.shape[1], total, dtype=torch.bool, device=query.device)
    batch_idx, head_idx, pos_idx = hidden
    blocked[batch_idx.to(query.device), head_idx.to(query.device), pos_idx.to(query.device)] = True
    blocked = blocked.repeat_interleave(num_heads // key.shape[1], dim=1)[:, :, None, :]  # (b, H, 1, k)
    mask = mask.expand(bsz, num_heads, new, total)
    if mask.dtype == torch.bool:
        return mask & ~blocked
    return mask.masked_fill(blocked, torch.finfo(mask.dtype).min)


def _patch_attention_functions() -> None:
    # Same mechanism as kvpress's own attention patch (applied when kvpress is imported).
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for name, func in list(ALL_ATTENTION_FUNCTIONS.items()):
        if not getattr(func, "_edgecache_per_layer_mask", False):
            ALL_ATTENTION_FUNCTIONS[name] = _per_layer_mask(func)


_patch_attention_functions()
