"""edgecache.calibration: exact binomial bounds, the threshold rule, the online calibrator."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from edgecache.calibration import (
    MAX_THRESHOLD,
    REFRESH_FRACTION,
    REFRESH_MIN_LOOKUPS,
    OnlineCalibrator,
    binom_cdf,
    choose_threshold,
    clean_hits_needed,
    horizon_delta,
    lower_bound,
    upper_bound,
)
from tests.helpers import run_in_threads


def exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction(0))


def exact_upper(k: int, n: int, confidence: Fraction) -> float:
    """Clopper-Pearson by bisection on the exact rational binomial cdf (independent reference)."""
    lo, hi = Fraction(0), Fraction(1)
    for _ in range(45):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if exact_cdf(k, n, mid) > 1 - confidence else (lo, mid)
    return float((lo + hi) / 2)


@pytest.mark.parametrize(
    ("wrong", "hits", "expected"),
    [
        (0, 10, 0.2588655509),  # 1 - 0.05 ** (1 / 10); R: binom.test(0, 10, alt="less")
        (1, 20, 0.2161061642),  # R: qbeta(0.95, 2, 19)
        (5, 100, 0.1022533776),
        (0, 1, 0.95),
        (3, 30, 0.2385978573),
    ],
)
def test_upper_bound_known_values(wrong, hits, expected):
    assert upper_bound(wrong, hits, 0.95) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("wrong", "hits"), [(0, 7), (2, 40), (7, 60), (15, 90)])
@pytest.mark.parametrize("confidence", [Fraction(9, 10), Fraction(95, 100), Fraction(99, 100)])
def test_upper_bound_matches_exact_rational_reference(wrong, hits, confidence):
    assert upper_bound(wrong, hits, float(confidence)) == pytest.approx(
        exact_upper(wrong, hits, confidence), abs=1e-9
    )


def test_binom_cdf_matches_exact_sum_and_is_stable_for_large_n():
    for k, n, p in [(0, 5, 0.3), (3, 12, 0.25), (20, 50, 0.5), (49, 50, 0.9)]:
        assert binom_cdf(k, n, p) == pytest.approx(float(exact_cdf(k, n, Fraction(p))), rel=1e-10)
    # Normal approximation: mean 300, sd ~17.06; k = 300 is just above one half.
    assert 0.5 < binom_cdf(300, 10_000, 0.03) < 0.53
    assert 0.0 <= upper_bound(3000, 13_000) - 3000 / 13_000 < 0.01


def test_bounds_are_monotone_and_bracket_the_rate():
    ups = [upper_bound(k, 50) for k in range(51)]
    assert all(a < b for a, b in itertools.pairwise(ups) if b < 1.0)
    assert upper_bound(50, 50) == 1.0 and upper_bound(0, 0) == 1.0
    assert [upper_bound(2, n) for n in (10, 20, 40, 80)] == sorted(
        [upper_bound(2, n) for n in (10, 20, 40, 80)], reverse=True
    )
    assert upper_bound(3, 30, 0.99) > upper_bound(3, 30, 0.95) > upper_bound(3, 30, 0.8)
    for k, n in [(0, 10), (4, 25), (25, 25)]:
        assert lower_bound(k, n) <= k / n <= upper_bound(k, n)
    assert lower_bound(0, 10) == 0.0
    # Clean hits needed: (1 - delta) ** n <= 0.05.
    assert [clean_hits_needed(d) for d in (0.01, 0.05, 0.1)] == [299, 59, 29]


def synthetic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarities uniform on [0.5, 1]; P(wrong | s) = 0.6 * (1 - s) / 0.5, so the false-hit
    rate of hits >= t is 0.3 * (1 - t) / 0.5 (0.06 at t = 0.9, 0.12 at t = 0.8)."""
    sims = rng.uniform(0.5, 1.0, n)
    wrong = rng.random(n) < 1.2 * (1.0 - sims)
    return sims, ~wrong


def true_rate(t: float) -> float:
    return 0.6 * (1.0 - t)


@pytest.mark.parametrize("starts", [1, 3])
def test_chosen_threshold_holds_delta_on_fresh_draws(starts):
    rng = np.random.default_rng(0)
    delta, reps, violations, certified = 0.06, 100, 0, 0
    for _ in range(reps):
        sims, ok = synthetic(rng, 3000)
        ch = choose_threshold(sims, ok, delta, 0.95, default=0.8, starts=starts, rate="hit")
        if ch.certified:
            certified += 1
            violations += true_rate(ch.threshold) > delta
            assert ch.threshold >= 0.85  # never where the rate is clearly above delta
        else:  # the fallbacks never serve more than the default
            assert ch.threshold >= 0.8 and ch.reason in ("stepped_up", "default_uncertified")
    # Certification is not guaranteed (one wrong hit near the top can stop a sequence) ...
    assert certified >= 50
    # ... but a certified threshold is wrong at most 5% of the time (slack for 100 repetitions).
    assert violations / reps <= 0.08
    # And on fresh data from the same distribution the empirical rate stays near delta.
    sims, ok = synthetic(rng, 200_000)
    ch = choose_threshold(*synthetic(np.random.default_rng(1), 3000), delta, default=0.8, rate="hit")
    served = sims >= ch.threshold
    assert np.mean(~ok[served]) <= delta + 0.005


@pytest.mark.parametrize("rate", ["hit", "request"])
def test_lowers_below_default_only_with_certification(rate):
    rng = np.random.default_rng(2)
    sims, ok = synthetic(rng, 5000)
    # A generous delta certifies thresholds below the default of 0.9.
    ch = choose_threshold(sims, ok, 0.15, default=0.9, rate=rate)
    assert ch.certified and ch.threshold < 0.9 and ch.rate == rate
    assert ch.hits == int(np.sum(sims >= ch.threshold)) and ch.upper_bound <= 0.15
    assert ch.lookups == (5000 if rate == "request" else None)


def test_cold_start_keeps_the_default():
    ch = choose_threshold([], [], 0.05, default=0.8)
    assert (ch.threshold, ch.reason, ch.hits, ch.upper_bound) == (0.8, "default_cold_start", 0, 1.0)
    # A few clean hits: not enough to certify 0.05 (needs 59), not evidence against the default.
    ch = choose_threshold([0.9] * 10 + [0.6] * 5, [True] * 15, 0.05, default=0.8)
    assert (ch.threshold, ch.reason) == (0.8, "default_cold_start")
    # Thirty clean hits cannot certify 0.01 either; the default stays (an upper-bound rule would
    # switch the cache off here).
    ch = choose_threshold(np.linspace(0.81, 0.99, 300)[:30], [True] * 30, 0.01, default=0.8)
    assert ch.threshold == 0.8 and not ch.certified


@pytest.mark.parametrize("rate", ["hit", "request"])
def test_unsafe_default_is_raised(rate):
    rng = np.random.default_rng(3)
    sims = rng.uniform(0.8, 1.0, 400)
    wrong = sims < 0.9  # every hit below 0.9 is wrong, every one above is right
    ch = choose_threshold(sims, ~wrong, 0.05, default=0.8, rate=rate)
    assert ch.certified and 0.9 <= ch.threshold <= 0.92


def test_unsafe_default_steps_up_instead_of_switching_off():
    rng = np.random.default_rng(3)
    sims = rng.uniform(0.8, 1.0, 400)
    ok = rng.random(400) > 0.5
    # Per hit, nothing with evidence above the default is clean enough: step up to the lowest
    # threshold not shown unsafe (the top, where there are too few hits to show anything).
    ch = choose_threshold(sims, ok, 0.05, default=0.8, rate="hit")
    assert ch.reason == "stepped_up" and 0.8 < ch.threshold < MAX_THRESHOLD
    grid = np.round(np.arange(0.805, 0.9951, 0.005), 6)
    shown = [
        (n := int(np.sum(sims >= t))) >= 20 and lower_bound(int(np.sum((sims >= t) & ~ok)), n) > 0.05
        for t in grid
    ]
    assert ch.threshold == grid[shown.index(False)]
    assert upper_bound(ch.wrong, ch.hits) == pytest.approx(ch.upper_bound)
    # Every grid threshold above the default shown unsafe: only then the maximum.
    sims_top = np.linspace(0.8, 0.9999, 2000)
    ch = choose_threshold(sims_top, np.arange(2000) % 2 == 0, 0.05, default=0.8, rate="hit")
    assert (ch.threshold, ch.reason) == (MAX_THRESHOLD, "no_safe_threshold")


def test_request_step_up_is_the_lower_bound_boundary():
    rng = np.random.default_rng(8)
    sims = rng.uniform(0.5, 1.0, 200)
    ok = sims < 0.7  # wrong hits only above 0.7: 0.8 is unsafe at delta = 0.02
    ch = choose_threshold(sims, ok, 0.02, default=0.8)
    assert ch.reason == "stepped_up" and ch.threshold > 0.8
    k = lambda t: int(np.sum((sims >= t) & ~ok))  # noqa: E731
    assert lower_bound(k(ch.threshold), 200) <= 0.02 < lower_bound(k(round(ch.threshold - 0.005, 6)), 200)
    assert (ch.lookups, ch.wrong) == (200, k(ch.threshold))


def test_custom_grid_and_single_start():
    sims = np.linspace(0.5, 1.0, 1000, endpoint=False)
    ok = np.ones(1000, dtype=bool)
    ch = choose_threshold(sims, ok, 0.05, grid=[0.9, 0.7, 0.6], default=0.95, starts=1)
    assert (ch.threshold, ch.reason, ch.wrong) == (0.6, "calibrated", 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"similarities": [0.9, float("nan")], "correct": [True, True]}, "finite"),
        ({"similarities": [0.9, 0.8], "correct": [True]}, "differ in length"),
        ({"delta": 0.0}, "delta must be"),
        ({"delta": 1.0}, "delta must be"),
        ({"delta": -0.1}, "delta must be"),
        ({"confidence": 1.0}, "confidence must be"),
        ({"default": 1.5}, "default must be"),
        ({"min_hits": 0}, "min_hits"),
        ({"correct": [True, 2]}, "booleans"),
        ({"grid": [0.9, 2.0]}, "grid"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    args = {"similarities": [0.9, 0.8], "correct": [True, False], "delta": 0.05, **kwargs}
    with pytest.raises(ValueError, match=message):
        choose_threshold(**args)


def test_bounds_reject_bad_counts():
    with pytest.raises(ValueError, match="wrong <= hits"):
        upper_bound(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        upper_bound(0, 3, confidence=1.2)


# ---------------------------------------------------------------- OnlineCalibrator


def test_online_cold_start_and_tightening_after_wrong_feedback():
    cal = OnlineCalibrator(delta=0.05)
    first = cal.threshold("billing", default=0.8)
    assert (first.threshold, first.reason, first.source) == (0.8, "default_cold_start", "pooled")
    rng = np.random.default_rng(4)
    for s in rng.uniform(0.8, 0.85, 15):  # served hits just above the default, all wrong
        cal.observe("billing", float(s), False)
    for s in rng.uniform(0.85, 1.0, 15):
        cal.observe("billing", float(s), True)
    after = cal.threshold("billing", default=0.8)
    assert after.threshold > 0.8 and after.source == "key"
    assert after.reason in ("calibrated", "stepped_up")


@pytest.mark.parametrize("rate", ["hit", "request"])
def test_online_feedback_alone_never_lowers(rate):
    cal = OnlineCalibrator(delta=0.2, rate=rate)
    cal.threshold("a", default=0.8)
    for s in np.linspace(0.8, 1.0, 500, endpoint=False):
        cal.observe("a", float(s), True)  # censored at 0.8: silent about anything lower
    ch = cal.threshold("a", default=0.8)
    assert ch.certified and ch.threshold == 0.8
    # An uncensored calibration set may lower it.
    cal.seed("a", np.linspace(0.6, 1.0, 1000, endpoint=False), [True] * 1000)
    assert cal.threshold("a", default=0.8).threshold < 0.8


def test_online_served_at_validation_and_bad_input():
    cal = OnlineCalibrator(delta=0.05)
    with pytest.raises(ValueError, match="below its threshold"):
        cal.observe("a", 0.7, True, served_at=0.8)
    with pytest.raises(ValueError, match="finite"):
        cal.observe("a", float("nan"), True)
    with pytest.raises(ValueError, match="key"):
        cal.observe("", 0.9, True)
    with pytest.raises(ValueError, match="differ in length"):
        cal.seed("a", [0.9, 0.8], [True])
    with pytest.raises(ValueError, match="delta"):
        OnlineCalibrator(delta=1.0)


def test_pooling_rule():
    cal = OnlineCalibrator(delta=0.1, min_hits=20)
    rng = np.random.default_rng(5)
    sims = rng.uniform(0.7, 1.0, 2000)
    cal.seed("big", sims, sims > 0.75)
    pooled = cal.threshold("new", default=0.9)  # no observations of its own
    own = cal.threshold("big", default=0.9)
    assert pooled.source == "pooled" and own.source == "key"
    assert pooled.threshold == own.threshold < 0.9
    cal.seed("new", [0.95] * 25, [False] * 25)  # enough of its own: it stops pooling
    ch = cal.threshold("new", default=0.9)
    # Everything up to 0.95 is shown unsafe: one step above it, not the maximum.
    assert ch.source == "key" and (ch.threshold, ch.reason) == (0.955, "stepped_up")


def test_snapshot_round_trip_is_plain_and_equal():
    cal = OnlineCalibrator(delta=0.05, confidence=0.9, min_hits=10)
    rng = np.random.default_rng(6)
    sims = rng.uniform(0.6, 1.0, 800)
    cal.seed("x", sims, sims > 0.65)
    cal.threshold("x", 0.8)
    for s in rng.uniform(0.8, 1.0, 50):
        cal.observe("x", float(s), bool(s > 0.82))
    cal.observe("y", 0.93, False, served_at=0.9)
    cal.count_lookups("x", 300)
    cal.count_lookups("y", 40, served_at=0.9)
    cal.seed("z", [0.9, 0.7], [True, False], lookups=10)
    snap = cal.to_dict()
    assert snap["keys"]["y"]["lookups"] == {"380": 40} and snap["keys"]["z"]["seed_lookups"] == 10
    assert json.loads(json.dumps(snap)) == snap  # plain types only (msgpack-able too)
    back = OnlineCalibrator.from_dict(snap)
    assert back.to_dict() == snap
    for key in ("x", "y", "z"):
        assert back.threshold(key, 0.8) == cal.threshold(key, 0.8)
    with pytest.raises(ValueError, match="version"):
        OnlineCalibrator.from_dict({**snap, "version": 99})
    with pytest.raises(ValueError, match="malformed"):
        OnlineCalibrator.from_dict({"version": 1})
    with pytest.raises(ValueError, match="lookup levels"):
        bad = json.loads(json.dumps(snap))
        bad["keys"]["y"]["lookups"] = {"7": 5}
        OnlineCalibrator.from_dict(bad)


def test_online_memory_is_bounded_by_censor_levels():
    cal = OnlineCalibrator(delta=0.05)
    for i in range(30):
        t = 0.5 + 0.01 * i
        cal.observe("k", t + 0.001, True, served_at=t)
    assert len(cal.to_dict()["keys"]["k"]["online"]) <= 8


def test_concurrent_observations_are_all_counted():
    cal = OnlineCalibrator(delta=0.05)

    def feed() -> None:
        for _ in range(500):
            cal.observe("k", 0.9, True, served_at=0.8)

    run_in_threads(feed, [()] * 4)
    assert cal.to_dict()["keys"]["k"]["online"]["360"] == [[380, 2000, 0]]


# ---------------------------------------------------------------- per-request rate


def true_request_rate(t: float) -> float:
    """synthetic(): P(similarity >= t and wrong) = integral_t^1 1.2 (1 - s) ds / 0.5."""
    return 1.2 * (1.0 - t) ** 2


def test_request_rate_counts_every_lookup():
    sims = np.array([0.99, 0.97, 0.95, 0.9, 0.85, 0.6])
    ok = np.array([True, False, True, False, True, False])
    ch = choose_threshold(sims, ok, 0.3, default=0.96, min_hits=1)
    # Rows are lookups: at 0.96 one wrong hit (0.97) out of 6 lookups.
    assert ch.rate == "request" and ch.lookups == 6
    # Extra lookups without an observation (vetoed, no candidate) only add to the denominator.
    more = choose_threshold(sims, ok, 0.3, default=0.96, min_hits=1, lookups=60)
    assert more.lookups == 60 and more.threshold <= ch.threshold
    assert more.upper_bound == pytest.approx(upper_bound(more.wrong, 60))
    with pytest.raises(ValueError, match="fewer than the observations"):
        choose_threshold(sims, ok, 0.3, lookups=5)
    with pytest.raises(ValueError, match="rate must be"):
        choose_threshold(sims, ok, 0.3, rate="lookup")


def test_request_rate_holds_delta_on_fresh_draws():
    rng = np.random.default_rng(10)
    delta, reps, violations = 0.01, 100, 0
    for _ in range(reps):
        ch = choose_threshold(*synthetic(rng, 3000), delta, default=0.8)
        assert ch.certified  # per request every delta is reachable (serve less)
        violations += true_request_rate(ch.threshold) > delta
    assert violations / reps <= 0.08
    # And it is close: the true rate at the chosen threshold is not far below delta.
    ch = choose_threshold(*synthetic(rng, 100_000), delta, default=0.8)
    assert 0.8 * delta < true_request_rate(ch.threshold) <= delta


def test_request_rate_reaches_small_delta_where_the_hit_rate_cannot():
    rng = np.random.default_rng(11)
    sims = rng.uniform(0.5, 1.0, 5000)
    ok = rng.random(5000) > 0.25  # a quarter of all hits wrong at every threshold
    per_hit = choose_threshold(sims, ok, 0.05, default=0.8, rate="hit")
    assert not per_hit.certified
    per_request = choose_threshold(sims, ok, 0.05, default=0.8)
    # P(sim >= t and wrong) = 0.25 * (1 - t) / 0.5 <= 0.05 from t = 0.9 on.
    assert per_request.certified and 0.9 <= per_request.threshold <= 0.93


def test_cold_start_never_serves_more_than_the_default():
    rng = np.random.default_rng(12)
    for n in (0, 5, 25, 100):
        for _ in range(20):
            sims, ok = synthetic(rng, n)
            ch = choose_threshold(sims, ok, 0.01, default=0.8)
            assert ch.threshold >= 0.8 or ch.certified


def test_online_request_rate_uses_counted_lookups():
    cal = OnlineCalibrator(delta=0.02, min_hits=20, explore_gap=None)
    assert cal.threshold("k", 0.8).threshold == 0.8
    cal.count_lookups("k", 2000)  # filed under 0.8, the threshold just returned
    for s in np.linspace(0.8, 1.0, 200, endpoint=False):
        cal.observe("k", float(s), bool(s >= 0.85))  # 50 wrong hits in [0.8, 0.85)
    ch = cal.threshold("k", 0.8)
    # 50 / 2000 = 2.5% at 0.8; certified where wrong hits / 2000 is clearly below 2%.
    assert ch.certified and ch.lookups == 2000 and 0.8 < ch.threshold <= 0.83
    below = round(ch.threshold - 0.005, 6)
    wrong_below = int(
        np.sum(np.linspace(0.8, 1.0, 200, endpoint=False) < 0.85) - np.ceil((below - 0.8) / 0.001)
    )
    assert upper_bound(wrong_below, 2000) > 0.02  # the next grid point down does not certify
    assert ch.upper_bound == pytest.approx(upper_bound(ch.wrong, 2000)) and ch.upper_bound <= 0.02
    # Without counted lookups the denominator falls back to the labelled hits (conservative).
    bare = OnlineCalibrator(delta=0.02, min_hits=20)
    bare.threshold("k", 0.8)
    for s in np.linspace(0.8, 1.0, 200, endpoint=False):
        bare.observe("k", float(s), bool(s >= 0.85))
    ch = bare.threshold("k", 0.8)
    assert ch.lookups == 200 and not ch.certified and ch.threshold > 0.8


def test_count_lookups_respects_censoring():
    cal = OnlineCalibrator(delta=0.05, min_hits=20, explore_gap=None)
    cal.count_lookups("k", 5000, served_at=0.9)  # all served at 0.9, all feedback clean
    ch = cal.threshold("k", default=0.8)
    # Nothing is known below 0.9, so nothing below it is certified.
    assert ch.certified and ch.threshold == 0.9 and ch.lookups == 5000
    # Lookups of a key never asked about and without served_at are not counted.
    cal.count_lookups("fresh", 100)
    assert "lookups" not in cal.to_dict()["keys"]["fresh"] or cal.to_dict()["keys"]["fresh"]["lookups"] == {}
    for bad in (-1, True, 2.0):
        with pytest.raises(ValueError, match="n must be"):
            cal.count_lookups("k", bad)
    for bad_key in ("", None, 3):
        with pytest.raises(ValueError, match="key"):
            cal.count_lookups(bad_key)
        with pytest.raises(ValueError, match="key"):
            cal.threshold(bad_key, 0.8)
    for bad_default in (float("nan"), 1.5, True):
        with pytest.raises(ValueError, match="default"):
            cal.threshold("k", bad_default)
    assert cal.threshold("k", 1).threshold == cal.threshold("k", 1.0).threshold  # ints are fine
    with pytest.raises(ValueError, match="served_at"):
        cal.count_lookups("k", 1, served_at=2.0)


def test_feedback_rate_tests_at_the_sampled_scale():
    sims = np.linspace(0.8, 1.0, 400, endpoint=False)
    ok = sims >= 0.84
    sampled = OnlineCalibrator(delta=0.04, feedback_rate=0.5)
    full = OnlineCalibrator(delta=0.02)
    for cal in (sampled, full):
        cal.seed("k", sims, ok, lookups=4000)
    a, b = sampled.threshold("k", 0.8), full.threshold("k", 0.8)
    assert a.threshold == b.threshold and a.upper_bound == pytest.approx(min(1.0, 2 * b.upper_bound))
    with pytest.raises(ValueError, match="feedback_rate"):
        OnlineCalibrator(delta=0.04, feedback_rate=0.0)


def test_online_step_up_uses_monotonicity_for_the_request_rate():
    cal = OnlineCalibrator(delta=0.02, min_hits=20, explore_gap=None)
    # Served at 0.9 only: the default 0.8 has no data of its own, but 0.9 is shown unsafe
    # (30 wrong hits in 200 lookups), so 0.8 is too (the rate only grows as t falls).
    cal.count_lookups("k", 200, served_at=0.9)
    for s in np.linspace(0.9, 0.95, 30, endpoint=False):
        cal.observe("k", float(s), False, served_at=0.9)
    ch = cal.threshold("k", 0.8)
    assert ch.reason == "stepped_up" and ch.threshold > 0.9
    assert lower_bound(ch.wrong, 200) <= 0.02


def test_online_explores_below_an_early_certificate():
    def run(gap):
        cal = OnlineCalibrator(delta=0.05, min_hits=20, explore_gap=gap)
        cal.threshold("k", 0.8)
        cal.count_lookups("k", 100)
        for s in np.linspace(0.8, 0.99, 10):  # 10 wrong hits spread up to 0.99
            cal.observe("k", float(s), False)
        return cal.threshold("k", 0.8)

    # 10 wrong in 100 lookups: certified only near the top, the default shown unsafe.
    frozen = run(None)
    assert frozen.certified and frozen.threshold >= 0.95
    exploring = run(0.02)
    assert exploring.reason == "exploring" and 0.8 < exploring.threshold < frozen.threshold - 0.02
    with pytest.raises(ValueError, match="explore_gap"):
        OnlineCalibrator(delta=0.05, explore_gap=-1)


# ---------------------------------------------------------------- memoization


def test_threshold_is_memoized_and_invalidated():
    cal = OnlineCalibrator(delta=0.05, min_hits=20)
    cal.seed("k", np.linspace(0.6, 1.0, 500, endpoint=False), [True] * 500)
    first = cal.threshold("k", 0.8)
    assert cal.threshold("k", 0.8) is first  # nothing changed: the same answer, no work
    cal.observe("k", 0.97, True, served_at=first.threshold)
    second = cal.threshold("k", 0.8)
    assert second is not first  # an observation invalidates
    cal.seed("k", [0.9], [True])
    third = cal.threshold("k", 0.8)
    assert third is not second  # so does a seed
    # Lookups refresh lazily: fewer than REFRESH_MIN_LOOKUPS keep the answer ...
    cal.count_lookups("k", REFRESH_MIN_LOOKUPS - 1)
    assert cal.threshold("k", 0.8) is third
    cal.count_lookups("k", 1)
    fourth = cal.threshold("k", 0.8)
    assert fourth is not third
    # ... and at scale, a relative change of REFRESH_FRACTION.
    cal.count_lookups("k", 100_000)
    big = cal.threshold("k", 0.8)
    cal.count_lookups("k", int(REFRESH_FRACTION * 100_000) - 50)
    assert cal.threshold("k", 0.8) is big
    cal.count_lookups("k", 100)
    assert cal.threshold("k", 0.8) is not big
    # Another default is its own memo entry.
    assert cal.threshold("k", 0.9).threshold != big.threshold or cal.threshold("k", 0.9) is not big


def test_pooled_answer_is_invalidated_by_any_key():
    cal = OnlineCalibrator(delta=0.1, min_hits=20)
    pooled = cal.threshold("new", 0.9)
    assert pooled.source == "pooled" and pooled.reason == "default_cold_start"
    rng = np.random.default_rng(5)
    sims = rng.uniform(0.7, 1.0, 2000)
    cal.seed("big", sims, sims > 0.75)
    after = cal.threshold("new", 0.9)
    assert after.source == "pooled" and after.certified and after.threshold < 0.9


def test_hit_rate_ignores_lookup_counts():
    cal = OnlineCalibrator(delta=0.1, rate="hit")
    cal.seed("k", np.linspace(0.7, 1.0, 300, endpoint=False), [True] * 300)
    first = cal.threshold("k", 0.8)
    cal.count_lookups("k", 10_000)
    assert cal.threshold("k", 0.8) is first and first.lookups is None


def test_version_1_snapshot_loads_as_hit_rate():
    snap = {
        "version": 1,
        "bin_width": 0.005,
        "settings": {"delta": 0.05, "confidence": 0.95, "min_hits": 20, "starts": 3, "max_threshold": 1.0},
        "keys": {"a": {"seed": [[380, 100, 2]], "online": {"360": [[390, 5, 1]]}, "last_threshold": 0.8}},
    }
    cal = OnlineCalibrator.from_dict(snap)
    assert cal.rate == "hit" and cal.explore_gap is None
    again = OnlineCalibrator.from_dict(cal.to_dict())
    assert again.to_dict() == cal.to_dict() and again.threshold("a", 0.8) == cal.threshold("a", 0.8)


def test_horizon_delta_is_the_exact_binomial_boundary_and_tends_to_delta():
    p = horizon_delta(0.01, 12_743, 0.025)
    # 127 wrong hits allowed in 12,743 lookups; at p exactly 2.5% of samples have more.
    assert math.isclose(binom_cdf(127, 12_743, p), 0.975, abs_tol=1e-9)
    assert 0.0080 < p < 0.0088
    targets = [horizon_delta(0.01, m, 0.025) for m in (100, 1_000, 10_000, 1_000_000)]
    assert targets == sorted(targets) and targets[0] < 0.003 and 0.0098 < targets[-1] < 0.01
    for bad in ({"horizon": 0}, {"horizon": 1.5}, {"delta": 0.0}, {"level": 1.0}):
        with pytest.raises(ValueError):
            horizon_delta(**({"delta": 0.01, "horizon": 100, "level": 0.05} | bad))
    with pytest.raises(ValueError, match="horizon"):
        OnlineCalibrator(0.01, horizon=0)


def test_horizon_holds_the_rate_measured_over_the_next_lookups():
    # The population guarantee lets the measured rate of the next m lookups exceed delta
    # whenever the population rate sits just under it; with horizon=m it may not, in more
    # than 1 - confidence of draws.
    rng = np.random.default_rng(21)
    delta, m, reps = 0.02, 2000, 200
    over = {None: 0, m: 0}
    thresholds: dict[int | None, list[float]] = {None: [], m: []}
    for _ in range(reps):
        calibration = synthetic(rng, 3000)
        sims, ok = synthetic(rng, m)
        for horizon in (None, m):
            ch = choose_threshold(*calibration, delta, default=0.8, horizon=horizon)
            assert ch.certified
            thresholds[horizon].append(ch.threshold)
            over[horizon] += int(((sims >= ch.threshold) & ~ok).sum()) > delta * m
    assert over[m] <= 0.05 * reps < over[None]
    assert np.mean(thresholds[m]) > np.mean(thresholds[None])  # the price: it serves less


def test_horizon_survives_a_snapshot_and_comes_from_the_policy():
    from edgecache.config import ConfigError
    from edgecache.policy import Policy

    cal = OnlineCalibrator(0.02, horizon=5000)
    assert OnlineCalibrator.from_dict(cal.to_dict()).horizon == 5000
    old = cal.to_dict()
    del old["settings"]["horizon"]  # written before horizons existed: the population rate
    assert OnlineCalibrator.from_dict(old).horizon is None
    policy = Policy.from_dict({"false_hit_target": 0.02, "false_hit_horizon": 5000})
    assert OnlineCalibrator(**policy.calibration_settings()).horizon == 5000
    for bad in (0, 2.5, True, "many"):
        with pytest.raises(ConfigError, match="false_hit_horizon"):
            Policy.from_dict({"false_hit_target": 0.02, "false_hit_horizon": bad})
