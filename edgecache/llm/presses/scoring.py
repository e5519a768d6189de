"""Observation-window scoring shared by the presses: RoPE'd window queries, their attention, GQA averaging."""

from __future__ import annotations

import math

import torch
from kvpress.utils import get_prerope_query_states
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half


def rope_window_queries(
    module: nn.Module, hidden_states: torch.Tensor, window: int, position_embeddings
) -> torch.Tensor:
    """RoPE'd queries of the last `window` positions: (bsz, num_heads, window, head_dim)."""
    queries = get_prerope_query_states(module, hidden_states[:, -window:])
    cos, sin = position_embeddings
    cos, sin = cos[:, -window:].unsqueeze(1), sin[:, -window:].unsqueeze(1)
    return queries * cos + rotate_half(queries) * sin


def window_attention(
    module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, window: int, kwargs: dict
) -> torch.Tensor:
    """Softmax attention of the observation window over all keys, causal inside the window.

    Returns (bsz, num_heads, window, k_len) in float32. kvpress's SnapKV helper computes
    the same thing but returns only the columns before the window; our presses also need
    the window's own columns (eviction error, head outputs).
    """
    k_len = keys.shape[2]
    groups = module.config.num_attention_heads // keys.shape[1]
    queries = rope_window_queries(module, hidden_states, window, kwargs["position_embeddings"])
    logits = torch.matmul(queries.float(), repeat_kv(keys, groups).float().transpose(2, 3)) / math.sqrt(
        module.head_dim
    )
    causal = torch.ones(window, k_len, dtype=torch.bool, device=keys.device).tril(diagonal=k_len - window)
    logits = logits.masked_fill(~causal, float("-inf"))
    return logits.softmax(dim=-1)


def per_kv_head(scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Average query-head scores (bsz, num_heads, ...) over each KV head's group."""
    bsz, num_heads = scores.shape[:2]
    return scores.reshape(bsz, num_kv_heads, num_heads // num_kv_heads, *scores.shape[2:]).mean(dim=2)
