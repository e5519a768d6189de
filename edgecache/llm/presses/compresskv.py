"""CompressKV: semantic retrieval heads rank tokens; eviction errors size layer budgets."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from kvpress.utils import compute_n_kept
from transformers.models.llama.modeling_llama import repeat_kv

from ...errors import ConfigError
from .budgets import allocate_budgets
from .scoring import window_attention
from .selection import SelectionPress, gather_kept


@dataclass
class CompressKVPress(SelectionPress):
    """CompressKV (Lin et al., 2025, "Semantic Retrieval Heads Know What Tokens are Not Important").

    Scored: in each layer, the observation window's attention (last `window_size`
    queries) over the context, but only from the layer's *semantic retrieval heads* —
    heads that fetch content from the body of the context rather than parking on the
    attention sinks or the local neighbourhood. The paper finds them offline with
    needle tests; here a head's retrieval score is the attention mass its top
    budget-many context tokens receive from the observation window, excluding the
    `n_sink` first tokens and the window itself, so heads that retrieve concentrated,
    distant content rank first. The `num_retrieval_heads` best query heads (default:
    1 in 8 of the layer's heads as in the paper's 4 of 32, at least 2) are averaged,
    smoothed with average pooling (`kernel_size` 5) and give one token ranking that all
    KV heads of the layer follow (the paper shares it across GQA groups). Users with
    offline-identified heads pass `retrieval_heads={layer: [query heads]}`.

    Kept: per layer, the observation window plus the best-ranked tokens.

    Layer-adaptive budgets: each layer's eviction error is measured at the uniform budget
    — the relative distance between the window's attention output over the full cache
    and over the kept entries. Layers whose output suffers more get more budget:
    every layer keeps at least `min_layer_ratio` of the mean budget, the rest is split in
    proportion to the errors, capped at `max_layer_ratio` times the mean (the paper's
    3x), and the total over layers equals the uniform budget. The paper averages errors
    offline over a dataset; `layer_errors` accepts such a calibration (see `calibrate`),
    and without it the errors of the context being compressed are used: selection then
    waits for the last layer of the prefill (a layer's cache is not read by later layers
    during prefill, so the result is the same as compressing layer by layer).
    """

    window_size: int = 8
    kernel_size: int = 5
    n_sink: int = 4
    num_retrieval_heads: int | None = None
    retrieval_heads: dict[int, list[int]] | None = None
    layer_errors: list[float] | None = None
    min_layer_ratio: float = 0.2
    max_layer_ratio: float = 3.0
    last_layer_errors: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    last_retrieval_heads: dict[int, list[int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _pending: dict[int, tuple[torch.Tensor, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.min_layer_ratio <= 1.0 <= self.max_layer_ratio:
            raise ConfigError("need 0 < min_layer_ratio <= 1 <= max_layer_ratio")

    def _token_ranking(self, module, hidden_states, keys, kwargs) -> tuple[torch.Tensor, int]:
        """(bsz, k_len) scores, window positions scored +inf; and the window length."""
        k_len = keys.shape[2]
        window = min(self.window_size, k_len - 1)
        attn = window_attention(module, hidden_states, keys, window, kwargs)  # (b, H, w, k)
        context = attn[..., : k_len - window].sum(dim=2)  # (b, H, k - w)
        n_keep = compute_n_kept(k_len, self.compression_ratio)
        body = context[..., min(self.n_sink, context.shape[-1] - 1) :]
        top = max(1, min(n_keep, body.shape[-1]))
        retrieval = body.topk(top, dim=-1).values.sum(dim=-1).mean(dim=0)  # (H,)
        num_heads = retrieval.shape[0]
        if self.retrieval_heads and module.layer_idx in self.retrieval_heads:
            heads = list(self.retrieval_heads[module.layer_idx])
        else:
            k = self.num_retrieval_heads or max(2, num_heads // 8)
            heads = retrieval.topk(min(k, num_heads)).indices.tolist()
        self.last_retrieval_heads[module.layer_idx] = sorted(heads)
        scores = context[:, heads].mean(dim=1, keepdim=True)
        if self.kernel_size > 1 and scores.shape[-1] >= self.kernel_size:
            scores = F.avg_pool1d(scores, self.kernel_size, padding=self.kernel_size // 2, stride=1)
        scores = F.pad(scores.squeeze(1), (0, window), value=float("inf"))
        self._attention_cache = (attn, window)
        return scores, window

    def _eviction_error(self, attn: torch.Tensor, values: torch.Tensor, keep: torch.Tensor) -> float:
        """Relative change of the window's attention output when only `keep` positions remain."""
        groups = attn.shape[1] // values.shape[1]
        v = repeat_kv(values, groups).float()
        full = attn @ v
        mask = torch.zeros(attn.shape[0], attn.shape[-1], dtype=torch.bool, device=attn.device)
        mask.scatter_(1, keep, True)
        kept = attn * mask[:, None, None, :]
        kept = kept / kept.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return float((kept @ v - full).norm() / full.norm().clamp_min(1e-12))

    def _layer_budgets(self, errors: Sequence[float], k_len: int) -> list[int]:
        mean = compute_n_kept(k_len, self.compression_ratio)
        low = max(1, min(k_len, int(mean * self.min_layer_ratio)))
        high = min(k_len, max(mean, math.ceil(mean * self.max_layer_ratio)))
        return allocate_budgets(errors, mean * len(errors), low, high)

    def _apply(self, scores: torch.Tensor, window: int, n: int, num_kv_heads: int) -> torch.Tensor:
        n = max(n, min(window, scores.shape[-1]))
        return scores.topk(n, dim=-1).indices.unsqueeze(1).expand(-1, num_kv_heads, -1)

    def forward_hook(self, module, input, kwargs, output):
        if self.layer_errors is not None or self.compression_ratio == 0:
            return super().forward_hook(module, input, kwargs, output)
        from kvpress.presses.base_press import is_prefilling

        hidden_states = kwargs["hidden_states"]
        if not is_prefilling(kwargs["cache_position"], hidden_states.shape[1]):
            return output
        cache = kwargs["past_key_values"]
        layer = module.layer_idx
        keys, values = cache.layers[layer].keys, cache.layers[layer].values
        k_len = keys.shape[2]
        if k_len < 2:
            return output
        scores, window = self._token_ranking(module, hidden_states, keys, kwargs)
        uniform = self._apply(scores, window, compute_n_kept(k_len, self.compression_ratio), keys.shape[1])
        attn, _ = self._attention_cache
        self.last_layer_errors[layer] = self._eviction_error(attn, values, uniform[:, 0])
        self._pending[layer] = (scores, window)
        if layer == module.config.num_hidden_layers - 1:
            ordered = sorted(self._pending)
            budgets = self._layer_budgets([self.last_layer_errors[i] for i in ordered], k_len)
            for i, n in zip(ordered, budgets, strict=True):
                s, w = self._pending[i]
                cache_layer = cache.layers[i]
                idx = self._apply(s, w, n, cache_layer.keys.shape[1])
                self.kept_indices[i] = idx.sort(dim=-1).values.cpu()
                cache_layer.keys, cache_layer.values = gather_kept(cache_layer.keys, cache_layer.values, idx)
            self._pending = {}
        return output

    def select(self, module, hidden_states, keys, kwargs):
        # Used only with calibrated `layer_errors`: budgets are known layer by layer.
        k_len = keys.shape[2]
        scores, window = self._token_ranking(module, hidden_states, keys, kwargs)
        budgets = self._layer_budgets(self.layer_errors, k_len)
        return self._apply(scores, window, budgets[module.layer_idx], keys.shape[1])

    @contextmanager
    def __call__(self, model):
        if self.layer_errors is not None and len(self.layer_errors) != model.config.num_hidden_layers:
            raise ConfigError(
                f"layer_errors has {len(self.layer_errors)} entries; the model has "
                f"{model.config.num_hidden_layers} layers"
            )
        self._pending = {}
        with super().__call__(model):
            yield
        self._attention_cache = None

    @classmethod
    def calibrate(cls, model: Any, contexts: Iterable[torch.Tensor], budget: float = 0.1) -> list[float]:
        """Average per-layer eviction errors over calibration contexts (token id tensors).

        Pass the result as `layer_errors` to allocate budgets the way the paper does
        (offline), instead of per context.
        """
        from transformers import DynamicCache

        press = cls(compression_ratio=1.0 - budget)
        totals: list[float] | None = None
        count = 0
        for ids in contexts:
            with torch.no_grad(), press(model):
                model.model(input_ids=ids.to(model.device), past_key_values=DynamicCache())
            errs = [press.last_layer_errors[i] for i in range(model.config.num_hidden_layers)]
            totals = errs if totals is None else [a + b for a, b in zip(totals, errs, strict=True)]
            count += 1
        if not count or totals is None:
            raise ConfigError("calibrate needs at least one context")
        return [t / count for t in totals]
