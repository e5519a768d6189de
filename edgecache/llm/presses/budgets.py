"""`allocate_budgets`: splitting a cache budget over layers or heads by weight."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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
