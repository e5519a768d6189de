"""The learning-rate schedule the encoder experiments share."""

from __future__ import annotations


def warmup_then_decay(optimizer, total_steps: int, warmup_fraction: float):
    """Linear warm-up over the first steps, then linear decay to zero at `total_steps`."""
    import torch

    warmup = max(1, int(warmup_fraction * total_steps))
    decay = max(1, total_steps - warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total_steps - s) / decay)
    )
