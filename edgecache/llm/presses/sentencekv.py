"""SentenceKV: whole sentences kept by the attention the observation window pays them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from kvpress.utils import compute_n_kept

from ...errors import ConfigError
from .scoring import per_kv_head, window_attention
from .selection import SelectionPress

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
        n = compute_n_kept(k_len, self.compression_ratio)
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
            sizes = torch.tensor([e - s for s, e in spans], device=keys.device)
            sentence_of = torch.repeat_interleave(torch.arange(len(spans), device=keys.device), sizes)
            # Mean attention per token of every sentence, for every KV head: (kv, S). The sinks
            # are kept anyway and draw attention for no reason of content, so they do not count
            # (with them, the first sentence outranked the needle in 82 of 90 heads).
            scored = attention[b, :, :span_len].clone()
            scored[:, :sink] = 0.0
            counted = torch.bincount(sentence_of[sink:], minlength=len(spans)).clamp(min=1)
            sums = torch.zeros(num_kv, len(spans), device=keys.device)
            sums.index_add_(1, sentence_of, scored)
            sentence_score = sums / counted[None, :]
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
                    fill = attention[b, h].masked_fill(keep, float("-inf")).topk(room).indices
                    keep[fill] = True
                per_head.append(keep.nonzero().squeeze(-1))
            rows.append(torch.stack(per_head))
        return torch.stack(rows)
