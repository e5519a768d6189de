"""WindowKV: task-adaptive review windows, layer groups sharing indices."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from kvpress.utils import compute_n_kept

from ...errors import ConfigError
from .budgets import allocate_budgets
from .scoring import window_attention
from .selection import SelectionPress

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
class WindowKVPress(SelectionPress):
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
        attn = window_attention(module, hidden_states, keys, suffix, kwargs)[..., :review].sum(dim=2)
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
