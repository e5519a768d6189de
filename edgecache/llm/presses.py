"""KV-cache compression presses: kvpress baselines plus WindowKV, CompressKV, TaskKV, SentenceKV.

Every press is a kvpress press: a dataclass whose hooks run after each attention layer
during prefill and replace that layer's cached keys/values with the entries it keeps
(`with press(model): model.model(input_ids=..., past_key_values=cache)`, or kvpress's
`KVPressTextGenerationPipeline`). Decoding then runs on the compressed cache unchanged.

`make_press(name, budget)` is the one entry point used by the worker and the benchmarks.
`budget` is the fraction of the KV cache KEPT, in (0, 1]; kvpress itself speaks of
`compression_ratio = 1 - budget`. "full" returns None (no press, full cache).

Our presses share three conventions, chosen to match how kvpress's own presses behave:
- the budget is counted per layer over all positions of the prefilled sequence (the
  observation window included), so "0.1" means one tenth of the full cache's entries;
- scores are computed from the *observation window*: the last `window_size` queries of
  the prefill, i.e. the end of the context, which in kvpress's pipeline is compressed
  before (and independently of) the question, so one compressed cache serves many questions;
- with grouped-query attention (SmolLM2: 9 query heads over 3 KV heads) one cached KV head
  serves several query heads, so query-head scores are averaged over each KV head's group
  before any choice is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from kvpress import (
    BasePress,
    ExpectedAttentionPress,
    KnormPress,
    PyramidKVPress,
    SnapKVPress,
    StreamingLLMPress,
)
from kvpress.utils import compute_n_kept, get_prerope_query_states
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from ..errors import ConfigError

TASKS = ("qa", "aggregation")
_AGGREGATION_WORDS = (
    "summar",
    "overview",
    "outline",
    "gist",
    "main points",
    "key points",
    "tl;dr",
    "tldr",
    "count",
    "how many",
    "list all",
    "rewrite",
    "paraphrase",
    "translate",
)
_SENTENCE_END = (".", "!", "?", ";", "\n", "\u3002", "\uff01", "\uff1f")  # ASCII and CJK enders


# ---------------------------------------------------------------------------------------
# Layers of different lengths
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------


def _rope_window_queries(
    module: nn.Module, hidden_states: torch.Tensor, window: int, position_embeddings
) -> torch.Tensor:
    """RoPE'd queries of the last `window` positions: (bsz, num_heads, window, head_dim)."""
    queries = get_prerope_query_states(module, hidden_states[:, -window:])
    cos, sin = position_embeddings
    cos, sin = cos[:, -window:].unsqueeze(1), sin[:, -window:].unsqueeze(1)
    return queries * cos + rotate_half(queries) * sin


def _window_attention(
    module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, window: int, kwargs: dict
) -> torch.Tensor:
    """Softmax attention of the observation window over all keys, causal inside the window.

    Returns (bsz, num_heads, window, k_len) in float32. kvpress's SnapKV helper computes
    the same thing but returns only the columns before the window; our presses also need
    the window's own columns (eviction error, head outputs).
    """
    k_len = keys.shape[2]
    groups = module.config.num_attention_heads // keys.shape[1]
    queries = _rope_window_queries(module, hidden_states, window, kwargs["position_embeddings"])
    logits = torch.matmul(queries.float(), repeat_kv(keys, groups).float().transpose(2, 3)) / math.sqrt(
        module.head_dim
    )
    causal = torch.ones(window, k_len, dtype=torch.bool, device=keys.device).tril(diagonal=k_len - window)
    logits = logits.masked_fill(~causal, float("-inf"))
    return logits.softmax(dim=-1)


def _per_kv_head(scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Average query-head scores (bsz, num_heads, ...) over each KV head's group."""
    bsz, num_heads = scores.shape[:2]
    return scores.reshape(bsz, num_kv_heads, num_heads // num_kv_heads, *scores.shape[2:]).mean(dim=2)


def _gather(
    keys: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep positions `indices` (bsz, num_kv_heads, n) of every KV head, in position order."""
    indices = indices.sort(dim=-1).values
    expanded = indices.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
    return keys.gather(2, expanded).contiguous(), values.gather(2, expanded).contiguous()


def allocate_budgets(weights: Sequence[float], total: int, low: int, high: int) -> list[int]:
    """Split `total` entries over len(weights) slots in proportion to `weights`.

    Every slot gets at least `low` and at most `high`; the result sums to `total` whenever
    `low * n <= total <= high * n`. Rounding leftovers go to the slots with the largest
    weights first, as in CompressKV's budget allocation.
    """
    n = len(weights)
    total = max(low * n, min(high * n, total))
    w = torch.tensor([max(float(x), 0.0) for x in weights], dtype=torch.float64)
    w = w / w.sum() if float(w.sum()) > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
    budgets = [low] * n
    extra = total - low * n
    # Proportional shares, capped at `high`; the capped excess is re-spread over the rest.
    free = list(range(n))
    while extra > 0 and free:
        share = (
            w[free] / w[free].sum() if float(w[free].sum()) > 0 else torch.full((len(free),), 1.0 / len(free))
        )
        grants = [
            min(high - budgets[i], math.floor(float(s) * extra)) for i, s in zip(free, share, strict=True)
        ]
        if sum(grants) == 0:
            break
        for i, g in zip(free, grants, strict=True):
            budgets[i] += g
        extra -= sum(grants)
        free = [i for i in free if budgets[i] < high]
    order = sorted(range(n), key=lambda i: -float(w[i]))
    while extra > 0:
        progressed = False
        for i in order:
            if extra == 0:
                break
            if budgets[i] < high:
                budgets[i] += 1
                extra -= 1
                progressed = True
        if not progressed:
            break
    return budgets


@dataclass
class _SelectionPress(BasePress):
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
        return _gather(keys, values, indices)


# ---------------------------------------------------------------------------------------
# WindowKV
# ---------------------------------------------------------------------------------------


def classify_task(text: str) -> str:
    """ "qa" or "aggregation" for a request text: the role of WindowKV's task classifier.

    The paper trains a BERT classifier to tell information-localisation tasks (QA,
    retrieval: the answer sits in a few places) from aggregation tasks (summaries, counts:
    the answer draws on the whole context). Those weights cannot be obtained here, so this
    keyword rule plays that part; callers that know the task pass it directly.
    """
    lowered = text.lower()
    return "aggregation" if any(word in lowered for word in _AGGREGATION_WORDS) else "qa"


@dataclass
class WindowKVPress(_SelectionPress):
    """WindowKV (Zuo et al., 2025, "Task-Adaptive Group-Wise KV Cache Window Selection").

    Scored: the context before the observation window is cut into consecutive "review
    windows" of `review_window_size` tokens. The last `suffix` queries (the observation
    window) attend over the context; a review window's score is read from those attention
    weights, averaged over all heads of the layer, with a task-dependent rule:
    - task "qa" (information localisation): per head, the mean of the window's top half
      attention values ("max" strategy), so one strongly attended token makes a window
      worth keeping; observation window 32 tokens;
    - task "aggregation" (summaries etc.): the plain mean over the window ("average"),
      which favours evenly informative spans; observation window 16 tokens.

    Kept: whole review windows of consecutive tokens, best first, as many as fit in the
    layer's budget (the remainder smaller than one window is left unused, as in the
    paper), plus the observation window itself. Windows keep phrases intact, which
    token-level selection (SnapKV) fragments.

    Layer groups: consecutive layers form groups of `group_size`; only a group's first
    layer scores windows, the other layers reuse its window indices (intra-group KV cache
    indices sharing), which removes most scoring cost. Budgets fall linearly from the
    first group to the last (the paper's arithmetic decay: last group gets
    `last_group_ratio` of the mean, 8/14 from its beta=14 with 8-layer groups), with the
    total over layers equal to the uniform budget.

    Defaults follow the paper's released settings (review windows of 8, 4 groups of 8
    layers on 32-layer Llama-3); `group_size=None` keeps 4 groups for other depths
    (8 layers per group for SmolLM2's 30).
    """

    review_window_size: int = 8
    task: str = "qa"
    group_size: int | None = None
    last_group_ratio: float = 8 / 14
    qa_suffix: int = 32
    aggregation_suffix: int = 16
    _shared: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.review_window_size < 1:
            raise ConfigError("review_window_size must be >= 1")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError("group_size must be >= 1")
        if not 0.0 < self.last_group_ratio <= 1.0:
            raise ConfigError("last_group_ratio must be in (0, 1]")

    @property
    def suffix(self) -> int:
        return self.qa_suffix if self.task == "qa" else self.aggregation_suffix

    def groups(self, num_layers: int) -> list[range]:
        size = self.group_size or max(1, round(num_layers / 4))
        return [range(start, min(start + size, num_layers)) for start in range(0, num_layers, size)]

    def layer_budgets(self, num_layers: int, k_len: int) -> list[int]:
        """Entries kept per layer (observation window included) for a `k_len` prefill."""
        groups = self.groups(num_layers)
        g = len(groups)
        last = self.last_group_ratio
        group_weight = [1.0] if g == 1 else [(2 - last) - (2 - 2 * last) * i / (g - 1) for i in range(g)]
        per_layer = [group_weight[i] for i, grp in enumerate(groups) for _ in grp]
        mean = compute_n_kept(k_len, self.compression_ratio)
        low = min(k_len, self.suffix, mean)
        budgets = allocate_budgets(per_layer, mean * num_layers, low, k_len)
        # One budget per group (its layers share indices): the group's mean, rounded down.
        out: list[int] = []
        for grp in groups:
            out.extend([sum(budgets[i] for i in grp) // len(grp)] * len(grp))
        return out

    def select(self, module, hidden_states, keys, kwargs):
        num_layers = module.config.num_hidden_layers
        layer = module.layer_idx
        k_len = keys.shape[2]
        group = next(grp for grp in self.groups(num_layers) if layer in grp)
        if layer != group.start and group.start in self._shared:
            return self._shared[group.start].to(keys.device)
        budget = self.layer_budgets(num_layers, k_len)[layer]
        suffix = min(self.suffix, budget, k_len - 1)
        review = k_len - suffix
        attn = _window_attention(module, hidden_states, keys, suffix, kwargs)[..., :review].sum(dim=2)
        w = self.review_window_size
        n_windows = math.ceil(review / w)
        padded = F.pad(attn, (0, n_windows * w - review), value=float("nan"))
        per_window = padded.reshape(*attn.shape[:2], n_windows, w)
        if self.task == "qa":
            top = max(1, w // 2)
            # Windows at the tail may be shorter: missing slots rank last and are ignored.
            ranked = per_window.nan_to_num(float("-inf")).topk(min(top, w), dim=-1).values
            ranked = ranked.masked_fill(torch.isinf(ranked), float("nan"))
            window_score = ranked.nanmean(dim=-1)
        else:
            window_score = per_window.nanmean(dim=-1)
        window_score = window_score.mean(dim=1)  # (bsz, n_windows): shared by all heads
        lengths = torch.full((n_windows,), w, device=keys.device)
        lengths[-1] = review - (n_windows - 1) * w
        room = budget - suffix
        bsz = keys.shape[0]
        rows = []
        for b in range(bsz):
            chosen: list[torch.Tensor] = []
            used = 0
            for idx in window_score[b].argsort(descending=True).tolist():
                if used + int(lengths[idx]) > room:
                    continue
                chosen.append(torch.arange(idx * w, idx * w + int(lengths[idx]), device=keys.device))
                used += int(lengths[idx])
                if room - used < 1:
                    break
            chosen.append(torch.arange(review, k_len, device=keys.device))
            rows.append(torch.cat(chosen))
        # Rows of one batch can differ in length only if window tails differ, which they
        # cannot (same k_len), so they stack.
        indices = torch.stack(rows).unsqueeze(1).expand(-1, keys.shape[1], -1)
        self._shared[group.start] = indices
        return indices

    @contextmanager
    def __call__(self, model):
        self._shared = {}
        with super().__call__(model):
            yield


# ---------------------------------------------------------------------------------------
# CompressKV
# ---------------------------------------------------------------------------------------


@dataclass
class CompressKVPress(_SelectionPress):
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
        attn = _window_attention(module, hidden_states, keys, window, kwargs)  # (b, H, w, k)
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
                cache_layer.keys, cache_layer.values = _gather(cache_layer.keys, cache_layer.values, idx)
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


# ---------------------------------------------------------------------------------------
# Task-KV
# ---------------------------------------------------------------------------------------


@dataclass
class TaskKVPress(_SelectionPress):
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
    per-head attention mask (see `_per_layer_mask`; the role kvpress's
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
        return _per_kv_head(distance, values.shape[1])

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self.compression_ratio == 0 or keys.shape[2] < 2:
            return keys, values
        if module.config._attn_implementation == "eager":
            # transformers calls eager attention directly, bypassing the wrapped functions.
            raise ConfigError('TaskKV masks heads during decoding, which needs attn_implementation="sdpa"')
        bsz, num_kv, k_len, _ = keys.shape
        window = min(self.window_size, k_len - 1)
        attn = _window_attention(module, hidden_states, keys, window, kwargs)
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
        pooled = _per_kv_head(attn.sum(dim=2), num_kv)  # (b, kv, k_len)
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
        keys, values = _gather(keys, values, sorted_idx)
        self.kept_indices[module.layer_idx] = sorted_idx.masked_fill(surplus, -1).cpu()
        self.kept_counts[module.layer_idx] = counts
        masked = torch.nonzero(surplus, as_tuple=True) if surplus.any() else None
        module.edgecache_masked_keys = masked
        self.masks[module.layer_idx] = masked
        return keys, values

    def restore_masks(self, model) -> None:
        """Put this press's last masks back on the model (to decode again from its cache)."""
        for layer in _decoder_layers(model):
            layer.self_attn.edgecache_masked_keys = self.masks.get(layer.self_attn.layer_idx)


# ---------------------------------------------------------------------------------------
# SentenceKV
# ---------------------------------------------------------------------------------------


def sentence_boundary_ids(tokenizer: Any) -> tuple[int, ...]:
    """Token ids whose text ends a sentence (., !, ?, ;, newline and CJK equivalents)."""
    vocab_size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)], skip_special_tokens=False)
    ends = []
    for i, text in enumerate(texts):
        stripped = text.rstrip(" \t")
        if "\n" in text or (stripped and stripped.endswith(_SENTENCE_END)):
            ends.append(i)
    return tuple(ends)


def sentence_spans(
    ids: Sequence[int], boundaries: frozenset[int] | set[int], max_tokens: int
) -> list[tuple[int, int]]:
    """[start, end) spans: a sentence ends at a boundary token; long runs are cut at `max_tokens`."""
    spans: list[tuple[int, int]] = []
    start = 0
    for pos, tok in enumerate(ids):
        if tok in boundaries or pos + 1 - start >= max_tokens:
            spans.append((start, pos + 1))
            start = pos + 1
    if start < len(ids):
        spans.append((start, len(ids)))
    return spans


@dataclass
class SentenceKVPress(_SelectionPress):
    """SentenceKV's prefill-time sentence-level selection (Zhu et al., 2025, "SentenceKV").

    Scored: the context is split into sentences at sentence-ending tokens (a run with no
    boundary is cut every `max_sentence_tokens`). Each sentence gets a semantic vector
    per KV head: the mean of its cached (RoPE'd) key vectors, as in the paper. Its score
    for a KV head is the similarity — scaled dot product — between those vectors and the
    observation window's queries (the last `window_size` positions), averaged over the
    window and over the head's query group (GQA).

    Kept, per KV head: `n_sink` attention sinks and the observation window, then whole
    sentences in order of score as long as they fit in the budget; the remainder smaller
    than any sentence still left is filled with the individually best tokens (query-key
    similarity), so every head keeps exactly the budget. Whole sentences keep the facts
    they state readable, where token-level selection keeps fragments.

    The paper also offloads the evicted sentences to CPU memory and retrieves them by the
    same similarity at decode time; this press does the prefill-time selection only (the
    evicted entries are dropped). It needs the token ids of the prefill: it reads them
    from the model's input embedding layer, and its `boundary_token_ids` come from the
    tokenizer (`make_press("sentencekv", b, tokenizer=...)`).
    """

    boundary_token_ids: tuple[int, ...] = field(default=(), repr=False)
    window_size: int = 16
    n_sink: int = 4
    max_sentence_tokens: int = 64
    last_spans: list[list[tuple[int, int]]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    _input_ids: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.boundary_token_ids:
            raise ConfigError(
                "SentenceKV needs the tokenizer's sentence-ending token ids: "
                "make_press('sentencekv', budget, tokenizer=tokenizer)"
            )
        if self.max_sentence_tokens < 1:
            raise ConfigError("max_sentence_tokens must be >= 1")
        self._boundaries = frozenset(self.boundary_token_ids)

    @contextmanager
    def __call__(self, model):
        def remember(_module, args, _output):
            self._input_ids = args[0] if args and isinstance(args[0], torch.Tensor) else None

        handle = model.get_input_embeddings().register_forward_hook(remember)
        try:
            with super().__call__(model):
                yield
        finally:
            handle.remove()
            self._input_ids = None

    def select(self, module, hidden_states, keys, kwargs):
        ids = self._input_ids
        bsz, num_kv, k_len, head_dim = keys.shape
        if ids is None or ids.shape[-1] != k_len:
            raise ConfigError(
                "SentenceKV needs the prefill's input_ids (inputs_embeds alone cannot be split)"
            )
        n = compute_n_kept(k_len, self.compression_ratio)
        window = min(self.window_size, k_len - 1, n)
        sink = min(self.n_sink, n - window)
        groups = module.config.num_attention_heads // num_kv
        queries = _rope_window_queries(module, hidden_states, window, kwargs["position_embeddings"]).float()
        # Mean window query per query head, then token similarity per KV head.
        q = queries.mean(dim=2)  # (b, H, d)
        k = repeat_kv(keys, groups).float()  # (b, H, k, d)
        token_sim = _per_kv_head(torch.einsum("bhd,bhkd->bhk", q, k) / math.sqrt(head_dim), num_kv)
        if module.layer_idx == 0:
            self.last_spans = []
        span_len = k_len - window
        rows = []
        for b in range(bsz):
            spans = sentence_spans(ids[b, :span_len].tolist(), self._boundaries, self.max_sentence_tokens)
            if module.layer_idx == 0:
                self.last_spans.append(spans)
            sentence_of = torch.repeat_interleave(
                torch.arange(len(spans), device=keys.device),
                torch.tensor([e - s for s, e in spans], device=keys.device),
            )
            # Mean key of every sentence for every KV head at once: (kv, S, d).
            sums = torch.zeros(num_kv, len(spans), head_dim, device=keys.device)
            sums.index_add_(1, sentence_of, keys[b, :, :span_len].float())
            sizes = torch.tensor([e - s for s, e in spans], device=keys.device, dtype=torch.float32)
            sentence_keys = sums / sizes[None, :, None]
            group_q = q[b].view(num_kv, groups, head_dim)
            sentence_score = torch.einsum("hsd,hgd->hs", sentence_keys, group_q) / (
                groups * math.sqrt(head_dim)
            )
            per_head = []
            for h in range(num_kv):
                keep = torch.zeros(k_len, dtype=torch.bool, device=keys.device)
                keep[:sink] = True
                keep[k_len - window :] = True
                room = n - int(keep.sum())
                for j in sentence_score[h].argsort(descending=True).tolist():
                    if room <= 0:
                        break
                    s, e = spans[j]
                    new = int((~keep[s:e]).sum())
                    if new <= room:
                        keep[s:e] = True
                        room -= new
                if room > 0:
                    fill = token_sim[b, h].masked_fill(keep, float("-inf")).topk(room).indices
                    keep[fill] = True
                per_head.append(keep.nonzero().squeeze(-1))
            rows.append(torch.stack(per_head))
        return torch.stack(rows)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PressSpec:
    name: str
    factory: Callable[..., BasePress] | None
    source: str
    description: str


PRESSES: dict[str, PressSpec] = {
    spec.name: spec
    for spec in (
        PressSpec("full", None, "none", "no compression: the full KV cache"),
        PressSpec("snapkv", SnapKVPress, "kvpress", "SnapKV: observation-window attention, pooled"),
        PressSpec(
            "streamingllm", StreamingLLMPress, "kvpress", "StreamingLLM: attention sinks + recent tokens"
        ),
        PressSpec("knorm", KnormPress, "kvpress", "Knorm: keep keys with the smallest L2 norm"),
        PressSpec(
            "pyramidkv", PyramidKVPress, "kvpress", "PyramidKV: SnapKV with budgets shrinking by depth"
        ),
        PressSpec(
            "expected_attention",
            ExpectedAttentionPress,
            "kvpress",
            "Expected Attention: attention expected from future query statistics",
        ),
        PressSpec(
            "windowkv",
            WindowKVPress,
            "edgecache",
            "WindowKV: task-adaptive windows, layer groups share indices",
        ),
        PressSpec(
            "compresskv",
            CompressKVPress,
            "edgecache",
            "CompressKV: semantic retrieval heads + error-based layer budgets",
        ),
        PressSpec(
            "taskkv",
            TaskKVPress,
            "edgecache",
            "Task-KV: heterogeneous heads keep more; others sinks+recent+middle",
        ),
        PressSpec(
            "sentencekv", SentenceKVPress, "edgecache", "SentenceKV: whole sentences by query-key similarity"
        ),
    )
}


def validate_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
        raise ConfigError(
            f"budget must be a number in (0, 1] (fraction of the KV cache kept), got {budget!r}"
        )
    if not 0.0 < float(budget) <= 1.0:
        raise ConfigError(f"budget must be in (0, 1] (fraction of the KV cache kept), got {budget}")
    return float(budget)


def make_press(name: str, budget: float = 1.0, *, tokenizer: Any = None, **options: Any) -> BasePress | None:
    """A press keeping `budget` (fraction in (0, 1]) of the KV cache; None for "full".

    `tokenizer` is accepted by every press and used by those that read text structure
    (SentenceKV: sentence-ending tokens); other options are the press's dataclass fields
    (e.g. `window_size`, `task` for WindowKV).
    """
    if not isinstance(name, str) or name.lower() not in PRESSES:
        raise ConfigError(f"unknown press {name!r}; choose one of {', '.join(PRESSES)}")
    spec = PRESSES[name.lower()]
    budget = validate_budget(budget)
    if spec.factory is None:
        if options:
            raise ConfigError(f"press 'full' takes no options, got {', '.join(sorted(options))}")
        return None
    allowed = {f.name for f in fields(spec.factory) if f.init} - {"compression_ratio"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(
            f"press {spec.name!r} has no option(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
    if spec.factory is SentenceKVPress and "boundary_token_ids" not in options:
        if tokenizer is None:
            raise ConfigError("press 'sentencekv' needs tokenizer= (it splits the context into sentences)")
        options["boundary_token_ids"] = _cached_boundaries(tokenizer)
    try:
        return spec.factory(compression_ratio=1.0 - budget, **options)
    except (AssertionError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid options for press {spec.name!r}: {exc}") from exc


_BOUNDARY_CACHE: dict[int, tuple[Any, tuple[int, ...]]] = {}


def _cached_boundaries(tokenizer: Any) -> tuple[int, ...]:
    # Decoding a 49k vocabulary takes ~1 s; a worker builds many presses with one tokenizer.
    hit = _BOUNDARY_CACHE.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, sentence_boundary_ids(tokenizer))
        _BOUNDARY_CACHE[id(tokenizer)] = hit
    return hit[1]


# ---------------------------------------------------------------------------------------
# Measuring what a press kept
# ---------------------------------------------------------------------------------------


def _decoder_layers(model) -> list:
    inner = model.model if hasattr(model, "model") else model
    inner = inner.language_model if hasattr(inner, "language_model") else inner
    return list(inner.layers)


def kv_entries(model, cache) -> torch.Tensor:
    """Entries each (layer, KV head) actually attends to: (num_layers, num_kv_heads), batch 0.

    Physical cache length minus positions masked by head-wise presses (TaskKV, AdaKV).
    Multiply by 2 * head_dim * element size for bytes.
    """
    rows = []
    for layer, cache_layer in zip(_decoder_layers(model), cache.layers, strict=False):
        keys = cache_layer.keys
        counts = torch.full((keys.shape[1],), keys.shape[2], dtype=torch.long)
        for attr in ("edgecache_masked_keys", "masked_key_indices"):
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


__all__ = [
    "PRESSES",
    "TASKS",
    "CompressKVPress",
    "PressSpec",
    "SentenceKVPress",
    "TaskKVPress",
    "WindowKVPress",
    "allocate_budgets",
    "classify_task",
    "kv_bytes",
    "kv_entries",
    "make_press",
    "sentence_boundary_ids",
    "sentence_spans",
    "validate_budget",
]
