"""Training-free adapters over any dual encoder's embeddings (numpy only, no torch).

`tfup`: TFUP (Training-Free Unsupervised Prompt, 2024): zero-shot classification from class
prompt embeddings plus a feature cache of confidently pseudo-labelled target samples, read
with a multi-level (feature + semantic) similarity. The torch/open_clip image backend and the
batch job that DESIGN.md places in the top-level `adapters/` unit feed this same core.
"""

from .tfup import (
    AdapterFileError,
    Selection,
    TFUPAdapter,
    TFUPConfig,
    ensemble_prompts,
    feature_similarity,
    msm_cache_logits,
    paper_shots,
    select_representatives,
    semantic_similarity,
    zero_shot_logits,
)

__all__ = [
    "AdapterFileError",
    "Selection",
    "TFUPAdapter",
    "TFUPConfig",
    "ensemble_prompts",
    "feature_similarity",
    "msm_cache_logits",
    "paper_shots",
    "select_representatives",
    "semantic_similarity",
    "zero_shot_logits",
]
