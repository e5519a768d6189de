"""SentenceKV: whole sentences kept by the attention the observation window pays them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from kvpress.utils import compute_n_kept
from transformers.models.llama.modeling_llama import repeat_kv

from ...errors import ConfigError
from .scoring import per_kv_head, rope_window_queries, window_attention
from .selection import SelectionPress, gather_kept

_SENTENCE_END = (".", "!", "?", ";", "\n", "\u3002", "\uff01", "\uff1f")  # ASCII and CJK enders


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
class SentenceKVPress(SelectionPress):
    """SentenceKV's prefill-time sentence-level selection (Zhu et al., 2025, "SentenceKV").

    Scored: the context is split into sentences at sentence-ending tokens (a run with no
    boundary is cut every `max_sentence_tokens`). A sentence's score for a KV head is the
    attention the observation window (the last `window_size` positions) pays to its
    tokens: softmax attention averaged over the window and over the head's query group
    (GQA), then averaged over the sentence's tokens other than the sinks. This is SnapKV's
    signal with the paper's unit: whole sentences.

    The paper's sentence vector, the mean of a sentence's key vectors, is what it retrieves
    by at decode time. We first used it as the prefill score (RoPE'd mean key against the
    mean window query), and it preferred sentences near the end. On the query-aware needle
    task (SmolLM2, 1k tokens, 10%) the needle sentence was then kept whole in only 4-8 of
    the 90 layer-heads, and 34 of 40 codes were copied right. With the attention score, it
    was kept whole in 18-24 (the layers that retrieve), and 40 of 40 were right, at 10% and
    at 5% (benchmarks/README.md).

    Kept, per KV head: `n_sink` attention sinks and the observation window, then whole
    sentences in order of score as long as they fit in the budget. The remainder smaller
    than any sentence still left is filled with the individually most attended tokens, so
    every head keeps exactly the budget. Whole sentences keep the facts they state
    readable, where token-level selection keeps fragments.

    The paper also offloads the evicted sentences to CPU memory and retrieves them by
    similarity at decode time. This press does the prefill-time selection only (the
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
        bsz, num_kv, k_len, _ = keys.shape
        if ids is None or ids.shape[-1] != k_len:
            raise ConfigError(
                "SentenceKV needs the prefill's input_ids (inputs_embeds alone cannot be split)"
            )
        n = self.kept_count(k_len)
        window = min(self.window_size, k_len - 1, n)
        sink = min(self.n_sink, n - window)
        # Attention of the window over every key, per KV head: (b, kv, k).
        attention = per_kv_head(
            window_attention(module, hidden_states, keys, window, kwargs).mean(dim=2), num_kv
        )
        if module.layer_idx == 0:
            self.last_spans = []
        span_len = k_len - window
        rows = []
        for b in range(bsz):
            spans = sentence_spans(ids[b, :span_len].tolist(), self._boundaries, self.max_sentence_tokens)
            if module.layer_idx == 0:
                self.last_spans.append(spans)
            scores = sentence_scores(attention[b, :, :span_len], spans, sink)
            per_head = []
            for h in range(num_kv):
                keep = torch.zeros(k_len, dtype=torch.bool, device=keys.device)
                keep[:sink] = True
                keep[k_len - window :] = True
                keep |= take_sentences(scores[h], spans, keep, n - int(keep.sum()), attention[b, h])
                per_head.append(keep.nonzero().squeeze(-1))
            rows.append(torch.stack(per_head))
        return torch.stack(rows)

    def kept_count(self, k_len: int) -> int:
        """Entries each KV head keeps after prefill."""
        return compute_n_kept(k_len, self.compression_ratio)


def sentence_scores(attention: torch.Tensor, spans: list[tuple[int, int]], sink: int) -> torch.Tensor:
    """Mean attention per token of every sentence, for every KV head: (kv, S) from (kv, L).

    The first `sink` positions do not count: the sinks are kept anyway and draw attention
    for no reason of content (counted, the first sentence outranked the needle in 82 of 90
    heads)."""
    device = attention.device
    sizes = torch.tensor([e - s for s, e in spans], device=device)
    sentence_of = torch.repeat_interleave(torch.arange(len(spans), device=device), sizes)
    length = int(sizes.sum())
    scored = attention[:, :length].clone()
    scored[:, :sink] = 0.0
    counted = torch.bincount(sentence_of[sink:], minlength=len(spans)).clamp(min=1)
    sums = torch.zeros(attention.shape[0], len(spans), device=device, dtype=scored.dtype)
    sums.index_add_(1, sentence_of, scored)
    return sums / counted[None, :]


def take_sentences(
    scores: torch.Tensor,
    spans: list[tuple[int, int]],
    taken: torch.Tensor,
    room: int,
    token_scores: torch.Tensor,
) -> torch.Tensor:
    """Positions to add to `taken` (bool, one KV head): whole sentences in order of score
    while their untaken tokens fit in `room`; what is left of the room, smaller than any
    sentence still out, goes to the individually best-scored untaken tokens."""
    new = torch.zeros_like(taken)
    for j in scores.argsort(descending=True).tolist():
        if room <= 0:
            break
        s, e = spans[j]
        missing = ~(taken[s:e] | new[s:e])
        count = int(missing.sum())
        if 0 < count <= room:
            new[s:e] |= missing
            room -= count
    if room > 0:
        fill = token_scores.masked_fill(taken | new, float("-inf")).topk(room).indices
        new[fill] = True
    return new


@dataclass
class OffloadedLayer:
    """One layer's full prefill cache, held off the accelerator, and what stayed on it."""

    keys: torch.Tensor  # (b, kv, L, d), RoPE'd at their original positions
    values: torch.Tensor
    resident: torch.Tensor  # (b, kv, L) bool: the positions the compressed cache holds


@dataclass
class SentenceStore:
    """What `OffloadingSentenceKVPress` offloads: every layer's full prefill KV, with the
    context's sentences, from which each question retrieves what it attends to."""

    spans: list[list[tuple[int, int]]]
    retrieve_tokens: int
    n_sink: int
    layers: dict[int, OffloadedLayer] = field(default_factory=dict)
    last_retrieved: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for layer in self.layers.values() for t in (layer.keys, layer.values)
        )

    def resident_count(self, layer_idx: int) -> int | None:
        """Entries per KV head the compressed cache holds for the layer (None: not stored)."""
        stored = self.layers.get(layer_idx)
        return None if stored is None else int(stored.resident[0, 0].sum())

    def retrieving(self, model: Any):
        """`retrieval_hooks` for this store: a cache restored from it retrieves as the
        pipeline's does (the LLM worker reuses stored contexts this way)."""
        return retrieval_hooks(model, lambda: self)

    def retrieve(self, module: Any, hidden_states: torch.Tensor, cache_layer: Any, kwargs: dict) -> None:
        """Append to `cache_layer` the entries this layer's question attends to most: whole
        sentences first, then single tokens, `retrieve_tokens` per KV head, none resident."""
        stored = self.layers.get(module.layer_idx)
        if stored is None or self.retrieve_tokens <= 0:
            return
        bsz, num_kv, length, _ = stored.keys.shape
        room = min(self.retrieve_tokens, length - int(self.resident_count(module.layer_idx) or 0))
        if room <= 0:
            return
        # The question's own RoPE'd queries, scored where the full keys live (the offload side):
        # only the chosen entries travel back.
        queries = rope_window_queries(
            module, hidden_states, hidden_states.shape[1], kwargs["position_embeddings"]
        ).to(stored.keys.device)
        groups = queries.shape[1] // num_kv
        logits = torch.matmul(
            queries.float(), repeat_kv(stored.keys, groups).float().transpose(2, 3)
        ) / math.sqrt(module.head_dim)
        attention = per_kv_head(logits.softmax(dim=-1).mean(dim=2), num_kv)  # (b, kv, L)
        rows = []
        for b in range(bsz):
            scores = sentence_scores(attention[b], self.spans[b], self.n_sink)
            rows.append(
                torch.stack(
                    [
                        take_sentences(scores[h], self.spans[b], stored.resident[b, h], room, attention[b, h])
                        .nonzero()
                        .squeeze(-1)
                        for h in range(num_kv)
                    ]
                )
            )
        chosen = torch.stack(rows)
        self.last_retrieved[module.layer_idx] = chosen
        keys, values = gather_kept(stored.keys, stored.values, chosen)
        device = cache_layer.keys.device
        cache_layer.keys = torch.cat([cache_layer.keys, keys.to(device, cache_layer.keys.dtype)], dim=2)
        cache_layer.values = torch.cat(
            [cache_layer.values, values.to(device, cache_layer.values.dtype)], dim=2
        )


@dataclass
class OffloadingSentenceKVPress(SentenceKVPress):
    """SentenceKV with its offload: the prefill keeps `1 - retrieval_share` of the budget on
    the device (whole sentences, as `SentenceKVPress`), holds the full prefill KV off it
    (CPU memory: `store`), and each question brings back the sentences it attends to, up
    to `retrieval_share` of the budget, so the cache a question reads never exceeds the
    budget.

    The paper retrieves at every decoding step by similarity to sentence vectors (mean
    keys). Here retrieval happens once per question, in the first forward that reads the
    compressed cache as prefill left it (the question's tokens; LouisKV's point that
    retrieving at semantic boundaries suffices), and a sentence is scored, as at prefill,
    by the softmax attention the question's tokens pay its tokens: the mean-key score lost
    needles to recent sentences (see `SentenceKVPress`). Scoring reads every offloaded key
    once per question and layer, on the offload side; only the chosen entries move back.
    kvpress's pipeline crops each answer from the cache to the length before its question,
    which drops the retrieved entries with it, so every question starts from the same
    compressed cache.

    Use: `with press.retrieving(model):` around the pipeline call (or any forward that
    prefills, then asks), `make_press("sentencekv_offload", budget, tokenizer=...)`.
    """

    retrieval_share: float = 0.5
    store: SentenceStore | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.retrieval_share < 1.0:
            raise ConfigError(f"retrieval_share must be in [0, 1), got {self.retrieval_share}")

    def kept_count(self, k_len: int) -> int:
        budget = super().kept_count(k_len)
        return max(1, budget - self._retrieved_count(k_len))

    def _retrieved_count(self, k_len: int) -> int:
        return int(compute_n_kept(k_len, self.compression_ratio) * self.retrieval_share)

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if module.layer_idx == 0:
            self.store = None  # a new context: the last one's store must not answer for it
        if self.compression_ratio == 0 or keys.shape[2] < 2:
            return keys, values
        kept_keys, kept_values = super().compress(module, hidden_states, keys, values, attentions, kwargs)
        if module.layer_idx == 0:
            self.store = SentenceStore(self.last_spans, self._retrieved_count(keys.shape[2]), self.n_sink)
        if self.store is None:
            raise ConfigError("OffloadingSentenceKVPress must see every layer's prefill, from layer 0")
        resident = torch.zeros(keys.shape[:3], dtype=torch.bool)
        resident.scatter_(2, self.kept_indices[module.layer_idx], True)
        offload = torch.device("cpu")
        self.store.layers[module.layer_idx] = OffloadedLayer(keys.to(offload), values.to(offload), resident)
        return kept_keys, kept_values

    def retrieving(self, model):
        """Hooks that let each question retrieve from `store`, whichever prefill filled it
        last (kvpress's pipeline prefills inside the call these hooks wrap)."""
        return retrieval_hooks(model, lambda: self.store)


@contextmanager
def retrieval_hooks(model: Any, current: Callable[[], SentenceStore | None]):
    """Forward pre-hooks on every attention layer: the first forward over a cache that holds
    exactly the compressed context (a question after prefill, or after kvpress cropped the
    last answer away) retrieves from the store `current()` returns."""

    def before_attention(module, _args, kwargs):
        store = current()
        cache = kwargs.get("past_key_values")
        if store is None or cache is None or module.layer_idx >= len(cache.layers):
            return
        layer = cache.layers[module.layer_idx]
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.numel() and keys.shape[2] == store.resident_count(module.layer_idx):
            store.retrieve(module, kwargs["hidden_states"], layer, kwargs)

    handles = [
        layer.self_attn.register_forward_pre_hook(before_attention, with_kwargs=True)
        for layer in model.model.layers
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
