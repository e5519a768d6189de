import pytest

from edgecache.load import FixedSignal, LatencySignal, MaxSignal, QueueDepthSignal, RateLimitSignal
from tests.helpers import Clock


def test_latency_ramps_up_and_decays_back_when_calls_stop():
    clock = Clock(0.0)
    sig = LatencySignal(normal_seconds=1.0, overloaded_seconds=5.0, half_life_seconds=10.0, clock=clock)
    assert sig.level() == 0.0
    sig.record(1.0)
    for _ in range(50):
        clock.now += 1
        sig.record(9.0)
    assert sig.level() == 1.0
    clock.now += 200  # nobody calls the backend any more: the estimate returns to normal
    assert sig.level() < 0.01


def test_one_slow_call_does_not_flip_the_level():
    clock = Clock(0.0)
    sig = LatencySignal(1.0, 5.0, half_life_seconds=30.0, clock=clock)
    for _ in range(20):
        clock.now += 1
        sig.record(1.0)
    clock.now += 1
    sig.record(30.0)
    assert sig.level() < 0.5


def test_an_absurd_latency_counts_as_overloaded_not_for_hours():
    clock = Clock(0.0)
    sig = LatencySignal(1.0, 5.0, half_life_seconds=30.0, clock=clock)
    sig.record(1e300)
    assert sig.level() == 1.0
    clock.now += 120  # four half-lives of normal calls bring it back, as after any overload
    for _ in range(60):
        clock.now += 1
        sig.record(1.0)
    assert sig.level() < 0.1  # unclamped: 1.0 for ~1,000 half-lives


def test_rate_limit_window():
    clock = Clock(0.0)
    sig = RateLimitSignal(normal_rate=0.0, overloaded_rate=0.5, window_seconds=10, clock=clock)
    for status in (200, 429, 200, 429):
        sig.record(status)
    assert sig.level() == 1.0
    clock.now += 11
    sig.record(200)
    assert sig.level() == 0.0


def test_queue_depth_and_max():
    depth = [0]
    q = QueueDepthSignal(lambda: depth[0], normal=2, overloaded=10)
    fixed = FixedSignal(0.25)
    both = MaxSignal(q, fixed)
    assert both.level() == 0.25
    depth[0] = 6
    assert q.level() == 0.5 and both.level() == 0.5


@pytest.mark.parametrize(
    "make",
    [
        lambda: LatencySignal(5.0, 1.0),
        lambda: QueueDepthSignal(lambda: 0, normal=-1, overloaded=2),
        lambda: RateLimitSignal(window_seconds=0),
        lambda: FixedSignal(1.5),
    ],
)
def test_bad_settings_raise(make):
    with pytest.raises(ValueError):
        make()


def test_bad_latency_sample_raises():
    with pytest.raises(ValueError, match="latency"):
        LatencySignal(1.0, 2.0).record(float("nan"))
