"""What the encoder experiments (encoder_finetune.py, encoder_distill.py) share."""

from __future__ import annotations

import numpy as np

from edgecache.evalrun import balanced_report
from edgecache.evaluation import pairwise, pairwise_hits, sweep_of
from edgecache.metrics import Scores, at, best


def warmup_then_decay(optimizer, total_steps: int, warmup_fraction: float):
    """Linear warm-up over the first steps, then linear decay to zero at `total_steps`."""
    import torch

    warmup = max(1, int(warmup_fraction * total_steps))
    decay = max(1, total_steps - warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total_steps - s) / decay)
    )


def chosen_on_validation(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], y: dict[str, np.ndarray], dtype: str = "f32"
) -> tuple[Scores, Scores]:
    """The pairwise protocol: the best-F1 threshold on validation, and test at that threshold."""
    sweeps = {split: pairwise(a[split], b[split], y[split], dtype) for split in ("validation", "test")}
    chosen = best(sweeps["validation"])
    return chosen, at(sweeps["test"], chosen.threshold)


def balanced_on_validation(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], y: dict[str, np.ndarray], dtype: str = "f32"
) -> dict:
    """The same on MeanCache's half-duplicate construction (`evalrun.balanced_report`)."""
    hits = {split: pairwise_hits(a[split], b[split], dtype) for split in ("validation", "test")}
    return balanced_report(lambda split, rows: sweep_of(hits[split], y[split], rows=rows), y)
