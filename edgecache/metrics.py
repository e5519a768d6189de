"""Precision / recall / F1 from counts, and threshold sweeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .calibration import lower_bound, upper_bound


@dataclass(frozen=True)
class Scores:
    threshold: float
    precision: float
    recall: float
    f1: float
    hit_rate: float
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict:
        return asdict(self)


def scores(threshold: float, tp: int, fp: int, fn: int, n_queries: int) -> Scores:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(threshold, precision, recall, f1, (tp + fp) / max(n_queries, 1), tp, fp, fn)


def precision_interval(tp: int, fp: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for precision tp / (tp + fp). On a few dozen
    hits one wrong hit moves precision by several points; the interval says how far."""
    side = 1.0 - (1.0 - confidence) / 2
    return 1.0 - upper_bound(fp, tp + fp, side), 1.0 - lower_bound(fp, tp + fp, side)


def meets(precision: float, hits: float, min_precision: float) -> bool:
    """Whether a point shows the precision floor: a threshold nothing passes has precision 1.0
    by convention (no wrong hit), which shows nothing."""
    return hits > 0 and precision >= min_precision


def best(sweep: list[Scores], min_precision: float = 0.0) -> Scores:
    """The highest-F1 point (ties: higher threshold) among those meeting min_precision."""
    eligible = [s for s in sweep if meets(s.precision, s.tp + s.fp, min_precision)] or sweep
    return max(eligible, key=lambda s: (round(s.f1, 6), s.threshold))


def at(sweep: list[Scores], threshold: float) -> Scores:
    return min(sweep, key=lambda s: abs(s.threshold - threshold))
