import json

import pytest

from edgecache import CacheConfig
from edgecache.errors import ConfigError
from edgecache.eviction import STRATEGIES
from edgecache.policy import DEFAULT_CATEGORIES, CategoryPolicy, Policy
from edgecache.results import Entry


def test_defaults_are_valid_and_cover_the_usual_categories():
    policy = Policy()
    assert {"code", "small_talk", "stable_fact", "time_sensitive", "personal", "other"} <= set(policy.names)
    assert policy.fallback == "other"
    ts = policy.category("time_sensitive")
    assert ts.ttl_seconds is not None and ts.ttl_seconds <= 3600 and ts.max_relax == 0.0


def test_round_trip_through_plain_data():
    cfg = CacheConfig(policy=Policy(false_hit_target=0.02))
    again = CacheConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_mapping_overrides_only_named_fields_and_can_add_categories():
    policy = Policy.from_dict(
        {
            "categories": {
                "time_sensitive": {"ttl_seconds": 60},
                "legal": {"seeds": ["law questions", "is it legal to"], "threshold": 0.9},
            }
        }
    )
    assert policy.category("time_sensitive").ttl_seconds == 60
    assert policy.category("time_sensitive").max_ttl_factor == 2.0  # untouched default
    assert policy.category("legal").threshold == 0.9
    assert policy.names[: len(DEFAULT_CATEGORIES)] == tuple(c.name for c in DEFAULT_CATEGORIES)


def test_list_replaces_the_defaults():
    policy = Policy.from_dict({"categories": [{"name": "all"}], "fallback": "all", "classify": False})
    assert policy.names == ("all",)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"categories": [{"name": "a"}, {"name": "a"}], "fallback": "a"}, "duplicate"),
        ({"categories": [{"name": "a"}]}, "fallback"),
        ({"categories": {"code": {"eviction": "random"}}}, "eviction"),
        ({"categories": {"code": {"threshold": 2}}}, "threshold"),
        ({"categories": {"code": {"ttl_seconds": -1}}}, "ttl_seconds"),
        ({"categories": {"code": {"max_entries": 0}}}, "max_entries"),
        ({"categories": {"code": {"max_relax": 0.9}}}, "max_relax"),
        ({"categories": {"code": {"max_ttl_factor": 0.5}}}, "max_ttl_factor"),
        ({"categories": {"code": {"colour": 1}}}, "unknown"),
        ({"categories": {"code": {"seeds": "one string"}}}, "seeds"),
        ({"false_hit_target": 0}, "false_hit_target"),
        ({"confidence": 1.0}, "confidence"),
        ({"bogus": 1}, "unknown policy keys"),
        ({"categories": 3}, "categories"),
        ("not a mapping", "policy"),
    ],
)
def test_bad_policies_get_clear_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        Policy.from_dict(data)


def test_config_refuses_a_non_policy():
    with pytest.raises(ConfigError, match="policy"):
        CacheConfig(policy={"classify": False})  # type: ignore[arg-type]


def _entry(i: int, *, hits: int = 0, used: float = 0.0, size: int = 100, cost: float | None = None) -> Entry:
    meta = {"cost": cost} if cost is not None else {}
    return Entry(i, "q", "r", 0, None, 0.0, None, used, hits=hits, metadata=meta, size=size)


def test_eviction_orders():
    old_popular = _entry(1, hits=9, used=1.0)
    new_unused = _entry(2, hits=0, used=5.0)
    big_cheap = _entry(3, hits=1, used=9.0, size=10_000)
    small_costly = _entry(4, hits=0, used=2.0, size=50, cost=5.0)
    pool = [old_popular, new_unused, big_cheap, small_costly]

    def first(name: str) -> int:
        return min(pool, key=STRATEGIES[name].key).id

    assert first("lru") == 1
    assert first("lfu") == 4  # 0 hits, used before entry 2
    assert first("cost") == 3  # most bytes per unit of value
    assert CategoryPolicy("x", eviction="lfu").eviction == "lfu"
