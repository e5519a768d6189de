"""`SelectionPress`: the base of presses that pick, per layer, the positions each KV head keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from kvpress import BasePress
from torch import nn

from ...errors import ConfigError


def gather_kept(
    keys: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep positions `indices` (bsz, num_kv_heads, n) of every KV head, in position order."""
    indices = indices.sort(dim=-1).values
    expanded = indices.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
    return keys.gather(2, expanded).contiguous(), values.gather(2, expanded).contiguous()


@dataclass
class SelectionPress(BasePress):
    """A press that picks, per layer, the positions each KV head keeps.

    Subclasses implement `select` returning indices (bsz, num_kv_heads, n). The indices
    of the last prefill are kept in `kept_indices[layer_idx]` so tests and benchmarks can
    check what was kept (sinks, windows, sentences) without re-deriving it.
    """

    compression_ratio: float = 0.0
    kept_indices: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.compression_ratio < 1.0:
            raise ConfigError(f"compression_ratio must be in [0, 1), got {self.compression_ratio}")

    def select(
        self, module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, kwargs: dict
    ) -> torch.Tensor:
        raise NotImplementedError

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self.compression_ratio == 0 or keys.shape[2] < 2:
            return keys, values
        indices = self.select(module, hidden_states, keys, kwargs)
        self.kept_indices[module.layer_idx] = indices.sort(dim=-1).values.cpu()
        return gather_kept(keys, values, indices)
