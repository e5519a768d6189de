"""Error-bounded similarity thresholds: serve a hit only where wrong answers are provably rare.

A fixed threshold (0.80) says nothing about how often a lookup is answered wrongly, and that
rate differs by category and drifts. Here the user sets a bound δ on an error rate and a
confidence, and the threshold is chosen from labelled observations so that

    P(error rate at the chosen threshold > δ) <= 1 - confidence

whenever the choice says ``reason == "calibrated"`` and future traffic is exchangeable with
the observations (same distribution of queries and labels). Other reasons claim nothing:
they are the fallbacks when the data cannot certify any threshold.

That bounds the *population* rate. The rate a user measures over the next m lookups is a
sample of it, and lands above a population rate just under δ often (at δ = 0.01 and m =
12,743, about one time in three). With `horizon = m` the claim is about that measured rate:

    P(wrong hits among the next m lookups > δ·m) <= 1 - confidence

It is the population test run at level alpha / 2 for the target δ' = `horizon_delta(δ, m,
alpha / 2)`, the largest rate whose m lookups exceed δ·m wrong hits with probability at most
alpha / 2; a union bound over the two halves gives alpha. δ' approaches δ as m grows
(0.0083 for δ = 0.01, m = 12,743), so a short horizon costs recall.

Two error rates (`rate`):

- ``"request"`` (the default; vCache's δ): P(a lookup is answered with a wrong cached
  response) = wrong hits at similarity >= t / **all lookups**, hits and misses. Each lookup
  is one Bernoulli trial "served at t and wrong", so with n lookups of which k_t were wrong
  hits at >= t, k_t ~ Bin(n, r(t)). r(t) falls as t rises, so every δ > 0 is reachable by
  serving less; this is the rate the issue's δ ∈ {0.01, 0.02, 0.05} is meaningful for.
- ``"hit"``: wrong hits / hits served at t (1 - precision), n = hits at >= t. On QQP it stays
  above 0.10 at every threshold (its most similar pairs are often labelled "not duplicate"),
  so small δ cannot be certified there.

How (Learn-then-Test, Angelopoulos et al. 2021), the same for both rates with n the rate's
denominator:

- For a candidate threshold t the null hypothesis is "rate at t > δ". Its p-value is the
  binomial lower tail P(Bin(n_t, δ) <= k_t); rejecting at level alpha = 1 - confidence is the
  same as the exact (Clopper-Pearson) upper bound on the rate being <= δ.
- Scanning many thresholds and keeping the lowest that passes would overfit, so candidates
  are tested in a fixed order, high to low, and the scan stops at the first failure
  (fixed-sequence testing keeps the family-wise error at alpha with no correction).
- Per hit, the top of the grid has few hits, and one wrong hit there would stop the scan
  before it reaches the thresholds with real evidence. So `starts` sequences begin at
  points chosen from *counts* only (never labels): the highest threshold with at least n0,
  4·n0, 16·n0, ... in the denominator, n0 being what a clean record needs to pass. Each
  runs at level alpha / (number of distinct starts) (Bonferroni; the starts do not depend
  on labels, so the union still has error <= alpha). Per request, offline, every threshold
  has the same denominator (all lookups): there is one start and one sequence at level alpha.

Cold start (vCache issue #81: exploring with few observations loses to a fixed threshold):
a threshold below `default` is only ever returned when it is certified. Without a
certified threshold the default stays, unless the data *shows* the default is unsafe (the
one-sided Clopper-Pearson *lower* bound on its rate exceeds δ, with a denominator of at
least `min_hits`). Then the threshold **steps up** to the lowest grid threshold above the
default that is not shown unsafe (reason "stepped_up"), so the cache keeps serving and
learning there; only when every grid threshold above the default is shown unsafe does it go
to `max_threshold` (1.0: only identical embeddings hit), reason "no_safe_threshold". A
stepped-up threshold serves a subset of what the default serves, so its per-request error
is never above the fixed default's on the same lookups (its per-hit rate can be). An
upper-bound rule ("not yet proven safe") would switch the cache off on a clean record too
short to certify δ (0 wrong in 30 hits cannot certify δ = 0.01), which is worse than the
fixed threshold at cold start.

Online (OnlineCalibrator), feedback is censored: it only arrives for hits served above the
threshold in force, so a certified threshold cannot come down without the cache serving
below it. Early on, with few lookups, only a very high threshold certifies (k = 0 at the top
of the grid); serving it would freeze the cache there. So online, while the lowest certified
threshold is more than `explore_gap` (0.02) above the fallback (default or stepped-up
threshold), the fallback is served (reason "exploring") and the certified threshold comes
down as data arrives; once the two are within `explore_gap` the certified one is served.

Everything is pure Python + numpy; nothing here touches a model or the cache.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .numbers import is_number

# Counts are kept in similarity bins of this width on [-1, 1]; thresholds are bin edges.
BIN_WIDTH = 0.005
N_BINS = round(2.0 / BIN_WIDTH)
# The threshold that serves (almost) nothing: only embeddings identical to a cached one.
MAX_THRESHOLD = 1.0
# An online key keeps at most this many censoring levels (see OnlineCalibrator).
MAX_CENSOR_LEVELS = 8
# Fixed sequences start where there are n0, n0 * START_FACTOR, n0 * START_FACTOR**2, ... in the
# denominator.
START_FACTOR = 4
# The error rates a threshold can bound (see the module docstring).
RATES = ("request", "hit")
# OnlineCalibrator.threshold() reuses its last answer for a key until an observation or seed
# changes the key's data, or until the key's lookup count (request rate) has grown by at least
# max(REFRESH_MIN_LOOKUPS, REFRESH_FRACTION * lookups at the last computation).
REFRESH_MIN_LOOKUPS = 16
REFRESH_FRACTION = 0.01
# Per key, at most this many defaults are memoized (the cache passes one per category).
MAX_MEMO = 8
SNAPSHOT_VERSION = 2

_EPS = 1e-15
_TINY = 1e-300


# ---------------------------------------------------------------- binomial tail and bounds


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0, in log space (stable for large a, b)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast on this side of the mean; use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), exact up to floating point (via I_{1-p}(n - k, k + 1))."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return betainc(n - k, k + 1, 1.0 - p)


def _check_counts(wrong: int, hits: int, confidence: float) -> None:
    if not (isinstance(hits, int | np.integer) and isinstance(wrong, int | np.integer)):
        raise ValueError(f"counts must be integers, got wrong={wrong!r}, hits={hits!r}")
    if hits < 0 or wrong < 0 or wrong > hits:
        raise ValueError(f"need 0 <= wrong <= hits, got wrong={wrong}, hits={hits}")
    _check_unit("confidence", confidence)


def _bisect(f, target: float, decreasing: bool) -> float:
    """The p in [0, 1] where the monotone f(p) crosses target (60 halvings: < 1e-18)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = f(mid) > target
        if above == decreasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def upper_bound(wrong: int, hits: int, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper confidence bound on a binomial rate.

    The largest p that still gives P(Bin(hits, p) <= wrong) >= 1 - confidence. With no hits
    nothing is known and the bound is 1.
    """
    _check_counts(wrong, hits, confidence)
    if wrong >= hits:
        return 1.0
    alpha = 1.0 - confidence
    return _bisect(lambda p: binom_cdf(int(wrong), int(hits), p), alpha, decreasing=True)


def lower_bound(wrong: int, hits: int, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) lower confidence bound on a binomial rate."""
    _check_counts(wrong, hits, confidence)
    if wrong == 0:
        return 0.0
    alpha = 1.0 - confidence
    # P(Bin(hits, p) >= wrong) = 1 - cdf(wrong - 1) rises with p; find where it reaches alpha.
    return _bisect(lambda p: 1.0 - binom_cdf(int(wrong) - 1, int(hits), p), alpha, decreasing=False)


def clean_hits_needed(delta: float, confidence: float = 0.95) -> int:
    """Hits with no wrong one that it takes to certify delta: (1 - delta)^n <= 1 - confidence."""
    _check_unit("delta", delta)
    _check_unit("confidence", confidence)
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log1p(-delta) - 1e-12))


@functools.lru_cache(maxsize=64)  # the calibrator asks again on every recomputation
def horizon_delta(delta: float, horizon: int, level: float) -> float:
    """The largest rate p whose `horizon` draws exceed delta·horizon wrong ones with
    probability <= level: P(Bin(horizon, p) > floor(delta·horizon)) <= level."""
    _check_unit("delta", delta)
    _check_unit("level", level)
    _check_count("horizon", horizon, 1)
    allowed = math.floor(delta * horizon + 1e-9)
    return _bisect(lambda p: binom_cdf(allowed, int(horizon), p), 1.0 - level, decreasing=True)


# ---------------------------------------------------------------- choosing a threshold


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and the evidence behind it.

    reason:
    - "calibrated": certified, P(rate at the threshold > delta) <= 1 - confidence (with a
      horizon: the rate measured over that many lookups);
    - "default_cold_start": too little data to test anything, the default stays;
    - "default_uncertified": enough data to test, but neither a certified threshold nor
      proof that the default is unsafe; the default stays (no guarantee);
    - "stepped_up": the default is shown unsafe and nothing certifies; this is the lowest
      grid threshold above the default that is not shown unsafe (no guarantee; it serves a
      subset of what the default serves);
    - "no_safe_threshold": the default and every grid threshold above it are shown unsafe;
      max_threshold is returned;
    - "exploring" (OnlineCalibrator only): a threshold is certified, but only more than
      `explore_gap` above the fallback (the default or the stepped-up threshold), which is
      served instead so that feedback arrives from below the certified one (no guarantee;
      never below the default).
    hits / wrong: labelled hits and wrong hits at the returned threshold. lookups: the
    per-request denominator there (rate "request"; None for rate "hit"). upper_bound: the
    exact upper confidence bound on the rate there (1.0 without data). rate: "request" or
    "hit". source: "data" (choose_threshold), "key" or "pooled" (OnlineCalibrator).
    """

    threshold: float
    upper_bound: float
    hits: int
    wrong: int
    reason: str
    source: str = "data"
    rate: str = "request"
    lookups: int | None = None

    @property
    def certified(self) -> bool:
        return self.reason == "calibrated"

    def to_dict(self) -> dict:
        return asdict(self)


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")


def _check_threshold(name: str, value: float) -> None:
    if not is_number(value) or not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [-1, 1], got {value!r}")


def _check_count(name: str, value: int, least: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class _Rule:
    """The settings of the decision rule, validated once."""

    delta: float
    confidence: float
    min_hits: int
    starts: int
    max_threshold: float
    rate: str
    feedback_rate: float = 1.0
    horizon: int | None = None  # the realized rate over this many lookups (hits); None: population

    def __post_init__(self) -> None:
        _check_unit("delta", self.delta)
        if self.horizon is not None:
            _check_count("horizon", self.horizon, 1)
        _check_unit("confidence", self.confidence)
        _check_count("min_hits", self.min_hits, 1)
        _check_count("starts", self.starts, 1)
        _check_threshold("max_threshold", self.max_threshold)
        if self.rate not in RATES:
            raise ValueError(f"rate must be one of {RATES}, got {self.rate!r}")
        fr = self.feedback_rate
        if isinstance(fr, bool) or not isinstance(fr, int | float) or not 0.0 < fr <= 1.0:
            raise ValueError(f"feedback_rate must be a number in (0, 1], got {fr!r}")


def _certifies(wrong: int, n: int, delta: float, level: float) -> bool:
    """Exact test of "rate > delta" rejected at `level`: P(Bin(n, delta) <= wrong) <= level."""
    return binom_cdf(int(wrong), int(n), delta) <= level


def _shown_unsafe(wrong: int, n: int, delta: float, alpha: float, min_n: int) -> bool:
    """The one-sided lower bound exceeds delta: P(Bin(n, delta) >= wrong) <= alpha, n >= min_n."""
    return n >= min_n and wrong >= 1 and 1.0 - binom_cdf(int(wrong) - 1, int(n), delta) <= alpha


def _choose(
    grid: np.ndarray,
    n: np.ndarray,
    wrong: np.ndarray,
    hits: np.ndarray,
    default: float,
    at_default: tuple[int, int, int],
    at_max: tuple[int, int, int],
    rule: _Rule,
    source: str,
    explore_gap: float | None = None,
) -> ThresholdChoice:
    """The decision rule on counts. grid descending; at grid[i]: n[i] the rate's denominator
    (hits for "hit", lookups for "request"), wrong[i] wrong hits, hits[i] labelled hits.
    at_default / at_max: (n, wrong, hits) at the default and at max_threshold."""
    alpha = 1.0 - rule.confidence
    target = rule.delta
    if rule.horizon is not None:
        # Half the error for the population bound, half for the next `horizon` draws.
        alpha /= 2.0
        target = horizon_delta(rule.delta, rule.horizon, alpha)
    # With feedback on a random fraction f of hits, "wrong and labelled" is Bin(lookups, f * r).
    d = target * rule.feedback_rate
    n0_start = max(rule.min_hits, clean_hits_needed(d, 1.0 - alpha / rule.starts))
    starts: list[int] = []
    for j in range(rule.starts):
        enough = np.flatnonzero(n >= n0_start * START_FACTOR**j)
        if len(enough) and int(enough[0]) not in starts:
            starts.append(int(enough[0]))
    # The starts depend on counts only, so Bonferroni over the distinct ones is enough.
    level = alpha / max(1, len(starts))
    n0 = max(rule.min_hits, clean_hits_needed(d, 1.0 - level))
    best: int | None = None  # highest index = lowest certified threshold
    for start in starts:
        for i in range(start, len(grid)):
            # Online (censored) denominators can fall again below the start: a point without
            # enough data cannot be certified, so the sequence stops there too.
            if n[i] >= n0 and _certifies(wrong[i], n[i], d, level):
                best = i if best is None else max(best, i)
            else:
                break

    def choice(threshold: float, ni: int, ki: int, hi: int, reason: str) -> ThresholdChoice:
        bound = min(1.0, upper_bound(int(ki), int(ni), rule.confidence) / rule.feedback_rate) if ni else 1.0
        lookups = int(ni) if rule.rate == "request" else None
        return ThresholdChoice(float(threshold), bound, int(hi), int(ki), reason, source, rule.rate, lookups)

    # The fallback: the default, or the step up from it when the data shows it unsafe.
    n_d, k_d, h_d = at_default
    above = int(np.searchsorted(-grid, -default, side="left"))  # grid[:above] > default
    top = int(np.searchsorted(-grid, -rule.max_threshold, side="left"))  # grid[top:] <= max

    def unsafe(i: int) -> bool:
        return _shown_unsafe(wrong[i], n[i], d, alpha, rule.min_hits)

    step_from: int | None = None  # step up to the lowest threshold above grid[step_from]
    if rule.rate == "request":
        # r(t) only falls as t rises: a threshold shown unsafe shows every lower one unsafe,
        # the default included (also when censoring or merged levels left it without data).
        highest = next((i for i in range(top, above) if unsafe(i)), None)
        if highest is not None:
            step_from = highest
        elif _shown_unsafe(k_d, n_d, d, alpha, rule.min_hits):
            step_from = above
    elif _shown_unsafe(k_d, n_d, d, alpha, rule.min_hits):
        # Per hit there is no monotonicity: the lowest threshold above the default that the
        # data does not show unsafe.
        safe = next((i for i in range(above - 1, top - 1, -1) if not unsafe(i)), None)
        step_from = top if safe is None else safe + 1
    if step_from is None:
        reason = "default_cold_start" if n_d < n0 else "default_uncertified"
        fallback = (default, n_d, k_d, h_d, reason)
    elif step_from > top:
        i = step_from - 1
        fallback = (grid[i], n[i], wrong[i], hits[i], "stepped_up")
    else:
        fallback = (rule.max_threshold, *at_max, "no_safe_threshold")
    if best is None:
        return choice(*fallback)
    if explore_gap is not None and grid[best] > fallback[0] + explore_gap + 1e-9:
        # Certified only far above the fallback (early, on little data): certifying lower
        # needs data served lower, which censored feedback only gives if the cache serves
        # there. Serve the fallback (never below the default) until the two meet.
        return choice(*fallback[:4], "exploring")
    return choice(grid[best], n[best], wrong[best], hits[best], "calibrated")


def _as_observations(similarities: Iterable[float], correct: Iterable[bool]) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(list(similarities) if not isinstance(similarities, np.ndarray) else similarities)
    ok = np.asarray(list(correct) if not isinstance(correct, np.ndarray) else correct)
    if sims.ndim != 1 or ok.ndim != 1:
        raise ValueError("similarities and correct must be one-dimensional sequences")
    if len(sims) != len(ok):
        raise ValueError(f"similarities and correct differ in length: {len(sims)} != {len(ok)}")
    try:
        sims = sims.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("similarities must be numbers") from exc
    if not np.all(np.isfinite(sims)):
        raise ValueError("similarities must be finite (found NaN or infinity)")
    if ok.dtype != bool:
        if not np.all(np.isin(ok, (0, 1))):
            raise ValueError("correct must hold booleans (or 0/1)")
        ok = ok.astype(bool)
    return sims, ok


def _total_lookups(lookups: int | None, rows: int) -> int:
    if lookups is None:
        return rows
    _check_count("lookups", lookups)
    if lookups < rows:
        raise ValueError(f"lookups ({lookups}) cannot be fewer than the observations ({rows})")
    return int(lookups)


def default_grid() -> np.ndarray:
    """Candidate thresholds: the bin edges 0.995, 0.990, ..., -1.0 (descending)."""
    return np.round(-1.0 + BIN_WIDTH * np.arange(N_BINS - 1, -1, -1), 6)


_GRID = default_grid()


def choose_threshold(
    similarities: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    delta: float,
    confidence: float = 0.95,
    default: float = 0.80,
    grid: Sequence[float] | np.ndarray | None = None,
    min_hits: int = 20,
    starts: int = 3,
    max_threshold: float = MAX_THRESHOLD,
    rate: str = "request",
    lookups: int | None = None,
    horizon: int | None = None,
) -> ThresholdChoice:
    """The lowest threshold whose error rate is certified <= delta on a calibration set.

    `similarities` / `correct`: one row per labelled lookup of the calibration set: the
    similarity of its best candidate and whether serving that candidate would be right.
    Rows the cache would never serve whatever the threshold (a false-hit guard vetoes them,
    or there is no candidate) carry no observation, but they are lookups: pass their total
    as `lookups` (default: the number of rows) so the per-request rate counts them. The set
    must be *uncensored* (all candidates, not only the ones a threshold let through), or
    thresholds below its censoring point look better than they are.

    `rate`: "request" (wrong hits / lookups, the default) or "hit" (wrong hits / hits).
    See the module docstring for the rule; `min_hits` is the least denominator that counts
    (for the scan's start and for declaring a threshold unsafe), `starts` the number of
    fixed sequences (1: plain fixed-sequence testing). `horizon`: certify the rate measured
    over the next `horizon` lookups (hits for "hit") rather than the population rate (see
    the module docstring).
    """
    rule = _Rule(delta, confidence, min_hits, starts, max_threshold, rate, horizon=horizon)
    _check_threshold("default", default)
    sims, ok = _as_observations(similarities, correct)
    n_lookups = _total_lookups(lookups, len(sims))
    if grid is None:
        grid_arr = _GRID
    else:
        grid_arr = np.asarray(grid, dtype=np.float64)
        if grid_arr.ndim != 1 or len(grid_arr) == 0 or not np.all(np.isfinite(grid_arr)):
            raise ValueError("grid must be a non-empty sequence of finite thresholds")
        if np.any(np.abs(grid_arr) > 1.0):
            raise ValueError("grid thresholds must lie in [-1, 1]")
        grid_arr = np.unique(grid_arr)[::-1]
    order = np.sort(sims)
    wrong_sorted = np.sort(sims[~ok])

    def counts_at(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h = len(order) - np.searchsorted(order, ts, side="left")
        k = len(wrong_sorted) - np.searchsorted(wrong_sorted, ts, side="left")
        n = np.full_like(h, n_lookups) if rate == "request" else h
        return n, k, h

    n, k, h = counts_at(grid_arr)
    nd, kd, hd = counts_at(np.array([default, max_threshold]))
    return _choose(
        grid_arr,
        n,
        k,
        h,
        default,
        (int(nd[0]), int(kd[0]), int(hd[0])),
        (int(nd[1]), int(kd[1]), int(hd[1])),
        rule,
        "data",
    )


# ---------------------------------------------------------------- online, per category


def _bin_of(similarity: float) -> int:
    """Bin index of a similarity; values on an edge go to the bin that starts there."""
    return min(N_BINS - 1, max(0, math.floor(round((similarity + 1.0) / BIN_WIDTH, 6))))


def _edge_at_or_above(threshold: float) -> int:
    """Index of the first bin edge >= threshold (N_BINS: above every bin)."""
    return min(N_BINS, max(0, math.ceil(round((threshold + 1.0) / BIN_WIDTH, 6))))


def _suffix_sum(row: np.ndarray) -> np.ndarray:
    """Entry i: the sum of row[i:], i.e. the count at similarity >= edge i."""
    return np.cumsum(row[::-1])[::-1]


class _KeyCounts:
    """One key's observations: uncensored (seeded) bins and online bins per censoring level.

    Online data is kept per level (the first bin edge it is valid for): feedback counts in
    `online[level]` (row 0: labelled hits, row 1: wrong) and lookups in `lookups[level]`;
    the two dicts always hold the same levels.
    """

    __slots__ = (
        "last_level",
        "last_threshold",
        "lookups",
        "memo",
        "n_lookups",
        "online",
        "seed",
        "seed_lookups",
        "version",
    )

    def __init__(self) -> None:
        self.seed = np.zeros((2, N_BINS), dtype=np.int64)  # row 0: hits, row 1: wrong
        self.seed_lookups = 0  # lookups of the seeded sets (>= their rows)
        self.online: dict[int, np.ndarray] = {}
        self.lookups: dict[int, int] = {}
        self.last_threshold: float | None = None
        self.last_level: int | None = None  # _edge_at_or_above(last_threshold), kept for speed
        self.version = 0  # bumped by every observation or seed of this key
        self.n_lookups = 0  # lookups counted online, all levels
        self.memo: dict[float, tuple] = {}  # default -> (choice, pooled, version, lookups)

    def _level(self, level: int) -> np.ndarray:
        arr = self.online.get(level)
        if arr is None:
            if len(self.online) >= MAX_CENSOR_LEVELS:
                self._merge_closest()
            arr = self.online[level] = np.zeros((2, N_BINS), dtype=np.int64)
            self.lookups[level] = 0
        return arr

    def add_online(self, level: int, b: int, correct: bool) -> None:
        arr = self._level(level)
        arr[0, b] += 1
        arr[1, b] += not correct

    def add_lookups(self, level: int, n: int) -> None:
        if level not in self.lookups:
            self._level(level)
        self.lookups[level] += n
        self.n_lookups += n

    def add(self, other: _KeyCounts) -> None:
        """Add another record's counts (levels merge as they do when observed here)."""
        self.seed += other.seed
        self.seed_lookups += other.seed_lookups
        for level, arr in other.online.items():
            self._level(level)[:] += arr
            self.add_lookups(level, other.lookups[level])

    def _merge_closest(self) -> None:
        # Data valid from edge c is also valid from any higher edge: merging a level into
        # the next one up only forgets what it said about the thresholds in between. Lookups
        # move with their feedback, so each level's denominator still matches its numerator.
        levels = sorted(self.online)
        _, low, high = min((b - a, a, b) for a, b in itertools.pairwise(levels))
        self.online[high] += self.online.pop(low)
        self.lookups[high] += self.lookups.pop(low)

    def _level_lookups(self, level: int) -> int:
        # A level's lookups are at least its labelled hits: if the cache does not count
        # lookups, the denominator is the hits (the rate given a hit, which bounds the
        # per-request rate from above).
        return max(self.lookups[level], int(self.online[level][0].sum()))

    def evidence(self, rate: str) -> int:
        """The key's own denominator at its most-covered threshold: what decides pooling."""
        if rate == "hit":
            return int(self.seed[0].sum() + sum(int(a[0].sum()) for a in self.online.values()))
        return self.seed_lookups + sum(self._level_lookups(level) for level in self.online)

    def counts(self, rate: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(denominator, wrong, hits) at each bin edge (ascending), only from valid data."""
        hits = _suffix_sum(self.seed[0]).copy()
        wrong = _suffix_sum(self.seed[1]).copy()
        added = np.zeros(N_BINS + 1, dtype=np.int64)
        for level, arr in self.online.items():
            hits[level:] += _suffix_sum(arr[0])[level:]
            wrong[level:] += _suffix_sum(arr[1])[level:]
            added[level] += self._level_lookups(level)
        if rate == "hit":
            return hits, wrong, hits
        return self.seed_lookups + np.cumsum(added)[:N_BINS], wrong, hits


class OnlineCalibrator:
    """Per-key (category) error-bounded thresholds from calibration sets and live feedback.

    What the cache calls: `threshold(key, default)` on every lookup (memoized: O(1) while
    nothing changed), `count_lookups(key)` on every lookup of the key (rate "request": it is
    the denominator), `observe(key, similarity, correct, served_at)` on feedback about a
    served hit, `seed(key, ...)` with an offline labelled set.

    Censoring: live feedback only ever arrives for *served* hits, i.e. similarities above
    the threshold in force when they were served. Those observations say nothing about
    thresholds below it, so each is stored with its censoring level (`served_at`, default:
    the last threshold this calibrator returned for the key) and counted only for
    thresholds at or above that level. Lookups are stored the same way (the level in force
    when they were counted). For the per-request rate at t this is exact: over the lookups
    made while the threshold in force was <= t, every wrong hit at >= t was served, so both
    n (lookups) and k (wrong hits at >= t) are known; lookups made under a higher threshold
    are left out at t. A threshold below every level has no valid evidence and cannot be
    certified: **without seed data nothing below the lowest threshold that was ever in force
    is certified; online feedback alone can only keep or raise a threshold, or bring it
    back down to a level it served at before; lowering it below that needs an uncensored
    calibration set** (`seed`).

    Feedback coverage (an assumption the guarantee rests on): for rate "request" the
    feedback must cover every served hit, or a *random* sample of them with a known
    probability `feedback_rate` (then a wrong labelled hit is Bin(lookups, feedback_rate·r)
    and the test runs at feedback_rate·δ, exact). Feedback that users choose to give (e.g.
    mostly on bad answers, or never) is not a random sample: missing feedback counts as
    "not wrong", so the request rate is underestimated if users skip wrong answers. For rate
    "hit" a random sample of any rate is fine (feedback_rate is not used). Lookups and
    their feedback must be filed under the same threshold: pass `served_at` (the threshold
    the lookup was decided with) to both when the threshold may change in between. If the
    cache never calls `count_lookups`, a level's lookups default to its labelled hits,
    which makes the request test conservative (it tests the rate given a hit).

    Pooling: a key whose own denominator (lookups for "request", labelled hits for "hit",
    seeded + online) is below `min_hits` uses the sum of all keys' valid counts (source
    "pooled"): the guarantee then holds for the traffic mix, not for that key alone. From
    `min_hits` on, a key uses only its own.

    Exploration (`explore_gap`, default 0.02 in similarity; None: never): while the lowest
    certified threshold is more than explore_gap above the fallback (the default, or the
    threshold stepped up from it), the fallback is served (reason "exploring", no guarantee,
    never below the default) so that feedback arrives from below the certified threshold.
    Once the two are within explore_gap the certified threshold is served. After that it can
    still rise on wrong feedback, and fall back to any level it served at before, but not
    further: it stays within about explore_gap of the lowest level explored. A smaller gap
    explores longer (more lookups served at uncertified thresholds near the lower-bound
    boundary, whose rate can exceed δ by the bound's margin) and ends closer to δ. Without
    exploration an online-only key certifies a very high threshold on its first few dozen
    lookups and stays there.

    Memoization: `threshold()` keeps its answer per (key, default) and reuses it until an
    `observe`/`seed` of that key (of any key, for a pooled answer) or, for rate "request",
    until the lookups counted since the answer reach max(REFRESH_MIN_LOOKUPS = 16,
    REFRESH_FRACTION = 1% of the lookups it was computed with). Lagging on lookups is the
    safe side: more lookups with no new wrong feedback only lower the bounds, so a stale
    answer is at least as high as a fresh one would be (wrong feedback invalidates at once).

    Memory is bounded: counts live in 400 similarity bins of width 0.005 (thresholds are bin
    edges), one array for seeded data plus at most 8 censoring levels per key (the two
    closest levels are merged, into the higher one, which is always valid). About 60 KB
    per key at worst.

    `horizon`: certify the rate measured over the next `horizon` lookups, not the population
    rate (module docstring); None (the default) keeps the population guarantee.

    Repeated checking: choosing again after every observation is a repeated test, so the
    1 - confidence guarantee holds for one look at the data, not uniformly over time.
    Thread-safe: one lock guards all state.
    """

    def __init__(
        self,
        delta: float,
        confidence: float = 0.95,
        min_hits: int = 20,
        starts: int = 3,
        max_threshold: float = MAX_THRESHOLD,
        rate: str = "request",
        feedback_rate: float = 1.0,
        explore_gap: float | None = 0.02,
        horizon: int | None = None,
    ) -> None:
        self._rule = _Rule(delta, confidence, min_hits, starts, max_threshold, rate, feedback_rate, horizon)
        if explore_gap is not None and (
            isinstance(explore_gap, bool)
            or not isinstance(explore_gap, int | float)
            or not 0.0 <= explore_gap <= 2.0
        ):
            raise ValueError(f"explore_gap must be None or a number in [0, 2], got {explore_gap!r}")
        self.delta = float(delta)
        self.confidence = float(confidence)
        self.min_hits = min_hits
        self.starts = starts
        self.max_threshold = float(max_threshold)
        self.rate = rate
        self.feedback_rate = float(feedback_rate)
        self.explore_gap = None if explore_gap is None else float(explore_gap)
        self.horizon = None if horizon is None else int(horizon)
        self._keys: dict[str, _KeyCounts] = {}
        self._version = 0  # bumped by every observation or seed of any key
        self._n_lookups = 0  # lookups counted online, all keys
        # What was counted here since the last `take_unsaved`: processes sharing statistics
        # add theirs up in the store (`adopt`) instead of writing over each other's.
        self._unsaved: dict[str, _KeyCounts] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")

    def _entry(self, key: str) -> _KeyCounts:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _KeyCounts()
        return entry

    def _unsaved_entry(self, key: str) -> _KeyCounts:
        record = self._unsaved.get(key)
        if record is None:
            record = self._unsaved[key] = _KeyCounts()
        return record

    def has_unsaved(self) -> bool:
        with self._lock:
            return bool(self._unsaved)

    def take_unsaved(self) -> dict:
        """The counts added since the last call, shaped as `to_dict` writes them. They leave
        the unsaved record: hand them back (`add_unsaved`) if writing them fails."""
        with self._lock:
            unsaved, self._unsaved = self._unsaved, {}
        return self._as_dict(unsaved)

    def add_unsaved(self, counts: Mapping) -> None:
        """Return counts taken by `take_unsaved` that were not written."""
        parsed = self.from_dict(counts)._keys
        with self._lock:
            for key, record in parsed.items():
                self._unsaved_entry(key).add(record)

    def add_counts(self, counts: Mapping) -> None:
        """Add the counts of a `to_dict`/`take_unsaved` dict to these statistics."""
        parsed = self.from_dict(counts)._keys
        with self._lock:
            for key, record in parsed.items():
                entry = self._entry(key)
                self._n_lookups -= entry.n_lookups
                entry.add(record)
                self._n_lookups += entry.n_lookups
                self._changed(entry)

    def adopt(self, stored: Mapping) -> None:
        """Become the stored statistics (which hold what `take_unsaved` last gave and what
        other processes wrote) plus what was counted here since then."""
        keys = self.from_dict(stored)._keys
        with self._lock:
            for key, record in self._unsaved.items():
                keys.setdefault(key, _KeyCounts()).add(record)
            for key, entry in keys.items():
                mine = self._keys.get(key)
                if mine is not None:  # the threshold this process serves, not another's
                    entry.last_threshold, entry.last_level = mine.last_threshold, mine.last_level
            self._keys = keys
            self._n_lookups = sum(e.n_lookups for e in keys.values())
            self._version += 1

    def _changed(self, entry: _KeyCounts) -> None:
        entry.version += 1
        self._version += 1

    def observe(self, key: str, similarity: float, correct: bool, served_at: float | None = None) -> None:
        """Feedback on one served hit: its similarity and whether the cached answer was right.

        `served_at`: the threshold in force when it was served; default: the last threshold
        `threshold()` returned for this key, else (never asked) the similarity itself.
        """
        self._check_key(key)
        sims, ok = _as_observations([similarity], [correct])
        sim = float(sims[0])
        if served_at is not None:
            _check_threshold("served_at", served_at)
            if sim < served_at - 1e-9:
                raise ValueError(f"a served hit cannot be below its threshold: {sim} < served_at {served_at}")
        with self._lock:
            entry = self._entry(key)
            level_at = served_at if served_at is not None else entry.last_threshold
            if level_at is None or level_at > sim:
                # Censoring unknown: valid only at the hit's own similarity, which is on the
                # grid only if it sits on an edge. Such feedback rarely counts; pass served_at.
                level_at = sim
            for record in (entry, self._unsaved_entry(key)):
                record.add_online(_edge_at_or_above(level_at), _bin_of(sim), bool(ok[0]))
            self._changed(entry)

    def count_lookups(self, key: str, n: int = 1, served_at: float | None = None) -> None:
        """Count `n` lookups of `key` (hits and misses): the per-request rate's denominator.

        Call it on every lookup, after `threshold()`. `served_at`: the threshold the lookups
        were decided with; default: the last threshold `threshold()` returned for this key.
        Lookups of a key never asked about (and no served_at) are not counted (conservative).
        """
        if n.__class__ is not int or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        level = None
        if served_at is not None:
            _check_threshold("served_at", served_at)
            level = _edge_at_or_above(served_at)
        if key.__class__ is not str or not key:
            self._check_key(key)  # raises for non-strings; accepts str subclasses
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                entry = self._entry(key)
            if level is None:
                level = entry.last_level
            if level is None or n == 0:
                return
            if level in entry.lookups:
                entry.lookups[level] += n
                entry.n_lookups += n
            else:
                entry.add_lookups(level, n)
            self._unsaved_entry(key).add_lookups(level, n)
            self._n_lookups += n

    def seed(
        self,
        key: str,
        similarities: Sequence[float] | np.ndarray,
        correct: Sequence[bool],
        lookups: int | None = None,
    ) -> None:
        """Add an offline, uncensored calibration set (every candidate, labelled) for a key.

        `lookups`: the lookups the set stands for, when some had no observation (no
        candidate, or vetoed); default: its rows.
        """
        self._check_key(key)
        sims, ok = _as_observations(similarities, correct)
        n_lookups = _total_lookups(lookups, len(sims))
        bins = np.array([_bin_of(s) for s in sims], dtype=np.int64)
        with self._lock:
            entry = self._entry(key)
            for record in (entry, self._unsaved_entry(key)):
                np.add.at(record.seed[0], bins, 1)
                np.add.at(record.seed[1], bins[~ok], 1)
                record.seed_lookups += n_lookups
            self._changed(entry)

    def _fresh(self, entry: _KeyCounts, memo: tuple) -> bool:
        _, pooled, version, lookups, _ = memo
        if pooled:
            now_version, now_lookups = self._version, self._n_lookups
        else:
            now_version, now_lookups = entry.version, entry.n_lookups
        if version != now_version:
            return False
        if self.rate == "hit":
            return True
        return now_lookups - lookups < max(REFRESH_MIN_LOOKUPS, REFRESH_FRACTION * lookups)

    def threshold(self, key: str, default: float) -> ThresholdChoice:
        """The threshold to serve `key` with now (and the evidence), `default` at cold start.

        A default off the 0.005 grid is tested at the next edge up. O(1) when memoized.
        """
        if key.__class__ is not str or not key:
            self._check_key(key)  # raises for non-strings; accepts str subclasses
        if default.__class__ is not float or not -1.0 <= default <= 1.0:
            _check_threshold("default", default)  # raises for NaN, out of range, bools
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                entry = self._entry(key)
            memo = entry.memo.get(default)
            if memo is not None and self._fresh(entry, memo):
                entry.last_threshold = memo[0].threshold
                entry.last_level = memo[4]
                return memo[0]
            rate = self.rate
            if entry.evidence(rate) >= self.min_hits:
                den, wrong, hits = entry.counts(rate)
                pooled = False
            else:
                den = np.zeros(N_BINS, dtype=np.int64)
                wrong = np.zeros(N_BINS, dtype=np.int64)
                hits = np.zeros(N_BINS, dtype=np.int64)
                for other in self._keys.values():
                    n_o, w_o, h_o = other.counts(rate)
                    den += n_o
                    wrong += w_o
                    hits += h_o
                pooled = True

            def at(index: int) -> tuple[int, int, int]:
                return (int(den[index]), int(wrong[index]), int(hits[index])) if index < N_BINS else (0, 0, 0)

            choice = _choose(
                _GRID,
                den[::-1],
                wrong[::-1],
                hits[::-1],
                float(default),
                at(_edge_at_or_above(default)),
                at(_edge_at_or_above(self.max_threshold)),
                self._rule,
                "pooled" if pooled else "key",
                self.explore_gap,
            )
            if len(entry.memo) >= MAX_MEMO:
                entry.memo.clear()
            level = _edge_at_or_above(choice.threshold)
            entry.memo[default] = (
                choice,
                pooled,
                self._version if pooled else entry.version,
                self._n_lookups if pooled else entry.n_lookups,
                level,
            )
            entry.last_threshold = choice.threshold
            entry.last_level = level
            return choice

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)

    # ------------------------------------------------------------ snapshots

    def to_dict(self) -> dict:
        """Plain types only (msgpack/JSON-able): settings, sparse [bin, hits, wrong] rows, lookups."""
        with self._lock:
            return self._as_dict(self._keys)

    def _as_dict(self, keys: Mapping[str, _KeyCounts]) -> dict:
        def sparse(arr: np.ndarray) -> list[list[int]]:
            return [[int(i), int(arr[0, i]), int(arr[1, i])] for i in np.flatnonzero(arr[0])]

        return {
            "version": SNAPSHOT_VERSION,
            "bin_width": BIN_WIDTH,
            "settings": {
                "delta": self.delta,
                "confidence": self.confidence,
                "min_hits": self.min_hits,
                "starts": self.starts,
                "max_threshold": self.max_threshold,
                "rate": self.rate,
                "feedback_rate": self.feedback_rate,
                "explore_gap": self.explore_gap,
                "horizon": self.horizon,
            },
            "keys": {
                key: {
                    "seed": sparse(entry.seed),
                    "seed_lookups": entry.seed_lookups,
                    "online": {str(level): sparse(arr) for level, arr in sorted(entry.online.items())},
                    "lookups": {str(level): n for level, n in sorted(entry.lookups.items())},
                    "last_threshold": entry.last_threshold,
                }
                for key, entry in keys.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> OnlineCalibrator:
        """Rebuild from `to_dict()`; raises ValueError on anything malformed.

        Version-1 snapshots (before lookups were counted) load with rate "hit", the only
        rate they had.
        """
        try:
            version = data["version"]
            if version not in (1, SNAPSHOT_VERSION):
                raise ValueError(f"unsupported calibrator snapshot version {version!r}")
            if not math.isclose(float(data["bin_width"]), BIN_WIDTH):
                raise ValueError(f"snapshot bin width {data['bin_width']} != {BIN_WIDTH}")
            settings = dict(data["settings"])
            if version == 1:
                settings["rate"] = "hit"
                settings["explore_gap"] = None
            out = cls(**settings)

            def dense(rows: Iterable) -> np.ndarray:
                arr = np.zeros((2, N_BINS), dtype=np.int64)
                for i, h, w in rows:
                    if not (0 <= int(i) < N_BINS and 0 <= int(w) <= int(h)):
                        raise ValueError(f"bad bin row {[i, h, w]!r}")
                    arr[:, int(i)] = (int(h), int(w))
                return arr

            def level(text: str) -> int:
                value = int(text)
                if not 0 <= value <= N_BINS:
                    raise ValueError(f"bad censoring level {text!r}")
                return value

            for key, entry_data in data["keys"].items():
                cls._check_key(key)
                entry = out._entry(key)
                entry.seed = dense(entry_data["seed"])
                entry.seed_lookups = int(entry_data.get("seed_lookups", int(entry.seed[0].sum())))
                entry.online = {level(lv): dense(rows) for lv, rows in entry_data["online"].items()}
                lookups = {level(lv): int(n) for lv, n in entry_data.get("lookups", {}).items()}
                if not set(lookups) <= set(entry.online) or any(n < 0 for n in lookups.values()):
                    raise ValueError("lookup levels must be online levels, with counts >= 0")
                if entry.seed_lookups < int(entry.seed[0].sum()):
                    raise ValueError("seed_lookups cannot be fewer than the seeded rows")
                entry.lookups = {lv: lookups.get(lv, 0) for lv in entry.online}
                entry.n_lookups = sum(entry.lookups.values())
                out._n_lookups += entry.n_lookups
                last = entry_data.get("last_threshold")
                entry.last_threshold = None if last is None else float(last)
                entry.last_level = None if last is None else _edge_at_or_above(entry.last_threshold)
            return out
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed calibrator snapshot: {exc!r}") from exc
