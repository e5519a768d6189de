"""SentenceKV: whole sentences kept by query-key similarity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from kvpress.utils import compute_n_kept
from transformers.models.llama.modeling_llama import repeat_kv

from ...errors import ConfigError
from .scoring import per_kv_head, rope_window_queries
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
        queries = rope_window_queries(module, hidden_states, window, kwargs["position_embeddings"]).float()
        # Mean window query per query head, then token similarity per KV head.
        q = queries.mean(dim=2)  # (b, H, d)
        k = repeat_kv(keys, groups).float()  # (b, H, k, d)
        token_sim = per_kv_head(torch.einsum("bhd,bhkd->bhk", q, k) / math.sqrt(head_dim), num_kv)
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
