"""Task-KV: heterogeneous heads keep more of the cache, the others sinks, recent and middle tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from kvpress.utils import compute_n_kept
from transformers.models.llama.modeling_llama import repeat_kv

from ...errors import ConfigError
from .measure import decoder_layers
from .scoring import per_kv_head, window_attention
from .selection import SelectionPress, gather_kept


@dataclass
class TaskKVPress(SelectionPress):
    """Task-KV-style head-aware budgets (He et al., 2025, "Semantic Differentiation of Attention Heads").

    Scored per layer: each query head's *semantic vector* is its contribution to the
    residual stream for the observation window — the head's attention output over the
    last `window_size` positions, averaged and projected through the head's slice of
    `o_proj`. The layer's semantic center is the mean of these vectors; a head's distance
    is 1 - cosine(vector, center), averaged over each KV head's query group (GQA).

    Kept: the `hetero_fraction` of KV heads farthest from the center (at least one) are
    heterogeneous heads: the paper gives them the full cache because they carry the
    task-specific semantics; under a fixed total they keep up to `hetero_boost` times the
    mean budget (the full cache whenever the layer's total allows it, e.g. at 50% with
    3 KV heads), but never so much that another head drops below `min_other_ratio` of
    the mean — their own best tokens by observation-window attention, sinks and window
    first. The other heads share what remains and keep `n_sink` attention sinks, up to
    `recent_size` recent tokens (at most half of their share) and, with the rest,
    "middle activations": the middle tokens their group attends to most from the
    observation window (pooled like SnapKV),
    which keep the information these aggregating heads gathered.

    Heads then hold different numbers of entries, but a layer's cache is one rectangular
    tensor: it stores every head at the length of the largest share, and the surplus
    positions of the smaller heads are hidden from attention during decoding by a
    per-head attention mask (see `masks._per_layer_mask`; the role kvpress's
    `masked_key_indices` plays for AdaKV), which needs an attention implementation
    other than "eager" (use "sdpa").
    The masks live on the attention modules until the next prefill; a cache reused later
    on the same model must be the one compressed last (or call `restore_masks`). The
    memory held is therefore num_kv_heads x the largest share (`kv_bytes`), more than
    the attended entries (`kv_bytes(..., attended=True)`); storing heads at their own
    lengths, as the paper's flattened varlen cache does, needs a cache class and
    attention kernel of its own. Per-head counts of the last prefill are in `kept_counts[layer_idx]`.
    """

    window_size: int = 32
    kernel_size: int = 5
    n_sink: int = 4
    recent_size: int = 32
    hetero_fraction: float = 0.25
    hetero_boost: float = 4.0
    min_other_ratio: float = 0.5
    kept_counts: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)
    last_distances: dict[int, torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    masks: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.hetero_fraction < 1.0:
            raise ConfigError("hetero_fraction must be in (0, 1)")
        if self.hetero_boost < 1.0:
            raise ConfigError("hetero_boost must be >= 1")
        if not 0.0 <= self.min_other_ratio <= 1.0:
            raise ConfigError("min_other_ratio must be in [0, 1]")

    def head_distances(self, module, attn: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Distance of each KV head's query group from the layer's semantic center: (bsz, num_kv_heads)."""
        groups = attn.shape[1] // values.shape[1]
        out = (attn @ repeat_kv(values, groups).float()).mean(dim=2)  # (b, H, d)
        weight = module.o_proj.weight.float()  # (hidden, H * d)
        d = out.shape[-1]
        per_head = torch.einsum("bhd,ohd->bho", out, weight.view(weight.shape[0], -1, d))
        center = per_head.mean(dim=1, keepdim=True)
        distance = 1.0 - F.cosine_similarity(per_head, center.expand_as(per_head), dim=-1)
        return per_kv_head(distance, values.shape[1])

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self.compression_ratio == 0 or keys.shape[2] < 2:
            return keys, values
        if module.config._attn_implementation == "eager":
            # transformers calls eager attention directly, bypassing the wrapped functions.
            raise ConfigError('TaskKV masks heads during decoding, which needs attn_implementation="sdpa"')
        bsz, num_kv, k_len, _ = keys.shape
        window = min(self.window_size, k_len - 1)
        attn = window_attention(module, hidden_states, keys, window, kwargs)
        distance = self.head_distances(module, attn, values)
        self.last_distances[module.layer_idx] = distance.cpu()
        mean = compute_n_kept(k_len, self.compression_ratio)
        total = mean * num_kv
        n_hetero = max(1, round(self.hetero_fraction * num_kv)) if num_kv > 1 else 0
        # Non-heterogeneous heads never drop below `min_other_ratio` of the mean share.
        floor = max(min(mean, self.n_sink + 1), int(mean * self.min_other_ratio))
        hetero_keep = min(k_len, int(self.hetero_boost * mean), total - (num_kv - n_hetero) * floor)
        hetero_keep = max(hetero_keep, mean) if n_hetero else mean
        rest = total - n_hetero * hetero_keep
        others = num_kv - n_hetero

        # Priority of every position for every KV head: sinks, then recent, then attention.
        pooled = per_kv_head(attn.sum(dim=2), num_kv)  # (b, kv, k_len)
        if self.kernel_size > 1 and k_len >= self.kernel_size:
            flat = pooled.reshape(bsz * num_kv, 1, k_len)
            pooled = F.avg_pool1d(flat, self.kernel_size, padding=self.kernel_size // 2, stride=1).view(
                bsz, num_kv, k_len
            )
        base = pooled / pooled.amax(dim=-1, keepdim=True).clamp_min(1e-12)  # in [0, 1]
        positions = torch.arange(k_len, device=keys.device)
        counts = torch.empty(bsz, num_kv, dtype=torch.long)
        priority = torch.empty(bsz, num_kv, k_len, device=keys.device)
        order = distance.argsort(dim=-1, descending=True)
        for b in range(bsz):
            for rank, h in enumerate(order[b].tolist()):
                if rank < n_hetero:
                    keep = hetero_keep
                    recent = window
                else:
                    keep = rest // others + (1 if rank - n_hetero < rest % others else 0)
                    recent = min(self.recent_size, (keep - min(self.n_sink, keep)) // 2)
                sink = min(self.n_sink, keep)
                p = base[b, h].clone()
                p[positions >= k_len - recent] = 2.0 + positions[positions >= k_len - recent] / k_len
                p[:sink] = 4.0
                priority[b, h] = p
                counts[b, h] = keep
        width = int(counts.max())
        indices = priority.topk(width, dim=-1).indices  # best first
        # Sorting by position keeps the cache tidy; remember where each head's surplus lands.
        # topk lists entries best first, so an entry's priority rank is its index there.
        sorted_idx, rank_of_slot = indices.sort(dim=-1)
        surplus = rank_of_slot >= counts.to(keys.device)[..., None]
        keys, values = gather_kept(keys, values, sorted_idx)
        self.kept_indices[module.layer_idx] = sorted_idx.masked_fill(surplus, -1).cpu()
        self.kept_counts[module.layer_idx] = counts
        masked = torch.nonzero(surplus, as_tuple=True) if surplus.any() else None
        module.edgecache_masked_keys = masked
        self.masks[module.layer_idx] = masked
        return keys, values

    def restore_masks(self, model) -> None:
        """Put this press's last masks back on the model (to decode again from its cache)."""
        for layer in decoder_layers(model):
            layer.self_attn.edgecache_masked_keys = self.masks.get(layer.self_attn.layer_idx)
